//! Plaintext TCP backend for load tests: echo, sink or source, thread-per-core.
//!
//! Each worker is an OS thread pinned to one core, running its own current-thread
//! tokio runtime and its own SO_REUSEPORT listener on the same address, so the kernel
//! spreads connections over the workers and nothing but [`Stats`] is shared.
//!
//! Invariants:
//! - An idle connection holds no I/O buffer: it waits for readability, then borrows a
//!   [`CHUNK`] buffer from its worker's pool and gives it back once the socket would
//!   block, so tens of thousands of idle connections stay cheap.
//! - Echo writes a chunk back before reading the next one (order and backpressure).
//! - A connection's counts reach [`Stats`] before its socket is shut down or closed,
//!   so a client that has seen the backend's EOF reads complete stats.

use std::cell::RefCell;
use std::io;
use std::net::{SocketAddr, ToSocketAddrs};
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{mpsc, Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use core_affinity::CoreId;
use socket2::{Domain, Protocol, Socket, Type};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::LocalSet;

use crate::pattern::{pattern, CHUNK};

const BACKLOG: i32 = 4096;
/// Reads per readiness wake-up before yielding: `try_read` does not consume tokio's
/// cooperative budget, so a connection fed faster than it reads would otherwise
/// starve every other connection (and the accept loop) of its worker.
const BURST: usize = 16;
/// Buffers a worker keeps for reuse. Extra ones are freed, so a burst of busy
/// connections does not pin its peak memory for the rest of the run.
const POOL_MAX: usize = 64;
/// Accept errors such as EMFILE persist while the queue stays readable: back off
/// instead of spinning on them.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(10);
const ACCEPT_LOG_EVERY: Duration = Duration::from_secs(1);

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
    /// The first worker's listener, bound early so port 0 is resolved and bind errors
    /// surface in [`Backend::bind`].
    listener: std::net::TcpListener,
    mode: Mode,
    threads: usize,
    cpus: Vec<usize>,
    delay: Option<Duration>,
    delay_every: u64,
    /// Per instance, not global, so independent backends (tests) do not shift each
    /// other's every-n-th schedule.
    delay_count: Arc<AtomicU64>,
    verbose: bool,
    stats: Arc<Stats>,
}

impl Backend {
    /// Binds the first listener now (so port 0 is resolved and errors surface here).
    pub fn bind(addr: &str, mode: Mode) -> io::Result<Self> {
        let mut last_err = None;
        for a in addr.to_socket_addrs()? {
            match listen_socket(a, true) {
                Ok(listener) => {
                    return Ok(Self {
                        listener,
                        mode,
                        threads: thread::available_parallelism().map_or(1, |n| n.get()),
                        cpus: Vec::new(),
                        delay: None,
                        delay_every: 1,
                        delay_count: Arc::default(),
                        verbose: false,
                        stats: Arc::default(),
                    })
                }
                Err(e) => last_err = Some(e),
            }
        }
        Err(last_err.unwrap_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{addr}: resolves to no address"),
            )
        }))
    }

    /// Worker threads (default: std::thread::available_parallelism()).
    pub fn threads(mut self, n: usize) -> Self {
        self.threads = n.max(1);
        self
    }

    /// Pin worker i to cpus[i % len] instead of core i % ncpus.
    pub fn cpus(mut self, cpus: Vec<usize>) -> Self {
        self.cpus = cpus;
        self
    }

    /// Echo only: hold a chunk that was read for `d` before writing it back.
    pub fn delay(mut self, d: Duration) -> Self {
        self.delay = Some(d);
        self
    }

    /// With delay: only every n-th chunk read (counted over the whole backend,
    /// 1 = every chunk; default 1).
    pub fn delay_every(mut self, n: u64) -> Self {
        self.delay_every = n.max(1);
        self
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

    /// Start the workers and block forever (returns only on a setup error).
    pub fn run(self) -> io::Result<()> {
        let (_, workers) = self.start()?;
        for w in workers {
            // A worker only ends by panicking; the others keep serving.
            let _ = w.join();
        }
        Err(io::Error::other("all backend workers exited"))
    }

    /// Start the workers in the background; returns the bound address.
    pub fn spawn(self) -> io::Result<SocketAddr> {
        let (addr, _) = self.start()?;
        Ok(addr)
    }

    /// Starts every worker, or none: each reports its setup, and only when all
    /// succeeded are they told to serve; otherwise they exit and close their listeners.
    fn start(self) -> io::Result<(SocketAddr, Vec<thread::JoinHandle<()>>)> {
        let addr = self.listener.local_addr()?;
        let cores: Vec<CoreId> = if self.cpus.is_empty() {
            core_affinity::get_core_ids().unwrap_or_default()
        } else {
            self.cpus.iter().map(|&id| CoreId { id }).collect()
        };
        let shared = Arc::new(Shared {
            mode: self.mode,
            delay: self.delay.filter(|_| self.mode == Mode::Echo),
            delay_every: self.delay_every,
            delay_count: self.delay_count,
            verbose: self.verbose,
            stats: self.stats,
            accept_log: Mutex::default(),
        });
        let (ready_tx, ready_rx) = mpsc::channel();
        let mut go = Vec::with_capacity(self.threads);
        let mut handles = Vec::with_capacity(self.threads);
        let mut first = Some(self.listener);
        for i in 0..self.threads {
            let core = if cores.is_empty() {
                None
            } else {
                Some(cores[i % cores.len()])
            };
            let (go_tx, go_rx) = mpsc::channel();
            go.push(go_tx);
            let setup = WorkerSetup {
                core,
                listener: first.take(),
                addr,
                shared: shared.clone(),
                ready: ready_tx.clone(),
                go: go_rx,
            };
            handles.push(
                thread::Builder::new()
                    .name(format!("backend-{i}"))
                    .spawn(move || worker(setup))?,
            );
        }
        drop(ready_tx);
        for _ in 0..self.threads {
            match ready_rx.recv() {
                Ok(Ok(())) => {}
                Ok(Err(e)) => return Err(e),
                Err(_) => return Err(io::Error::other("backend worker died during setup")),
            }
        }
        for g in go {
            let _ = g.send(());
        }
        Ok((addr, handles))
    }
}

/// A nonblocking listener that other workers can bind to the same address.
///
/// The first one (`exclusive`) gets SO_REUSEPORT only after bind: the bind then still
/// fails on a port some other backend holds (as a plain bind would), instead of
/// silently splitting connections with it, while setting it before listen() still
/// makes the later workers' sockets join its load-balancing group (Linux).
fn listen_socket(addr: SocketAddr, exclusive: bool) -> io::Result<std::net::TcpListener> {
    let sock = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    sock.set_reuse_address(true)?;
    if exclusive {
        sock.bind(&addr.into())?;
        sock.set_reuse_port(true)?;
    } else {
        sock.set_reuse_port(true)?;
        sock.bind(&addr.into())?;
    }
    sock.listen(BACKLOG)?;
    sock.set_nonblocking(true)?;
    Ok(sock.into())
}

/// Configuration shared by all workers of one backend.
struct Shared {
    mode: Mode,
    delay: Option<Duration>,
    delay_every: u64,
    delay_count: Arc<AtomicU64>,
    verbose: bool,
    stats: Arc<Stats>,
    accept_log: Mutex<AcceptLog>,
}

#[derive(Default)]
struct AcceptLog {
    last: Option<Instant>,
    suppressed: u64,
}

impl Shared {
    /// Echo delay: the counter spans all workers so "every n-th chunk" holds for the
    /// backend as a whole, whatever worker a connection landed on.
    async fn pace(&self) {
        if let Some(d) = self.delay {
            let k = self.delay_count.fetch_add(1, Relaxed) + 1;
            if k.is_multiple_of(self.delay_every) {
                tokio::time::sleep(d).await;
            }
        }
    }

    /// At most one line per second over all workers: under fd exhaustion every
    /// accept fails and the log would otherwise drown everything else.
    fn log_accept_error(&self, e: &io::Error) {
        let mut log = self.accept_log.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        if log
            .last
            .is_some_and(|t| now.duration_since(t) < ACCEPT_LOG_EVERY)
        {
            log.suppressed += 1;
            return;
        }
        if log.suppressed > 0 {
            eprintln!("accept: {e} (+{} more since last report)", log.suppressed);
        } else {
            eprintln!("accept: {e}");
        }
        log.last = Some(now);
        log.suppressed = 0;
    }
}

struct WorkerSetup {
    core: Option<CoreId>,
    /// The listener bound in [`Backend::bind`] (first worker only).
    listener: Option<std::net::TcpListener>,
    addr: SocketAddr,
    shared: Arc<Shared>,
    ready: mpsc::Sender<io::Result<()>>,
    go: mpsc::Receiver<()>,
}

fn worker(s: WorkerSetup) {
    if let Some(core) = s.core {
        if !core_affinity::set_for_current(core) {
            // Unpinned still works, only with less locality: not worth failing for.
            eprintln!("backend: could not pin worker to cpu {}", core.id);
        }
    }
    let setup = (|| {
        let listener = match s.listener {
            Some(l) => l,
            None => listen_socket(s.addr, false)?,
        };
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let listener = {
            let _ctx = rt.enter();
            TcpListener::from_std(listener)?
        };
        Ok((rt, listener))
    })();
    let (rt, listener) = match setup {
        Ok(v) => {
            let _ = s.ready.send(Ok(()));
            v
        }
        Err(e) => {
            let _ = s.ready.send(Err(e));
            return;
        }
    };
    if s.go.recv().is_err() {
        return;
    }
    let w = Rc::new(Worker {
        shared: s.shared,
        pool: RefCell::default(),
    });
    LocalSet::new().block_on(&rt, accept_loop(listener, w));
}

/// Per-thread state of one worker.
struct Worker {
    shared: Arc<Shared>,
    pool: RefCell<Vec<Vec<u8>>>,
}

impl Worker {
    fn buffer(&self) -> PooledBuf<'_> {
        let buf = self
            .pool
            .borrow_mut()
            .pop()
            .unwrap_or_else(|| vec![0; CHUNK]);
        PooledBuf {
            buf,
            pool: &self.pool,
        }
    }
}

/// Returns its buffer to the pool on drop, also on early returns through `?`.
struct PooledBuf<'a> {
    buf: Vec<u8>,
    pool: &'a RefCell<Vec<Vec<u8>>>,
}

impl Drop for PooledBuf<'_> {
    fn drop(&mut self) {
        let mut pool = self.pool.borrow_mut();
        if pool.len() < POOL_MAX {
            pool.push(std::mem::take(&mut self.buf));
        }
    }
}

async fn accept_loop(listener: TcpListener, w: Rc<Worker>) {
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                w.shared.stats.connections.fetch_add(1, Relaxed);
                let w = w.clone();
                tokio::task::spawn_local(async move { serve(stream, peer, &w).await });
            }
            Err(e) => {
                w.shared.log_accept_error(&e);
                tokio::time::sleep(ACCEPT_BACKOFF).await;
            }
        }
    }
}

#[derive(Default)]
struct Counts {
    bytes_in: u64,
    bytes_out: u64,
    bad_at: Option<u64>,
}

async fn serve(mut stream: TcpStream, peer: SocketAddr, w: &Worker) {
    let sh = &w.shared;
    // Small echo round trips must not wait for Nagle.
    let _ = stream.set_nodelay(true);
    let mut c = Counts::default();
    let mut res = match sh.mode {
        Mode::Echo => echo(&mut stream, &mut c, w).await,
        Mode::Sink => sink(&stream, &mut c, w).await,
        Mode::Source => source(&mut stream, &mut c).await,
    };
    sh.stats.bytes_in.fetch_add(c.bytes_in, Relaxed);
    sh.stats.bytes_out.fetch_add(c.bytes_out, Relaxed);
    if c.bad_at.is_some() {
        sh.stats.pattern_errors.fetch_add(1, Relaxed);
    }
    if sh.mode == Mode::Echo && res.is_ok() {
        // The half-close is the client's signal that everything came back.
        res = stream.shutdown().await;
    }
    if sh.verbose {
        let check = match (sh.mode, c.bad_at) {
            (Mode::Sink, None) => "pattern=ok".to_string(),
            (Mode::Sink, Some(at)) => format!("pattern=MISMATCH@{at}"),
            _ => String::new(),
        };
        let end = match res {
            Ok(()) => "eof".to_string(),
            Err(e) => format!("error: {e}"),
        };
        eprintln!(
            "closed {peer} {:?} in={} out={} {check} {end}",
            sh.mode, c.bytes_in, c.bytes_out
        );
    }
}

enum Got {
    Data(usize),
    Eof,
    /// Nothing more to read for now: give the buffer back and wait.
    Drained,
}

fn read_some(s: &TcpStream, buf: &mut [u8]) -> io::Result<Got> {
    loop {
        return match s.try_read(buf) {
            Ok(0) => Ok(Got::Eof),
            Ok(n) => Ok(Got::Data(n)),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(Got::Drained),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => Err(e),
        };
    }
}

/// Returns at EOF once everything read was written back; the caller half-closes.
async fn echo(s: &mut TcpStream, c: &mut Counts, w: &Worker) -> io::Result<()> {
    loop {
        s.readable().await?;
        let mut buf = w.buffer();
        let mut drained = false;
        for _ in 0..BURST {
            let n = match read_some(s, &mut buf.buf)? {
                Got::Eof => return Ok(()),
                Got::Drained => {
                    drained = true;
                    break;
                }
                Got::Data(n) => n,
            };
            c.bytes_in += n as u64;
            w.shared.pace().await;
            s.write_all(&buf.buf[..n]).await?;
            c.bytes_out += n as u64;
        }
        drop(buf);
        if !drained {
            tokio::task::yield_now().await;
        }
    }
}

fn sink_check(c: &mut Counts, data: &[u8]) {
    if c.bad_at.is_none() && !pattern().matches(c.bytes_in, data) {
        c.bad_at = Some(c.bytes_in);
    }
    c.bytes_in += data.len() as u64;
}

async fn sink(s: &TcpStream, c: &mut Counts, w: &Worker) -> io::Result<()> {
    loop {
        s.readable().await?;
        let mut buf = w.buffer();
        let mut drained = false;
        for _ in 0..BURST {
            match read_some(s, &mut buf.buf)? {
                Got::Eof => return Ok(()),
                Got::Drained => {
                    drained = true;
                    break;
                }
                Got::Data(n) => sink_check(c, &buf.buf[..n]),
            }
        }
        drop(buf);
        if !drained {
            tokio::task::yield_now().await;
        }
    }
}

/// Ends with an error (EPIPE, ECONNRESET) when the peer closes: that is the normal end.
async fn source(s: &mut TcpStream, c: &mut Counts) -> io::Result<()> {
    loop {
        let n = s.write(pattern().slice(c.bytes_out, CHUNK)).await?;
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        c.bytes_out += n as u64;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::{Shutdown, TcpStream};

    const TIMEOUT: Duration = Duration::from_secs(10);

    fn connect(addr: SocketAddr) -> TcpStream {
        let s = TcpStream::connect_timeout(&addr, TIMEOUT).unwrap();
        s.set_read_timeout(Some(TIMEOUT)).unwrap();
        s.set_write_timeout(Some(TIMEOUT)).unwrap();
        s.set_nodelay(true).unwrap();
        s
    }

    fn pattern_bytes(len: usize) -> Vec<u8> {
        let mut v = Vec::with_capacity(len);
        while v.len() < len {
            let n = (len - v.len()).min(CHUNK);
            v.extend_from_slice(pattern().slice(v.len() as u64, n));
        }
        v
    }

    /// Reads until EOF; a timeout fails the test instead of hanging it.
    fn read_to_eof(s: &mut TcpStream) -> Vec<u8> {
        let mut v = Vec::new();
        s.read_to_end(&mut v).unwrap();
        v
    }

    /// Waits (bounded) for counters that are updated after the client's side ended.
    fn wait_until(what: &str, f: impl Fn() -> bool) {
        let deadline = Instant::now() + TIMEOUT;
        while !f() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            thread::sleep(Duration::from_millis(5));
        }
    }

    fn round_trip(s: &mut TcpStream, msg: &[u8]) -> Duration {
        let t = Instant::now();
        s.write_all(msg).unwrap();
        let mut back = vec![0; msg.len()];
        s.read_exact(&mut back).unwrap();
        assert_eq!(back, msg);
        t.elapsed()
    }

    #[test]
    fn echo_round_trip_with_half_close() {
        const LEN: usize = 1 << 20;
        let backend = Backend::bind("127.0.0.1:0", Mode::Echo).unwrap();
        let stats = backend.stats();
        let addr = backend.spawn().unwrap();
        let mut s = connect(addr);
        let mut writer = s.try_clone().unwrap();
        // Write from another thread: the echo comes back while we still send.
        let w = thread::spawn(move || {
            writer.write_all(&pattern_bytes(LEN)).unwrap();
            writer.shutdown(Shutdown::Write).unwrap();
        });
        let back = read_to_eof(&mut s);
        w.join().unwrap();
        assert_eq!(back.len(), LEN);
        assert!(pattern().matches(0, &back));
        // Stats are complete once the backend's EOF arrived.
        assert_eq!(stats.connections.load(Relaxed), 1);
        assert_eq!(stats.bytes_in.load(Relaxed), LEN as u64);
        assert_eq!(stats.bytes_out.load(Relaxed), LEN as u64);
    }

    #[test]
    fn echo_two_threads_same_port_serve_20_connections() {
        let backend = Backend::bind("127.0.0.1:0", Mode::Echo).unwrap().threads(2);
        let stats = backend.stats();
        let addr = backend.spawn().unwrap();
        let mut conns: Vec<TcpStream> = (0..20).map(|_| connect(addr)).collect();
        for (i, s) in conns.iter_mut().enumerate() {
            round_trip(s, format!("hello {i}").as_bytes());
        }
        let mut total = 0;
        for (i, mut s) in conns.into_iter().enumerate() {
            s.shutdown(Shutdown::Write).unwrap();
            assert!(read_to_eof(&mut s).is_empty());
            total += format!("hello {i}").len() as u64;
        }
        assert_eq!(stats.connections.load(Relaxed), 20);
        assert_eq!(stats.bytes_in.load(Relaxed), total);
        assert_eq!(stats.bytes_out.load(Relaxed), total);
    }

    #[test]
    fn sink_counts_bytes_and_detects_corruption() {
        const LEN: usize = 200_000;
        let backend = Backend::bind("127.0.0.1:0", Mode::Sink)
            .unwrap()
            .verbose(true);
        let stats = backend.stats();
        let addr = backend.spawn().unwrap();

        let mut s = connect(addr);
        s.write_all(&pattern_bytes(LEN)).unwrap();
        s.shutdown(Shutdown::Write).unwrap();
        assert!(read_to_eof(&mut s).is_empty());
        assert_eq!(stats.bytes_in.load(Relaxed), LEN as u64);
        assert_eq!(stats.pattern_errors.load(Relaxed), 0);

        let mut bad = pattern_bytes(LEN);
        bad[150_000] ^= 0xff;
        let mut s = connect(addr);
        s.write_all(&bad).unwrap();
        s.shutdown(Shutdown::Write).unwrap();
        assert!(read_to_eof(&mut s).is_empty());
        assert_eq!(stats.bytes_in.load(Relaxed), 2 * LEN as u64);
        assert_eq!(stats.pattern_errors.load(Relaxed), 1);
        assert_eq!(stats.connections.load(Relaxed), 2);
    }

    #[test]
    fn source_stream_matches_pattern() {
        const LEN: usize = 1 << 20;
        let backend = Backend::bind("127.0.0.1:0", Mode::Source).unwrap();
        let stats = backend.stats();
        let addr = backend.spawn().unwrap();
        let mut s = connect(addr);
        let mut got = vec![0; LEN];
        s.read_exact(&mut got).unwrap();
        assert!(pattern().matches(0, &got));
        drop(s);
        // The peer going away ends the source connection and records what it sent.
        wait_until("source connection to end", || {
            stats.bytes_out.load(Relaxed) >= LEN as u64
        });
    }

    #[test]
    fn delay_holds_each_chunk() {
        let addr = Backend::bind("127.0.0.1:0", Mode::Echo)
            .unwrap()
            .threads(1)
            .delay(Duration::from_millis(50))
            .spawn()
            .unwrap();
        let mut s = connect(addr);
        let took = round_trip(&mut s, b"0123456789");
        assert!(took >= Duration::from_millis(50), "{took:?}");
    }

    #[test]
    fn delay_every_third_chunk() {
        let addr = Backend::bind("127.0.0.1:0", Mode::Echo)
            .unwrap()
            .delay(Duration::from_millis(50))
            .delay_every(3)
            .spawn()
            .unwrap();
        let mut s = connect(addr);
        let slow: Vec<bool> = (0..6)
            .map(|_| {
                let took = round_trip(&mut s, b"0123456789");
                assert!(
                    took >= Duration::from_millis(40) || took < Duration::from_millis(25),
                    "ambiguous round trip {took:?}"
                );
                took >= Duration::from_millis(40)
            })
            .collect();
        assert_eq!(slow, [false, false, true, false, false, true]);
    }

    #[test]
    fn ipv6_loopback_echoes() {
        let backend = match Backend::bind("[::1]:0", Mode::Echo) {
            Ok(b) => b.threads(2).cpus(vec![0]),
            Err(e) => {
                eprintln!("skipping: cannot bind [::1]: {e}");
                return;
            }
        };
        let addr = backend.spawn().unwrap();
        assert!(addr.is_ipv6());
        let mut s = connect(addr);
        round_trip(&mut s, b"over ipv6");
        s.shutdown(Shutdown::Write).unwrap();
        assert!(read_to_eof(&mut s).is_empty());
    }

    #[test]
    fn bind_error_surfaces_in_bind() {
        // A listener without SO_REUSEPORT holds the port exclusively.
        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = taken.local_addr().unwrap().to_string();
        assert!(Backend::bind(&addr, Mode::Echo).is_err());
        // Nor does a running backend's port get shared with a second one by accident.
        let running = Backend::bind("127.0.0.1:0", Mode::Echo)
            .unwrap()
            .threads(2)
            .spawn()
            .unwrap();
        let err = Backend::bind(&running.to_string(), Mode::Sink).err();
        assert_eq!(err.map(|e| e.kind()), Some(io::ErrorKind::AddrInUse));
        assert!(Backend::bind("127.0.0.1", Mode::Echo).is_err());
    }
}
