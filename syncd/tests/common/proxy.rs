//! A small fault-injecting HTTP proxy for the outage test: pass, down (reset every new
//! connection), answer 503 SlowDown to a share of requests, or reset connections in the
//! middle of a request body.
//!
//! Every response it forwards gets `Connection: close`, so the client opens one connection
//! per request: the mode in force when a request is made applies to it (a pooled
//! keep-alive connection would otherwise carry a request through an outage untouched),
//! and "20 % of connections" means 20 % of requests.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::time::Duration;

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
}

impl Proxy {
    pub fn start(upstream: u16) -> Proxy {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        l.set_nonblocking(true).unwrap();
        let mode = Arc::new(AtomicU8::new(Mode::Pass as u8));
        let stop = Arc::new(AtomicBool::new(false));
        let counts = Arc::new(Counts::default());
        let (m, s, c) = (mode.clone(), stop.clone(), counts.clone());
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
                let c = c.clone();
                std::thread::spawn(move || handle(client, upstream, mode, roll, n, &c));
            }
        });
        Proxy {
            port,
            mode,
            stop,
            counts,
        }
    }

    pub fn set(&self, m: Mode) {
        self.mode.store(m as u8, Ordering::Relaxed);
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

fn handle(mut client: TcpStream, upstream: u16, mode: u8, roll: u64, n: u64, counts: &Counts) {
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
    if mode == Mode::Some503 as u8 && roll < 20 {
        counts.slow_down.fetch_add(1, Ordering::Relaxed);
        // Take the whole body first (a client still sending would see a reset instead).
        let head = String::from_utf8_lossy(&first[..end]).to_string();
        let len: usize = header(&head, "content-length")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let mut left = len.saturating_sub(first.len() - end);
        let mut buf = vec![0u8; 65536];
        while left > 0 {
            match client.read(&mut buf[..left.min(65536)]) {
                Ok(0) | Err(_) => return,
                Ok(k) => left -= k,
            }
        }
        let body = "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message></Error>";
        let _ = write!(
            client,
            "HTTP/1.1 503 Slow Down\r\nContent-Type: application/xml\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        let _ = client.flush();
        let _ = client.shutdown(Shutdown::Both);
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
    let down = std::thread::spawn(move || forward_response(&mut s2, &mut c2));
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
        if s.write_all(&buf[..k]).is_err() {
            break;
        }
        sent += k as u64;
    }
    let _ = s.shutdown(Shutdown::Write);
    let _ = down.join();
}

/// Copy the response to the client, adding `Connection: close` to its (final) head.
fn forward_response(s: &mut TcpStream, c: &mut TcpStream) {
    let mut buf = vec![0u8; 65536];
    let mut head = Vec::new();
    let mut rewritten = false;
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
                    return;
                }
                head.drain(..end);
                continue;
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
                return;
            }
            rewritten = true;
            head.clear();
            break;
        }
    }
    let _ = c.shutdown(Shutdown::Write);
}
