//! The admin endpoint (`[global] admin`): HTTP/1.x on a TCP address or a Unix socket.
//!
//! - `GET /metrics`: every worker's counters in the Prometheus text format
//!   ([`super::metrics::render`]);
//! - `GET /ready`: 200 while serving, 503 once shutdown began (for load balancer checks:
//!   with `shutdown_delay`, it turns 503 while the listeners still accept);
//! - `GET /live`: 200 while the process runs.
//!
//! One thread serves one request per connection, in turn, with short timeouts: a scrape is
//! small and rare, and a client that stalls holds the endpoint for at most a second.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::os::unix::net::UnixListener;
use std::path::PathBuf;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use tracing::debug;

use super::metrics::{render, Registry};

/// Largest request head read (request line and headers).
const MAX_REQUEST: usize = 8 * 1024;
const READ_TIMEOUT: Duration = Duration::from_secs(1);
const WRITE_TIMEOUT: Duration = Duration::from_secs(5);
/// Permission bits of a Unix admin socket: the owner and its group may connect.
pub const SOCKET_MODE: u32 = 0o660;

/// Where the endpoint listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AdminAddr {
    Tcp(SocketAddr),
    Unix(PathBuf),
}

/// A bound admin endpoint, not yet serving.
pub enum AdminListener {
    Tcp(TcpListener),
    Unix(UnixListener),
}

impl AdminListener {
    pub fn bind(addr: &AdminAddr) -> io::Result<AdminListener> {
        Ok(match addr {
            AdminAddr::Tcp(a) => AdminListener::Tcp(TcpListener::bind(a)?),
            AdminAddr::Unix(path) => {
                AdminListener::Unix(crate::route::identity::bind(path, SOCKET_MODE)?)
            }
        })
    }

    /// The bound address, for the log (port 0 resolved).
    pub fn describe(&self) -> String {
        match self {
            AdminListener::Tcp(l) => l
                .local_addr()
                .map(|a| a.to_string())
                .unwrap_or_else(|_| "?".into()),
            AdminListener::Unix(l) => l
                .local_addr()
                .ok()
                .and_then(|a| a.as_pathname().map(|p| p.display().to_string()))
                .unwrap_or_else(|| "?".into()),
        }
    }
}

/// Serves the endpoint from its own thread until the process exits.
pub fn spawn(listener: AdminListener, registry: Arc<Registry>) -> io::Result<()> {
    std::thread::Builder::new()
        .name("tlsfront-admin".into())
        .spawn(move || loop {
            let result = match &listener {
                AdminListener::Tcp(l) => l.accept().map(|(s, _)| {
                    let _ = s.set_read_timeout(Some(READ_TIMEOUT));
                    let _ = s.set_write_timeout(Some(WRITE_TIMEOUT));
                    serve(s, &registry)
                }),
                AdminListener::Unix(l) => l.accept().map(|(s, _)| {
                    let _ = s.set_read_timeout(Some(READ_TIMEOUT));
                    let _ = s.set_write_timeout(Some(WRITE_TIMEOUT));
                    serve(s, &registry)
                }),
            };
            match result {
                Ok(Err(e)) => debug!(error = %e, "admin request failed"),
                Err(e) => {
                    debug!(error = %e, "admin accept failed");
                    // Out of descriptors, say: do not spin.
                    std::thread::sleep(Duration::from_millis(100));
                }
                Ok(Ok(())) => {}
            }
        })
        .map(|_| ())
}

/// Reads one request head and answers it; the connection then closes.
fn serve(mut stream: impl Read + Write, registry: &Registry) -> io::Result<()> {
    let mut head = Vec::with_capacity(512);
    let mut chunk = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && !head.windows(2).any(|w| w == b"\n\n") {
        if head.len() >= MAX_REQUEST {
            return respond(
                &mut stream,
                431,
                "text/plain",
                b"request head too large\n",
                true,
            );
        }
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            return Ok(()); // gone before finishing the request
        }
        head.extend_from_slice(&chunk[..n]);
    }
    let line = head.split(|b| *b == b'\n').next().unwrap_or_default();
    let line = String::from_utf8_lossy(line);
    let mut parts = line.trim_end().split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return respond(&mut stream, 400, "text/plain", b"bad request line\n", true);
    };
    if !version.starts_with("HTTP/1.") {
        return respond(&mut stream, 400, "text/plain", b"HTTP/1.x only\n", true);
    }
    let body = method == "GET";
    if !body && method != "HEAD" {
        return respond(&mut stream, 405, "text/plain", b"GET or HEAD\n", true);
    }
    let path = target.split('?').next().unwrap_or_default();
    let process = &registry.process;
    match path {
        "/metrics" => respond(
            &mut stream,
            200,
            "text/plain; version=0.0.4; charset=utf-8",
            render(registry).as_bytes(),
            body,
        ),
        "/ready" if process.ready.load(Relaxed) => {
            respond(&mut stream, 200, "text/plain", b"ready\n", body)
        }
        "/ready" if process.draining.load(Relaxed) => {
            respond(&mut stream, 503, "text/plain", b"draining\n", body)
        }
        "/ready" => respond(&mut stream, 503, "text/plain", b"starting\n", body),
        "/live" => respond(&mut stream, 200, "text/plain", b"live\n", body),
        _ => respond(
            &mut stream,
            404,
            "text/plain",
            b"not found: /metrics, /ready, /live\n",
            body,
        ),
    }
}

fn respond(
    stream: &mut impl Write,
    status: u16,
    content_type: &str,
    body: &[u8],
    with_body: bool,
) -> io::Result<()> {
    let reason = match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        431 => "Request Header Fields Too Large",
        _ => "Service Unavailable",
    };
    let mut out = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    if status == 405 {
        out.push_str("Allow: GET, HEAD\r\n");
    }
    out.push_str("\r\n");
    let mut bytes = out.into_bytes();
    if with_body {
        bytes.extend_from_slice(body);
    }
    stream.write_all(&bytes)?;
    stream.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A request and the response bytes, in memory.
    struct Exchange {
        request: io::Cursor<Vec<u8>>,
        response: Vec<u8>,
    }

    impl Read for Exchange {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            self.request.read(buf)
        }
    }

    impl Write for Exchange {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.response.write(buf)
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    fn ask(registry: &Registry, request: &[u8]) -> String {
        let mut ex = Exchange {
            request: io::Cursor::new(request.to_vec()),
            response: Vec::new(),
        };
        serve(&mut ex, registry).unwrap();
        String::from_utf8(ex.response).unwrap()
    }

    #[test]
    fn ready_follows_the_process_state() {
        let r = Registry::default();
        assert!(ask(&r, b"GET /ready HTTP/1.1\r\n\r\n").starts_with("HTTP/1.1 503 "));
        r.process.ready.store(true, Relaxed);
        assert!(ask(&r, b"GET /ready HTTP/1.1\r\nHost: x\r\n\r\n").starts_with("HTTP/1.1 200 "));
        r.process.ready.store(false, Relaxed);
        r.process.draining.store(true, Relaxed);
        let draining = ask(&r, b"GET /ready?verbose=1 HTTP/1.0\n\n");
        assert!(
            draining.starts_with("HTTP/1.1 503 ") && draining.ends_with("draining\n"),
            "{draining}"
        );
        assert!(ask(&r, b"GET /live HTTP/1.1\r\n\r\n").starts_with("HTTP/1.1 200 "));
    }

    #[test]
    fn bad_requests_get_an_http_error() {
        let r = Registry::default();
        assert!(ask(&r, b"POST /metrics HTTP/1.1\r\n\r\n").starts_with("HTTP/1.1 405 "));
        assert!(ask(&r, b"GET /nope HTTP/1.1\r\n\r\n").starts_with("HTTP/1.1 404 "));
        assert!(ask(&r, b"\x16\x03\x01\x00\r\n\r\n").starts_with("HTTP/1.1 400 "));
        assert!(ask(&r, b"GET /metrics SPDY/3\r\n\r\n").starts_with("HTTP/1.1 400 "));
        let huge = [b'a'; MAX_REQUEST + 10];
        assert!(ask(&r, &huge).starts_with("HTTP/1.1 431 "));
        let head = ask(&r, b"HEAD /metrics HTTP/1.1\r\n\r\n");
        assert!(
            head.ends_with("\r\n\r\n") && head.contains("Content-Length: "),
            "{head}"
        );
        assert_eq!(
            ask(&r, b"GET /live HTTP/1.1\r\n"),
            "",
            "an unfinished head is not answered"
        );
    }
}
