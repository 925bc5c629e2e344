//! A small fault-injecting TCP proxy for the outage test: pass, drop (reset every new
//! connection), answer 503 SlowDown to a share of connections, or reset connections in the
//! middle of a request body.

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
    /// 20 % of new connections get `503 SlowDown`.
    Some503 = 2,
    /// 30 % of new connections are reset after 64 KiB..1 MiB of request bytes.
    ResetMidBody = 3,
}

pub struct Proxy {
    pub port: u16,
    mode: Arc<AtomicU8>,
    stop: Arc<AtomicBool>,
    pub injected: Arc<AtomicU64>,
}

impl Proxy {
    pub fn start(upstream: u16) -> Proxy {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        l.set_nonblocking(true).unwrap();
        let mode = Arc::new(AtomicU8::new(Mode::Pass as u8));
        let stop = Arc::new(AtomicBool::new(false));
        let injected = Arc::new(AtomicU64::new(0));
        let (m, s, inj) = (mode.clone(), stop.clone(), injected.clone());
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
                let inj = inj.clone();
                std::thread::spawn(move || handle(client, upstream, mode, roll, n, &inj));
            }
        });
        Proxy {
            port,
            mode,
            stop,
            injected,
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

fn handle(mut client: TcpStream, upstream: u16, mode: u8, roll: u64, n: u64, injected: &AtomicU64) {
    let _ = client.set_read_timeout(Some(Duration::from_secs(30)));
    if mode == Mode::Down as u8 {
        injected.fetch_add(1, Ordering::Relaxed);
        reset(&client);
        return;
    }
    if mode == Mode::Some503 as u8 && roll < 20 {
        injected.fetch_add(1, Ordering::Relaxed);
        // Read the request head, answer 503 SlowDown, close.
        let mut buf = [0u8; 8192];
        let mut head = Vec::new();
        while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 65536 {
            match client.read(&mut buf) {
                Ok(0) | Err(_) => return,
                Ok(k) => head.extend_from_slice(&buf[..k]),
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
    let cut = if mode == Mode::ResetMidBody as u8 && roll < 30 {
        Some(65536 + (n * 7919 % (1 << 20)))
    } else {
        None
    };
    let (mut c2, mut s2) = (client.try_clone().unwrap(), server.try_clone().unwrap());
    let down = std::thread::spawn(move || {
        let _ = std::io::copy(&mut s2, &mut c2);
        let _ = c2.shutdown(Shutdown::Write);
    });
    let (mut c, mut s) = (client, server);
    let mut buf = vec![0u8; 65536];
    let mut sent = 0u64;
    loop {
        let k = match c.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(k) => k,
        };
        if let Some(cut) = cut
            && sent + k as u64 > cut
        {
            injected.fetch_add(1, Ordering::Relaxed);
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
