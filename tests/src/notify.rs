//! The systemd side of `sd_notify`: a datagram socket that plays `NOTIFY_SOCKET`, and the
//! messages the daemon sent to it.

use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

pub struct NotifySocket {
    sock: UnixDatagram,
    pub path: PathBuf,
    /// Every message received so far, in order (`READY=1`, `STATUS=…`, `WATCHDOG=1`…).
    pub messages: Vec<String>,
}

impl NotifySocket {
    /// Binds `dir/notify.sock`, writable by any user (the daemon may run as another user).
    pub fn bind(dir: &Path) -> Self {
        let path = dir.join("notify.sock");
        let sock = UnixDatagram::bind(&path).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o777)).unwrap();
        sock.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
        Self {
            sock,
            path,
            messages: Vec::new(),
        }
    }

    /// Receives until a message line equals `line` (e.g. `READY=1`) or `limit` passes.
    pub fn wait_for(&mut self, line: &str, limit: Duration) -> bool {
        let t = Instant::now();
        if self.has(line) {
            return true;
        }
        let mut buf = vec![0u8; 4096];
        while t.elapsed() < limit {
            if let Ok(n) = self.sock.recv(&mut buf) {
                let msg = String::from_utf8_lossy(&buf[..n]).to_string();
                let hit = msg.lines().any(|l| l == line);
                self.messages.push(msg);
                if hit {
                    return true;
                }
            }
        }
        false
    }

    /// Whether any message received so far has the line `line`.
    pub fn has(&self, line: &str) -> bool {
        self.messages.iter().any(|m| m.lines().any(|l| l == line))
    }
}
