//! Backend pools: `backend = [..]` with round-robin or least-connections balancing, failover
//! on connect failure within connect_timeout, and passive health (down after
//! `health_fail_after` failures in a row, retried after `health_retry`).

mod common;

use std::net::TcpListener;
use std::time::{Duration, Instant};

use common::*;

fn pool_line(addrs: &[std::net::SocketAddr]) -> String {
    let list: Vec<String> = addrs.iter().map(|a| format!("\"{a}\"")).collect();
    format!("backend = [{}]", list.join(", "))
}

/// A config whose only service uses `lines` instead of the builder's single backend.
fn start_with(env: &TestEnv, lines: &[&str]) -> Proxy {
    let mut toml = env.config("127.0.0.1:9").to_toml();
    toml = toml.replace("backend = \"127.0.0.1:9\"\n", "");
    for l in lines {
        toml.push_str(l);
        toml.push('\n');
    }
    let path = env.write_config(&toml);
    Proxy::start(["serve".as_ref(), "--config".as_ref(), path.as_os_str()])
}

fn echo_once(proxy: &Proxy, env: &TestEnv, what: &str) {
    let mut tls = tls_connect_ok(proxy.addr(), &env.client());
    assert_echo(&mut tls, b"ping\n", what);
}

fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn round_robin_spreads_connections_evenly() {
    let env = TestEnv::new();
    let (a, b) = (Backend::echo(), Backend::echo());
    let proxy = start_with(&env, &[&pool_line(&[a.addr, b.addr])]);
    for i in 0..10 {
        echo_once(&proxy, &env, &format!("connection {i}"));
    }
    assert_eq!((a.connections(), b.connections()), (5, 5));
}

#[test]
fn least_connections_picks_the_backend_with_fewer_open_connections() {
    for (balance, expect_idle_one) in [("least_connections", true), ("round_robin", false)] {
        let env = TestEnv::new();
        let (a, b) = (Backend::echo(), Backend::echo());
        let proxy = start_with(
            &env,
            &[
                &pool_line(&[a.addr, b.addr]),
                &format!("balance = \"{balance}\""),
            ],
        );
        let mut first = tls_connect_ok(proxy.addr(), &env.client());
        assert_echo(&mut first, b"1\n", "first");
        let mut second = tls_connect_ok(proxy.addr(), &env.client());
        assert_echo(&mut second, b"2\n", "second");
        assert_eq!((a.connections(), b.connections()), (1, 1), "{balance}");
        // The second (on b) ends; the first (on a) stays open.
        close_session(&mut second, Duration::from_secs(5));
        drop(second);
        wait_until("the proxy to close the second", || {
            proxy.log_lines("reason=done").len() == 1
        });
        let mut third = tls_connect_ok(proxy.addr(), &env.client());
        assert_echo(&mut third, b"3\n", "third");
        // Round-robin's turn is a's again; least-connections sees b idle.
        let went_to_b = b.connections() == 2;
        assert_eq!(
            went_to_b,
            expect_idle_one,
            "{balance}: a={} b={}",
            a.connections(),
            b.connections()
        );
        drop(first);
    }
}

#[test]
fn failover_marks_a_dead_backend_down_and_retries_it_after_the_back_off() {
    let env = TestEnv::new();
    let live = Backend::echo();
    let dead = closed_port_addr();
    let proxy = start_with(
        &env,
        &[
            &pool_line(&[dead, live.addr]),
            "health_fail_after = 2",
            r#"health_retry = "1s""#,
        ],
    );
    // Every client is served although one backend refuses.
    for i in 0..6 {
        echo_once(&proxy, &env, &format!("connection {i}"));
    }
    assert_eq!(live.connections(), 6);
    assert!(
        proxy.wait_for_log(
            &format!("backend={dead} retry_after=1s backend down"),
            Duration::from_secs(5)
        ) || proxy.log_contains("backend down"),
        "{}",
        proxy.log()
    );
    // Down after two failures: no more attempts on it meanwhile.
    let stats = worker_stats(&proxy, 1);
    assert_eq!(
        num(stats.values().next().unwrap(), "backend_connect_failures"),
        2
    );

    // The dead backend comes back; after the back-off it gets connections again.
    let revived = TcpListener::bind(dead).expect("rebind the freed port");
    let served = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    {
        let served = served.clone();
        std::thread::spawn(move || {
            for s in revived.incoming().flatten() {
                served.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                std::thread::spawn(move || echo_conn(s, &BackendStats::default()));
            }
        });
    }
    std::thread::sleep(Duration::from_millis(1200));
    for i in 0..4 {
        echo_once(&proxy, &env, &format!("after the back-off {i}"));
    }
    assert!(
        served.load(std::sync::atomic::Ordering::SeqCst) > 0,
        "{}",
        proxy.log()
    );
    assert!(
        proxy.wait_for_log("backend up", Duration::from_secs(5)),
        "{}",
        proxy.log()
    );
}

#[test]
fn when_every_backend_fails_the_client_gets_a_clean_close() {
    let env = TestEnv::new();
    let proxy = start_with(
        &env,
        &[&pool_line(&[closed_port_addr(), closed_port_addr()])],
    );
    let mut tls = tls_connect_ok(proxy.addr(), &env.client());
    let end = close_session(&mut tls, Duration::from_secs(10));
    assert!(
        end.eof.as_ref().is_some_and(Eof::is_clean),
        "{}",
        end.summary()
    );
    assert!(
        proxy.wait_for_log("reason=backend_connect_refused", Duration::from_secs(5)),
        "{}",
        proxy.log()
    );
    let stats = worker_stats(&proxy, 1);
    assert_eq!(
        num(stats.values().next().unwrap(), "backend_connect_failures"),
        2,
        "both tried"
    );
}

#[test]
fn active_checks_find_a_dead_backend_without_traffic_and_see_it_return() {
    let env = TestEnv::new();
    let live = Backend::echo();
    let dead = closed_port_addr();
    let proxy = start_with(
        &env,
        &[
            &pool_line(&[live.addr, dead]),
            r#"health_check = "200ms""#,
            "health_fail_after = 2",
            r#"health_retry = "1h""#,
        ],
    );
    // No client connected: only the checks can have found it.
    assert!(
        proxy.wait_for_log(&format!("backend={dead}"), Duration::from_secs(10))
            && proxy.wait_for_log("backend down (health check)", Duration::from_secs(10)),
        "{}",
        proxy.log()
    );
    assert!(
        !proxy.log_contains(&format!("backend={} ", live.addr)),
        "{}",
        proxy.log()
    );
    // It returns: a check sees it long before the 1 h back-off would.
    let revived = TcpListener::bind(dead).expect("rebind the freed port");
    std::thread::spawn(move || for _s in revived.incoming() {});
    assert!(
        proxy.wait_for_log("backend up (health check)", Duration::from_secs(10)),
        "{}",
        proxy.log()
    );
}

#[test]
fn a_reload_hands_the_checks_to_the_new_configuration_instead_of_doubling_them() {
    let env = TestEnv::new();
    let checked = Backend::echo();
    let proxy = start_with(
        &env,
        &[&pool_line(&[checked.addr]), r#"health_check = "100ms""#],
    );
    let rate = |what: &str| {
        let before = checked.connections();
        std::thread::sleep(Duration::from_millis(1500));
        let n = checked.connections() - before;
        eprintln!("{what}: {n} checks in 1.5 s");
        n
    };
    let before = rate("before the reload");
    assert!(before >= 8, "checks run every 100 ms: {before}");
    // A connection keeps the old configuration alive across the reload.
    let mut open = tls_connect_ok(proxy.addr(), &env.client());
    assert_echo(&mut open, b"old\n", "before the reload");
    proxy.signal(Signal::HUP);
    assert!(
        proxy.wait_for_log("reload ok", Duration::from_secs(10)),
        "{}",
        proxy.log()
    );
    let after = rate("after the reload");
    assert!(
        after * 2 < before * 3,
        "old and new configuration both checking: {before} → {after}"
    );
    assert_echo(&mut open, b"still served\n", "after the reload");
}
