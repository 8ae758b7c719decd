//! A fleet: two tlsfront instances behind an L4 splitter (HAProxy from the distribution in
//! `mode tcp`, round robin, health-checking each instance's `/ready`). They share ticket keys,
//! so a session begun on one resumes on the other; and one of them drains (SIGTERM with
//! `shutdown_delay`) while the splitter moves new connections to the other and the drained
//! instance's open connection carries on to its end.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::pki::*;
use common::*;

/// True when HAProxy is installed; panics when the peers must be there (CI).
fn have_haproxy(test: &str) -> bool {
    have_peer(
        test,
        &["haproxy", "-v"],
        "haproxy (apt-get install haproxy)",
    )
}

/// HAProxy in front of the instances; killed on drop.
struct Splitter {
    child: Child,
    addr: SocketAddr,
}

impl Drop for Splitter {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// HAProxy in `mode tcp` balancing round robin over `instances` (TLS address, admin
/// address), each checked with `GET /ready` on its admin endpoint every 100 ms.
fn splitter(env: &TestEnv, instances: &[(SocketAddr, SocketAddr)]) -> Splitter {
    let addr = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let mut cfg = format!(
        "global\n    maxconn 100\ndefaults\n    mode tcp\n    timeout connect 2s\n    timeout client 30s\n    timeout server 30s\n    timeout check 1s\n\
         frontend edge\n    bind {addr}\n    default_backend fleet\n\
         backend fleet\n    balance roundrobin\n    option httpchk GET /ready\n"
    );
    for (i, (tls, admin)) in instances.iter().enumerate() {
        cfg.push_str(&format!(
            "    server t{i} {tls} check port {} inter 100ms fall 1 rise 1\n",
            admin.port()
        ));
    }
    let path = env.dir.path().join("haproxy.cfg");
    std::fs::write(&path, cfg).unwrap();
    let child = Command::new("haproxy")
        .arg("-db")
        .arg("-f")
        .arg(&path)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start haproxy");
    let s = Splitter { child, addr };
    assert!(
        wait_until(Duration::from_secs(10), || TcpStream::connect(addr).is_ok()),
        "haproxy did not listen on {addr}"
    );
    s
}

fn ready(admin: SocketAddr) -> u16 {
    let Ok(mut s) = TcpStream::connect(admin) else {
        return 0;
    };
    let _ = s.write_all(b"GET /ready HTTP/1.1\r\n\r\n");
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out.split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

#[test]
fn two_instances_behind_haproxy_resume_each_others_sessions_and_one_drains_cleanly() {
    if !have_haproxy(
        "two_instances_behind_haproxy_resume_each_others_sessions_and_one_drains_cleanly",
    ) {
        return;
    }
    let env = TestEnv::new();
    let keys = env.dir.path().join("ticket.keys");
    let generated = run_tlsfront(
        [
            "ticket-keys".as_ref(),
            "generate".as_ref(),
            "--out".as_ref(),
            keys.as_os_str(),
        ],
        Duration::from_secs(10),
    );
    assert_eq!(generated.code(), Some(0), "{generated:?}");
    let (backend_a, backend_b) = (named_backend("a"), named_backend("b"));
    let instance = |backend: &Backend| {
        env.config(backend.addr)
            .drain_timeout("20s")
            .global("admin = \"127.0.0.1:0\"")
            .global("shutdown_delay = \"2s\"")
            .service(&format!("ticket_keys_file = {}", toml_path(&keys)))
            .start()
    };
    let mut a = instance(&backend_a);
    let b = instance(&backend_b);
    let (admin_a, admin_b) = (admin_addr(&a), admin_addr(&b));
    let lb = splitter(&env, &[(a.addr(), admin_a), (b.addr(), admin_b)]);

    // Round robin: consecutive connections alternate between the instances; with the same
    // ticket keys, a session from either resumes on the other.
    let cfg = resuming_client(&env, &ClientOpts::tls13());
    let mut seen = Vec::new();
    for i in 0..4 {
        let mut tls = tls_connect_ok(lb.addr, &cfg);
        let name = backend_name(&mut tls);
        assert_echo(
            &mut tls,
            format!("fleet {i}").as_bytes(),
            "echo through the splitter",
        );
        let kind = tls.conn.handshake_kind().expect("handshake finished");
        seen.push((name, kind));
    }
    let names: Vec<&str> = seen.iter().map(|(n, _)| n.as_str()).collect();
    assert!(
        names.windows(2).all(|w| w[0] != w[1]),
        "round robin should alternate instances: {seen:?}"
    );
    assert_eq!(seen[0].1, rustls::HandshakeKind::Full, "{seen:?}");
    for (name, kind) in &seen[1..] {
        assert_eq!(
            *kind,
            rustls::HandshakeKind::Resumed,
            "instance {name} did not resume a session begun on the other: {seen:?}"
        );
    }

    // A connection open on instance a when it is told to stop.
    let mut open = loop {
        let mut tls = tls_connect_ok(lb.addr, &cfg);
        if backend_name(&mut tls) == "a" {
            break tls;
        }
    };
    a.signal(Signal::TERM);
    assert!(
        wait_until(Duration::from_secs(2), || ready(admin_a) == 503),
        "a's /ready did not turn 503"
    );
    // The splitter sees it (checks every 100 ms) and sends every new connection to b,
    // while a's listener is still open (shutdown_delay) and then closed.
    std::thread::sleep(Duration::from_millis(500));
    for i in 0..6 {
        let mut tls = tls_connect_ok(lb.addr, &cfg);
        assert_eq!(
            backend_name(&mut tls),
            "b",
            "connection {i} after a began draining"
        );
        assert_echo(&mut tls, b"during the drain", "echo on b");
    }
    assert!(
        wait_until(Duration::from_secs(6), || TcpStream::connect(a.addr())
            .is_err()),
        "a still accepts after shutdown_delay"
    );
    // The open connection goes on, both ways, and ends cleanly when the client ends it.
    let data = random_bytes(256 * 1024);
    assert_echo(&mut open, &data, "the connection open on a while it drains");
    let end = close_session(&mut open, Duration::from_secs(10));
    assert!(
        end.eof.as_ref().is_some_and(Eof::is_clean),
        "{}",
        end.summary()
    );
    let status = a.wait_exit(Duration::from_secs(15));
    assert!(
        status.is_some_and(|s| s.success()),
        "{status:?}\n{}",
        a.log()
    );
    assert!(a.log().contains("reason=done"), "{}", a.log());
    assert_eq!(ready(admin_b), 200);
    drop(b);
}
