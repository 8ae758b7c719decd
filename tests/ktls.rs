//! Kernel TLS offload. On a kernel with kTLS (CI runs this binary inside User-Mode Linux
//! through `scripts/uml-run`, with TLSFRONT_REQUIRE_KTLS=1) the kTLS tests run and the
//! fallback tests are skipped; on a kernel without it, the reverse.

mod common;

use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::*;
use rustls::client::Resumption;
use rustls::HandshakeKind;
use tlsfront::io::ktls;

/// True when the kernel offers kTLS; panics when it must (in the UML CI run) but does not.
fn have_ktls(test: &str) -> bool {
    let support = ktls::probe();
    if support.available() {
        return true;
    }
    assert!(
        std::env::var_os("TLSFRONT_REQUIRE_KTLS").is_none(),
        "TLSFRONT_REQUIRE_KTLS is set but this kernel has no kTLS: {support:?}"
    );
    eprintln!("SKIP {test}: this kernel has no kTLS ({support:?}); CI runs it in User-Mode Linux");
    false
}

/// `/proc/net/tls_stat` as name → value.
fn tls_stat() -> std::collections::HashMap<String, u64> {
    std::fs::read_to_string("/proc/net/tls_stat")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let mut it = l.split_whitespace();
            Some((it.next()?.to_string(), it.next()?.parse().ok()?))
        })
        .collect()
}

fn ktls_proxy(env: &TestEnv, backend: impl ToString) -> Proxy {
    env.config(backend).service("ktls = \"on\"").start()
}

#[test]
fn without_ktls_auto_serves_from_userspace_and_says_why() {
    if ktls::probe().available() {
        eprintln!("SKIP: this kernel has kTLS");
        return;
    }
    let env = TestEnv::new();
    let echo = Backend::echo();
    let proxy = env.config(echo.addr).service("ktls = \"auto\"").start();
    let mut tls = tls_connect_ok(proxy.addr(), &env.client());
    assert_echo(&mut tls, b"userspace\n", "echo");
    assert!(
        proxy.wait_for_log(
            "offload=userspace reason=kernel_lacks_tls_ulp",
            Duration::from_secs(5)
        ),
        "{}",
        proxy.log()
    );
    let stats = worker_stats(&proxy, 1);
    let line = stats.get("0").unwrap();
    assert_eq!(
        num(line, "offload_userspace_kernel_lacks_tls_ulp"),
        1,
        "{line}"
    );
    assert_eq!(num(line, "offload_ktls"), 0, "{line}");
}

#[test]
fn without_ktls_on_refuses_to_start() {
    if ktls::probe().available() {
        eprintln!("SKIP: this kernel has kTLS");
        return;
    }
    let env = TestEnv::new();
    let text = env.config("127.0.0.1:9").service("ktls = \"on\"").to_toml();
    let path = env.write_config(&text);
    for cmd in ["check", "serve"] {
        let out = run_tlsfront(
            [cmd, "--config", path.to_str().unwrap()],
            Duration::from_secs(20),
        );
        assert_eq!(out.code(), Some(2), "{cmd}: {out:?}");
        let line = line_of(&text, "ktls = ");
        assert!(
            out.stderr.contains(&format!("line {line}")),
            "{cmd}: {out:?}"
        );
        assert!(out.stderr.contains("service[0].ktls"), "{cmd}: {out:?}");
        assert!(out.stderr.contains("no kernel TLS"), "{cmd}: {out:?}");
    }
}

#[test]
fn ktls_every_version_and_aead_16mib_each_way() {
    if !have_ktls("ktls_every_version_and_aead_16mib_each_way") {
        return;
    }
    let cases = [
        (
            ClientOpts::only_suite(suites::TLS13_AES_128_GCM_SHA256),
            "TLS13_AES_128_GCM_SHA256",
        ),
        (
            ClientOpts::only_suite(suites::TLS13_AES_256_GCM_SHA384),
            "TLS13_AES_256_GCM_SHA384",
        ),
        (
            ClientOpts::only_suite(suites::TLS13_CHACHA20_POLY1305_SHA256),
            "TLS13_CHACHA20",
        ),
        (
            ClientOpts::only_suite(suites::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256),
            "TLS12_AES_128_GCM",
        ),
        (
            ClientOpts::only_suite(suites::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384),
            "TLS12_AES_256_GCM",
        ),
        (
            ClientOpts::only_suite(suites::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256),
            "TLS12_CHACHA20",
        ),
    ];
    let env = TestEnv::new();
    let echo = Backend::echo();
    let proxy = ktls_proxy(&env, echo.addr);
    let data = random_bytes(16 * MIB);
    let mut spliced_before = 0;
    for (i, (opts, name)) in cases.iter().enumerate() {
        let before = tls_stat();
        let mut tls = tls_connect_ok(proxy.addr(), &env.client_with(opts));
        let out = Transfer::echo(&data)
            .timeout(Duration::from_secs(120))
            .run(&mut tls);
        assert!(
            !out.timed_out && out.sent == data.len(),
            "{name}: {}",
            out.summary()
        );
        assert_same_bytes(name, &out.received, &data);
        let after = tls_stat();
        for counter in ["TlsTxSw", "TlsRxSw"] {
            let (b, a) = (
                before.get(counter).copied().unwrap_or(0),
                after.get(counter).copied().unwrap_or(0),
            );
            assert!(
                a > b,
                "{name}: /proc/net/tls_stat {counter} did not rise ({b} -> {a})"
            );
        }
        drop(tls);
        assert!(
            proxy.wait_for_log_count("offload=ktls", i + 1, Duration::from_secs(10)),
            "{name}: {}",
            proxy.log()
        );
        let stats = worker_stats(&proxy, 1);
        let line = stats.get("0").unwrap();
        // Bytes that arrived with the client's last handshake flight are forwarded from
        // userspace before the hand-off; everything after that is spliced.
        let slack = 256 * KIB as u64;
        let up = num(line, "spliced_client_to_backend");
        assert!(
            up + slack >= spliced_before + data.len() as u64,
            "{name}: splice path not used: {line}"
        );
        spliced_before = up;
        let down = num(line, "spliced_backend_to_client");
        assert!(down >= (i as u64 + 1) * data.len() as u64, "{name}: {line}");
    }
    let stats = worker_stats(&proxy, 1);
    assert_eq!(
        num(stats.get("0").unwrap(), "offload_ktls"),
        cases.len() as u64
    );
}

/// Backend that records what it read until EOF, then replies and half-closes.
fn replying_backend(reply: &'static [u8]) -> (Backend, mpsc::Receiver<Vec<u8>>) {
    let (tx, rx) = mpsc::channel();
    let tx = std::sync::Mutex::new(tx);
    let backend = Backend::start(move |mut s: TcpStream, _| {
        let (received, _) = read_to_eof(&mut s);
        let _ = tx.lock().unwrap().send(received);
        let _ = s.write_all(reply);
        let _ = s.shutdown(Shutdown::Write);
    });
    (backend, rx)
}

#[test]
fn ktls_client_close_notify_half_closes_the_backend() {
    if !have_ktls("ktls_client_close_notify_half_closes_the_backend") {
        return;
    }
    const REPLY: &[u8] = b"reply after EOF";
    let env = TestEnv::new();
    let (backend, seen) = replying_backend(REPLY);
    let proxy = ktls_proxy(&env, backend.addr);
    let data = random_bytes(300 * KIB);
    let mut tls = tls_connect_ok(proxy.addr(), &env.client_with(&ClientOpts::tls13()));
    let out = Transfer::until_eof(&data)
        .close_after_send()
        .timeout(Duration::from_secs(30))
        .run(&mut tls);
    let received = seen
        .recv_timeout(Duration::from_secs(20))
        .expect("backend never saw EOF");
    assert_same_bytes("client -> backend", &received, &data);
    assert_eq!(out.received, REPLY, "{}", out.summary());
    assert_eq!(out.eof, Some(Eof::CloseNotify), "{}", out.summary());
    assert!(proxy.wait_for_log("offload=ktls", Duration::from_secs(5)));
    let stats = worker_stats(&proxy, 1);
    assert!(num(stats.get("0").unwrap(), "ktls_control_records") >= 1);
}

#[test]
fn ktls_client_keyupdate_closes_cleanly_on_old_kernels() {
    if !have_ktls("ktls_client_keyupdate_closes_cleanly_on_old_kernels") {
        return;
    }
    let release = rustix::system::uname()
        .release()
        .to_string_lossy()
        .into_owned();
    let mut parts = release
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|p| p.parse::<u32>().ok());
    let version = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    let env = TestEnv::new();
    let echo = Backend::echo();
    let proxy = ktls_proxy(&env, echo.addr);
    let mut tls = tls_connect_ok(proxy.addr(), &env.client_with(&ClientOpts::tls13()));
    assert_echo(&mut tls, b"before\n", "before the key update");
    tls.conn.refresh_traffic_keys().expect("queue KeyUpdate");
    let start = Instant::now();
    let out = Transfer::echo(b"after the key update\n")
        .timeout(Duration::from_secs(15))
        .run(&mut tls);
    if version >= (6, 14) {
        assert!(
            out.eof.is_none() && !out.timed_out,
            "rekey kernel: {}",
            out.summary()
        );
        assert_eq!(out.received, b"after the key update\n");
    } else {
        assert!(
            !out.timed_out,
            "hung after KeyUpdate on {release}: {}",
            out.summary()
        );
        assert!(out.eof.is_some(), "{}", out.summary());
        assert!(start.elapsed() < Duration::from_secs(10));
        assert!(
            proxy.wait_for_log("reason=keyupdate_unsupported", Duration::from_secs(5)),
            "{}",
            proxy.log()
        );
    }
}

#[test]
fn ktls_with_ticket_resumption() {
    if !have_ktls("ktls_with_ticket_resumption") {
        return;
    }
    let env = TestEnv::new();
    let echo = Backend::echo();
    let proxy = ktls_proxy(&env, echo.addr);
    let mut cfg = (*env.client_with(&ClientOpts::tls13())).clone();
    cfg.resumption = Resumption::in_memory_sessions(16);
    let cfg = std::sync::Arc::new(cfg);
    for (i, kind) in [HandshakeKind::Full, HandshakeKind::Resumed]
        .into_iter()
        .enumerate()
    {
        let mut tls = tls_connect_ok(proxy.addr(), &cfg);
        // Reading the echo also takes in the tickets sent before the hand-off.
        assert_echo(&mut tls, format!("round {i}\n").as_bytes(), "echo");
        assert_eq!(tls.conn.handshake_kind(), Some(kind), "connection {i}");
        tls.conn.send_close_notify();
        let _ = tls.conn.complete_io(&mut tls.sock);
        let mut rest = Vec::new();
        let _ = tls.read_to_end(&mut rest);
    }
    assert!(
        proxy.wait_for_log_count("offload=ktls", 2, Duration::from_secs(5)),
        "{}",
        proxy.log()
    );
}

/// Client mode on kTLS too: the gateway pair with both proxies offloading, 8 MiB each way,
/// and the second connection resuming with a ticket the client side may have received
/// after its hand-off (rustls's KernelConnection takes it).
#[test]
fn ktls_gateway_pair_with_client_mode_offloaded_and_resumed() {
    if !have_ktls("ktls_gateway_pair_with_client_mode_offloaded_and_resumed") {
        return;
    }
    let env = TestEnv::new();
    let echo = Backend::echo();
    let server = ktls_proxy(&env, echo.addr);
    let toml = format!(
        "[global]\nworkers = 1\npin = false\n[[service]]\nmode = \"client\"\nlisten = \"127.0.0.1:0\"\nbackend = \"{}\"\nserver_name = \"localhost\"\nca = {}\nktls = \"on\"\n",
        server.addr(),
        toml_path(&env.ca_pem)
    );
    let path = env.write_file("client.toml", &toml);
    let client = Proxy::start(["serve".as_ref(), "--config".as_ref(), path.as_os_str()]);
    for round in 0..2u8 {
        let data: Vec<u8> = (0..8usize << 20).map(|i| (i % 251) as u8 ^ round).collect();
        let mut app = TcpStream::connect(client.addr()).unwrap();
        app.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
        let mut writer = app.try_clone().unwrap();
        let sent = data.clone();
        let t = std::thread::spawn(move || {
            writer.write_all(&sent).unwrap();
            writer.shutdown(Shutdown::Write).unwrap();
        });
        let mut got = Vec::new();
        app.read_to_end(&mut got).unwrap();
        t.join().unwrap();
        assert!(got == data, "round {round}: {} bytes back", got.len());
    }
    for (proxy, name) in [(&client, "client mode"), (&server, "server mode")] {
        assert!(
            proxy.wait_for_log_count("offload=ktls", 2, Duration::from_secs(5)),
            "{name}: {}",
            proxy.log()
        );
    }
    let stats = worker_stats(&server, 1);
    assert_eq!(num(stats.values().next().unwrap(), "handshakes_resumed"), 1);
}

#[test]
fn ktls_no_fd_or_pipe_leak_after_2000_connections() {
    if !have_ktls("ktls_no_fd_or_pipe_leak_after_2000_connections") {
        return;
    }
    let env = TestEnv::new();
    let echo = Backend::echo();
    let proxy = ktls_proxy(&env, echo.addr);
    let cfg = env.client_with(&ClientOpts::tls13());
    let session = |i: usize| {
        let mut tls = tls_connect_ok(proxy.addr(), &cfg);
        assert_echo(&mut tls, format!("conn {i}\n").as_bytes(), "echo");
    };
    // Warm up: the worker's pipe pool fills to its steady size.
    for i in 0..5 {
        session(i);
    }
    let settled = |proxy: &Proxy| {
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut last = proxy.fd_count();
        while Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(200));
            let now = proxy.fd_count();
            if now == last {
                return now;
            }
            last = now;
        }
        last
    };
    // Pooled pipes are kept on purpose (bounded, 2 fds each): count everything else.
    let pooled_fds =
        |proxy: &Proxy| 2 * num(worker_stats(proxy, 1).get("0").unwrap(), "pipes_idle") as usize;
    let idle = settled(&proxy) - pooled_fds(&proxy);
    for i in 0..2000 {
        session(i);
    }
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut now = settled(&proxy) - pooled_fds(&proxy);
    while now != idle && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
        now = settled(&proxy) - pooled_fds(&proxy);
    }
    assert_eq!(now, idle, "fds: {:?}", proxy.fd_targets());
    let stats = worker_stats(&proxy, 1);
    let line = stats.get("0").unwrap();
    assert_eq!(num(line, "offload_ktls"), 2005, "{line}");
    assert!(num(line, "pipes_idle") <= 128, "{line}");
}

/// An idle kTLS connection holds no pipe: each direction borrows one from the worker's
/// pool while records flow and hands it back empty (16 idle connections would otherwise
/// hold 32 pipes, 64 descriptors), and relays again when bytes come.
#[test]
fn idle_ktls_connections_hold_no_pipes() {
    if !have_ktls("idle_ktls_connections_hold_no_pipes") {
        return;
    }
    let env = TestEnv::new();
    let echo = Backend::echo();
    let proxy = ktls_proxy(&env, echo.addr);
    let cfg = env.client_with(&ClientOpts::tls13());
    let before = unpooled_pipe_fds(&proxy);
    let mut held = Vec::new();
    for i in 0..16 {
        let mut tls = tls_connect_ok(proxy.addr(), &cfg);
        assert_echo(&mut tls, format!("conn {i}\n").as_bytes(), "echo");
        held.push(tls);
    }
    assert_idle_connections_hold_no_pipes(&proxy, before, &mut held);
    let stats = worker_stats(&proxy, 1);
    assert_eq!(num(stats.get("0").unwrap(), "offload_ktls"), 16);
}

/// The io::ktls primitives against the real kernel: records sent with TLS_TX are counted in
/// the kernel's sequence number, and an alert sent with TLS_SET_RECORD_TYPE arrives at a
/// TLS_RX peer as a control record (type 21) after the data, which a plain read refuses.
#[test]
fn ktls_primitives_against_the_kernel() {
    if !have_ktls("ktls_primitives_against_the_kernel") {
        return;
    }
    use ktls::{CryptoInfo, Direction, TlsVersion};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let mut a = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    let (mut b, _) = listener.accept().unwrap();
    let key = || CryptoInfo::dummy(TlsVersion::Tls13, ktls::Cipher::Aes128Gcm);
    ktls::attach_ulp(&a).unwrap();
    ktls::set_crypto(&a, Direction::Tx, &mut key()).unwrap();
    ktls::attach_ulp(&b).unwrap();
    ktls::set_crypto(&b, Direction::Rx, &mut key()).unwrap();
    assert_eq!(ktls::record_seq(&a, Direction::Tx).unwrap(), 0);

    a.write_all(&[7u8; 40_000]).unwrap(); // 3 records: 16384 + 16384 + 7232
    assert_eq!(ktls::record_seq(&a, Direction::Tx).unwrap(), 3);
    ktls::send_close_notify(&a).unwrap();
    assert_eq!(ktls::record_seq(&a, Direction::Tx).unwrap(), 4);

    let mut data = vec![0u8; 40_000];
    b.read_exact(&mut data).unwrap();
    assert!(data.iter().all(|&x| x == 7));
    // Next is the alert: a plain read fails (EIO) and leaves it queued...
    b.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let err = b.read(&mut [0u8; 16]).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EIO), "{err}");
    // ...and recvmsg with a control buffer returns it with its record type.
    let mut buf = [0u8; 64];
    let record = ktls::recv_record(&b, &mut buf)
        .unwrap()
        .expect("alert queued");
    assert_eq!(record.content_type, ktls::RECORD_ALERT);
    assert_eq!(&buf[..record.len], &[1, 0]);
    assert_eq!(ktls::record_seq(&b, Direction::Rx).unwrap(), 4);
}
