//! Client mode (`mode = "client"`): a plaintext listener whose connections go out as TLS to
//! the backend, verified against `ca` for `server_name`. The gateway pair (plaintext app →
//! tlsfront client mode → TLS → tlsfront server mode → plaintext service) carries bytes
//! exactly and passes a close on either end to the other; a server with the wrong
//! certificate is refused; tickets resume; a client certificate is presented on request;
//! a non-rustls server (`openssl s_server`) is reached too.

mod common;

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use common::pki::{Ca, ClientId};
use common::*;

/// A client-mode tlsfront in front of `remote`, trusting `env`'s CA, plus `extra` lines.
fn client_front(env: &TestEnv, remote: SocketAddr, extra: &[&str]) -> Proxy {
    client_front_with(env, remote, &env.ca_pem, "localhost", extra)
}

/// A client-mode tlsfront trusting the CA in `ca` and expecting `server_name`.
fn client_front_with(
    env: &TestEnv,
    remote: SocketAddr,
    ca: &std::path::Path,
    server_name: &str,
    extra: &[&str],
) -> Proxy {
    let mut toml = format!(
        "[global]\nworkers = 1\npin = false\n\n[[service]]\nname = \"out\"\nmode = \"client\"\nlisten = \"127.0.0.1:0\"\nbackend = \"{remote}\"\nserver_name = \"{server_name}\"\nca = {}\n",
        toml_path(ca)
    );
    for l in extra {
        toml.push_str(l);
        toml.push('\n');
    }
    let path = env.write_file(&format!("client-{}.toml", random_bytes(4)[0]), &toml);
    Proxy::start(["serve".as_ref(), "--config".as_ref(), path.as_os_str()])
}

/// A deterministic pattern that is cheap to make and to check.
fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add((i >> 12) as u8) ^ seed)
        .collect()
}

/// Writes `data` then FIN on one thread while reading to EOF on this one; returns what came
/// back.
fn send_and_collect(mut s: std::net::TcpStream, data: Vec<u8>) -> Vec<u8> {
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    s.set_write_timeout(Some(Duration::from_secs(60))).unwrap();
    let mut writer = s.try_clone().unwrap();
    let sender = thread::spawn(move || {
        writer.write_all(&data).expect("write through the pair");
        writer.shutdown(Shutdown::Write).expect("FIN");
    });
    let mut got = Vec::with_capacity(64 << 20);
    s.read_to_end(&mut got).expect("read through the pair");
    sender.join().expect("writer");
    got
}

#[test]
fn gateway_pair_carries_64_mib_each_way_byte_exact() {
    let env = TestEnv::new();
    let echo = Backend::echo();
    let server = env.config(echo.addr).start();
    let client = client_front(&env, server.addr(), &[]);

    let data = pattern(64 << 20, 0x5a);
    let expected = sha256_hex(&data);
    let got = send_and_collect(tcp_connect(client.addr()).unwrap(), data);
    assert_eq!(got.len(), 64 << 20, "bytes back through the pair");
    assert_eq!(sha256_hex(&got), expected, "echoed bytes differ");
    // FIN from the app reached the echo service, whose FIN came back: both ends closed
    // cleanly, and each proxy counted every byte.
    for (proxy, name) in [(&client, "client mode"), (&server, "server mode")] {
        assert!(
            proxy.wait_for_log("reason=done", Duration::from_secs(10)),
            "{name}: {}",
            proxy.log()
        );
        let line = proxy.log_lines("reason=done").remove(0);
        assert_eq!(num(&line, "bytes_in"), 64 << 20, "{name}: {line}");
        assert_eq!(num(&line, "bytes_out"), 64 << 20, "{name}: {line}");
    }
}

#[test]
fn a_close_on_either_end_reaches_the_other_while_the_other_direction_goes_on() {
    let env = TestEnv::new();
    // The service says goodbye and half-closes first, then keeps reading.
    let (heard_tx, heard_rx) = mpsc::channel::<Vec<u8>>();
    let service = Backend::start(move |mut s, _| {
        s.write_all(b"bye\n").unwrap();
        s.shutdown(Shutdown::Write).unwrap();
        let mut rest = Vec::new();
        let _ = s.read_to_end(&mut rest);
        let _ = heard_tx.send(rest);
    });
    let server = env.config(service.addr).start();
    let client = client_front(&env, server.addr(), &[]);

    let mut app = tcp_connect(client.addr()).unwrap();
    let (got, eof) = read_to_eof(&mut app);
    assert_eq!(
        (got.as_slice(), eof),
        (&b"bye\n"[..], true),
        "service FIN reached the app"
    );
    // The app's direction is still open end to end.
    app.write_all(b"still here\n").unwrap();
    app.shutdown(Shutdown::Write).unwrap();
    let heard = heard_rx
        .recv_timeout(Duration::from_secs(10))
        .expect("the service saw the app's FIN");
    assert_eq!(heard, b"still here\n");
    assert!(client.wait_for_log("reason=done", Duration::from_secs(10)));
}

#[test]
fn a_server_with_the_wrong_certificate_or_name_is_refused() {
    let env = TestEnv::new();
    let echo = Backend::echo();
    let server = env.config(echo.addr).start();

    // Another CA than the one that signed the server's certificate; then the right CA
    // but a name the certificate does not carry.
    let other = TestEnv::new();
    let wrong_ca = client_front_with(&env, server.addr(), &other.ca_pem, "localhost", &[]);
    let wrong_name = client_front_with(&env, server.addr(), &env.ca_pem, "db.example.com", &[]);

    for (proxy, what) in [(&wrong_ca, "unknown CA"), (&wrong_name, "wrong name")] {
        let mut app = tcp_connect(proxy.addr()).unwrap();
        let _ = app.write_all(b"secret\n");
        let t0 = Instant::now();
        let (got, _) = read_to_eof(&mut app);
        assert!(got.is_empty(), "{what}: data came back: {got:?}");
        assert!(t0.elapsed() < Duration::from_secs(5), "{what}: slow close");
        assert!(
            proxy.wait_for_log("reason=server_cert_invalid", Duration::from_secs(10)),
            "{what}: {}",
            proxy.log()
        );
    }
    assert_eq!(echo.connections(), 0, "nothing reached the service");
}

#[test]
fn tickets_from_the_server_resume_the_next_connection() {
    let env = TestEnv::new();
    let echo = Backend::echo();
    let server = env.config(echo.addr).start();
    let client = client_front(&env, server.addr(), &[]);
    for i in 0..3 {
        let msg = format!("round {i}\n");
        let got = send_and_collect(
            tcp_connect(client.addr()).unwrap(),
            msg.clone().into_bytes(),
        );
        assert_eq!(got, msg.as_bytes());
    }
    let stats = worker_stats(&server, 1);
    let line = stats.values().next().unwrap();
    assert_eq!(num(line, "handshakes"), 3, "{line}");
    assert_eq!(num(line, "handshakes_resumed"), 2, "{line}");
    let mine = worker_stats(&client, 1);
    assert_eq!(num(mine.values().next().unwrap(), "handshakes_resumed"), 2);
}

#[test]
fn a_client_certificate_is_presented_when_the_server_requires_one() {
    let env = TestEnv::new();
    let clients = Ca::new(&env, "clients");
    let id = clients.client_cert("gw", &ClientId::cn("gateway"));
    let echo = Backend::echo();
    let server = env
        .config(echo.addr)
        .service("client_auth = \"required\"")
        .service(&format!("client_ca = {}", toml_path(&clients.cert_pem)))
        .start();

    let with_cert = client_front(
        &env,
        server.addr(),
        &[
            &format!("cert = {}", toml_path(&id.cert_pem)),
            &format!("key = {}", toml_path(&id.key_pem)),
        ],
    );
    let got = send_and_collect(tcp_connect(with_cert.addr()).unwrap(), b"mtls\n".to_vec());
    assert_eq!(got, b"mtls\n");

    let without = client_front(&env, server.addr(), &[]);
    let got = send_and_collect(tcp_connect(without.addr()).unwrap(), b"anon\n".to_vec());
    assert!(got.is_empty(), "an anonymous gateway got through: {got:?}");
    assert!(
        server.wait_for_log("reason=client_cert_missing", Duration::from_secs(10)),
        "{}",
        server.log()
    );
    assert_eq!(echo.connections(), 1);
}

#[test]
fn an_openssl_server_is_reached_too() {
    let Some(openssl) = openssl_or_skip("an_openssl_server_is_reached_too") else {
        return;
    };
    let env = TestEnv::new();
    let port = closed_port_addr();
    // `-rev` answers each line reversed: proof the bytes went through a real TLS session.
    let mut server = Command::new(openssl)
        .args([
            "s_server",
            "-accept",
            &port.to_string(),
            "-naccept",
            "1",
            "-rev",
        ])
        .arg("-cert")
        .arg(&env.cert_pem)
        .arg("-key")
        .arg(&env.key_pem)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("openssl s_server");
    // It says ACCEPT once it listens (after a line or two about its parameters).
    let mut out = std::io::BufReader::new(server.stdout.take().unwrap());
    let mut line = String::new();
    while !line.starts_with("ACCEPT") {
        line.clear();
        let n = std::io::BufRead::read_line(&mut out, &mut line).expect("s_server output");
        assert!(n > 0, "s_server exited before listening");
    }
    let client = client_front(&env, port, &[]);
    let mut app = tcp_connect(client.addr()).unwrap();
    app.write_all(b"tlsfront\n").unwrap();
    let mut line = [0u8; 9];
    app.read_exact(&mut line).expect("reversed line");
    assert_eq!(&line, b"tnorfslt\n");
    drop(app);
    let _ = server.kill();
    let _ = server.wait();
}

#[test]
fn mode_settings_are_checked_where_they_are_written() {
    let env = TestEnv::new();
    for (line, field) in [
        ("server_name = \"x\"", "service[0].server_name"),
        ("ca = \"ca.pem\"", "service[0].ca"),
        ("mode = \"tunnel\"", "service[0].mode"),
    ] {
        let toml = env.config("127.0.0.1:9").service(line).to_toml();
        let path = env.write_config(&toml);
        let out = run_tlsfront(
            ["check".as_ref(), "--config".as_ref(), path.as_os_str()],
            Duration::from_secs(15),
        );
        assert_eq!(out.code(), Some(2), "{out:?}");
        assert!(out.stderr.contains(field), "{field}: {out:?}");
        assert!(
            line_numbers(&out.stderr).contains(&line_of(&toml, line)),
            "{out:?}"
        );
    }
    let toml = format!(
        "[[service]]\nmode = \"client\"\nlisten = \"127.0.0.1:0\"\nbackend = \"127.0.0.1:9\"\nserver_name = \"localhost\"\nca = {}\nclient_auth = \"required\"\n",
        toml_path(&env.ca_pem)
    );
    let path = env.write_config(&toml);
    let out = run_tlsfront(
        ["check".as_ref(), "--config".as_ref(), path.as_os_str()],
        Duration::from_secs(15),
    );
    assert_eq!(out.code(), Some(2), "{out:?}");
    assert!(out.stderr.contains("service[0].client_auth"), "{out:?}");
    assert!(out.stderr.contains("line 7"), "{out:?}");
}

/// Re-encryption: a server-mode tlsfront whose backend speaks TLS as well
/// (`backend_tls = true`), verified against `backend_ca` or pinned by `backend_pin`.
fn reencrypting_front(env: &TestEnv, backend: SocketAddr, lines: &[&str]) -> Proxy {
    let mut builder = env.config(backend).service("backend_tls = true");
    for l in lines {
        builder = builder.service(l);
    }
    builder.start()
}

#[test]
fn reencryption_verifies_the_backend_and_carries_bytes_exactly() {
    let env = TestEnv::new();
    let echo = Backend::echo();
    let tls_backend = env.config(echo.addr).start();
    let ca = format!("backend_ca = {}", toml_path(&env.ca_pem));
    let front = reencrypting_front(
        &env,
        tls_backend.addr(),
        &[&ca, "backend_server_name = \"localhost\""],
    );
    let mut tls = tls_connect_ok(front.addr(), &env.client());
    let data = pattern(1 << 20, 7);
    assert_echo(&mut tls, &data, "1 MiB through two TLS hops");
    close_session(&mut tls, Duration::from_secs(10));
    assert!(
        front.wait_for_log("offload=userspace reason=reencrypt", Duration::from_secs(5)),
        "{}",
        front.log()
    );
    assert!(
        front.wait_for_log("reason=done", Duration::from_secs(10)),
        "{}",
        front.log()
    );
    assert_eq!(echo.connections(), 1);

    // A pin of the backend's key instead of a CA.
    let pin = sha256_hex(common::pki::spki_der(&env.leaf_der));
    let pinned = reencrypting_front(
        &env,
        tls_backend.addr(),
        &[&format!("backend_pin = [\"{pin}\"]")],
    );
    let mut tls = tls_connect_ok(pinned.addr(), &env.client());
    assert_echo(&mut tls, b"pinned\n", "pinned backend");
}

#[test]
fn reencryption_refuses_a_backend_with_the_wrong_certificate() {
    let env = TestEnv::new();
    let echo = Backend::echo();
    let tls_backend = env.config(echo.addr).start();
    let other = TestEnv::new();
    let wrong_ca = reencrypting_front(
        &env,
        tls_backend.addr(),
        &[&format!("backend_ca = {}", toml_path(&other.ca_pem))],
    );
    let wrong_pin = reencrypting_front(
        &env,
        tls_backend.addr(),
        &[&format!("backend_pin = [\"{}\"]", "ab".repeat(32))],
    );
    for (front, what) in [(&wrong_ca, "unknown CA"), (&wrong_pin, "wrong pin")] {
        let mut tls = tls_connect_ok(front.addr(), &env.client());
        let _ = tls.write_all(b"secret\n");
        let mut buf = Vec::new();
        let _ = tls.read_to_end(&mut buf);
        assert!(buf.is_empty(), "{what}: data came back");
        assert!(
            front.wait_for_log("reason=backend_cert_invalid", Duration::from_secs(10)),
            "{what}: {}",
            front.log()
        );
    }
    assert_eq!(
        echo.connections(),
        0,
        "nothing reached the plaintext service"
    );
}

#[test]
fn client_mode_offers_its_alpn() {
    let env = TestEnv::new();
    let echo = Backend::echo();
    let server = env
        .config(echo.addr)
        .global("log_level = \"debug\"")
        .service("alpn = [\"x-gw\", \"other\"]")
        .start();
    let client = client_front(&env, server.addr(), &["alpn = [\"x-gw\"]"]);
    let got = send_and_collect(tcp_connect(client.addr()).unwrap(), b"alpn\n".to_vec());
    assert_eq!(got, b"alpn\n");
    assert!(
        server.wait_for_log("alpn=\"x-gw\"", Duration::from_secs(10)),
        "{}",
        server.log()
    );
}
