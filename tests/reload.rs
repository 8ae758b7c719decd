//! Hot reload on SIGHUP: certificates change for new connections only, transfers in flight
//! are untouched, a broken reload keeps the old state, listeners never refuse a connection,
//! and services can be added and removed.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use common::*;
use rustls::{ClientConfig, RootCertStore};

/// Certificates of two different CAs, and a client trusting both.
struct TwoCerts {
    a: TestEnv,
    b: TestEnv,
    client: Arc<ClientConfig>,
}

impl TwoCerts {
    fn new() -> TwoCerts {
        let (a, b) = (TestEnv::new(), TestEnv::new());
        let mut roots = RootCertStore::empty();
        roots.add(a.ca_der.clone()).unwrap();
        roots.add(b.ca_der.clone()).unwrap();
        let mut client = ClientConfig::builder_with_provider(ClientOpts::default().provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        // A resumed session reports the certificate of the session it resumes (tickets
        // survive reloads), so certificate checks use full handshakes.
        client.resumption = rustls::client::Resumption::disabled();
        TwoCerts {
            a,
            b,
            client: Arc::new(client),
        }
    }

    /// Points the live cert/key files at `which`'s certificate.
    fn install(&self, which: &TestEnv, live: &(PathBuf, PathBuf)) {
        std::fs::copy(&which.cert_pem, &live.0).unwrap();
        std::fs::copy(&which.key_pem, &live.1).unwrap();
    }
}

/// A config for `env` whose cert/key are the given live files.
fn config_with_live_files(
    env: &TestEnv,
    backend: SocketAddr,
    extra: &[&str],
) -> (PathBuf, (PathBuf, PathBuf)) {
    let live = (env.path("live-cert.pem"), env.path("live-key.pem"));
    let mut builder = env.config(backend);
    for line in extra {
        builder = builder.service(line);
    }
    let text = builder
        .to_toml()
        .replace(&toml_path(&env.cert_pem), &toml_path(&live.0))
        .replace(&toml_path(&env.key_pem), &toml_path(&live.1));
    (env.write_config(&text), live)
}

fn start(config: &Path) -> Proxy {
    Proxy::start(["serve".as_ref(), "--config".as_ref(), config.as_os_str()])
}

fn reload(proxy: &Proxy, expect_ok: usize) {
    proxy.signal(Signal::HUP);
    assert!(
        proxy.wait_for_log_count("reload ok", expect_ok, Duration::from_secs(10)),
        "reload {expect_ok} did not happen:\n{}",
        proxy.log()
    );
}

fn served_cert(addr: SocketAddr, client: &Arc<ClientConfig>) -> Vec<u8> {
    let mut tls = tls_connect_ok(addr, client);
    assert_echo(&mut tls, b"which cert?\n", "echo");
    tls.conn.peer_certificates().unwrap()[0].to_vec()
}

#[test]
fn five_reloads_during_a_64mib_transfer_change_the_cert_for_new_connections_only() {
    let certs = TwoCerts::new();
    let echo = Backend::echo();
    let (config, live) = config_with_live_files(&certs.a, echo.addr, &[]);
    certs.install(&certs.a, &live);
    let proxy = start(&config);
    assert_eq!(
        served_cert(proxy.addr(), &certs.client),
        certs.a.leaf_der.to_vec()
    );

    let data = random_bytes(64 * MIB);
    let mut tls = tls_connect_ok(proxy.addr(), &certs.client);
    let transfer = {
        let data = data.clone();
        thread::spawn(move || {
            let out = Transfer::echo(&data)
                .paced(64 * KIB, Duration::from_millis(5)) // ~5 s: rustls takes 64 KiB a write
                .timeout(Duration::from_secs(120))
                .run(&mut tls);
            (out, tls)
        })
    };
    for i in 0..5 {
        let which = if i % 2 == 0 { &certs.b } else { &certs.a };
        certs.install(which, &live);
        reload(&proxy, i + 1);
        assert_eq!(
            served_cert(proxy.addr(), &certs.client),
            which.leaf_der.to_vec(),
            "after reload {i}"
        );
        thread::sleep(Duration::from_millis(150));
    }
    assert!(
        !transfer.is_finished(),
        "the transfer must still be in flight during the reloads"
    );
    let (out, tls) = transfer.join().unwrap();
    assert!(!out.timed_out && out.eof.is_none(), "{}", out.summary());
    assert_same_bytes("transfer across reloads", &out.received, &data);
    // The connection made before the reloads still shows the certificate it started with.
    assert_eq!(
        tls.conn.peer_certificates().unwrap()[0].to_vec(),
        certs.a.leaf_der.to_vec()
    );
}

#[test]
fn a_broken_reload_keeps_the_old_state_and_says_why() {
    let certs = TwoCerts::new();
    let echo = Backend::echo();
    let (config, live) = config_with_live_files(&certs.a, echo.addr, &[]);
    certs.install(&certs.a, &live);
    let proxy = start(&config);

    std::fs::write(&live.0, "-----BEGIN CERTIFICATE-----\nnot base64 at all\n").unwrap();
    proxy.signal(Signal::HUP);
    assert!(
        proxy.wait_for_log("reload failed", Duration::from_secs(10)),
        "{}",
        proxy.log()
    );
    let line = proxy.log_lines("reload failed").remove(0);
    assert!(
        line.contains("service[0].cert") && line.contains("live-cert.pem"),
        "{line}"
    );
    assert_eq!(
        served_cert(proxy.addr(), &certs.client),
        certs.a.leaf_der.to_vec()
    );

    // Fixed again: the next reload goes through.
    certs.install(&certs.b, &live);
    reload(&proxy, 1);
    assert_eq!(
        served_cert(proxy.addr(), &certs.client),
        certs.b.leaf_der.to_vec()
    );
    proxy.signal(Signal::USR1);
    assert!(proxy.wait_for_log(
        "process stats reloads_ok=1 reloads_failed=1",
        Duration::from_secs(5)
    ));
}

#[test]
fn connections_during_reloads_are_never_refused() {
    let certs = TwoCerts::new();
    let echo = Backend::echo();
    let (config, live) = config_with_live_files(&certs.a, echo.addr, &[]);
    certs.install(&certs.a, &live);
    let proxy = start(&config);
    let addr = proxy.addr();
    let stop = Arc::new(AtomicBool::new(false));
    let (done, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let clients: Vec<_> = (0..2)
        .map(|_| {
            let (stop, done, failed, client) = (
                stop.clone(),
                done.clone(),
                failed.clone(),
                certs.client.clone(),
            );
            thread::spawn(move || {
                for _ in 0..5000 {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    match tls_connect(addr, &client) {
                        Ok(mut tls) => {
                            assert_echo(&mut tls, b"x\n", "echo during reloads");
                            done.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(e) => {
                            eprintln!("connect failed during reloads: {e}");
                            failed.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            })
        })
        .collect();
    for i in 0..5 {
        let which = if i % 2 == 0 { &certs.b } else { &certs.a };
        certs.install(which, &live);
        reload(&proxy, i + 1);
        thread::sleep(Duration::from_millis(100));
    }
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.join().unwrap();
    }
    assert!(
        done.load(Ordering::Relaxed) > 20,
        "too few connections to mean anything"
    );
    assert_eq!(failed.load(Ordering::Relaxed), 0);
}

/// The TOML of `env`'s usual service with `extra` lines, listening at `addr` (so a reload
/// keeps the bound listener).
fn config_at(env: &TestEnv, backend: SocketAddr, addr: SocketAddr, extra: &str) -> String {
    env.config(backend).service(extra).to_toml().replacen(
        "listen = \"127.0.0.1:0\"",
        &format!("listen = \"{addr}\""),
        1,
    )
}

fn listening_addr(proxy: &Proxy, service: &str) -> SocketAddr {
    let pat = format!("listening service={service} addr=");
    assert!(
        proxy.wait_for_log(&pat, Duration::from_secs(10)),
        "{}",
        proxy.log()
    );
    let line = proxy.log_lines(&pat).pop().unwrap();
    field(&line, "addr").unwrap().parse().unwrap()
}

#[test]
fn reload_adds_and_removes_services() {
    let env = TestEnv::new();
    let echo = Backend::echo();
    let only_a = env.config(echo.addr).to_toml();
    let path = env.write_config(&only_a);
    let proxy = start(&path);
    let a = proxy.service_addr("svc");
    let mut open_on_a = tls_connect_ok(a, &env.client());
    assert_echo(&mut open_on_a, b"before\n", "a");

    // Add service b (a keeps its address: the configured 127.0.0.1:0 maps to its bound port).
    let a_and_b = env
        .config(echo.addr)
        .add_service("b", echo.addr, &[])
        .to_toml();
    let a_and_b = a_and_b.replacen("listen = \"127.0.0.1:0\"", &format!("listen = \"{a}\""), 1);
    env.write_config(&a_and_b);
    reload(&proxy, 1);
    let b = listening_addr(&proxy, "b");
    let mut on_b = tls_connect_ok(b, &env.client());
    assert_echo(&mut on_b, b"b\n", "b");
    let mut again_a = tls_connect_ok(a, &env.client());
    assert_echo(&mut again_a, b"a still\n", "a after adding b");

    // Remove a: it stops accepting, its open connection goes on.
    let only_b = format!(
        "[global]\nworkers = 1\npin = false\n\n[[service]]\nname = \"b\"\nlisten = \"{b}\"\nbackend = \"{}\"\ncert = {}\nkey = {}\n",
        echo.addr,
        toml_path(&env.cert_pem),
        toml_path(&env.key_pem)
    );
    env.write_config(&only_b);
    reload(&proxy, 2);
    assert!(
        proxy.wait_for_log("listener closed", Duration::from_secs(5)),
        "{}",
        proxy.log()
    );
    assert!(
        tls_connect(a, &env.client()).is_err(),
        "a removed service must not accept new connections"
    );
    assert_echo(
        &mut open_on_a,
        b"after removal\n",
        "open connection on the removed service",
    );
    assert_echo(&mut on_b, b"b after\n", "b after removing a");
}

#[test]
fn ticket_keys_file_is_reread_on_reload() {
    use rustls::HandshakeKind;
    let env = TestEnv::new();
    let echo = Backend::echo();
    let all = env.path("all-keys");
    let out = run_tlsfront(
        [
            "ticket-keys",
            "generate",
            "--out",
            all.to_str().unwrap(),
            "--count",
            "3",
        ],
        Duration::from_secs(20),
    );
    assert_eq!(out.code(), Some(0), "{out:?}");
    let keys: Vec<String> = std::fs::read_to_string(&all)
        .unwrap()
        .lines()
        .filter(|l| !l.starts_with('#'))
        .map(str::to_owned)
        .collect();
    let live = env.path("live-keys");
    let set_keys = |lines: &[&String]| {
        std::fs::write(
            &live,
            lines.iter().map(|l| format!("{l}\n")).collect::<String>(),
        )
        .unwrap()
    };
    set_keys(&[&keys[0]]);
    let proxy = env
        .config(echo.addr)
        .service(&format!("ticket_keys_file = {}", toml_path(&live)))
        .start();
    let cfg = resuming_client(&env, &ClientOpts::tls13());
    let connect = || session(proxy.addr(), &cfg);
    assert_eq!(connect(), HandshakeKind::Full);
    // Rotate: k1 becomes the previous key; its ticket still resumes.
    set_keys(&[&keys[1], &keys[0]]);
    reload(&proxy, 1);
    assert_eq!(connect(), HandshakeKind::Resumed);
    // That connection got a ticket under k2, a key only the reloaded file had; after the
    // next rotation k2 is the previous key and its ticket still resumes.
    set_keys(&[&keys[2], &keys[1]]);
    reload(&proxy, 2);
    assert_eq!(
        connect(),
        HandshakeKind::Resumed,
        "k2 is the previous key now"
    );
    // A file without the key of the client's ticket (k3 issued it): full handshake.
    set_keys(&[&keys[0]]);
    reload(&proxy, 3);
    assert_eq!(connect(), HandshakeKind::Full);
}

/// With the default in-process random keys, a reload that leaves the ticket settings alone
/// keeps the keys: tickets issued before the reload still resume after it.
#[test]
fn random_ticket_keys_survive_a_reload() {
    use rustls::HandshakeKind;
    let env = TestEnv::new();
    let echo = Backend::echo();
    let proxy = env.config(echo.addr).start();
    let cfg = resuming_client(&env, &ClientOpts::tls13());
    let connect = || session(proxy.addr(), &cfg);
    assert_eq!(connect(), HandshakeKind::Full);
    // Change something else (the idle timeout) and reload.
    env.write_config(&config_at(
        &env,
        echo.addr,
        proxy.addr(),
        "idle_timeout = \"7m\"",
    ));
    reload(&proxy, 1);
    assert_eq!(connect(), HandshakeKind::Resumed);

    // Changing the rotation means new keys: the old ticket no longer resumes.
    env.write_config(&config_at(
        &env,
        echo.addr,
        proxy.addr(),
        "ticket_rotation = \"2h\"",
    ));
    reload(&proxy, 2);
    assert_eq!(connect(), HandshakeKind::Full);
}

/// The `tr` (timer) field of /proc/net/tcp for the TCP socket `local` ↔ `remote`: 2 while a
/// keepalive timer runs on an idle socket, 0 with none. IPv4 only.
fn tcp_timer(local: SocketAddr, remote: SocketAddr) -> Option<String> {
    let enc = |a: SocketAddr| match a {
        SocketAddr::V4(v4) => format!(
            "{:08X}:{:04X}",
            u32::from_le_bytes(v4.ip().octets()),
            v4.port()
        ),
        SocketAddr::V6(_) => unreachable!("IPv4 only"),
    };
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap();
    table.lines().skip(1).find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        (f[1] == enc(local) && f[2] == enc(remote)).then(|| f[5][..2].to_string())
    })
}

#[test]
fn keepalive_turned_off_by_a_reload_reaches_connections_accepted_after_it() {
    // Accepted sockets inherit the listener's options, and a reload keeps the listener: it
    // must be given the new ones, "off" included.
    let env = TestEnv::new();
    let echo = Backend::echo();
    let text = env.config(echo.addr).to_toml();
    let path = env.write_config(&text);
    let proxy = Proxy::start(["serve".as_ref(), "--config".as_ref(), path.as_os_str()]);
    let timer_of = |c: &std::net::TcpStream| {
        // The proxy's side of the connection: local = proxy, remote = this client.
        let local = c.peer_addr().unwrap();
        let remote = c.local_addr().unwrap();
        for _ in 0..50 {
            if let Some(t) = tcp_timer(local, remote) {
                return t;
            }
            thread::sleep(Duration::from_millis(20));
        }
        panic!("the proxy's socket for {remote} is not in /proc/net/tcp");
    };
    let before = tcp_connect(proxy.addr()).unwrap();
    thread::sleep(Duration::from_millis(100));
    assert_eq!(timer_of(&before), "02", "keepalive is on by default");

    std::fs::write(
        &path,
        text.replace("[[service]]", "[[service]]\nkeepalive = false"),
    )
    .unwrap();
    proxy.signal(Signal::HUP);
    assert!(
        proxy.wait_for_log_count("reload ok", 1, Duration::from_secs(10)),
        "{}",
        proxy.log()
    );
    let after = tcp_connect(proxy.addr()).unwrap();
    thread::sleep(Duration::from_millis(100));
    assert_eq!(timer_of(&after), "00", "keepalive = false after the reload");
    assert_eq!(
        timer_of(&before),
        "02",
        "connections from before keep theirs"
    );
}
