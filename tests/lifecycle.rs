//! Process lifecycle: startup logs, signals (SIGTERM drain, SIGINT, SIGUSR1 stats), multiple
//! workers, fd hygiene, and the file-less quick modes (flags only, ephemeral cert, built-in echo).

mod common;

use std::io::ErrorKind;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use common::*;
use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ClientConnection};

#[test]
fn startup_logs_ready_and_listening_without_ansi() {
    let env = TestEnv::new();
    let echo = Backend::echo();
    let proxy = env.config(echo.addr).start();
    let log = proxy.log();

    assert!(
        !log.contains('\x1b'),
        "stderr is not a TTY, logs must not contain ANSI escapes:\n{log}"
    );
    let ready = proxy.log_lines("ready workers=");
    assert_eq!(ready.len(), 1, "exactly one ready line expected: {ready:?}");
    assert_eq!(field(&ready[0], "workers"), Some("1"), "{}", ready[0]);
    assert!(
        ready[0].contains("INFO"),
        "ready should be INFO: {}",
        ready[0]
    );

    let (name, addr) = proxy.services()[0].clone();
    assert_eq!(name, "svc");
    assert_eq!(addr.ip().to_string(), "127.0.0.1");
    assert_ne!(
        addr.port(),
        0,
        "listening line must show the real bound port"
    );
    // The listening line comes before ready.
    let li = log.find("listening service=").unwrap();
    let ri = log.find("ready workers=").unwrap();
    assert!(li < ri, "`listening` must be logged before `ready`");

    let mut tls = tls_connect_ok(addr, &env.client());
    assert_echo(&mut tls, b"hello\n", "echo");
}

/// After SIGTERM, a new connection must be refused or closed without completing a handshake.
fn assert_not_served(addr: SocketAddr, cfg: &Arc<ClientConfig>) {
    let Ok(mut sock) = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2)) else {
        return; // refused: fine
    };
    sock.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    sock.set_write_timeout(Some(Duration::from_secs(3)))
        .unwrap();
    let mut conn = ClientConnection::new(
        cfg.clone(),
        ServerName::try_from("localhost".to_string()).unwrap(),
    )
    .unwrap();
    let mut result = Ok(());
    while conn.is_handshaking() {
        if let Err(e) = conn.complete_io(&mut sock) {
            result = Err(e);
            break;
        }
    }
    match result {
        Ok(()) => panic!("a new connection completed a TLS handshake after SIGTERM"),
        Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => panic!(
            "a new connection after SIGTERM was accepted by the kernel but neither served nor \
             closed within 3s (listener left open?)"
        ),
        Err(_) => {}
    }
}

#[test]
fn sigterm_drains_inflight_transfer_then_exits_zero() {
    let env = TestEnv::new();
    let echo = Backend::echo();
    let mut proxy = env.config(echo.addr).drain_timeout("20s").start();
    let addr = proxy.addr();
    let cfg = env.client();

    let data = Arc::new(random_bytes(16 * MIB));
    let received = Arc::new(AtomicUsize::new(0));
    let mut tls = tls_connect_ok(addr, &cfg);
    let transfer = {
        let data = data.clone();
        let received = received.clone();
        thread::spawn(move || {
            let out = Transfer::echo(&data)
                .paced(64 * KIB, Duration::from_millis(8))
                .timeout(Duration::from_secs(60))
                .run_with_progress(&mut tls, &mut |_, r| received.store(r, Ordering::SeqCst));
            let close = close_session(&mut tls, Duration::from_secs(10));
            (out, close)
        })
    };

    let going = wait_until(Duration::from_secs(30), || {
        received.load(Ordering::SeqCst) >= 4 * MIB || transfer.is_finished()
    });
    if !going || transfer.is_finished() {
        let detail = match transfer.join() {
            Ok((out, _)) => out.summary(),
            Err(_) => "transfer thread panicked".into(),
        };
        panic!("transfer did not get going before SIGTERM: {detail}");
    }
    let at_signal = received.load(Ordering::SeqCst);
    proxy.signal(Signal::TERM);
    assert!(
        proxy.wait_for_log("shutting down", Duration::from_secs(5)),
        "no `shutting down` log line after SIGTERM"
    );
    thread::sleep(Duration::from_millis(300));
    assert_not_served(addr, &cfg);
    assert!(
        proxy.try_status().is_none(),
        "proxy exited while a connection was still transferring"
    );

    let (out, close) = transfer.join().expect("transfer thread panicked");
    assert!(at_signal < data.len(), "SIGTERM was not sent mid-transfer");
    assert!(!out.timed_out, "transfer timed out: {}", out.summary());
    assert_eq!(out.eof, None, "connection ended early: {}", out.summary());
    assert_same_bytes("16 MiB across SIGTERM", &out.received, &data);
    assert!(!close.timed_out, "proxy did not close: {}", close.summary());

    let status = proxy
        .wait_exit(Duration::from_secs(15))
        .expect("proxy did not exit after the last connection closed");
    assert_eq!(
        status.code(),
        Some(0),
        "exit status after drain: {status:?}"
    );
    assert!(proxy.log_contains("drained"), "no `drained` log line");
}

#[test]
fn sigint_idle_exits_zero_and_logs_final_stats() {
    let env = TestEnv::new();
    let echo = Backend::echo();
    let mut proxy = env.config(echo.addr).start();
    let mut tls = tls_connect_ok(proxy.addr(), &env.client());
    assert_echo(&mut tls, b"one\n", "echo");
    drop(tls);

    proxy.signal(Signal::INT);
    let status = proxy
        .wait_exit(Duration::from_secs(10))
        .expect("idle proxy did not exit within 10s of SIGINT");
    assert_eq!(status.code(), Some(0), "{status:?}");
    assert!(proxy.log_contains("shutting down"));
    let stats = proxy.log_lines("worker stats");
    assert!(
        stats.iter().any(|l| field(l, "worker") == Some("0")),
        "worker stats line expected at exit: {stats:?}"
    );
    let last = stats.last().unwrap();
    assert_eq!(field(last, "accepted"), Some("1"), "{last}");
    assert_eq!(field(last, "active"), Some("0"), "{last}");
}

/// Sends SIGUSR1 and returns worker index -> stats line (the first line for each worker).
#[test]
fn two_workers_share_connections() {
    const N: usize = 200;
    let env = TestEnv::new();
    let echo = Backend::echo();
    let proxy = env.config(echo.addr).workers(2).start();
    assert_eq!(
        field(&proxy.log_lines("ready workers=")[0], "workers"),
        Some("2")
    );
    let addr = proxy.addr();
    let cfg = env.client();

    let handles: Vec<_> = (0..4)
        .map(|t| {
            let cfg = cfg.clone();
            thread::spawn(move || {
                for i in 0..N / 4 {
                    let msg = format!("conn {t}/{i}\n");
                    if let Err(e) = echo_session(addr, &cfg, msg.as_bytes()) {
                        panic!("connection {t}/{i}: {e}");
                    }
                }
            })
        })
        .collect();
    for h in handles {
        h.join().expect("client thread failed");
    }

    let stats = worker_stats(&proxy, 2);
    let w0 = stats.get("0").expect("no stats line for worker 0");
    let w1 = stats.get("1").expect("no stats line for worker 1");
    let (a0, a1) = (num(w0, "accepted"), num(w1, "accepted"));
    assert!(
        a0 > 0 && a1 > 0,
        "both workers must accept connections: {w0} / {w1}"
    );
    assert_eq!(
        a0 + a1,
        N as u64,
        "accepted counts must add up: {w0} / {w1}"
    );
    assert_eq!(
        num(w0, "handshakes") + num(w1, "handshakes"),
        N as u64,
        "{w0} / {w1}"
    );
}

/// Waits until the proxy's fd count is stable over several samples and returns it.
fn settled_fd_count(proxy: &Proxy) -> usize {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut last = proxy.fd_count();
    let mut same = 0;
    while Instant::now() < deadline && same < 5 {
        thread::sleep(Duration::from_millis(100));
        let n = proxy.fd_count();
        if n == last {
            same += 1;
        } else {
            same = 0;
            last = n;
        }
    }
    last
}

/// Sends a ClientHello and closes; optionally waits for the server's first flight first.
fn close_mid_handshake(addr: SocketAddr, cfg: &Arc<ClientConfig>, read_first: bool) {
    let Ok(mut sock) = tcp_connect(addr) else {
        return;
    };
    let mut conn = ClientConnection::new(
        cfg.clone(),
        ServerName::try_from("localhost".to_string()).unwrap(),
    )
    .unwrap();
    let _ = conn.write_tls(&mut sock);
    if read_first {
        let _ = sock.set_read_timeout(Some(Duration::from_secs(2)));
        let _ = conn.read_tls(&mut sock);
    }
}

#[test]
fn no_fd_leak_after_10k_connections() {
    const N: usize = 10_000;
    let env = TestEnv::new();
    let echo = Backend::echo();
    let proxy = env
        .config(echo.addr)
        .workers(1)
        .service(r#"handshake_timeout = "5s""#)
        .start();
    let addr = proxy.addr();
    let cfg = env.client();

    for i in 0..5 {
        echo_session(addr, &cfg, b"warm-up\n").unwrap_or_else(|e| panic!("warm-up {i}: {e}"));
        close_mid_handshake(addr, &cfg, true);
    }
    let idle = settled_fd_count(&proxy);
    let idle_targets = proxy.fd_targets();

    let t0 = Instant::now();
    let mut connect_failures = 0;
    for i in 0..N {
        match i % 10 {
            0 => echo_session(addr, &cfg, format!("msg {i}\n").as_bytes())
                .unwrap_or_else(|e| panic!("full session {i}: {e}")),
            1 => close_mid_handshake(addr, &cfg, false),
            2 => close_mid_handshake(addr, &cfg, true),
            3 => match tcp_connect(addr) {
                // Abortive close (RST).
                Ok(s) => {
                    let _ = socket2::SockRef::from(&s).set_linger(Some(Duration::ZERO));
                }
                Err(_) => connect_failures += 1,
            },
            _ => {
                if tcp_connect(addr).is_err() {
                    connect_failures += 1;
                }
            }
        }
    }
    eprintln!("{N} connections in {:?}", t0.elapsed());
    assert_eq!(connect_failures, 0, "TCP connects to the proxy failed");

    let ok = wait_until(Duration::from_secs(10), || proxy.fd_count() == idle);
    if !ok {
        let now = proxy.fd_targets();
        let extra: Vec<&String> = now.iter().filter(|t| !idle_targets.contains(t)).collect();
        panic!(
            "fd count did not return to idle within 10s: idle={idle} now={} \
             ({} fds not open at idle, e.g. {:?})",
            now.len(),
            extra.len(),
            &extra[..extra.len().min(20)]
        );
    }

    // Still serving.
    echo_session(addr, &cfg, b"after\n").expect("session after the storm");
}

#[test]
fn quick_flags_without_config_file() {
    let env = TestEnv::new();
    let echo = Backend::echo();
    let backend = echo.addr.to_string();
    let proxy = Proxy::start([
        "serve".as_ref(),
        "--listen".as_ref(),
        "127.0.0.1:0".as_ref(),
        "--backend".as_ref(),
        backend.as_ref(),
        "--cert".as_ref(),
        env.cert_pem.as_os_str(),
        "--key".as_ref(),
        env.key_pem.as_os_str(),
    ]);
    // Verified against the test CA: the given cert is really used.
    let mut tls = tls_connect_ok(proxy.addr(), &env.client());
    assert_echo(&mut tls, &random_bytes(64 * KIB), "echo with --cert/--key");
    assert_eq!(echo.connections(), 1);
}

/// The `sha256=` fingerprint from the log, normalised to lowercase hex without separators.
fn logged_fingerprint(proxy: &Proxy) -> (String, String) {
    let lines = proxy.log_lines("sha256=");
    let line = lines
        .first()
        .unwrap_or_else(|| panic!("no `sha256=` line in log:\n{}", proxy.log()))
        .clone();
    let fp = field(&line, "sha256")
        .unwrap_or_else(|| panic!("cannot parse sha256= in {line}"))
        .replace(':', "")
        .to_ascii_lowercase();
    (line, fp)
}

#[test]
fn ephemeral_self_signed_cert_when_no_cert_given() {
    let echo = Backend::echo();
    let backend = echo.addr.to_string();
    let proxy = Proxy::start(["serve", "--listen", "127.0.0.1:0", "--backend", &backend]);
    let (line, fp) = logged_fingerprint(&proxy);
    assert!(line.contains("WARN"), "ephemeral cert should warn: {line}");

    let cfg = insecure_client();
    let mut tls = tls_connect_ok(proxy.addr(), &cfg);
    let msg = b"self-signed works\n";
    assert_echo(&mut tls, msg, "echo");
    let der = tls.conn.peer_certificates().expect("no certificate seen")[0].to_vec();
    assert_eq!(
        fp,
        sha256_hex(&der),
        "logged sha256= must be the SHA-256 of the served certificate (DER)"
    );
    assert_eq!(echo.bytes_received(), msg.len() as u64);
}

#[test]
fn builtin_echo_backend_when_no_backend_given() {
    let proxy = Proxy::start(["serve", "--listen", "127.0.0.1:0"]);
    let log = proxy.log().to_ascii_lowercase();
    assert!(
        log.lines()
            .any(|l| l.contains("echo") && l.contains("backend")),
        "log should mention the built-in echo backend:\n{log}"
    );
    let cfg = insecure_client();
    let mut tls = tls_connect_ok(proxy.addr(), &cfg);
    let data = random_bytes(256 * KIB);
    assert_echo(&mut tls, &data, "built-in echo");
}
