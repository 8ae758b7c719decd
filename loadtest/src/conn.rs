//! One client connection: plain TCP or rustls over TCP, with blocking I/O.

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ClientConnection, StreamOwned};

/// Longest a single read, write or connect may block before the stream fails.
pub const IO_TIMEOUT: Duration = Duration::from_secs(10);

pub enum Conn {
    Plain(TcpStream),
    Tls(Box<StreamOwned<ClientConnection, TcpStream>>),
}

impl Conn {
    pub fn describe(&self) -> Option<String> {
        let Conn::Tls(t) = self else { return None };
        let v = t.conn.protocol_version()?;
        let s = t.conn.negotiated_cipher_suite()?;
        Some(format!("{v:?} {:?}", s.suite()))
    }

    pub fn sock(&self) -> &TcpStream {
        match self {
            Conn::Plain(s) => s,
            Conn::Tls(t) => &t.sock,
        }
    }

    /// Stop sending: close_notify (TLS), then TCP half-close.
    pub fn finish_sending(&mut self) -> io::Result<()> {
        if let Conn::Tls(t) = self {
            t.conn.send_close_notify();
            t.flush()?;
        }
        self.sock().shutdown(Shutdown::Write)
    }
}

impl Read for Conn {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Conn::Plain(s) => s.read(buf),
            Conn::Tls(t) => t.read(buf),
        }
    }
}

impl Write for Conn {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Conn::Plain(s) => s.write(buf),
            Conn::Tls(t) => t.write(buf),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        match self {
            Conn::Plain(s) => s.flush(),
            Conn::Tls(t) => t.flush(),
        }
    }
}

pub fn connect(
    addr: SocketAddr,
    tls: Option<(Arc<ClientConfig>, ServerName<'static>)>,
) -> anyhow::Result<Conn> {
    let mut sock =
        TcpStream::connect_timeout(&addr, IO_TIMEOUT).with_context(|| format!("connect {addr}"))?;
    sock.set_nodelay(true)?;
    sock.set_read_timeout(Some(IO_TIMEOUT))?;
    sock.set_write_timeout(Some(IO_TIMEOUT))?;
    let Some((config, name)) = tls else {
        return Ok(Conn::Plain(sock));
    };
    let mut conn = ClientConnection::new(config, name)?;
    while conn.is_handshaking() {
        conn.complete_io(&mut sock).context("TLS handshake")?;
    }
    Ok(Conn::Tls(Box::new(StreamOwned::new(conn, sock))))
}
