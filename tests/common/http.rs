//! A minimal HTTP/1.1 client over std's TcpStream (loopback only) and a guard
//! for an `ablate serve` process. Include with `#[path = "common/http.rs"] mod http;`.

#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::time::{Duration, Instant};

use crate::common::{Bg, Ws};

/// A response: status code, raw header block and body.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub headers: String,
    pub body: String,
}

/// Sends `GET target` exactly as given (no normalisation, so `..` reaches the server).
pub fn get(addr: SocketAddr, target: &str) -> std::io::Result<Response> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(10))?;
    stream.set_read_timeout(Some(Duration::from_secs(60)))?;
    write!(stream, "GET {target} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n")?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw)?;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let body = if head.to_ascii_lowercase().contains("transfer-encoding: chunked") { dechunk(body) } else { body.to_owned() };
    Ok(Response { status, headers: head.to_owned(), body })
}

fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else { break };
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        body = rest[n..].trim_start_matches("\r\n");
    }
    out
}

/// `get` that must succeed at the transport level.
#[track_caller]
pub fn fetch(addr: SocketAddr, target: &str) -> Response {
    get(addr, target).unwrap_or_else(|e| panic!("GET {target}: {e}"))
}

/// A running `ablate serve`, killed when dropped.
pub struct Server {
    bg: Option<Bg>,
    pub addr: SocketAddr,
}

impl Server {
    /// Starts `ablate serve --port 0` on the test's workspace and waits for its address.
    #[track_caller]
    pub fn start(ws: &Ws, dashboards: &Path) -> Server {
        Server::start_with(ws, dashboards, &[])
    }

    /// [`Server::start`] with more arguments for `ablate serve`.
    #[track_caller]
    pub fn start_with(ws: &Ws, dashboards: &Path, args: &[&str]) -> Server {
        let mut argv = vec!["serve", "--port", "0", "--dashboards", dashboards.to_str().unwrap()];
        argv.extend_from_slice(args);
        let mut bg = ws.spawn(&argv);
        let start = Instant::now();
        let out_file = ws.root().join("logs");
        loop {
            let text: String = std::fs::read_dir(&out_file)
                .unwrap()
                .flatten()
                .filter(|e| e.file_name().to_string_lossy().ends_with(".out"))
                .map(|e| std::fs::read_to_string(e.path()).unwrap_or_default())
                .collect();
            if let Some(rest) = text.split("listening on http://").nth(1) {
                let addr = rest.split('/').next().unwrap().parse().expect("server address");
                return Server { bg: Some(bg), addr };
            }
            if let Ok(Some(status)) = bg.child.try_wait() {
                panic!("ablate serve exited with {status}");
            }
            assert!(start.elapsed() < Duration::from_secs(30), "ablate serve did not start listening");
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    /// Whether the process is still running.
    pub fn alive(&mut self) -> bool {
        self.bg.as_mut().is_some_and(|b| b.child.try_wait().ok().flatten().is_none())
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut bg) = self.bg.take() {
            let _ = bg.child.kill();
            let _ = bg.child.wait();
        }
    }
}
