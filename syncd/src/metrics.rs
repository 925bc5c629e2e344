//! Counters and gauges, and the optional Prometheus text endpoint.

use std::collections::{BTreeMap, HashSet};
use std::fmt::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::time::Instant;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::refusal::Refusal;

#[derive(Debug)]
pub struct Metrics {
    start: Instant,
    files_uploaded: AtomicU64,
    bytes_uploaded: AtomicU64,
    bytes_sent: AtomicU64,
    evicted: AtomicU64,
    dropped: AtomicU64,
    failures: Mutex<BTreeMap<String, u64>>,
    retries: Mutex<BTreeMap<String, u64>>,
    existence_checks: Mutex<BTreeMap<String, u64>>,
    refused: Mutex<BTreeMap<String, u64>>,
    /// Each (path, reason) refused in this process: logged and counted once, not at every
    /// rescan.
    refused_seen: Mutex<HashSet<(PathBuf, Refusal)>>,
    list_requests: AtomicU64,
    queue_files: AtomicU64,
    queue_bytes: AtomicU64,
    oldest_pending_secs: AtomicU64,
    conflicts: AtomicU64,
    rate_bits: AtomicU64,
    dest_up: AtomicBool,
    last_progress_ms: AtomicU64,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

fn label(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' {
                c
            } else {
                '_'
            }
        })
        .take(64)
        .collect()
}

impl Metrics {
    pub fn new() -> Metrics {
        Metrics {
            start: Instant::now(),
            files_uploaded: AtomicU64::new(0),
            bytes_uploaded: AtomicU64::new(0),
            bytes_sent: AtomicU64::new(0),
            evicted: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            failures: Mutex::new(BTreeMap::new()),
            retries: Mutex::new(BTreeMap::new()),
            existence_checks: Mutex::new(BTreeMap::new()),
            refused: Mutex::new(BTreeMap::new()),
            refused_seen: Mutex::new(HashSet::new()),
            list_requests: AtomicU64::new(0),
            queue_files: AtomicU64::new(0),
            queue_bytes: AtomicU64::new(0),
            oldest_pending_secs: AtomicU64::new(0),
            conflicts: AtomicU64::new(0),
            rate_bits: AtomicU64::new(0),
            dest_up: AtomicBool::new(true),
            last_progress_ms: AtomicU64::new(0),
        }
    }

    /// Bytes put on the wire (parts, objects, copies).
    pub fn add_bytes(&self, n: u64) {
        self.bytes_sent.fetch_add(n, Relaxed);
        self.touch();
    }
    pub fn bytes_sent(&self) -> u64 {
        self.bytes_sent.load(Relaxed)
    }
    /// A verified upload.
    pub fn uploaded(&self, size: u64) {
        self.files_uploaded.fetch_add(1, Relaxed);
        self.bytes_uploaded.fetch_add(size, Relaxed);
        self.touch();
    }
    pub fn files_uploaded(&self) -> u64 {
        self.files_uploaded.load(Relaxed)
    }
    pub fn evicted(&self) {
        self.evicted.fetch_add(1, Relaxed);
    }
    /// A file that was not uploaded, deleted under disk pressure.
    pub fn dropped(&self) {
        self.dropped.fetch_add(1, Relaxed);
    }
    pub fn dropped_count(&self) -> u64 {
        self.dropped.load(Relaxed)
    }
    pub fn failure(&self, kind: &str) {
        *self
            .failures
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(label(kind))
            .or_default() += 1;
    }
    pub fn retry(&self, code: &str) {
        *self
            .retries
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(label(code))
            .or_default() += 1;
    }
    /// Forward progress (bytes moved, a retry scheduled): feeds the systemd watchdog.
    /// An existence check before a write, by how it was answered: `head`, `listing`, or
    /// `create_only` (none needed: the write itself refuses to replace an object).
    pub fn existence_check(&self, by: &str) {
        *self
            .existence_checks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(label(by))
            .or_default() += 1;
    }
    pub fn existence_checks(&self, by: &str) -> u64 {
        let m = self.existence_checks.lock().unwrap_or_else(|e| e.into_inner());
        m.get(by).copied().unwrap_or(0)
    }
    /// A file refused; true the first time this path is refused for this reason (count it
    /// and log it then).
    pub fn refused(&self, path: &Path, reason: Refusal) -> bool {
        let new = self
            .refused_seen
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert((path.to_path_buf(), reason));
        if new {
            *self
                .refused
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .entry(reason.as_str().to_string())
                .or_default() += 1;
        }
        new
    }
    /// Files refused for `reason` in this process.
    pub fn refused_count(&self, reason: Refusal) -> u64 {
        let m = self.refused.lock().unwrap_or_else(|e| e.into_inner());
        m.get(reason.as_str()).copied().unwrap_or(0)
    }
    /// Forget the refusals of `path` (it was accepted since), except `keep`; true when any
    /// was forgotten.
    pub fn unrefuse(&self, path: &Path, keep: Refusal) -> bool {
        let mut seen = self.refused_seen.lock().unwrap_or_else(|e| e.into_inner());
        let before = seen.len();
        seen.retain(|(p, r)| p != path || *r == keep);
        seen.len() != before
    }
    /// Every (path, reason) refused in this process, sorted.
    pub fn refusals(&self) -> Vec<(PathBuf, Refusal)> {
        let seen = self.refused_seen.lock().unwrap_or_else(|e| e.into_inner());
        let mut v: Vec<_> = seen.iter().cloned().collect();
        v.sort();
        v
    }
    pub fn list_request(&self) {
        self.list_requests.fetch_add(1, Relaxed);
    }
    pub fn list_requests(&self) -> u64 {
        self.list_requests.load(Relaxed)
    }
    pub fn touch(&self) {
        self.last_progress_ms
            .store(self.start.elapsed().as_millis() as u64, Relaxed);
    }
    /// Seconds since the last forward progress.
    pub fn since_progress(&self) -> f64 {
        let now = self.start.elapsed().as_millis() as u64;
        now.saturating_sub(self.last_progress_ms.load(Relaxed)) as f64 / 1000.0
    }
    pub fn set_queue(&self, files: u64, bytes: u64, oldest_secs: u64, conflicts: u64) {
        self.queue_files.store(files, Relaxed);
        self.queue_bytes.store(bytes, Relaxed);
        self.oldest_pending_secs.store(oldest_secs, Relaxed);
        self.conflicts.store(conflicts, Relaxed);
    }
    pub fn set_rate(&self, bytes_per_sec: f64) {
        self.rate_bits.store(bytes_per_sec.to_bits(), Relaxed);
    }
    pub fn set_dest_up(&self, up: bool) {
        self.dest_up.store(up, Relaxed);
    }

    /// The Prometheus text exposition format.
    pub fn render(&self) -> String {
        let mut o = String::new();
        let mut g = |name: &str, kind: &str, help: &str, v: String| {
            let _ = writeln!(
                o,
                "# HELP edgemask_syncd_{name} {help}\n# TYPE edgemask_syncd_{name} {kind}\nedgemask_syncd_{name} {v}"
            );
        };
        g(
            "files_uploaded_total",
            "counter",
            "Files uploaded and verified.",
            self.files_uploaded.load(Relaxed).to_string(),
        );
        g(
            "bytes_uploaded_total",
            "counter",
            "Bytes of files uploaded and verified.",
            self.bytes_uploaded.load(Relaxed).to_string(),
        );
        g(
            "bytes_sent_total",
            "counter",
            "Bytes sent (including retried parts).",
            self.bytes_sent.load(Relaxed).to_string(),
        );
        g(
            "evicted_total",
            "counter",
            "Uploaded files deleted by the retention rules.",
            self.evicted.load(Relaxed).to_string(),
        );
        g(
            "dropped_total",
            "counter",
            "Files never uploaded, deleted under disk pressure (retain.drop_not_uploaded).",
            self.dropped.load(Relaxed).to_string(),
        );
        g(
            "queue_files",
            "gauge",
            "Files ready and not yet uploaded.",
            self.queue_files.load(Relaxed).to_string(),
        );
        g(
            "queue_bytes",
            "gauge",
            "Bytes ready and not yet uploaded.",
            self.queue_bytes.load(Relaxed).to_string(),
        );
        g(
            "oldest_pending_seconds",
            "gauge",
            "Age of the oldest file waiting for upload.",
            self.oldest_pending_secs.load(Relaxed).to_string(),
        );
        g(
            "conflicts",
            "gauge",
            "Files kept locally because a different object holds their key, or refused.",
            self.conflicts.load(Relaxed).to_string(),
        );
        g(
            "upload_rate_bytes_per_second",
            "gauge",
            "Current upload rate.",
            format!("{:.0}", f64::from_bits(self.rate_bits.load(Relaxed))),
        );
        g(
            "destination_up",
            "gauge",
            "1 when the destination accepts uploads.",
            (self.dest_up.load(Relaxed) as u8).to_string(),
        );
        g(
            "list_requests_total",
            "counter",
            "ListObjectsV2 requests sent for existence checks.",
            self.list_requests.load(Relaxed).to_string(),
        );
        for (name, map, help) in [
            ("failures_total", &self.failures, "Failed uploads by kind."),
            ("retries_total", &self.retries, "Retried requests by error code."),
            (
                "files_refused_total",
                &self.refused,
                "Files (or directories) under a watch root refused, by reason: never read, uploaded or deleted.",
            ),
            (
                "existence_checks_total",
                &self.existence_checks,
                "Existence checks before a write, by how they were answered (head, listing, create_only).",
            ),
        ] {
            let _ = writeln!(
                o,
                "# HELP edgemask_syncd_{name} {help}\n# TYPE edgemask_syncd_{name} counter"
            );
            for (k, v) in map.lock().unwrap_or_else(|e| e.into_inner()).iter() {
                let lbl = match name {
                    "failures_total" => "kind",
                    "existence_checks_total" => "by",
                    "files_refused_total" => "reason",
                    _ => "code",
                };
                let _ = writeln!(o, "edgemask_syncd_{name}{{{lbl}=\"{k}\"}} {v}");
            }
        }
        o
    }
}

/// Serve `/metrics` (any path) until cancelled.
/// Connections the endpoint serves at once; more are closed at once (a scraper retries).
pub const MAX_CONNECTIONS: usize = 8;
/// The largest request head read; a larger one is answered 431 and closed.
pub const MAX_REQUEST_BYTES: usize = 8 << 10;
/// One exchange, read to close.
const EXCHANGE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// What a request head asks for (pure): `Ok(())` for `GET /metrics` (or `/`), else the
/// status line to answer with. `None` while the head is incomplete.
pub fn route(head: &[u8]) -> Option<Result<(), &'static str>> {
    let end = head.windows(4).position(|w| w == b"\r\n\r\n");
    if end.is_none() {
        return (head.len() > MAX_REQUEST_BYTES).then_some(Err("431 Request Header Fields Too Large"));
    }
    let line = head.split(|&b| b == b'\r').next().unwrap_or(&[]);
    let mut parts = line.split(|&b| b == b' ');
    let (method, path) = (parts.next().unwrap_or(&[]), parts.next().unwrap_or(&[]));
    Some(match (method, path.split(|&b| b == b'?').next().unwrap_or(&[])) {
        (b"GET", b"/metrics" | b"/") => Ok(()),
        (b"GET", _) => Err("404 Not Found"),
        _ => Err("405 Method Not Allowed"),
    })
}

pub async fn serve(listener: TcpListener, metrics: std::sync::Arc<Metrics>, cancel: CancellationToken) {
    if let Ok(a) = listener.local_addr() {
        info!(addr = %a, "Prometheus endpoint listening");
    }
    let slots = std::sync::Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        let (mut sock, _) = tokio::select! {
            _ = cancel.cancelled() => return,
            r = listener.accept() => match r {
                Ok(s) => s,
                Err(e) => { warn!(error = %e, "metrics accept failed"); continue; }
            },
        };
        // Bounded: a flood of connections costs a closed socket each, not a task each.
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            drop(sock);
            continue;
        };
        let metrics = metrics.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let _ = tokio::time::timeout(EXCHANGE_TIMEOUT, async {
                let mut head = Vec::with_capacity(512);
                let mut buf = [0u8; 1024];
                let verdict = loop {
                    match sock.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(k) => head.extend_from_slice(&buf[..k]),
                    }
                    if let Some(v) = route(&head) {
                        break v;
                    }
                };
                let resp = match verdict {
                    Ok(()) => {
                        let body = metrics.render();
                        format!(
                            "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                            body.len()
                        )
                    }
                    Err(status) => format!("HTTP/1.1 {status}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"),
                };
                let _ = sock.write_all(resp.as_bytes()).await;
                let _ = sock.shutdown().await;
            })
            .await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_prometheus_text() {
        let m = Metrics::new();
        m.uploaded(100);
        m.add_bytes(120);
        m.failure("transient");
        m.retry("HTTP 503");
        m.set_queue(3, 300, 7, 1);
        m.dropped();
        assert!(m.refused(std::path::Path::new("/out/x"), Refusal::Symlink));
        assert!(
            !m.refused(std::path::Path::new("/out/x"), Refusal::Symlink),
            "counted once"
        );
        let t = m.render();
        assert!(
            t.contains("edgemask_syncd_files_refused_total{reason=\"symlink\"} 1\n"),
            "{t}"
        );
        assert!(t.contains("edgemask_syncd_dropped_total 1\n"), "{t}");
        assert!(t.contains("edgemask_syncd_files_uploaded_total 1\n"), "{t}");
        assert!(t.contains("edgemask_syncd_bytes_sent_total 120\n"));
        assert!(t.contains("edgemask_syncd_queue_files 3\n"));
        assert!(t.contains("edgemask_syncd_oldest_pending_seconds 7\n"));
        assert!(t.contains("edgemask_syncd_failures_total{kind=\"transient\"} 1\n"));
        assert!(t.contains("edgemask_syncd_retries_total{code=\"HTTP_503\"} 1\n"));
    }

    #[test]
    fn requests_are_routed_and_bounded() {
        assert_eq!(route(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"), Some(Ok(())));
        assert_eq!(route(b"GET /?x=1 HTTP/1.0\r\n\r\n"), Some(Ok(())));
        assert_eq!(route(b"GET /metrics HTTP/1.1\r\nHost"), None, "incomplete");
        assert_eq!(
            route(b"GET /etc/passwd HTTP/1.1\r\n\r\n"),
            Some(Err("404 Not Found"))
        );
        assert_eq!(
            route(b"POST /metrics HTTP/1.1\r\n\r\n"),
            Some(Err("405 Method Not Allowed"))
        );
        let huge = [
            b"GET /metrics HTTP/1.1\r\nX: ".as_slice(),
            &vec![b'a'; MAX_REQUEST_BYTES],
        ]
        .concat();
        assert_eq!(route(&huge), Some(Err("431 Request Header Fields Too Large")));
    }

    #[tokio::test]
    async fn the_endpoint_bounds_connections_and_request_size() {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let cancel = CancellationToken::new();
        let m = std::sync::Arc::new(Metrics::new());
        tokio::spawn(serve(l, m, cancel.clone()));
        // Idle connections fill the slots; the ones beyond are closed at once.
        let mut idle = Vec::new();
        for _ in 0..MAX_CONNECTIONS {
            idle.push(tokio::net::TcpStream::connect(addr).await.unwrap());
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        let mut extra = tokio::net::TcpStream::connect(addr).await.unwrap();
        let mut b = [0u8; 16];
        let n = tokio::time::timeout(std::time::Duration::from_secs(2), extra.read(&mut b))
            .await
            .expect("an extra connection is closed at once, not held")
            .unwrap_or(0);
        assert_eq!(n, 0);
        drop(idle);
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        // A request head without end: answered 431 after MAX_REQUEST_BYTES, not read on.
        // (Exactly one byte over, so nothing is left unread to turn the close into a reset.)
        let mut big = tokio::net::TcpStream::connect(addr).await.unwrap();
        let prefix = b"GET /metrics HTTP/1.1\r\nX: ";
        big.write_all(prefix).await.unwrap();
        big.write_all(&vec![b'a'; MAX_REQUEST_BYTES + 1 - prefix.len()])
            .await
            .unwrap();
        let mut resp = String::new();
        let _ = big.read_to_string(&mut resp).await;
        assert!(resp.starts_with("HTTP/1.1 431"), "{resp}");
        // And a scrape still works.
        let mut ok = tokio::net::TcpStream::connect(addr).await.unwrap();
        ok.write_all(b"GET /metrics HTTP/1.1\r\n\r\n").await.unwrap();
        let mut resp = String::new();
        ok.read_to_string(&mut resp).await.unwrap();
        assert!(
            resp.starts_with("HTTP/1.1 200") && resp.contains("edgemask_syncd_"),
            "{resp}"
        );
        cancel.cancel();
    }
}
