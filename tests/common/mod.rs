//! Shared harness for the `tlsfront` integration tests.
//!
//! Everything here drives the real `tlsfront` binary as a child process and talks to it over
//! real sockets on 127.0.0.1. Every blocking operation is bounded in time: sockets get read and
//! write timeouts, waits poll against a deadline, and the child process is killed on `Drop`.
#![allow(dead_code)]

pub mod pki;

use std::ffi::OsStr;
use std::fmt::Write as _;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use rustix::event::{poll, PollFd, PollFlags, Timespec};
pub use rustix::process::Signal;
use rustix::process::{kill_process, Pid};
use rustls::crypto::aws_lc_rs as provider;
use rustls::crypto::{CryptoProvider, SupportedKxGroup};
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{
    CipherSuite, ClientConfig, ClientConnection, ProtocolVersion, RootCertStore,
    SupportedCipherSuite, SupportedProtocolVersion,
};

/// How long a proxy may take from spawn to its `ready` line.
pub const READY_TIMEOUT: Duration = Duration::from_secs(20);
/// Default socket read/write timeout for test clients and backends.
pub const IO_TIMEOUT: Duration = Duration::from_secs(20);

pub const KIB: usize = 1024;
pub const MIB: usize = 1024 * 1024;

// ---------------------------------------------------------------------------------------------
// Random data and comparison
// ---------------------------------------------------------------------------------------------

/// `len` bytes from the system CSPRNG.
pub fn random_bytes(len: usize) -> Vec<u8> {
    let mut v = vec![0u8; len];
    ::aws_lc_rs::rand::fill(&mut v).expect("random fill");
    v
}

pub fn sha256_hex(data: &[u8]) -> String {
    hex(::aws_lc_rs::digest::digest(&::aws_lc_rs::digest::SHA256, data).as_ref())
}

pub fn hex(data: &[u8]) -> String {
    let mut s = String::with_capacity(data.len() * 2);
    for b in data {
        let _ = write!(s, "{b:02x}");
    }
    s
}

/// Asserts that `got` equals `expected`, comparing SHA-256 digests and, on mismatch, reporting
/// lengths and the offset of the first differing byte (never dumps megabytes into the output).
pub fn assert_same_bytes(what: &str, got: &[u8], expected: &[u8]) {
    let (dg, de) = (sha256_hex(got), sha256_hex(expected));
    if dg != de {
        let first_diff = got
            .iter()
            .zip(expected.iter())
            .position(|(a, b)| a != b)
            .unwrap_or(got.len().min(expected.len()));
        panic!(
            "{what}: data mismatch: got {} bytes (sha256 {dg}), expected {} bytes (sha256 {de}); \
             first difference at offset {first_diff}",
            got.len(),
            expected.len()
        );
    }
}

// ---------------------------------------------------------------------------------------------
// PKI + config files
// ---------------------------------------------------------------------------------------------

/// A temporary directory with a test CA, an ECDSA P-256 leaf for `localhost` / 127.0.0.1 signed
/// by it, and a second unrelated key (for mismatch tests).
pub struct TestEnv {
    pub dir: tempfile::TempDir,
    pub ca_pem: PathBuf,
    pub cert_pem: PathBuf,
    pub key_pem: PathBuf,
    pub other_key_pem: PathBuf,
    pub ca_der: CertificateDer<'static>,
    pub leaf_der: CertificateDer<'static>,
}

impl TestEnv {
    pub fn new() -> TestEnv {
        use rcgen::{
            BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose,
            PKCS_ECDSA_P256_SHA256,
        };
        let dir = tempfile::Builder::new()
            .prefix("tlsfront-test-")
            .tempdir()
            .expect("tempdir");

        let ca_key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).expect("ca key");
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("ca params");
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "tlsfront test CA");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca_cert = ca_params.self_signed(&ca_key).expect("ca cert");

        let leaf_key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).expect("leaf key");
        let mut leaf_params =
            CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
                .expect("leaf params");
        leaf_params
            .distinguished_name
            .push(DnType::CommonName, "localhost");
        let leaf_cert = leaf_params
            .signed_by(&leaf_key, &ca_cert, &ca_key)
            .expect("leaf cert");

        let other_key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).expect("other key");

        let write = |name: &str, contents: &str| {
            let p = dir.path().join(name);
            std::fs::write(&p, contents).expect("write pem");
            p
        };
        let ca_pem = write("ca.pem", &ca_cert.pem());
        let cert_pem = write("cert.pem", &leaf_cert.pem());
        let key_pem = write("key.pem", &leaf_key.serialize_pem());
        let other_key_pem = write("other-key.pem", &other_key.serialize_pem());

        TestEnv {
            ca_der: ca_cert.der().clone(),
            leaf_der: leaf_cert.der().clone(),
            dir,
            ca_pem,
            cert_pem,
            key_pem,
            other_key_pem,
        }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub fn write_file(&self, name: &str, contents: &str) -> PathBuf {
        let p = self.path(name);
        std::fs::write(&p, contents).expect("write file");
        p
    }

    /// Writes `toml` as `tlsfront.toml` in the temp dir and returns its path.
    pub fn write_config(&self, toml: &str) -> PathBuf {
        self.write_file("tlsfront.toml", toml)
    }

    /// A config builder with one service `svc` listening on 127.0.0.1:0 and forwarding to
    /// `backend`, using this env's cert/key, `workers = 1`, `pin = false`.
    pub fn config(&self, backend: impl ToString) -> ConfigBuilder<'_> {
        ConfigBuilder {
            env: self,
            workers: "1".into(),
            drain_timeout: "5s".into(),
            global: Vec::new(),
            services: vec![ServiceSpec {
                name: "svc".into(),
                backend: backend.to_string(),
                extra: Vec::new(),
            }],
        }
    }

    /// Client config trusting the test CA with rustls defaults (TLS 1.2 + 1.3, all suites).
    pub fn client(&self) -> Arc<ClientConfig> {
        self.client_with(&ClientOpts::default())
    }

    pub fn client_with(&self, opts: &ClientOpts) -> Arc<ClientConfig> {
        let mut roots = RootCertStore::empty();
        roots.add(self.ca_der.clone()).expect("add CA");
        let mut cfg = ClientConfig::builder_with_provider(opts.provider())
            .with_protocol_versions(&opts.versions())
            .expect("client protocol versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        cfg.alpn_protocols = opts.alpn.clone();
        Arc::new(cfg)
    }
}

impl Default for TestEnv {
    fn default() -> Self {
        Self::new()
    }
}

/// Quotes a string as a TOML basic string.
pub fn toml_str(s: impl AsRef<str>) -> String {
    let s = s.as_ref();
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

pub fn toml_path(p: &Path) -> String {
    toml_str(p.to_str().expect("utf-8 path"))
}

/// All numbers N appearing as `line N` in `text`.
pub fn line_numbers(text: &str) -> Vec<usize> {
    text.match_indices("line ")
        .filter_map(|(i, m)| {
            let digits: String = text[i + m.len()..]
                .chars()
                .take_while(|c| c.is_ascii_digit())
                .collect();
            digits.parse().ok()
        })
        .collect()
}

/// 1-based number of the first line of `text` containing `needle`.
pub fn line_of(text: &str, needle: &str) -> usize {
    text.lines()
        .position(|l| l.contains(needle))
        .unwrap_or_else(|| panic!("{needle:?} not found in:\n{text}"))
        + 1
}

pub struct ServiceSpec {
    pub name: String,
    pub backend: String,
    pub extra: Vec<String>,
}

pub struct ConfigBuilder<'a> {
    env: &'a TestEnv,
    workers: String,
    drain_timeout: String,
    global: Vec<String>,
    services: Vec<ServiceSpec>,
}

impl ConfigBuilder<'_> {
    pub fn workers(mut self, n: usize) -> Self {
        self.workers = n.to_string();
        self
    }

    pub fn drain_timeout(mut self, d: &str) -> Self {
        self.drain_timeout = d.to_string();
        self
    }

    /// Extra raw line(s) for `[global]` (a `pin = ...` line replaces the default `pin = false`).
    pub fn global(mut self, line: &str) -> Self {
        self.global.push(line.to_string());
        self
    }

    /// Extra raw line(s) for the first service (e.g. `handshake_timeout = "1s"`).
    pub fn service(mut self, line: &str) -> Self {
        self.services[0].extra.push(line.to_string());
        self
    }

    /// Adds another service with the same cert/key.
    pub fn add_service(mut self, name: &str, backend: impl ToString, extra: &[&str]) -> Self {
        self.services.push(ServiceSpec {
            name: name.into(),
            backend: backend.to_string(),
            extra: extra.iter().map(|s| s.to_string()).collect(),
        });
        self
    }

    pub fn to_toml(&self) -> String {
        let mut t = String::new();
        let dt = toml_str(&self.drain_timeout);
        let _ = writeln!(t, "[global]");
        let _ = writeln!(t, "workers = {}", self.workers);
        if !self
            .global
            .iter()
            .any(|l| l.trim_start().starts_with("pin"))
        {
            let _ = writeln!(t, "pin = false");
        }
        let _ = writeln!(t, "drain_timeout = {dt}");
        for l in &self.global {
            let _ = writeln!(t, "{l}");
        }
        for s in &self.services {
            let _ = writeln!(t);
            let _ = writeln!(t, "[[service]]");
            let _ = writeln!(t, "name = {}", toml_str(&s.name));
            let _ = writeln!(t, "listen = \"127.0.0.1:0\"");
            let _ = writeln!(t, "backend = {}", toml_str(&s.backend));
            let _ = writeln!(t, "cert = {}", toml_path(&self.env.cert_pem));
            let _ = writeln!(t, "key = {}", toml_path(&self.env.key_pem));
            for l in &s.extra {
                let _ = writeln!(t, "{l}");
            }
        }
        t
    }

    pub fn write(&self) -> PathBuf {
        self.env.write_config(&self.to_toml())
    }

    /// Writes the config and starts `tlsfront serve --config <file>`, waiting for `ready`.
    pub fn start(&self) -> Proxy {
        let path = self.write();
        Proxy::start(["serve".as_ref(), "--config".as_ref(), path.as_os_str()])
    }
}

// ---------------------------------------------------------------------------------------------
// The proxy child process
// ---------------------------------------------------------------------------------------------

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_tlsfront")
}

type Shared<T> = Arc<Mutex<T>>;

fn drain_into(mut r: impl Read + Send + 'static, buf: Shared<Vec<u8>>) -> JoinHandle<()> {
    thread::spawn(move || {
        let mut chunk = [0u8; 8192];
        loop {
            match r.read(&mut chunk) {
                Ok(0) => break,
                Ok(n) => buf.lock().unwrap().extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => break,
            }
        }
    })
}

/// A running `tlsfront` child. Stdout and stderr are drained continuously by reader threads.
/// Killed (SIGKILL) on drop if still running.
pub struct Proxy {
    child: Child,
    stderr: Shared<Vec<u8>>,
    stdout: Shared<Vec<u8>>,
    readers: Vec<JoinHandle<()>>,
    status: Option<ExitStatus>,
    services: Vec<(String, SocketAddr)>,
    args: Vec<String>,
}

impl Proxy {
    /// Spawns `tlsfront <args>` without waiting for anything. Run as root (CI), `serve` gets
    /// `--allow-root`: tests serve as whoever runs them (see [`Proxy::spawn_exact`]).
    pub fn spawn<I, S>(args: I) -> Proxy
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut args: Vec<String> = args
            .into_iter()
            .map(|a| a.as_ref().to_string_lossy().into_owned())
            .collect();
        if args.first().is_some_and(|a| a == "serve") && rustix::process::geteuid().is_root() {
            args.insert(1, "--allow-root".into());
        }
        Proxy::spawn_exact(args)
    }

    /// Spawns `tlsfront <args>` exactly as given.
    pub fn spawn_exact<I, S>(args: I) -> Proxy
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let args: Vec<String> = args
            .into_iter()
            .map(|a| a.as_ref().to_string_lossy().into_owned())
            .collect();
        let mut child = Command::new(bin())
            .args(&args)
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn tlsfront");
        let stderr: Shared<Vec<u8>> = Default::default();
        let stdout: Shared<Vec<u8>> = Default::default();
        let readers = vec![
            drain_into(child.stderr.take().unwrap(), stderr.clone()),
            drain_into(child.stdout.take().unwrap(), stdout.clone()),
        ];
        Proxy {
            child,
            stderr,
            stdout,
            readers,
            status: None,
            services: Vec::new(),
            args,
        }
    }

    /// Spawns and waits (bounded by [`READY_TIMEOUT`]) for the `ready` line.
    pub fn start<I, S>(args: I) -> Proxy
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut p = Proxy::spawn(args);
        p.wait_ready(READY_TIMEOUT);
        p
    }

    /// Waits for `ready workers=` and records every `listening service=<n> addr=<a>` line.
    /// Panics (with the log) if the process exits first or the timeout passes.
    pub fn wait_ready(&mut self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let log = self.log();
            if log.lines().any(|l| l.contains("ready workers=")) {
                self.services = parse_listening(&log);
                assert!(
                    !self.services.is_empty(),
                    "proxy logged `ready` but no `listening service=.. addr=..` line:\n{log}"
                );
                return;
            }
            if let Some(st) = self.try_status() {
                panic!(
                    "tlsfront {:?} exited ({st}) before `ready`; log:\n{}",
                    self.args,
                    self.log()
                );
            }
            if Instant::now() >= deadline {
                panic!(
                    "tlsfront {:?} not ready within {timeout:?}; log so far:\n{log}",
                    self.args
                );
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Address of the first service.
    pub fn addr(&self) -> SocketAddr {
        self.services
            .first()
            .map(|s| s.1)
            .expect("proxy has no known service (not started with wait_ready?)")
    }

    pub fn service_addr(&self, name: &str) -> SocketAddr {
        self.services
            .iter()
            .find(|s| s.0 == name)
            .map(|s| s.1)
            .unwrap_or_else(|| panic!("no service {name:?} in {:?}", self.services))
    }

    pub fn services(&self) -> &[(String, SocketAddr)] {
        &self.services
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Everything the child wrote to stderr so far (lossy UTF-8).
    pub fn log(&self) -> String {
        String::from_utf8_lossy(&self.stderr.lock().unwrap()).into_owned()
    }

    pub fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.stdout.lock().unwrap()).into_owned()
    }

    pub fn log_contains(&self, pat: &str) -> bool {
        self.log().contains(pat)
    }

    /// Log lines containing `pat`.
    pub fn log_lines(&self, pat: &str) -> Vec<String> {
        self.log()
            .lines()
            .filter(|l| l.contains(pat))
            .map(str::to_string)
            .collect()
    }

    /// Polls the log until it contains `pat` or `timeout` passes.
    pub fn wait_for_log(&self, pat: &str, timeout: Duration) -> bool {
        self.wait_for_log_count(pat, 1, timeout)
    }

    /// Polls until at least `n` log lines contain `pat`.
    pub fn wait_for_log_count(&self, pat: &str, n: usize, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if self.log_lines(pat).len() >= n {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn signal(&self, sig: Signal) {
        kill_process(Pid::from_child(&self.child), sig)
            .unwrap_or_else(|e| panic!("kill({}, {sig:?}) failed: {e}", self.child.id()));
    }

    /// Number of open file descriptors of the child (entries of /proc/PID/fd).
    pub fn fd_count(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.child.id()))
            .expect("read /proc/PID/fd")
            .count()
    }

    /// Targets of the child's open file descriptors (for diagnostics).
    pub fn fd_targets(&self) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(format!("/proc/{}/fd", self.child.id()))
            .map(|rd| {
                rd.filter_map(|e| e.ok())
                    .map(|e| {
                        let t = std::fs::read_link(e.path())
                            .map(|t| t.display().to_string())
                            .unwrap_or_else(|_| "?".into());
                        format!("{}->{}", e.file_name().to_string_lossy(), t)
                    })
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    }

    /// The exit status if the child has exited (non-blocking).
    pub fn try_status(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            if let Ok(Some(st)) = self.child.try_wait() {
                self.status = Some(st);
            }
        }
        self.status
    }

    /// Waits up to `timeout` for the child to exit; then waits (bounded) for the output readers
    /// so that `log()` is complete.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(st) = self.try_status() {
                let reader_deadline = Instant::now() + Duration::from_secs(3);
                while !self.readers.iter().all(|h| h.is_finished())
                    && Instant::now() < reader_deadline
                {
                    thread::sleep(Duration::from_millis(10));
                }
                return Some(st);
            }
            if Instant::now() >= deadline {
                return None;
            }
            thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        if self.try_status().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        if thread::panicking() {
            let log = self.log();
            let tail: Vec<&str> = log.lines().rev().take(80).collect();
            eprintln!(
                "---- tlsfront {:?} stderr (last {} lines) ----",
                self.args,
                tail.len()
            );
            for l in tail.iter().rev() {
                eprintln!("{l}");
            }
            eprintln!("---- end of tlsfront stderr ----");
        }
    }
}

/// Value of the whitespace-separated `key=value` token in `line` (surrounding quotes stripped).
pub fn field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    line.split_whitespace().find_map(|tok| {
        tok.strip_prefix(key)
            .and_then(|rest| rest.strip_prefix('='))
            .map(|v| v.trim_matches('"'))
    })
}

fn parse_listening(log: &str) -> Vec<(String, SocketAddr)> {
    let mut out = Vec::new();
    for line in log.lines() {
        let Some(idx) = line.find("listening service=") else {
            continue;
        };
        let rest = &line[idx..];
        let name = field(rest, "service").unwrap_or("").to_string();
        let addr = field(rest, "addr")
            .and_then(|a| a.parse::<SocketAddr>().ok())
            .unwrap_or_else(|| panic!("cannot parse addr= in listening line: {line}"));
        out.push((name, addr));
    }
    out
}

/// Result of running `tlsfront` to completion.
pub struct RunOutput {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl RunOutput {
    pub fn code(&self) -> Option<i32> {
        self.status.code()
    }
}

impl std::fmt::Debug for RunOutput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exit={:?} signal={:?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.status.code(),
            self.status.signal(),
            self.stdout,
            self.stderr
        )
    }
}

/// Runs `tlsfront <args>` and waits (bounded) for it to exit.
pub fn run_tlsfront<I, S>(args: I, timeout: Duration) -> RunOutput
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let mut p = Proxy::spawn(args);
    let status = p.wait_exit(timeout).unwrap_or_else(|| {
        panic!(
            "tlsfront {:?} did not exit within {timeout:?}; stderr:\n{}",
            p.args,
            p.log()
        )
    });
    RunOutput {
        status,
        stdout: p.stdout(),
        stderr: p.log(),
    }
}

// ---------------------------------------------------------------------------------------------
// Backends
// ---------------------------------------------------------------------------------------------

#[derive(Default)]
pub struct BackendStats {
    pub connections: AtomicUsize,
    pub bytes_received: AtomicU64,
}

/// A TCP backend on 127.0.0.1:0 running `handler` on a thread per connection.
pub struct Backend {
    pub addr: SocketAddr,
    pub stats: Arc<BackendStats>,
    stop: Arc<AtomicBool>,
}

impl Backend {
    pub fn start<F>(handler: F) -> Backend
    where
        F: Fn(TcpStream, &BackendStats) + Send + Sync + 'static,
    {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind backend");
        let addr = listener.local_addr().unwrap();
        let stats: Arc<BackendStats> = Default::default();
        let stop = Arc::new(AtomicBool::new(false));
        let handler = Arc::new(handler);
        {
            let stats = stats.clone();
            let stop = stop.clone();
            thread::spawn(move || {
                for conn in listener.incoming() {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    let Ok(conn) = conn else { continue };
                    stats.connections.fetch_add(1, Ordering::SeqCst);
                    let _ = conn.set_read_timeout(Some(Duration::from_secs(60)));
                    let _ = conn.set_write_timeout(Some(Duration::from_secs(60)));
                    let handler = handler.clone();
                    let stats = stats.clone();
                    thread::spawn(move || handler(conn, &stats));
                }
            });
        }
        Backend { addr, stats, stop }
    }

    /// Echoes everything until EOF, then shuts down its write side.
    pub fn echo() -> Backend {
        Backend::start(echo_conn)
    }

    pub fn connections(&self) -> usize {
        self.stats.connections.load(Ordering::SeqCst)
    }

    pub fn bytes_received(&self) -> u64 {
        self.stats.bytes_received.load(Ordering::SeqCst)
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop so the listener is closed.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_millis(200));
    }
}

pub fn echo_conn(mut s: TcpStream, stats: &BackendStats) {
    let mut buf = vec![0u8; 64 * KIB];
    loop {
        match s.read(&mut buf) {
            Ok(0) => {
                let _ = s.shutdown(Shutdown::Write);
                return;
            }
            Ok(n) => {
                stats.bytes_received.fetch_add(n as u64, Ordering::SeqCst);
                if s.write_all(&buf[..n]).is_err() {
                    return;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => return,
        }
    }
}

/// Reads until EOF (bounded by the socket's read timeout). Returns the bytes and whether a clean
/// EOF was seen.
pub fn read_to_eof(s: &mut TcpStream) -> (Vec<u8>, bool) {
    let mut out = Vec::new();
    let mut buf = [0u8; 16 * KIB];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return (out, true),
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => return (out, false),
        }
    }
}

/// How a raw (non-TLS) client connection ended.
#[derive(Debug)]
pub struct RawEnd {
    pub bytes: Vec<u8>,
    /// `Ok(())` for EOF; the error kind otherwise (`WouldBlock`/`TimedOut` = still open).
    pub how: Result<(), io::ErrorKind>,
    pub elapsed: Duration,
}

impl RawEnd {
    /// True if the peer closed (EOF or reset) rather than the read timing out.
    pub fn closed(&self) -> bool {
        !matches!(
            self.how,
            Err(io::ErrorKind::WouldBlock) | Err(io::ErrorKind::TimedOut)
        )
    }
}

/// Reads from a raw socket until EOF, error, or `timeout` (measured from `start`).
pub fn raw_read_until_closed(s: &mut TcpStream, start: Instant, timeout: Duration) -> RawEnd {
    let mut bytes = Vec::new();
    let mut buf = [0u8; 16 * KIB];
    let deadline = start + timeout;
    let how = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break Err(io::ErrorKind::TimedOut);
        }
        let _ = s.set_read_timeout(Some(left));
        match s.read(&mut buf) {
            Ok(0) => break Ok(()),
            Ok(n) => bytes.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => break Err(e.kind()),
        }
    };
    RawEnd {
        bytes,
        how,
        elapsed: start.elapsed(),
    }
}

/// A port on 127.0.0.1 where nothing listens (bound then released).
pub fn closed_port_addr() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let a = l.local_addr().unwrap();
    drop(l);
    a
}

/// A loopback listener with backlog 0 whose accept queue is filled with never-accepted
/// connections, so further SYNs are dropped and connects to it time out.
pub struct BlackholeBackend {
    pub addr: SocketAddr,
    _listener: socket2::Socket,
    _fillers: Vec<socket2::Socket>,
}

impl BlackholeBackend {
    pub fn start() -> BlackholeBackend {
        use socket2::{Domain, Socket, Type};
        let l = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
        l.bind(&"127.0.0.1:0".parse::<SocketAddr>().unwrap().into())
            .unwrap();
        l.listen(0).unwrap();
        let addr = l.local_addr().unwrap().as_socket().unwrap();
        let mut fillers = Vec::new();
        for _ in 0..3 {
            let s = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
            let _ = s.connect_timeout(&addr.into(), Duration::from_millis(300));
            fillers.push(s);
        }
        // Self-check: a further connect must not complete, otherwise the test is meaningless.
        let probe = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
        let r = probe.connect_timeout(&addr.into(), Duration::from_millis(500));
        assert!(
            r.is_err(),
            "blackhole backend self-check: connect unexpectedly succeeded"
        );
        BlackholeBackend {
            addr,
            _listener: l,
            _fillers: fillers,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// rustls client
// ---------------------------------------------------------------------------------------------

pub type TlsStream = rustls::StreamOwned<ClientConnection, TcpStream>;

#[allow(unused_imports)]
pub use provider::cipher_suite as suites;
#[allow(unused_imports)]
pub use provider::kx_group as groups;

/// Which versions / suites / groups the test client offers.
#[derive(Clone, Default)]
pub struct ClientOpts {
    /// Empty = TLS 1.2 and 1.3.
    pub versions: Vec<&'static SupportedProtocolVersion>,
    /// Empty = provider defaults.
    pub suites: Vec<SupportedCipherSuite>,
    /// Empty = provider defaults.
    pub groups: Vec<&'static dyn SupportedKxGroup>,
    pub alpn: Vec<Vec<u8>>,
}

impl ClientOpts {
    pub fn tls13() -> Self {
        ClientOpts {
            versions: vec![&rustls::version::TLS13],
            ..Default::default()
        }
    }

    pub fn tls12() -> Self {
        ClientOpts {
            versions: vec![&rustls::version::TLS12],
            ..Default::default()
        }
    }

    /// Only `suite`, and only the protocol version it belongs to.
    pub fn only_suite(suite: SupportedCipherSuite) -> Self {
        let v = if suite.tls13().is_some() {
            &rustls::version::TLS13
        } else {
            &rustls::version::TLS12
        };
        ClientOpts {
            versions: vec![v],
            suites: vec![suite],
            ..Default::default()
        }
    }

    fn versions(&self) -> Vec<&'static SupportedProtocolVersion> {
        if self.versions.is_empty() {
            vec![&rustls::version::TLS13, &rustls::version::TLS12]
        } else {
            self.versions.clone()
        }
    }

    pub fn provider(&self) -> Arc<CryptoProvider> {
        let mut p = provider::default_provider();
        if !self.suites.is_empty() {
            p.cipher_suites = self.suites.clone();
        }
        if !self.groups.is_empty() {
            p.kx_groups = self.groups.clone();
        }
        Arc::new(p)
    }
}

/// Client config that accepts any server certificate (signatures are still checked).
/// Only for the tests of the ephemeral self-signed cert.
pub fn insecure_client() -> Arc<ClientConfig> {
    let provider = Arc::new(provider::default_provider());
    let verifier = Arc::new(tlsfront_load::danger::AcceptAnyServerCert::new(
        provider.clone(),
    ));
    let cfg = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    Arc::new(cfg)
}

pub fn tcp_connect(addr: SocketAddr) -> io::Result<TcpStream> {
    let s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    s.set_read_timeout(Some(IO_TIMEOUT))?;
    s.set_write_timeout(Some(IO_TIMEOUT))?;
    Ok(s)
}

/// TCP connect + full TLS handshake (SNI `localhost`). Bounded by socket timeouts.
pub fn tls_connect(addr: SocketAddr, cfg: &Arc<ClientConfig>) -> io::Result<TlsStream> {
    tls_connect_sni(addr, cfg, "localhost")
}

pub fn tls_connect_sni(
    addr: SocketAddr,
    cfg: &Arc<ClientConfig>,
    sni: &str,
) -> io::Result<TlsStream> {
    let mut sock = tcp_connect(addr)?;
    let name = ServerName::try_from(sni.to_string()).expect("server name");
    let mut conn = ClientConnection::new(cfg.clone(), name).map_err(io::Error::other)?;
    while conn.is_handshaking() {
        conn.complete_io(&mut sock)?;
    }
    Ok(rustls::StreamOwned::new(conn, sock))
}

/// Like [`tls_connect`] but panics with context on failure.
pub fn tls_connect_ok(addr: SocketAddr, cfg: &Arc<ClientConfig>) -> TlsStream {
    tls_connect(addr, cfg).unwrap_or_else(|e| panic!("TLS connect to {addr} failed: {e}"))
}

pub fn negotiated(tls: &TlsStream) -> (Option<ProtocolVersion>, Option<CipherSuite>) {
    (
        tls.conn.protocol_version(),
        tls.conn.negotiated_cipher_suite().map(|s| s.suite()),
    )
}

/// How the read side of a TLS connection ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Eof {
    /// The peer sent close_notify (rustls reader returned `Ok(0)`).
    CloseNotify,
    /// TCP EOF without close_notify.
    Unexpected,
    /// A TLS error (e.g. an alert received, or bad record).
    Tls(String),
    /// Socket error (reset, broken pipe, ...).
    Io(io::ErrorKind, String),
}

impl Eof {
    pub fn is_clean(&self) -> bool {
        *self == Eof::CloseNotify
    }
}

/// A full-duplex transfer over a TLS connection driven by a single-threaded non-blocking loop
/// (rustls connections cannot be split across threads): plaintext is written in `chunk`-sized
/// pieces while received plaintext is collected concurrently.
#[derive(Clone)]
pub struct Transfer<'a> {
    pub data: &'a [u8],
    /// Stop once this many bytes were received (and everything was sent). `None`: read until EOF.
    pub expect: Option<usize>,
    pub chunk: usize,
    /// Delay between plaintext chunks (slow sender).
    pub pace: Option<Duration>,
    /// After all data is sent: send close_notify, flush, then `shutdown(Write)` the TCP socket.
    pub close_after_send: bool,
    pub timeout: Duration,
}

impl<'a> Transfer<'a> {
    /// Send `data`, expect the same number of bytes back.
    pub fn echo(data: &'a [u8]) -> Self {
        Transfer {
            data,
            expect: Some(data.len()),
            chunk: 64 * KIB,
            pace: None,
            close_after_send: false,
            timeout: Duration::from_secs(60),
        }
    }

    /// Send `data` (possibly empty) and read until the peer closes.
    pub fn until_eof(data: &'a [u8]) -> Self {
        Transfer {
            expect: None,
            ..Transfer::echo(data)
        }
    }

    pub fn close_after_send(mut self) -> Self {
        self.close_after_send = true;
        self
    }

    pub fn timeout(mut self, t: Duration) -> Self {
        self.timeout = t;
        self
    }

    pub fn paced(mut self, chunk: usize, pace: Duration) -> Self {
        self.chunk = chunk;
        self.pace = Some(pace);
        self
    }

    pub fn run(&self, tls: &mut TlsStream) -> Outcome {
        self.run_with_progress(tls, &mut |_, _| {})
    }

    /// `progress(sent, received)` is called on every loop iteration.
    pub fn run_with_progress(
        &self,
        tls: &mut TlsStream,
        progress: &mut dyn FnMut(usize, usize),
    ) -> Outcome {
        let start = Instant::now();
        let deadline = start + self.timeout;
        tls.sock.set_nonblocking(true).expect("nonblocking");
        let mut received = Vec::with_capacity(self.expect.unwrap_or(0).min(256 * MIB));
        let mut buf = vec![0u8; 64 * KIB];
        let mut sent = 0usize;
        let mut close_queued = false;
        let mut shut = false;
        let mut eof: Option<Eof> = None;
        let mut error: Option<Eof> = None;
        let mut timed_out = false;
        let mut next_send = start;

        loop {
            let mut progressed = false;

            // 1. Drain decrypted plaintext.
            while eof.is_none() {
                match tls.conn.reader().read(&mut buf) {
                    Ok(0) => eof = Some(Eof::CloseNotify),
                    Ok(n) => {
                        received.extend_from_slice(&buf[..n]);
                        progressed = true;
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                        eof = Some(Eof::Unexpected)
                    }
                    Err(e) => eof = Some(Eof::Io(e.kind(), e.to_string())),
                }
            }

            // 2. Queue more plaintext.
            if sent < self.data.len() && Instant::now() >= next_send {
                let end = (sent + self.chunk).min(self.data.len());
                match tls.conn.writer().write(&self.data[sent..end]) {
                    Ok(n) if n > 0 => {
                        sent += n;
                        progressed = true;
                        if let Some(p) = self.pace {
                            next_send = Instant::now() + p;
                        }
                    }
                    Ok(_) => {}
                    Err(e) => error = Some(Eof::Io(e.kind(), e.to_string())),
                }
            }
            if self.close_after_send && sent == self.data.len() && !close_queued {
                tls.conn.send_close_notify();
                close_queued = true;
            }

            // 3. Flush TLS records.
            while error.is_none() && tls.conn.wants_write() {
                match tls.conn.write_tls(&mut tls.sock) {
                    Ok(_) => progressed = true,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => error = Some(Eof::Io(e.kind(), e.to_string())),
                }
            }
            if close_queued && !shut && !tls.conn.wants_write() && error.is_none() {
                let _ = tls.sock.shutdown(Shutdown::Write);
                shut = true;
            }

            progress(sent, received.len());

            // 4. Done?
            let send_done = sent == self.data.len() && (!self.close_after_send || shut);
            if error.is_some() {
                break;
            }
            match &eof {
                Some(Eof::CloseNotify) if send_done => break,
                Some(Eof::CloseNotify) | None => {}
                Some(_) => break,
            }
            if let Some(n) = self.expect {
                if received.len() >= n && send_done {
                    break;
                }
            }
            if Instant::now() >= deadline {
                timed_out = true;
                break;
            }

            // 5. Read more TLS records.
            if eof.is_none() && tls.conn.wants_read() {
                match tls.conn.read_tls(&mut tls.sock) {
                    Ok(0) => progressed = true, // TCP EOF; the reader reports it next round
                    Ok(_) => {
                        progressed = true;
                        if let Err(e) = tls.conn.process_new_packets() {
                            // Try to get any alert out, then report.
                            let _ = tls.conn.write_tls(&mut tls.sock);
                            // Keep plaintext that was decrypted before the error.
                            while let Ok(n) = tls.conn.reader().read(&mut buf) {
                                if n == 0 {
                                    break;
                                }
                                received.extend_from_slice(&buf[..n]);
                            }
                            eof = Some(Eof::Tls(e.to_string()));
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => eof = Some(Eof::Io(e.kind(), e.to_string())),
                }
            }

            // 6. Nothing happened: wait for the socket.
            if !progressed {
                let mut events = PollFlags::empty();
                if eof.is_none() && tls.conn.wants_read() {
                    events |= PollFlags::IN;
                }
                if tls.conn.wants_write() {
                    events |= PollFlags::OUT;
                }
                let now = Instant::now();
                let mut wait = Duration::from_millis(50);
                if sent < self.data.len() && next_send > now {
                    wait = wait.min(next_send - now);
                }
                wait = wait.min(deadline.saturating_duration_since(now));
                let wait = Timespec::try_from(wait.max(Duration::from_millis(1))).expect("timeout");
                let _ = poll(&mut [PollFd::new(&tls.sock, events)], Some(&wait));
            }
        }
        let _ = tls.sock.set_nonblocking(false);
        Outcome {
            received,
            sent,
            eof: error.or(eof),
            timed_out,
            elapsed: start.elapsed(),
        }
    }
}

#[derive(Debug)]
pub struct Outcome {
    pub received: Vec<u8>,
    pub sent: usize,
    /// How the connection ended, if it did (a write error takes precedence).
    pub eof: Option<Eof>,
    pub timed_out: bool,
    pub elapsed: Duration,
}

impl Outcome {
    pub fn summary(&self) -> String {
        format!(
            "sent={} received={} eof={:?} timed_out={} elapsed={:?}",
            self.sent,
            self.received.len(),
            self.eof,
            self.timed_out,
            self.elapsed
        )
    }
}

/// Encrypts everything rustls has queued for sending into a byte vector (not yet sent).
pub fn take_tls_bytes(tls: &mut TlsStream) -> Vec<u8> {
    let mut v = Vec::new();
    while tls.conn.wants_write() {
        tls.conn.write_tls(&mut v).expect("write_tls to Vec");
    }
    v
}

/// Reads exactly `n` plaintext bytes (bounded by `timeout`).
pub fn read_plain(tls: &mut TlsStream, n: usize, timeout: Duration) -> Outcome {
    Transfer {
        expect: Some(n),
        timeout,
        ..Transfer::echo(b"")
    }
    .run(tls)
}

/// Sends `data` over `tls` and asserts the identical bytes come back (connection stays open).
pub fn assert_echo(tls: &mut TlsStream, data: &[u8], what: &str) {
    let out = Transfer::echo(data).run(tls);
    assert!(
        !out.timed_out && out.eof.is_none() && out.sent == data.len(),
        "{what}: echo did not complete: {}",
        out.summary()
    );
    assert_same_bytes(what, &out.received, data);
}

/// Sends close_notify + TCP shutdown(Write) and reads until the proxy closes (bounded).
pub fn close_session(tls: &mut TlsStream, timeout: Duration) -> Outcome {
    Transfer::until_eof(b"")
        .close_after_send()
        .timeout(timeout)
        .run(tls)
}

/// Full handshake, byte-exact echo of `data`, then close (client close_notify + shutdown) and
/// wait until the proxy has closed too. The way the proxy closes (close_notify or plain EOF) is
/// not judged here; the half-close tests do that.
pub fn echo_session(addr: SocketAddr, cfg: &Arc<ClientConfig>, data: &[u8]) -> Result<(), String> {
    let mut tls = tls_connect(addr, cfg).map_err(|e| format!("connect/handshake: {e}"))?;
    let out = Transfer::echo(data)
        .timeout(Duration::from_secs(20))
        .run(&mut tls);
    if out.timed_out || out.eof.is_some() || out.sent != data.len() {
        return Err(format!("echo did not complete: {}", out.summary()));
    }
    if out.received != data {
        return Err(format!(
            "echo mismatch: got {} bytes (sha256 {}), want {} bytes (sha256 {})",
            out.received.len(),
            sha256_hex(&out.received),
            data.len(),
            sha256_hex(data)
        ));
    }
    let close = close_session(&mut tls, Duration::from_secs(10));
    if close.timed_out || !close.received.is_empty() {
        return Err(format!(
            "proxy did not close after client close_notify: {}",
            close.summary()
        ));
    }
    Ok(())
}

/// Waits until `cond` holds (polling), up to `timeout`.
pub fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        thread::sleep(Duration::from_millis(20));
    }
}

// ---------------------------------------------------------------------------------------------
// openssl s_client
// ---------------------------------------------------------------------------------------------

pub const OPENSSL: &str = "/usr/bin/openssl";

/// `Some(path)` if /usr/bin/openssl exists; otherwise prints a visible SKIP notice.
pub fn openssl_or_skip(test: &str) -> Option<&'static str> {
    if Path::new(OPENSSL).exists() {
        Some(OPENSSL)
    } else {
        // Written to the real stderr (not eprintln!, which the test harness captures), so the
        // skip is visible in a normal `cargo test` run.
        let _ = writeln!(
            io::stderr(),
            "SKIPPED {test}: {OPENSSL} not found (CI installs it)"
        );
        None
    }
}

pub struct SClientRun {
    pub stdout: Vec<u8>,
    pub stderr: String,
    pub status: Option<ExitStatus>,
}

impl SClientRun {
    /// Value after `Protocol version: ` in `-brief` output.
    pub fn protocol(&self) -> Option<&str> {
        brief_value(&self.stderr, "Protocol version:")
    }

    /// Value after `Ciphersuite: ` in `-brief` output.
    pub fn ciphersuite(&self) -> Option<&str> {
        brief_value(&self.stderr, "Ciphersuite:")
    }
}

fn brief_value<'a>(text: &'a str, key: &str) -> Option<&'a str> {
    text.lines()
        .find_map(|l| l.trim().strip_prefix(key))
        .map(str::trim)
}

/// Runs `openssl s_client -brief -ign_eof -nocommands` against `addr` trusting `ca`, with
/// `extra` args. Writes `input` on stdin (keeping stdin open), collects stdout until
/// `expect_len` bytes arrived, s_client exits, or `timeout` passes; then kills it.
pub fn s_client(
    addr: SocketAddr,
    ca: &Path,
    extra: &[&str],
    input: &[u8],
    expect_len: usize,
    timeout: Duration,
) -> SClientRun {
    let connect = addr.to_string();
    let mut cmd = Command::new(OPENSSL);
    cmd.arg("s_client")
        .args(["-connect", &connect])
        .arg("-CAfile")
        .arg(ca)
        .args([
            "-servername",
            "localhost",
            "-verify_return_error",
            "-brief",
            "-ign_eof",
            "-nocommands",
        ])
        .args(extra)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("spawn openssl s_client");
    let out: Shared<Vec<u8>> = Default::default();
    let err: Shared<Vec<u8>> = Default::default();
    let r1 = drain_into(child.stdout.take().unwrap(), out.clone());
    let r2 = drain_into(child.stderr.take().unwrap(), err.clone());
    let (done_tx, done_rx) = mpsc::channel::<()>();
    let stdin: ChildStdin = child.stdin.take().unwrap();
    let input = input.to_vec();
    let writer = thread::spawn(move || {
        let mut stdin = stdin;
        let _ = stdin.write_all(&input);
        let _ = stdin.flush();
        // Keep stdin open until told otherwise, so s_client does not quit early.
        let _ = done_rx.recv_timeout(Duration::from_secs(120));
        drop(stdin);
    });

    let deadline = Instant::now() + timeout;
    let mut status = None;
    loop {
        if out.lock().unwrap().len() >= expect_len {
            break;
        }
        if let Ok(Some(st)) = child.try_wait() {
            status = Some(st);
            break;
        }
        if Instant::now() >= deadline {
            break;
        }
        thread::sleep(Duration::from_millis(10));
    }
    let _ = done_tx.send(());
    if status.is_none() {
        let _ = child.kill();
        let _ = child.wait();
    }
    let _ = writer.join();
    let _ = r1.join();
    let _ = r2.join();
    let stdout = std::mem::take(&mut *out.lock().unwrap());
    let stderr = String::from_utf8_lossy(&err.lock().unwrap()).into_owned();
    SClientRun {
        stdout,
        stderr,
        status,
    }
}

/// Sends SIGUSR1 and returns each worker's `worker stats` line, keyed by worker id.
pub fn worker_stats(proxy: &Proxy, workers: usize) -> std::collections::BTreeMap<String, String> {
    let before = proxy.log_lines("worker stats").len();
    proxy.signal(Signal::USR1);
    assert!(
        proxy.wait_for_log_count("worker stats", before + workers, Duration::from_secs(10)),
        "expected {workers} `worker stats` lines after SIGUSR1, log:\n{}",
        proxy.log()
    );
    let mut map = std::collections::BTreeMap::new();
    for l in proxy.log_lines("worker stats").into_iter().skip(before) {
        let w = field(&l, "worker")
            .unwrap_or_else(|| panic!("no worker= in {l}"))
            .to_string();
        map.entry(w).or_insert(l);
    }
    map
}

/// Pipe descriptors of a one-worker proxy that are not in its splice pool, once that
/// number has held still for a moment (a flow hands its pipe back just after its last
/// splice out): the pipes connections hold, plus the proxy's own stdout/stderr.
pub fn unpooled_pipe_fds(proxy: &Proxy) -> usize {
    let sample = || {
        let pipes = proxy
            .fd_targets()
            .iter()
            .filter(|t| t.contains("->pipe:"))
            .count();
        let pooled = num(worker_stats(proxy, 1).get("0").unwrap(), "pipes_idle") as usize;
        pipes - 2 * pooled
    };
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut last = sample();
    while Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
        let now = sample();
        if now == last {
            return now;
        }
        last = now;
    }
    last
}

/// Asserts that the idle connections `held` (each past one exchange) hold no pipes — the
/// proxy's unpooled pipe descriptors are what they were before they opened — and that each
/// still relays both ways, a pipe's worth and more, after idling.
pub fn assert_idle_connections_hold_no_pipes(proxy: &Proxy, before: usize, held: &mut [TlsStream]) {
    assert_eq!(
        unpooled_pipe_fds(proxy),
        before,
        "idle connections hold pipes: {:?}",
        proxy.fd_targets()
    );
    let data = random_bytes(256 * 1024);
    for (i, tls) in held.iter_mut().enumerate() {
        assert_echo(tls, &data, &format!("connection {i} after idling"));
    }
}

/// Whether an outside peer the test needs is installed: `command` (program, args) exits 0.
/// When it is not, the test is skipped (`SKIP test: what`), unless TLSFRONT_REQUIRE_PEERS
/// is set (CI), where that is a failure.
pub fn have_peer(test: &str, command: &[&str], what: &str) -> bool {
    let ok = Command::new(command[0])
        .args(&command[1..])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        assert!(
            std::env::var_os("TLSFRONT_REQUIRE_PEERS").is_none(),
            "TLSFRONT_REQUIRE_PEERS is set but {what} is missing"
        );
        eprintln!("SKIP {test}: {what} is not installed");
    }
    ok
}

/// The admin endpoint's address, from the proxy's `admin listening addr=` line.
pub fn admin_addr(proxy: &Proxy) -> SocketAddr {
    let line = proxy
        .log_lines("admin listening")
        .into_iter()
        .next()
        .unwrap_or_else(|| panic!("no `admin listening` line:\n{}", proxy.log()));
    field(&line, "addr").unwrap().parse().unwrap()
}

/// The numeric value of `key=` in a log line.
pub fn num(line: &str, key: &str) -> u64 {
    field(line, key)
        .unwrap_or_else(|| panic!("no {key}= in {line}"))
        .parse()
        .unwrap_or_else(|_| panic!("{key}= not a number in {line}"))
}

/// A client that remembers sessions (per server name) across connections.
pub fn resuming_client(env: &TestEnv, opts: &ClientOpts) -> Arc<ClientConfig> {
    let mut cfg = (*env.client_with(opts)).clone();
    cfg.resumption = rustls::client::Resumption::in_memory_sessions(64);
    Arc::new(cfg)
}

/// Connects, echoes (which also takes in the tickets) and returns how the handshake went.
pub fn session(addr: SocketAddr, cfg: &Arc<ClientConfig>) -> rustls::HandshakeKind {
    let mut tls = tls_connect_ok(addr, cfg);
    assert_echo(&mut tls, b"ping\n", "echo");
    tls.conn.handshake_kind().expect("handshake finished")
}
