//! Bulk throughput: N streams (one thread and one connection each) moving the
//! pattern for a fixed time, over rustls or plain TCP.

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use rustix::event::{poll, PollFd, PollFlags, Timespec};
use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ClientConnection, StreamOwned};
use serde::Serialize;

use crate::conn::{connect, Conn, IO_TIMEOUT};
use crate::pattern::{pattern, CHUNK};
pub use crate::report::{Report, StreamReport};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    /// Write the pattern (pair with a sink backend).
    Send,
    /// Read and check the pattern (pair with a source backend).
    Receive,
    /// Write and read at once, checking the echo (pair with an echo backend).
    Both,
}

pub struct Config {
    pub connect: SocketAddr,
    /// `None`: plain TCP.
    pub tls: Option<(Arc<ClientConfig>, ServerName<'static>)>,
    pub streams: usize,
    pub duration: Duration,
    pub direction: Direction,
}

/// Run the test: connect every stream, then start all windows together.
pub fn run(cfg: &Config) -> Report {
    let barrier = Arc::new(Barrier::new(cfg.streams + 1));
    let handles: Vec<_> = (0..cfg.streams)
        .map(|id| {
            let (barrier, addr, tls) = (barrier.clone(), cfg.connect, cfg.tls.clone());
            let (duration, direction) = (cfg.duration, cfg.direction);
            thread::spawn(move || {
                let mut r = StreamReport {
                    id,
                    ..Default::default()
                };
                let t0 = Instant::now();
                let conn = connect(addr, tls);
                r.connect_ms = t0.elapsed().as_secs_f64() * 1e3;
                barrier.wait();
                let res = conn.and_then(|mut c| {
                    r.tls = c.describe();
                    stream(&mut c, direction, duration, &mut r)
                });
                if let Err(e) = res {
                    r.error = Some(format!("{e:#}"));
                }
                r
            })
        })
        .collect();
    barrier.wait();
    let cpu0 = crate::process_cpu_seconds();
    let streams: Vec<StreamReport> = handles
        .into_iter()
        .map(|h| h.join().expect("stream thread panicked"))
        .collect();
    Report {
        connect: cfg.connect.to_string(),
        direction: cfg.direction,
        tls: cfg.tls.is_some(),
        window_s: streams.iter().map(|s| s.window_s).fold(0.0, f64::max),
        client_cpu_s: crate::process_cpu_seconds() - cpu0,
        streams,
    }
}

fn stream(
    c: &mut Conn,
    direction: Direction,
    duration: Duration,
    r: &mut StreamReport,
) -> anyhow::Result<()> {
    let start = Instant::now();
    let deadline = start + duration;
    let mut buf = vec![0u8; CHUNK];
    match direction {
        Direction::Send => {
            while Instant::now() < deadline {
                c.write_all(pattern().slice(r.sent, CHUNK))?;
                r.sent += CHUNK as u64;
            }
            c.flush()?;
            r.window_s = start.elapsed().as_secs_f64();
            c.finish_sending().context("closing")?;
            r.close = read_to_end(c, &mut buf, r)?;
        }
        Direction::Receive => {
            while Instant::now() < deadline {
                let n = c.read(&mut buf).context("reading")?;
                if n == 0 {
                    bail!("peer closed during the window");
                }
                check(&buf[..n], r);
                r.received += n as u64;
            }
            r.window_s = start.elapsed().as_secs_f64();
            // The source never reads, so do not wait for its EOF.
            r.close = match c.finish_sending() {
                Ok(()) => "closed by client".into(),
                Err(e) => format!("closed by client ({e})"),
            };
        }
        Direction::Both => {
            match c {
                Conn::Plain(s) => plain_duplex(s, deadline, &mut buf, r)?,
                Conn::Tls(t) => tls_duplex(t, deadline, &mut buf, r)?,
            }
            r.window_s = duration.as_secs_f64();
            r.close = "eof".into();
            let got = r.received + r.drained;
            if r.sent != got {
                bail!("echo incomplete: sent {} bytes, got {got} back", r.sent);
            }
        }
    }
    Ok(())
}

/// Drain the connection after we stopped sending; describes how it ended.
fn read_to_end(c: &mut Conn, buf: &mut [u8], r: &mut StreamReport) -> anyhow::Result<String> {
    loop {
        match c.read(buf) {
            Ok(0) if matches!(c, Conn::Tls(_)) => return Ok("eof after close_notify".into()),
            Ok(0) => return Ok("eof".into()),
            Ok(n) => r.drained += n as u64,
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                return Ok("eof WITHOUT close_notify".into())
            }
            Err(e) => return Err(e).context("waiting for the peer to close"),
        }
    }
}

fn check(data: &[u8], r: &mut StreamReport) {
    let offset = r.received + r.drained;
    if r.corrupt_at.is_none() && !pattern().matches(offset, data) {
        r.corrupt_at = Some(offset);
    }
}

fn record_read(data: &[u8], sending: bool, r: &mut StreamReport) {
    check(data, r);
    if sending {
        r.received += data.len() as u64;
    } else {
        r.drained += data.len() as u64;
    }
}

/// Both directions on plain TCP: a writer thread on a clone of the socket.
fn plain_duplex(
    s: &mut TcpStream,
    deadline: Instant,
    buf: &mut [u8],
    r: &mut StreamReport,
) -> anyhow::Result<()> {
    let mut w = s.try_clone()?;
    let writer = thread::spawn(move || -> io::Result<u64> {
        let mut sent = 0;
        while Instant::now() < deadline {
            w.write_all(pattern().slice(sent, CHUNK))?;
            sent += CHUNK as u64;
        }
        w.shutdown(Shutdown::Write)?;
        Ok(sent)
    });
    loop {
        let n = s.read(buf).context("reading")?;
        if n == 0 {
            break;
        }
        record_read(&buf[..n], Instant::now() < deadline, r);
    }
    r.sent = writer
        .join()
        .expect("writer thread panicked")
        .context("writing")?;
    Ok(())
}

/// Both directions on one rustls connection: a non-blocking poll(2) loop.
fn tls_duplex(
    t: &mut StreamOwned<ClientConnection, TcpStream>,
    deadline: Instant,
    buf: &mut [u8],
    r: &mut StreamReport,
) -> anyhow::Result<()> {
    let (conn, sock) = (&mut t.conn, &mut t.sock);
    sock.set_nonblocking(true)?;
    let would_block = |e: &io::Error| e.kind() == io::ErrorKind::WouldBlock;
    let (mut sending, mut shut, mut last_progress) = (true, false, Instant::now());
    loop {
        let mut progress = false;
        if sending && Instant::now() >= deadline {
            conn.send_close_notify();
            sending = false;
        }
        if sending {
            let n = conn.writer().write(pattern().slice(r.sent, CHUNK))?;
            r.sent += n as u64;
            progress |= n > 0;
        }
        while conn.wants_write() {
            match conn.write_tls(sock) {
                Ok(n) => progress |= n > 0,
                Err(e) if would_block(&e) => break,
                Err(e) => return Err(e).context("writing"),
            }
        }
        if !sending && !shut && !conn.wants_write() {
            sock.shutdown(Shutdown::Write)?;
            shut = true;
        }
        match conn.read_tls(sock) {
            Ok(_) => {
                progress = true;
                conn.process_new_packets().context("TLS")?;
            }
            Err(e) if would_block(&e) => {}
            Err(e) => return Err(e).context("reading"),
        }
        loop {
            match conn.reader().read(buf) {
                Ok(0) if !sending => return Ok(()),
                Ok(0) => bail!("peer closed during the window"),
                Ok(n) => record_read(&buf[..n], sending, r),
                Err(e) if would_block(&e) => break,
                Err(e) => return Err(e).context("reading"),
            }
        }
        if progress {
            last_progress = Instant::now();
            continue;
        }
        if last_progress.elapsed() > IO_TIMEOUT {
            bail!("stalled for {IO_TIMEOUT:?}");
        }
        let mut flags = PollFlags::IN;
        if sending || conn.wants_write() {
            flags |= PollFlags::OUT;
        }
        let wait = Timespec {
            tv_sec: 0,
            tv_nsec: 100_000_000,
        };
        let _ = poll(&mut [PollFd::new(&*sock, flags)], Some(&wait));
    }
}
