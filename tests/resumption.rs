//! Session resumption: tickets resume on any worker and on any instance sharing the keys,
//! the previous key still resumes, older or corrupted tickets fall back to a full handshake.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::*;
use rustls::HandshakeKind;

/// Two proxies for `backend` that share one generated ticket keys file.
fn two_instances_sharing_keys(env: &TestEnv, backend: std::net::SocketAddr) -> (Proxy, Proxy) {
    let keys = generate_keys(env, "keys", 2);
    let line = format!("ticket_keys_file = {}", toml_path(&keys));
    let a = env.config(backend).service(&line).start();
    let b = env.config(backend).service(&line).start();
    (a, b)
}

fn generate_keys(env: &TestEnv, name: &str, count: usize) -> std::path::PathBuf {
    let path = env.path(name);
    let out = run_tlsfront(
        [
            "ticket-keys",
            "generate",
            "--out",
            path.to_str().unwrap(),
            "--count",
            &count.to_string(),
        ],
        Duration::from_secs(20),
    );
    assert_eq!(out.code(), Some(0), "{out:?}");
    path
}

/// Lines (keys) of a keys file, comments dropped.
fn key_lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(str::to_owned)
        .collect()
}

fn keys_file_with(env: &TestEnv, name: &str, lines: &[&String]) -> std::path::PathBuf {
    let text: String = lines.iter().map(|l| format!("{l}\n")).collect();
    env.write_file(name, &text)
}

fn service_line(proxy: &Proxy, worker: &str) -> String {
    let before = proxy.log_lines("service stats").len();
    let _ = worker_stats(proxy, proxy_workers(proxy));
    assert!(proxy.wait_for_log_count("service stats", before + 1, Duration::from_secs(5)));
    proxy
        .log_lines("service stats")
        .into_iter()
        .skip(before)
        .find(|l| field(l, "worker") == Some(worker))
        .unwrap_or_else(|| panic!("no service stats for worker {worker}"))
}

fn proxy_workers(proxy: &Proxy) -> usize {
    field(&proxy.log_lines("ready workers=")[0], "workers")
        .unwrap()
        .parse()
        .unwrap()
}

#[test]
fn tickets_resume_on_every_worker() {
    let env = TestEnv::new();
    let echo = Backend::echo();
    let proxy = env.config(echo.addr).workers(2).start();
    for opts in [ClientOpts::tls13(), ClientOpts::tls12()] {
        let cfg = resuming_client(&env, &opts);
        assert_eq!(session(proxy.addr(), &cfg), HandshakeKind::Full);
        for i in 0..30 {
            assert_eq!(
                session(proxy.addr(), &cfg),
                HandshakeKind::Resumed,
                "reconnect {i}"
            );
        }
    }
    let stats = worker_stats(&proxy, 2);
    for w in ["0", "1"] {
        let line = stats.get(w).unwrap();
        assert!(
            num(line, "handshakes_resumed") > 0,
            "worker {w} resumed nothing: {line}"
        );
    }
    let total: u64 = stats.values().map(|l| num(l, "handshakes_resumed")).sum();
    assert_eq!(total, 60);
    let per_service: u64 = ["0", "1"]
        .iter()
        .map(|w| num(&service_line(&proxy, w), "handshakes_resumed"))
        .sum();
    assert_eq!(per_service, 60);
}

#[test]
fn instances_sharing_a_keys_file_resume_each_others_tickets() {
    let env = TestEnv::new();
    let echo = Backend::echo();
    let (a, b) = two_instances_sharing_keys(&env, echo.addr);
    let cfg = resuming_client(&env, &ClientOpts::tls13());
    assert_eq!(session(a.addr(), &cfg), HandshakeKind::Full);
    assert_eq!(
        session(b.addr(), &cfg),
        HandshakeKind::Resumed,
        "ticket from A on B"
    );
    assert_eq!(
        session(a.addr(), &cfg),
        HandshakeKind::Resumed,
        "ticket from B on A"
    );
}

#[test]
fn instances_sharing_a_secret_derive_the_same_keys() {
    let env = TestEnv::new();
    let echo = Backend::echo();
    let secret = env.write_file(
        "secret",
        "a fleet secret that is comfortably longer than 32 bytes\n",
    );
    let line = format!(
        "ticket_secret_file = {}\nticket_rotation = \"1h\"",
        toml_path(&secret)
    );
    let a = env.config(echo.addr).service(&line).start();
    let b = env.config(echo.addr).service(&line).start();
    let cfg = resuming_client(&env, &ClientOpts::tls13());
    assert_eq!(session(a.addr(), &cfg), HandshakeKind::Full);
    assert_eq!(session(b.addr(), &cfg), HandshakeKind::Resumed);

    // A different secret cannot read the ticket: full handshake, counted as unknown key.
    let other = env.write_file(
        "other",
        "some other fleet's secret, also longer than 32 bytes\n",
    );
    let c = env
        .config(echo.addr)
        .service(&format!("ticket_secret_file = {}", toml_path(&other)))
        .start();
    assert_eq!(session(c.addr(), &cfg), HandshakeKind::Full);
    let stats = worker_stats(&c, 1);
    assert_eq!(
        num(stats.get("0").unwrap(), "ticket_decrypt_unknown_key"),
        1
    );
}

#[test]
fn previous_key_resumes_two_keys_back_is_a_full_handshake() {
    let env = TestEnv::new();
    let echo = Backend::echo();
    let all = key_lines(&generate_keys(&env, "all", 3));
    let (k1, k2, k3) = (&all[0], &all[1], &all[2]);
    let start = |file: &Path| {
        env.config(echo.addr)
            .service(&format!("ticket_keys_file = {}", toml_path(file)))
            .start()
    };
    let cfg = resuming_client(&env, &ClientOpts::tls13());

    // Issued under k1.
    let first = start(&keys_file_with(&env, "gen1", &[k1]));
    assert_eq!(session(first.addr(), &cfg), HandshakeKind::Full);
    // After one rotation (k2 new, k1 previous) the k1 ticket still resumes...
    let second = start(&keys_file_with(&env, "gen2", &[k2, k1]));
    assert_eq!(session(second.addr(), &cfg), HandshakeKind::Resumed);

    // ...but once k1 is two keys back, it is a full handshake, not an error.
    let cfg = resuming_client(&env, &ClientOpts::tls13());
    assert_eq!(session(first.addr(), &cfg), HandshakeKind::Full); // fresh k1 ticket
    let third = start(&keys_file_with(&env, "gen3", &[k3, k2]));
    assert_eq!(session(third.addr(), &cfg), HandshakeKind::Full);
    let stats = worker_stats(&third, 1);
    let line = stats.get("0").unwrap();
    assert_eq!(num(line, "ticket_decrypt_unknown_key"), 1, "{line}");
    assert_eq!(num(line, "handshake_failures"), 0, "{line}");
}

#[test]
fn stateful_cache_when_tickets_are_off() {
    let env = TestEnv::new();
    let echo = Backend::echo();
    let proxy = env.config(echo.addr).service("tickets = false").start();
    for opts in [ClientOpts::tls13(), ClientOpts::tls12()] {
        let cfg = resuming_client(&env, &opts);
        assert_eq!(session(proxy.addr(), &cfg), HandshakeKind::Full);
        assert_eq!(session(proxy.addr(), &cfg), HandshakeKind::Resumed);
    }
    // And with the cache off too, nothing resumes.
    let none = env
        .config(echo.addr)
        .service("tickets = false\nsession_cache_size = 0")
        .start();
    let cfg = resuming_client(&env, &ClientOpts::tls13());
    assert_eq!(session(none.addr(), &cfg), HandshakeKind::Full);
    assert_eq!(session(none.addr(), &cfg), HandshakeKind::Full);
}

/// `openssl s_client -sess_out` against one instance, `-sess_in` against another that shares
/// the keys file: OpenSSL reports the session as reused.
#[test]
fn openssl_resumes_across_instances() {
    if !Path::new("/usr/bin/openssl").exists() {
        eprintln!(
            "SKIP openssl_resumes_across_instances: /usr/bin/openssl missing (CI installs it)"
        );
        return;
    }
    let env = TestEnv::new();
    let echo = Backend::echo();
    let (a, b) = two_instances_sharing_keys(&env, echo.addr);
    let sess = env.path("sess.pem");
    let run = |addr, flag| s_client(addr, &env.ca_pem, flag, &sess);
    let first = run(a.addr(), "-sess_out");
    assert!(first.contains("New, TLSv1.3"), "{first}");
    let second = run(b.addr(), "-sess_in");
    assert!(second.contains("Reused, TLSv1.3"), "{second}");
}

/// A ticket whose ciphertext was altered is refused (counted as corrupt) and the client gets
/// a full handshake, not an error. The ticket is found in OpenSSL's saved session by its key
/// name, which is the first 16 bytes of the key in the keys file.
#[test]
fn openssl_corrupted_ticket_gets_a_full_handshake() {
    use base64::Engine as _;
    if !Path::new("/usr/bin/openssl").exists() {
        eprintln!("SKIP openssl_corrupted_ticket_gets_a_full_handshake: /usr/bin/openssl missing");
        return;
    }
    let b64 = base64::engine::general_purpose::STANDARD;
    let env = TestEnv::new();
    let echo = Backend::echo();
    let keys = generate_keys(&env, "keys", 1);
    let key_name = b64.decode(&key_lines(&keys)[0]).unwrap()[..16].to_vec();
    let proxy = env
        .config(echo.addr)
        .service(&format!("ticket_keys_file = {}", toml_path(&keys)))
        .start();
    let sess = env.path("sess.pem");
    let run = |flag| s_client(proxy.addr(), &env.ca_pem, flag, &sess);
    assert!(run("-sess_out").contains("New, TLSv1.3"));

    // Flip one ciphertext byte of the ticket inside the saved session.
    let pem = std::fs::read_to_string(&sess).unwrap();
    let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    let mut der = b64.decode(body).unwrap();
    let at = der
        .windows(16)
        .position(|w| w == &key_name[..])
        .expect("our ticket (by key name) in the saved session");
    der[at + 16 + 12 + 3] ^= 0x40; // past the name and the nonce: inside the ciphertext
    let encoded = b64.encode(&der);
    let lines: Vec<&str> = encoded
        .as_bytes()
        .chunks(64)
        .map(|c| std::str::from_utf8(c).unwrap())
        .collect();
    std::fs::write(
        &sess,
        format!(
            "-----BEGIN SSL SESSION PARAMETERS-----\n{}\n-----END SSL SESSION PARAMETERS-----\n",
            lines.join("\n")
        ),
    )
    .unwrap();

    let second = run("-sess_in");
    assert!(
        second.contains("New, TLSv1.3"),
        "expected a full handshake: {second}"
    );
    let stats = worker_stats(&proxy, 1);
    let line = stats.get("0").unwrap();
    assert_eq!(num(line, "ticket_decrypt_corrupt"), 1, "{line}");
    assert_eq!(num(line, "handshake_failures"), 0, "{line}");
}

/// `openssl s_client` TLS 1.3 to `addr` trusting `ca`, with `-sess_out`/`-sess_in FILE`;
/// returns its output (stdout and stderr).
fn s_client(addr: std::net::SocketAddr, ca: &Path, flag: &str, sess: &Path) -> String {
    let (finished, text) = Command::new("/usr/bin/openssl")
        .args([
            "s_client",
            "-connect",
            &addr.to_string(),
            "-servername",
            "localhost",
        ])
        .args([
            "-CAfile",
            ca.to_str().unwrap(),
            "-tls1_3",
            flag,
            sess.to_str().unwrap(),
        ])
        .stdin(std::process::Stdio::piped())
        .output_with_input(b"hello\n", Duration::from_secs(20));
    assert!(finished, "openssl s_client did not finish");
    text
}

/// Runs a command with `input` on stdin (then EOF after a pause long enough for the
/// server's tickets to arrive); returns (finished in time, stdout + stderr).
trait OutputWithInput {
    fn output_with_input(&mut self, input: &[u8], timeout: Duration) -> (bool, String);
}

impl OutputWithInput for Command {
    fn output_with_input(&mut self, input: &[u8], timeout: Duration) -> (bool, String) {
        use std::io::{Read, Write};
        let mut child = self
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("spawn");
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(input).unwrap();
        std::thread::sleep(Duration::from_millis(500));
        drop(stdin);
        let deadline = std::time::Instant::now() + timeout;
        loop {
            if child.try_wait().unwrap().is_some() {
                break;
            }
            if std::time::Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return (false, String::new());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let mut text = String::new();
        child
            .stdout
            .take()
            .unwrap()
            .read_to_string(&mut text)
            .unwrap();
        child
            .stderr
            .take()
            .unwrap()
            .read_to_string(&mut text)
            .unwrap();
        (true, text)
    }
}
