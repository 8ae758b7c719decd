//! Plaintext TCP backend: one thread per connection.

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::thread;

use crate::pattern::{pattern, CHUNK};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Write back what is read; half-close on EOF.
    Echo,
    /// Read and discard (checking the pattern).
    Sink,
    /// Write the pattern until the peer goes away.
    Source,
}

/// Totals over all connections, for in-process callers (tests).
#[derive(Debug, Default)]
pub struct Stats {
    pub connections: AtomicU64,
    pub bytes_in: AtomicU64,
    pub bytes_out: AtomicU64,
    /// Sink connections whose input was not the pattern.
    pub pattern_errors: AtomicU64,
}

pub struct Backend {
    listener: TcpListener,
    mode: Mode,
    verbose: bool,
    stats: Arc<Stats>,
}

impl Backend {
    pub fn bind(addr: &str, mode: Mode) -> io::Result<Self> {
        Ok(Self {
            listener: TcpListener::bind(addr)?,
            mode,
            verbose: false,
            stats: Arc::default(),
        })
    }

    /// Log one line per closed connection on stderr.
    pub fn verbose(mut self, on: bool) -> Self {
        self.verbose = on;
        self
    }

    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    pub fn stats(&self) -> Arc<Stats> {
        self.stats.clone()
    }

    /// Accept forever.
    pub fn run(self) -> io::Result<()> {
        for sock in self.listener.incoming() {
            let sock = match sock {
                Ok(s) => s,
                Err(e) => {
                    eprintln!("accept: {e}");
                    continue;
                }
            };
            let (mode, verbose, stats) = (self.mode, self.verbose, self.stats.clone());
            thread::spawn(move || serve(sock, mode, verbose, &stats));
        }
        Ok(())
    }

    /// Run on a background thread; returns the bound address.
    pub fn spawn(self) -> io::Result<SocketAddr> {
        let addr = self.local_addr()?;
        thread::spawn(move || self.run());
        Ok(addr)
    }
}

#[derive(Default)]
struct Counts {
    bytes_in: u64,
    bytes_out: u64,
    bad_at: Option<u64>,
}

fn serve(mut sock: TcpStream, mode: Mode, verbose: bool, stats: &Stats) {
    stats.connections.fetch_add(1, Relaxed);
    let peer = sock.peer_addr().map(|a| a.to_string()).unwrap_or_default();
    let mut c = Counts::default();
    let res = match mode {
        Mode::Echo => echo(&mut sock, &mut c),
        Mode::Sink => sink(&mut sock, &mut c),
        Mode::Source => source(&mut sock, &mut c),
    };
    stats.bytes_in.fetch_add(c.bytes_in, Relaxed);
    stats.bytes_out.fetch_add(c.bytes_out, Relaxed);
    if c.bad_at.is_some() {
        stats.pattern_errors.fetch_add(1, Relaxed);
    }
    if verbose {
        let check = match (mode, c.bad_at) {
            (Mode::Sink, None) => "pattern=ok".to_string(),
            (Mode::Sink, Some(at)) => format!("pattern=MISMATCH@{at}"),
            _ => String::new(),
        };
        let end = match res {
            Ok(()) => "eof".to_string(),
            Err(e) => format!("error: {e}"),
        };
        eprintln!(
            "closed {peer} {mode:?} in={} out={} {check} {end}",
            c.bytes_in, c.bytes_out
        );
    }
}

fn echo(sock: &mut TcpStream, c: &mut Counts) -> io::Result<()> {
    let mut buf = vec![0u8; CHUNK];
    loop {
        let n = sock.read(&mut buf)?;
        if n == 0 {
            return sock.shutdown(Shutdown::Write);
        }
        c.bytes_in += n as u64;
        sock.write_all(&buf[..n])?;
        c.bytes_out += n as u64;
    }
}

fn sink(sock: &mut TcpStream, c: &mut Counts) -> io::Result<()> {
    let mut buf = vec![0u8; CHUNK];
    loop {
        let n = sock.read(&mut buf)?;
        if n == 0 {
            return Ok(());
        }
        if c.bad_at.is_none() && !pattern().matches(c.bytes_in, &buf[..n]) {
            c.bad_at = Some(c.bytes_in);
        }
        c.bytes_in += n as u64;
    }
}

/// Ends with an error (EPIPE, ECONNRESET) when the peer closes: that is the normal end.
fn source(sock: &mut TcpStream, c: &mut Counts) -> io::Result<()> {
    loop {
        let n = sock.write(pattern().slice(c.bytes_out, CHUNK))?;
        c.bytes_out += n as u64;
    }
}
