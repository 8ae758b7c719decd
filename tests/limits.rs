//! Limits and placement: max_connections pauses accepting, idle_timeout closes quiet relays,
//! workers run on the configured CPUs.

mod common;

use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use common::*;

#[test]
fn max_connections_pauses_accept_until_a_slot_frees() {
    let env = TestEnv::new();
    let echo = Backend::echo();
    let proxy = env.config(echo.addr).service("max_connections = 2").start();
    let addr = proxy.addr();
    let cfg = env.client();

    let mut first = tls_connect_ok(addr, &cfg);
    let mut second = tls_connect_ok(addr, &cfg);
    assert_echo(&mut first, b"one\n", "first");
    assert_echo(&mut second, b"two\n", "second");

    // The third connection queues in the kernel backlog: no handshake while two are open.
    let (tx, rx) = mpsc::channel();
    let third_cfg = cfg.clone();
    let third = thread::spawn(move || {
        let r = tls_connect(addr, &third_cfg);
        let _ = tx.send(());
        r
    });
    assert!(
        rx.recv_timeout(Duration::from_millis(1500)).is_err(),
        "third handshake completed although max_connections = 2"
    );

    drop(first);
    rx.recv_timeout(Duration::from_secs(10))
        .expect("third handshake did not complete after a slot freed");
    let mut third = third.join().unwrap().expect("third connection failed");
    assert_echo(&mut third, b"three\n", "third");
    assert_echo(&mut second, b"still\n", "second after the pause");

    let stats = worker_stats(&proxy, 1);
    let line = stats.get("0").expect("stats for worker 0");
    assert!(num(line, "max_conn_pauses") >= 1, "{line}");
    assert_eq!(num(line, "accepted"), 3, "{line}");
}

#[test]
fn idle_timeout_closes_quiet_relays_but_not_busy_ones() {
    let env = TestEnv::new();
    let echo = Backend::echo();
    let proxy = env
        .config(echo.addr)
        .service("idle_timeout = \"1s\"")
        .start();
    let cfg = env.client();

    let mut busy = tls_connect_ok(proxy.addr(), &cfg);
    let mut quiet = tls_connect_ok(proxy.addr(), &cfg);
    assert_echo(&mut quiet, b"hello\n", "quiet");
    let start = Instant::now();

    // Traffic every 300 ms for 2.4 s keeps `busy` alive past two idle periods.
    for i in 0..8 {
        assert_echo(&mut busy, format!("tick {i}\n").as_bytes(), "busy");
        thread::sleep(Duration::from_millis(300));
    }
    let out = read_plain(&mut quiet, 1, Duration::from_secs(5));
    let waited = start.elapsed();
    assert!(
        out.received.is_empty() && out.eof.is_some(),
        "{}",
        out.summary()
    );
    assert!(
        waited >= Duration::from_millis(900),
        "closed too early: {waited:?}"
    );
    assert!(
        proxy.wait_for_log("reason=idle_timeout", Duration::from_secs(5)),
        "{}",
        proxy.log()
    );
    assert_echo(&mut busy, b"after\n", "busy after the quiet one closed");
}

/// CPU list a thread may run on, from /proc.
fn thread_cpus(pid: u32, thread_name: &str) -> Option<String> {
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))
        .ok()?
        .flatten()
    {
        let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
        if comm.trim() == thread_name {
            let status = std::fs::read_to_string(task.path().join("status")).ok()?;
            return status
                .lines()
                .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
                .map(|v| v.trim().to_string());
        }
    }
    None
}

#[test]
fn workers_are_pinned_to_the_configured_cpus() {
    let cpus = thread::available_parallelism().map_or(1, |n| n.get());
    let target = cpus - 1; // the last CPU, so the test also runs on one-CPU machines
    let env = TestEnv::new();
    let echo = Backend::echo();
    let proxy = env
        .config(echo.addr)
        .workers(2)
        .global("pin = true")
        .global(&format!("cpus = [{target}]"))
        .start();
    for w in ["tlsfront-w0", "tlsfront-w1"] {
        assert_eq!(
            thread_cpus(proxy.pid(), w).as_deref(),
            Some(target.to_string().as_str()),
            "{w} not pinned to CPU {target}"
        );
    }
    let mut tls = tls_connect_ok(proxy.addr(), &env.client());
    assert_echo(&mut tls, b"pinned\n", "pinned worker");
}
