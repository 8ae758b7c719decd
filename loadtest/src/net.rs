//! Client connections on a worker thread's tokio runtime: plain TCP or rustls over TCP,
//! and short error reasons for the report.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use rustls::pki_types::ServerName;
use rustls::{ClientConfig, HandshakeKind};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::timeout;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

use crate::tls::Negotiated;

/// Where to connect and how.
#[derive(Clone)]
pub struct Dialer {
    pub addr: SocketAddr,
    /// `None`: plain TCP.
    pub tls: Option<(TlsConnector, ServerName<'static>)>,
    pub timeout: Duration,
}

impl Dialer {
    pub fn new(
        addr: SocketAddr,
        tls: Option<(Arc<ClientConfig>, ServerName<'static>)>,
        timeout: Duration,
    ) -> Self {
        Self {
            addr,
            tls: tls.map(|(c, n)| (TlsConnector::from(c), n)),
            timeout,
        }
    }

    /// TCP connect, then the TLS handshake; both within `timeout` each.
    pub async fn connect(&self) -> Result<Conn, Failure> {
        let tcp = match timeout(self.timeout, TcpStream::connect(self.addr)).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => return Err(Failure::io("connect", &e)),
            Err(_) => return Err(Failure::new("connect: timed out", "connect timed out")),
        };
        let _ = tcp.set_nodelay(true);
        let Some((connector, name)) = &self.tls else {
            return Ok(Conn {
                stream: Stream::Plain(tcp),
                negotiated: None,
                resumed: false,
            });
        };
        let tls = match timeout(self.timeout, connector.connect(name.clone(), tcp)).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => return Err(Failure::io("tls", &e)),
            Err(_) => {
                return Err(Failure::new(
                    "tls: handshake timed out",
                    "handshake timed out",
                ))
            }
        };
        let (_, c) = tls.get_ref();
        Ok(Conn {
            negotiated: Some(Negotiated::of(c)),
            resumed: c.handshake_kind() == Some(HandshakeKind::Resumed),
            stream: Stream::Tls(Box::new(tls)),
        })
    }
}

pub struct Conn {
    pub stream: Stream,
    pub negotiated: Option<Negotiated>,
    pub resumed: bool,
}

/// Why an operation failed: a short `reason` to count by, and the full `detail`.
#[derive(Clone, Debug)]
pub struct Failure {
    pub reason: String,
    pub detail: String,
}

impl Failure {
    pub fn new(reason: impl Into<String>, detail: impl Into<String>) -> Self {
        Self {
            reason: reason.into(),
            detail: detail.into(),
        }
    }

    /// Classify an I/O error from stage `stage` (connect, tls, read, write).
    pub fn io(stage: &str, e: &io::Error) -> Self {
        let reason = match e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) {
            Some(rustls::Error::InvalidCertificate(c)) => {
                format!("{stage}: invalid certificate ({c:?})")
            }
            Some(rustls::Error::AlertReceived(a)) => format!("{stage}: alert received ({a:?})"),
            Some(rustls::Error::PeerIncompatible(p)) => format!("{stage}: incompatible ({p:?})"),
            Some(other) => format!("{stage}: {other}"),
            None => match e.kind() {
                io::ErrorKind::ConnectionRefused => format!("{stage}: connection refused"),
                io::ErrorKind::ConnectionReset => format!("{stage}: connection reset"),
                io::ErrorKind::UnexpectedEof => format!("{stage}: closed by peer"),
                io::ErrorKind::TimedOut => format!("{stage}: timed out"),
                io::ErrorKind::BrokenPipe => format!("{stage}: broken pipe"),
                io::ErrorKind::AddrNotAvailable => {
                    format!("{stage}: no free local port (client TIME_WAIT; see README)")
                }
                kind => match e.raw_os_error() {
                    // EMFILE, ENFILE, ENOBUFS...: the system's own words, without the number.
                    Some(code) => {
                        let text = io::Error::from_raw_os_error(code).to_string();
                        let text = text.split(" (os error").next().unwrap_or(&text);
                        format!("{stage}: {}", text.to_lowercase())
                    }
                    None => format!("{stage}: {kind}"),
                },
            },
        };
        Self {
            reason,
            detail: format!("{stage}: {e}"),
        }
    }
}

/// End a connection politely within `limit`: send close_notify, read until the peer closes
/// (which also takes in TLS 1.3 session tickets), then close. The TCP FIN goes out only
/// after the peer's, so TIME_WAIT stays on the server side and a long handshake run does not
/// use up the client's local ports. Plain TCP has no close_notify: FIN first.
pub async fn close(mut stream: Stream, limit: Duration) {
    let _ = timeout(limit, async {
        let sent = match &mut stream {
            Stream::Tls(tls) => {
                tls.get_mut().1.send_close_notify();
                tls.flush().await
            }
            Stream::Plain(tcp) => tcp.shutdown().await,
        };
        if sent.is_err() {
            return;
        }
        let mut buf = [0u8; 512];
        while let Ok(n) = stream.read(&mut buf).await {
            if n == 0 {
                break;
            }
        }
    })
    .await;
}

pub enum Stream {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(&mut **s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(&mut **s).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(&mut **s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(&mut **s).poll_shutdown(cx),
        }
    }
}
