//! STARTTLS offered to clients (server mode, `starttls = "smtp" | "imap" | "pop3" |
//! "postgres"`) in front of a plaintext server: tlsfront greets, accepts STARTTLS, runs the
//! handshake, then connects the backend and takes its greeting, so the client sees one
//! correct conversation. Before TLS, commands that could carry credentials are refused.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use common::*;
use rustls::pki_types::ServerName;

/// A plaintext SMTP-ish backend: greets with 220, answers EHLO, MAIL, RCPT, DATA (until the
/// lone dot), QUIT; reports each message body on `got`.
fn smtp_backend(got: mpsc::Sender<String>) -> Backend {
    Backend::start(move |s, _| {
        let mut w = s.try_clone().unwrap();
        let mut r = BufReader::new(s);
        let _ = w.write_all(b"220 backend.example ESMTP\r\n");
        let mut line = String::new();
        loop {
            line.clear();
            if r.read_line(&mut line).unwrap_or(0) == 0 {
                return;
            }
            let verb = line
                .split_whitespace()
                .next()
                .unwrap_or("")
                .to_ascii_uppercase();
            let reply: &[u8] = match verb.as_str() {
                "EHLO" => b"250-backend.example\r\n250 8BITMIME\r\n",
                "MAIL" | "RCPT" => b"250 OK\r\n",
                "DATA" => {
                    let _ = w.write_all(b"354 go on\r\n");
                    let mut body = String::new();
                    loop {
                        let mut l = String::new();
                        if r.read_line(&mut l).unwrap_or(0) == 0 || l == ".\r\n" {
                            break;
                        }
                        body.push_str(&l);
                    }
                    let _ = got.send(body);
                    b"250 queued\r\n"
                }
                "QUIT" => {
                    let _ = w.write_all(b"221 bye\r\n");
                    return;
                }
                _ => b"500 what\r\n",
            };
            let _ = w.write_all(reply);
        }
    })
}

fn reply(r: &mut impl BufRead) -> String {
    let mut all = String::new();
    loop {
        let mut line = String::new();
        r.read_line(&mut line).expect("a reply line");
        all.push_str(&line);
        if line.len() < 4 || line.as_bytes()[3] != b'-' {
            return all;
        }
    }
}

#[test]
fn smtp_starttls_in_front_of_a_plaintext_server() {
    let env = TestEnv::new();
    let (got_tx, got) = mpsc::channel();
    let backend = smtp_backend(got_tx);
    let proxy = env
        .config(backend.addr)
        .service("starttls = \"smtp\"")
        .start();

    let sock = tcp_connect(proxy.addr()).unwrap();
    let mut w = sock.try_clone().unwrap();
    let mut r = BufReader::new(sock.try_clone().unwrap());
    assert!(reply(&mut r).starts_with("220 "), "tlsfront greets first");
    w.write_all(b"EHLO client.example\r\n").unwrap();
    let ehlo = reply(&mut r);
    assert!(ehlo.contains("STARTTLS"), "{ehlo}");
    // Credentials before TLS are refused, and nothing reaches the backend.
    w.write_all(b"AUTH PLAIN AGFsaWNlAHNlY3JldA==\r\n").unwrap();
    assert!(reply(&mut r).starts_with("530 "));
    w.write_all(b"MAIL FROM:<a@example.com>\r\n").unwrap();
    assert!(reply(&mut r).starts_with("530 "));
    assert_eq!(
        backend.connections(),
        0,
        "the backend is connected only after TLS"
    );
    w.write_all(b"STARTTLS\r\n").unwrap();
    assert!(reply(&mut r).starts_with("220 "));
    drop(r);

    let mut tls = upgrade(&env, sock);
    // Inside TLS the client starts over with EHLO; the backend answers (its greeting was
    // taken by tlsfront, so the first thing the client reads is the EHLO reply).
    tls.write_all(b"EHLO client.example\r\n").unwrap();
    let mut tr = BufReader::new(tls);
    assert!(
        reply(&mut tr).starts_with("250-backend.example"),
        "backend's EHLO reply"
    );
    for (cmd, want) in [
        ("MAIL FROM:<a@example.com>\r\n", "250"),
        ("RCPT TO:<b@example.com>\r\n", "250"),
        ("DATA\r\n", "354"),
        ("Subject: hi\r\n\r\nover TLS\r\n.\r\n", "250"),
        ("QUIT\r\n", "221"),
    ] {
        tr.get_mut().write_all(cmd.as_bytes()).unwrap();
        let rep = reply(&mut tr);
        assert!(rep.starts_with(want), "after {cmd:?}: {rep}");
    }
    let body = got.recv_timeout(Duration::from_secs(10)).unwrap();
    assert!(body.contains("over TLS"), "{body}");
    assert_eq!(backend.connections(), 1);
}

#[test]
fn openssl_s_client_starttls_smtp_verifies_and_talks_to_the_backend() {
    let Some(openssl) = openssl_or_skip("openssl_s_client_starttls_smtp") else {
        return;
    };
    let env = TestEnv::new();
    let (got_tx, _got) = mpsc::channel();
    let backend = smtp_backend(got_tx);
    let proxy = env
        .config(backend.addr)
        .service("starttls = \"smtp\"")
        .start();
    let mut child = Command::new(openssl)
        .args([
            "s_client",
            "-connect",
            &proxy.addr().to_string(),
            "-starttls",
            "smtp",
        ])
        .arg("-CAfile")
        .arg(&env.ca_pem)
        .args(["-verify_return_error", "-brief", "-ign_eof", "-crlf"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"EHLO sclient\nQUIT\n")
        .unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    let out = rx
        .recv_timeout(Duration::from_secs(20))
        .expect("s_client finished")
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("Verification: OK"), "{stderr}");
    assert!(stdout.contains("250-backend.example"), "{stdout}\n{stderr}");
    assert!(stdout.contains("221 bye"), "{stdout}");
}

#[test]
fn a_client_that_only_sends_plaintext_credentials_never_reaches_the_backend() {
    let env = TestEnv::new();
    let (got_tx, _got) = mpsc::channel();
    let backend = smtp_backend(got_tx);
    let proxy = env
        .config(backend.addr)
        .service("starttls = \"smtp\"")
        .start();
    let mut sock = tcp_connect(proxy.addr()).unwrap();
    let mut commands = String::new();
    for _ in 0..12 {
        commands.push_str("AUTH LOGIN\r\n");
    }
    sock.write_all(commands.as_bytes()).unwrap();
    let (got, eof) = read_to_eof(&mut sock);
    let text = String::from_utf8_lossy(&got);
    assert!(eof, "dropped after too many refusals");
    assert_eq!(text.matches("530 ").count(), 10, "{text}");
    assert!(
        proxy.wait_for_log("reason=starttls_failed", Duration::from_secs(10)),
        "{}",
        proxy.log()
    );
    assert_eq!(backend.connections(), 0);
}

/// A plaintext IMAP-ish backend: `* OK` greeting, then `tag OK` to everything, `* BYE` on
/// LOGOUT.
fn imap_backend() -> Backend {
    Backend::start(|s, _| {
        let mut w = s.try_clone().unwrap();
        let mut r = BufReader::new(s);
        let _ = w.write_all(b"* OK backend IMAP ready\r\n");
        let mut line = String::new();
        while r.read_line(&mut line).unwrap_or(0) > 0 {
            let tag = line.split_whitespace().next().unwrap_or("*").to_owned();
            let _ = w.write_all(format!("{tag} OK from backend\r\n").as_bytes());
            line.clear();
        }
    })
}

#[test]
fn imap_and_pop3_starttls_hand_over_to_the_backend() {
    let env = TestEnv::new();
    let backend = imap_backend();
    let proxy = env
        .config(backend.addr)
        .service("starttls = \"imap\"")
        .start();
    let sock = tcp_connect(proxy.addr()).unwrap();
    let (mut w, mut r) = (
        sock.try_clone().unwrap(),
        BufReader::new(sock.try_clone().unwrap()),
    );
    let greeting = say(&mut w, &mut r, b"");
    assert!(greeting.contains("STARTTLS"), "{greeting}");
    let refused = say(&mut w, &mut r, b"a1 LOGIN alice secret\r\n");
    assert!(refused.starts_with("a1 NO"), "{refused}");
    let agreed = say(&mut w, &mut r, b"a2 STARTTLS\r\n");
    assert!(agreed.starts_with("a2 OK"), "{agreed}");
    drop(r);
    let mut tls = upgrade(&env, sock);
    assert_eq!(
        say_tls(&mut tls, b"a3 LOGIN alice secret\r\n"),
        "a3 OK from backend\r\n",
        "the backend's greeting was taken"
    );

    // POP3 with a POP3-ish backend.
    let pop = Backend::start(|s, _| {
        let mut w = s.try_clone().unwrap();
        let mut r = BufReader::new(s);
        let _ = w.write_all(b"+OK backend POP3\r\n");
        let mut line = String::new();
        while r.read_line(&mut line).unwrap_or(0) > 0 {
            let _ = w.write_all(format!("+OK backend got {}", line).as_bytes());
            line.clear();
        }
    });
    let proxy = env.config(pop.addr).service("starttls = \"pop3\"").start();
    let sock = tcp_connect(proxy.addr()).unwrap();
    let (mut w, mut r) = (
        sock.try_clone().unwrap(),
        BufReader::new(sock.try_clone().unwrap()),
    );
    let greeting = say(&mut w, &mut r, b"");
    assert!(greeting.starts_with("+OK"), "{greeting}");
    let refused = say(&mut w, &mut r, b"USER alice\r\n");
    assert!(refused.starts_with("-ERR"), "{refused}");
    let agreed = say(&mut w, &mut r, b"STLS\r\n");
    assert!(agreed.starts_with("+OK"), "{agreed}");
    drop(r);
    let mut tls = upgrade(&env, sock);
    assert_eq!(
        say_tls(&mut tls, b"USER alice\r\n"),
        "+OK backend got USER alice\r\n"
    );
}

/// Sends `command` (nothing if empty) and returns the one line that answers it.
fn say(w: &mut impl Write, r: &mut impl BufRead, command: &[u8]) -> String {
    w.write_all(command).unwrap();
    let mut line = String::new();
    r.read_line(&mut line).unwrap();
    line
}

/// The same inside TLS: the stream serves both ways, so it is read a byte at a time (no
/// read-ahead past the answer).
fn say_tls(tls: &mut (impl Read + Write), command: &[u8]) -> String {
    tls.write_all(command).unwrap();
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    while !line.ends_with(b"\n") && tls.read(&mut byte).unwrap() == 1 {
        line.push(byte[0]);
    }
    String::from_utf8(line).unwrap()
}

/// TLS over `sock` once the plaintext part agreed to it (verifying "localhost").
fn upgrade(
    env: &TestEnv,
    sock: TcpStream,
) -> rustls::StreamOwned<rustls::ClientConnection, TcpStream> {
    let name = ServerName::try_from("localhost").unwrap();
    let conn = rustls::ClientConnection::new(env.client(), name).unwrap();
    rustls::StreamOwned::new(conn, sock)
}
