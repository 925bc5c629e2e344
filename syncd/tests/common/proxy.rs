//! A small fault-injecting HTTP proxy for the outage test: pass, down (reset every new
//! connection), answer 503 SlowDown to a share of requests, or reset connections in the
//! middle of a request body.
//!
//! With [`Proxy::aws`] it also gives the store in front of it (Garage) the semantics of
//! real AWS S3 under the shipped least-privilege policy (`configs/iam/`), which Garage
//! lacks: HeadObject/GetObject of a missing key answer 403 (no `s3:ListBucket`), listing
//! objects is refused, a create-only write (`If-None-Match: *`, PutObject or
//! CompleteMultipartUpload) of a key that exists answers 412, a write without that header
//! answers 403 (the shipped bucket policy's deny), a share of requests answers
//! `503 SlowDown`, and request bodies can be throttled. It counts the successful writes of
//! each key, so a test can assert "exactly once".
//!
//! Every response it forwards gets `Connection: close`, so the client opens one connection
//! per request: the mode in force when a request is made applies to it (a pooled
//! keep-alive connection would otherwise carry a request through an outage untouched),
//! and "20 % of connections" means 20 % of requests.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Mode {
    Pass = 0,
    Down = 1,
    /// 20 % of requests get `503 SlowDown`.
    Some503 = 2,
    /// 30 % of the requests with a body are reset in the middle of it.
    ResetMidBody = 3,
}

/// What the proxy did, by kind.
#[derive(Default)]
pub struct Counts {
    pub requests: AtomicU64,
    pub refused: AtomicU64,
    pub slow_down: AtomicU64,
    pub resets: AtomicU64,
    /// AWS mode: HeadObject/GetObject of a missing key answered 403 instead of 404.
    pub forbidden_lookups: AtomicU64,
    /// AWS mode: listings refused (403).
    pub forbidden_lists: AtomicU64,
    /// AWS mode: create-only writes refused with 412 (the key exists).
    pub precondition_failed: AtomicU64,
    /// AWS mode: writes without `If-None-Match: *` refused (403), as the bucket policy in
    /// `configs/iam/` does.
    pub forbidden_writes: AtomicU64,
    /// Requests that carried `If-None-Match: *`.
    pub create_only_writes: AtomicU64,
    /// HeadObject requests.
    pub heads: AtomicU64,
    /// Successful object writes (PutObject, CompleteMultipartUpload) per request path.
    pub writes: Mutex<HashMap<String, u32>>,
}

/// AWS-semantics settings (see the module docs).
#[derive(Default)]
struct Aws {
    on: AtomicBool,
    /// Percentage of requests answered `503 SlowDown`.
    slow_down_percent: AtomicU64,
    /// Request-body bandwidth in bytes/s, shared by all connections; 0 = unlimited.
    bytes_per_sec: AtomicU64,
    /// When the throttle next has bandwidth.
    next_free: Mutex<Option<Instant>>,
    /// Create-only writes pass to the upstream unchecked, as stores without conditional
    /// writes do (Garage): the 403s stay, the 412s go.
    ignore_if_none_match: AtomicBool,
    /// Keys (request paths) known to exist: written through the proxy, or seeded.
    existing: Mutex<std::collections::HashSet<String>>,
}

impl Counts {
    pub fn injected(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
            + self.slow_down.load(Ordering::Relaxed)
            + self.resets.load(Ordering::Relaxed)
    }
}

pub struct Proxy {
    pub port: u16,
    mode: Arc<AtomicU8>,
    stop: Arc<AtomicBool>,
    pub counts: Arc<Counts>,
    aws: Arc<Aws>,
}

impl Proxy {
    pub fn start(upstream: u16) -> Proxy {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        l.set_nonblocking(true).unwrap();
        let mode = Arc::new(AtomicU8::new(Mode::Pass as u8));
        let stop = Arc::new(AtomicBool::new(false));
        let counts = Arc::new(Counts::default());
        let aws = Arc::new(Aws::default());
        let (m, s, c, a) = (mode.clone(), stop.clone(), counts.clone(), aws.clone());
        std::thread::spawn(move || {
            let mut n = 0u64;
            while !s.load(Ordering::Relaxed) {
                let (client, _) = match l.accept() {
                    Ok(c) => c,
                    Err(_) => {
                        std::thread::sleep(Duration::from_millis(5));
                        continue;
                    }
                };
                n += 1;
                client.set_nonblocking(false).unwrap();
                let roll = (n.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 33) % 100;
                let mode = m.load(Ordering::Relaxed);
                let (c, a) = (c.clone(), a.clone());
                std::thread::spawn(move || handle(client, upstream, mode, roll, n, &c, &a));
            }
        });
        Proxy {
            port,
            mode,
            stop,
            counts,
            aws,
        }
    }

    pub fn set(&self, m: Mode) {
        self.mode.store(m as u8, Ordering::Relaxed);
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// AWS semantics on top of the mode: 403 for missing keys, no listing, 412 for
    /// create-only writes of existing keys, `slow_down_percent` % of requests answered
    /// `503 SlowDown`, request bodies at `bytes_per_sec` (0: unlimited) in all.
    pub fn aws(&self, slow_down_percent: u64, bytes_per_sec: u64) {
        self.aws
            .slow_down_percent
            .store(slow_down_percent, Ordering::Relaxed);
        self.aws.bytes_per_sec.store(bytes_per_sec, Ordering::Relaxed);
        self.aws.on.store(true, Ordering::Relaxed);
    }

    /// As [`Proxy::aws`], for a store that ignores `If-None-Match` (no 412).
    pub fn aws_without_conditional_writes(&self) {
        self.aws.ignore_if_none_match.store(true, Ordering::Relaxed);
        self.aws(0, 0);
    }

    /// Successful writes of `key` (a path-style request path, `/bucket/key`).
    pub fn writes_of(&self, path: &str) -> u32 {
        let w = self.counts.writes.lock().unwrap();
        w.get(path).copied().unwrap_or(0)
    }

    /// Every key written more than once, with its count.
    pub fn written_twice(&self) -> Vec<(String, u32)> {
        let w = self.counts.writes.lock().unwrap();
        let mut v: Vec<_> = w
            .iter()
            .filter(|(_, n)| **n > 1)
            .map(|(k, n)| (k.clone(), *n))
            .collect();
        v.sort();
        v
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn reset(s: &TcpStream) {
    // SO_LINGER 0: close() sends RST.
    let fd = std::os::fd::AsRawFd::as_raw_fd(s);
    let lg = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            &lg as *const _ as *const libc::c_void,
            std::mem::size_of::<libc::linger>() as u32,
        );
    }
}

fn head_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4).position(|w| w == b"\r\n\r\n").map(|p| p + 4)
}

/// Read the request head (and whatever body bytes came with it).
fn read_head(c: &mut TcpStream) -> Option<(Vec<u8>, usize)> {
    let mut buf = vec![0u8; 65536];
    let mut got = Vec::new();
    loop {
        if let Some(end) = head_end(&got) {
            return Some((got, end));
        }
        if got.len() > 65536 {
            return None;
        }
        match c.read(&mut buf) {
            Ok(0) | Err(_) => return None,
            Ok(k) => got.extend_from_slice(&buf[..k]),
        }
    }
}

fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim().eq_ignore_ascii_case(name).then_some(v.trim())
    })
}

/// What a request is, as far as the AWS semantics care.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    /// HeadObject / GetObject (not of a part listing or an upload).
    Lookup {
        head: bool,
    },
    /// ListObjects(V2) on the bucket.
    ListObjects,
    /// PutObject or CompleteMultipartUpload: the key exists after a 2xx.
    Write,
    Other,
}

fn classify(method: &str, target: &str) -> (Op, String) {
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let has = |name: &str| query.split('&').any(|kv| kv.split('=').next() == Some(name));
    // Path style: /bucket/key...
    let is_object = path.trim_start_matches('/').contains('/');
    let op = match method {
        "HEAD" | "GET" if is_object && !has("uploadId") => Op::Lookup {
            head: method == "HEAD",
        },
        "GET" if !is_object && !has("uploads") && !has("location") && !has("versioning") => Op::ListObjects,
        "PUT" if is_object && !has("uploadId") && !has("partNumber") => Op::Write,
        "POST" if is_object && has("uploadId") => Op::Write,
        _ => Op::Other,
    };
    (op, path.to_string())
}

/// Read and drop what is left of a request body, then answer with `status` and `body`.
fn answer(client: &mut TcpStream, first: &[u8], end: usize, status: &str, code: Option<&str>) {
    let head = String::from_utf8_lossy(&first[..end]).to_string();
    let len: usize = header(&head, "content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    // Take the whole body first (a client still sending would see a reset instead).
    let mut left = len.saturating_sub(first.len() - end);
    let mut buf = vec![0u8; 65536];
    while left > 0 {
        match client.read(&mut buf[..left.min(65536)]) {
            Ok(0) | Err(_) => return,
            Ok(k) => left -= k,
        }
    }
    let body = code
        .map(|c| format!("<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>{c}</Code><Message>{c} (injected by the test proxy)</Message></Error>"))
        .unwrap_or_default();
    let _ = write!(
        client,
        "HTTP/1.1 {status}\r\nContent-Type: application/xml\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = client.flush();
    let _ = client.shutdown(Shutdown::Both);
}

/// Wait until the shared throttle has bandwidth for `k` bytes.
fn throttle(aws: &Aws, k: usize) {
    let bps = aws.bytes_per_sec.load(Ordering::Relaxed);
    if bps == 0 || !aws.on.load(Ordering::Relaxed) {
        return;
    }
    let need = Duration::from_secs_f64(k as f64 / bps as f64);
    let until = {
        let mut next = aws.next_free.lock().unwrap();
        let now = Instant::now();
        let start = next.filter(|t| *t > now).unwrap_or(now);
        *next = Some(start + need);
        start + need
    };
    if let Some(d) = until.checked_duration_since(Instant::now()) {
        std::thread::sleep(d);
    }
}

fn handle(mut client: TcpStream, upstream: u16, mode: u8, roll: u64, n: u64, counts: &Counts, aws: &Aws) {
    let _ = client.set_read_timeout(Some(Duration::from_secs(30)));
    if mode == Mode::Down as u8 {
        counts.refused.fetch_add(1, Ordering::Relaxed);
        reset(&client);
        return;
    }
    let Some((first, end)) = read_head(&mut client) else {
        return;
    };
    counts.requests.fetch_add(1, Ordering::Relaxed);
    let head_text = String::from_utf8_lossy(&first[..end]).to_string();
    let mut request_line = head_text.lines().next().unwrap_or("").split(' ');
    let (method, target) = (
        request_line.next().unwrap_or(""),
        request_line.next().unwrap_or(""),
    );
    let (op, path) = classify(method, target);
    if op == (Op::Lookup { head: true }) {
        counts.heads.fetch_add(1, Ordering::Relaxed);
    }
    let create_only = header(&head_text, "if-none-match") == Some("*");
    if create_only {
        counts.create_only_writes.fetch_add(1, Ordering::Relaxed);
    }
    let aws_on = aws.on.load(Ordering::Relaxed);
    let slow_roll = (n.wrapping_mul(0xD6E8_FEB8_6659_FD93) >> 33) % 100;
    if (mode == Mode::Some503 as u8 && roll < 20)
        || (aws_on && slow_roll < aws.slow_down_percent.load(Ordering::Relaxed))
    {
        counts.slow_down.fetch_add(1, Ordering::Relaxed);
        answer(&mut client, &first, end, "503 Slow Down", Some("SlowDown"));
        return;
    }
    if aws_on && op == Op::ListObjects {
        eprintln!("proxy: 403 for a listing: {method} {target}");
        counts.forbidden_lists.fetch_add(1, Ordering::Relaxed);
        answer(&mut client, &first, end, "403 Forbidden", Some("AccessDenied"));
        return;
    }
    let conditional = aws_on && !aws.ignore_if_none_match.load(Ordering::Relaxed);
    if conditional && op == Op::Write && !create_only {
        eprintln!("proxy: 403 for a write without If-None-Match: {method} {target}");
        counts.forbidden_writes.fetch_add(1, Ordering::Relaxed);
        answer(&mut client, &first, end, "403 Forbidden", Some("AccessDenied"));
        return;
    }
    if conditional && op == Op::Write && create_only && aws.existing.lock().unwrap().contains(&path) {
        counts.precondition_failed.fetch_add(1, Ordering::Relaxed);
        answer(
            &mut client,
            &first,
            end,
            "412 Precondition Failed",
            Some("PreconditionFailed"),
        );
        return;
    }
    let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)) else {
        reset(&client);
        return;
    };
    // Reset somewhere inside the body of 30 % of the requests that have one.
    let body_len: u64 = header(&String::from_utf8_lossy(&first[..end]), "content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let cut = (mode == Mode::ResetMidBody as u8 && roll < 30 && body_len > 1)
        .then(|| end as u64 + 1 + n * 7919 % (body_len - 1));
    let (mut c2, mut s2) = (client.try_clone().unwrap(), server.try_clone().unwrap());
    let missing_is_403 = match op {
        Op::Lookup { head } if aws_on => Some(head),
        _ => None,
    };
    let down = std::thread::spawn(move || forward_response(&mut s2, &mut c2, missing_is_403));
    let (mut c, mut s) = (client, server);
    let mut pending = first;
    let mut buf = vec![0u8; 65536];
    let mut sent = 0u64;
    loop {
        let k = if pending.is_empty() {
            match c.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(k) => k,
            }
        } else {
            let k = pending.len();
            buf.resize(buf.len().max(k), 0);
            buf[..k].copy_from_slice(&pending);
            pending.clear();
            k
        };
        if let Some(cut) = cut
            && sent + k as u64 > cut
        {
            counts.resets.fetch_add(1, Ordering::Relaxed);
            reset(&c);
            reset(&s);
            let _ = c.shutdown(Shutdown::Both);
            let _ = s.shutdown(Shutdown::Both);
            break;
        }
        if sent >= end as u64 {
            throttle(aws, k);
        }
        if s.write_all(&buf[..k]).is_err() {
            break;
        }
        sent += k as u64;
    }
    let _ = s.shutdown(Shutdown::Write);
    let status = down.join().ok().flatten();
    if let Some(st) = status {
        if st == 404 && missing_is_403.is_some() {
            counts.forbidden_lookups.fetch_add(1, Ordering::Relaxed);
        }
        if op == Op::Write && (200..300).contains(&st) {
            aws.existing.lock().unwrap().insert(path.clone());
            *counts.writes.lock().unwrap().entry(path).or_insert(0) += 1;
        }
    }
}

/// Copy the response to the client, adding `Connection: close` to its (final) head; with
/// `missing_is_403` (`Some(is_head)`), a 404 becomes AWS's 403 AccessDenied. Returns the
/// final status.
fn forward_response(s: &mut TcpStream, c: &mut TcpStream, missing_is_403: Option<bool>) -> Option<u16> {
    let mut buf = vec![0u8; 65536];
    let mut head = Vec::new();
    let mut rewritten = false;
    let mut status = None;
    loop {
        let k = match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(k) => k,
        };
        if rewritten {
            if c.write_all(&buf[..k]).is_err() {
                break;
            }
            continue;
        }
        head.extend_from_slice(&buf[..k]);
        // Interim (1xx) heads pass as they are; the final one gets `Connection: close`.
        while let Some(end) = head_end(&head) {
            let text = String::from_utf8_lossy(&head[..end]).to_string();
            if text.starts_with("HTTP/1.1 1") {
                if c.write_all(&head[..end]).is_err() {
                    return status;
                }
                head.drain(..end);
                continue;
            }
            status = text.split(' ').nth(1).and_then(|v| v.parse().ok());
            if let Some(is_head) = missing_is_403
                && status == Some(404)
            {
                // What AWS says without s3:ListBucket; the upstream's body is dropped, and
                // a HEAD answer has none.
                let body = if is_head {
                    ""
                } else {
                    "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>AccessDenied</Code><Message>Access Denied</Message></Error>"
                };
                let _ = write!(
                    c,
                    "HTTP/1.1 403 Forbidden\r\nContent-Type: application/xml\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = c.shutdown(Shutdown::Write);
                return status;
            }
            let mut out: Vec<u8> = text
                .trim_end()
                .lines()
                .filter(|l| !l.to_ascii_lowercase().starts_with("connection:"))
                .flat_map(|l| [l.as_bytes(), b"\r\n"].concat())
                .collect();
            out.extend_from_slice(b"Connection: close\r\n\r\n");
            out.extend_from_slice(&head[end..]);
            if c.write_all(&out).is_err() {
                return status;
            }
            rewritten = true;
            head.clear();
            break;
        }
    }
    let _ = c.shutdown(Shutdown::Write);
    status
}
