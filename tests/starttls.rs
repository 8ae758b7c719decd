//! STARTTLS toward the server in client mode (`starttls = ".."`): tlsfront speaks the
//! protocol's plaintext opening, then TLS, and the local plaintext client talks to the
//! server inside it. Against a real SMTP server (aiosmtpd, from tests/peers/) and a custom
//! line protocol driven by a chat script.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, Arc};
use std::thread;
use std::time::Duration;

use common::*;

/// True when the Python peers are installed; panics when they must be (CI).
fn have_peers(test: &str) -> bool {
    have_peer(
        test,
        &["python3", "-c", "import aiosmtpd"],
        "aiosmtpd (pip install -r tests/peers/requirements.txt)",
    )
}

/// aiosmtpd on a free port (with STARTTLS when `tls` names a cert and key); its stdout lines
/// arrive on the receiver. Killed on drop.
struct SmtpServer {
    child: Child,
    addr: SocketAddr,
    lines: mpsc::Receiver<String>,
}

impl SmtpServer {
    fn start(tls: Option<(&Path, &Path)>) -> SmtpServer {
        let addr = closed_port_addr();
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/peers/smtp_server.py");
        let mut cmd = Command::new("python3");
        cmd.arg(script).arg(addr.port().to_string());
        if let Some((cert, key)) = tls {
            cmd.arg(cert).arg(key);
        }
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("python3 smtp_server.py");
        let (tx, lines) = mpsc::channel();
        let out = BufReader::new(child.stdout.take().unwrap());
        thread::spawn(move || {
            for line in out.lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let ready = lines.recv_timeout(Duration::from_secs(20));
        assert_eq!(ready.as_deref(), Ok("READY"), "aiosmtpd did not start");
        SmtpServer { child, addr, lines }
    }
}

impl Drop for SmtpServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn client_front(env: &TestEnv, remote: SocketAddr, extra: &[&str]) -> Proxy {
    let mut toml = format!(
        "[global]\nworkers = 1\npin = false\n[[service]]\nname = \"out\"\nmode = \"client\"\nlisten = \"127.0.0.1:0\"\nbackend = \"{remote}\"\nserver_name = \"localhost\"\nca = {}\nstarttls_timeout = \"3s\"\n",
        toml_path(&env.ca_pem)
    );
    for l in extra {
        toml.push_str(l);
        toml.push('\n');
    }
    let path = env.write_file("client.toml", &toml);
    Proxy::start(["serve".as_ref(), "--config".as_ref(), path.as_os_str()])
}

/// Reads one SMTP reply (all its lines) and returns its code.
fn smtp_reply(r: &mut BufReader<TcpStream>) -> u16 {
    loop {
        let mut line = String::new();
        r.read_line(&mut line).expect("SMTP reply");
        assert!(line.len() >= 4, "short SMTP reply {line:?}");
        if line.as_bytes()[3] == b' ' {
            return line[..3].parse().expect("reply code");
        }
    }
}

#[test]
fn smtp_starttls_to_a_real_server_then_mail_goes_through_tls() {
    if !have_peers("smtp_starttls_to_a_real_server_then_mail_goes_through_tls") {
        return;
    }
    let env = TestEnv::new();
    let server = SmtpServer::start(Some((&env.cert_pem, &env.key_pem)));
    let front = client_front(&env, server.addr, &["starttls = \"smtp\""]);

    let app = tcp_connect(front.addr()).unwrap();
    let mut w = app.try_clone().unwrap();
    let mut r = BufReader::new(app);
    // Inside TLS the conversation restarts with EHLO (RFC 3207); no greeting comes first.
    for (cmd, want) in [
        ("EHLO app.example\r\n", 250),
        ("MAIL FROM:<gw@example.com>\r\n", 250),
        ("RCPT TO:<ops@example.com>\r\n", 250),
        ("DATA\r\n", 354),
        ("Subject: through tlsfront\r\n\r\nhello\r\n.\r\n", 250),
        ("QUIT\r\n", 221),
    ] {
        w.write_all(cmd.as_bytes()).unwrap();
        assert_eq!(smtp_reply(&mut r), want, "after {cmd:?}");
    }
    let message = server
        .lines
        .recv_timeout(Duration::from_secs(10))
        .expect("the server got the message");
    assert!(message.starts_with("MESSAGE tls=True"), "{message}");
    assert!(
        message.contains("from=gw@example.com to=ops@example.com"),
        "{message}"
    );
    // After QUIT the server closes; its end reaches the app, whose close ends the session.
    let mut rest = Vec::new();
    let _ = r.read_to_end(&mut rest);
    w.shutdown(Shutdown::Write).unwrap();
    assert!(
        front.wait_for_log("closed", Duration::from_secs(10)),
        "{}",
        front.log()
    );
    let closed = front.log_lines("closed").remove(0);
    let reason = field(&closed, "reason").unwrap_or("-").to_owned();
    assert!(
        reason == "done" || reason == "server_eof_without_close_notify",
        "{closed}"
    );
}

#[test]
fn a_server_that_offers_no_starttls_closes_the_local_connection() {
    if !have_peers("a_server_that_offers_no_starttls_closes_the_local_connection") {
        return;
    }
    let env = TestEnv::new();
    let server = SmtpServer::start(None);
    let front = client_front(&env, server.addr, &["starttls = \"smtp\""]);
    let mut app = tcp_connect(front.addr()).unwrap();
    let (got, eof) = read_to_eof(&mut app);
    assert!(got.is_empty() && eof, "nothing must reach the app: {got:?}");
    assert!(
        front.wait_for_log("does not offer STARTTLS", Duration::from_secs(10)),
        "{}",
        front.log()
    );
    assert!(
        front.wait_for_log("reason=starttls_failed", Duration::from_secs(10)),
        "{}",
        front.log()
    );
}

/// A line-protocol server: `HELLO v1`, waits for `TLS please`, answers `OK go`, then TLS
/// (rustls with the test certificate) and an echo of one line. Sends what it heard before
/// TLS on `heard`.
fn line_server(env: &TestEnv, heard: mpsc::Sender<String>, reply: &'static str) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let config = server_config(env);
    thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.write_all(b"HELLO v1\r\n").unwrap();
        let mut line = Vec::new();
        let mut byte = [0u8; 1];
        while !line.ends_with(b"\n") {
            if s.read(&mut byte).unwrap_or(0) == 0 {
                return;
            }
            line.push(byte[0]);
        }
        let _ = heard.send(String::from_utf8_lossy(&line).into_owned());
        s.write_all(reply.as_bytes()).unwrap();
        if !reply.starts_with("OK") {
            // Holds the connection open without agreeing: the client's step must time out.
            thread::sleep(Duration::from_secs(6));
            return;
        }
        let conn = rustls::ServerConnection::new(config).unwrap();
        let mut tls = rustls::StreamOwned::new(conn, s);
        let mut r = BufReader::new(&mut tls);
        let mut msg = String::new();
        if r.read_line(&mut msg).is_ok() {
            let _ = tls.write_all(format!("echo {msg}").as_bytes());
            tls.conn.send_close_notify();
            let _ = tls.flush();
        }
    });
    addr
}

fn server_config(env: &TestEnv) -> Arc<rustls::ServerConfig> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certs = vec![CertificateDer::from_pem_file(&env.cert_pem).unwrap()];
    let key = PrivateKeyDer::from_pem_file(&env.key_pem).unwrap();
    let cfg = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .unwrap();
    Arc::new(cfg)
}

const CHAT: &[&str] = &[
    "starttls = \"chat\"",
    "chat = [{ expect = \"HELLO\" }, { send = \"TLS please\\r\\n\" }, { expect = \"OK\" }]",
];

#[test]
fn a_chat_script_opens_a_custom_line_protocol() {
    let env = TestEnv::new();
    let (heard_tx, heard) = mpsc::channel();
    let server = line_server(&env, heard_tx, "OK go\r\n");
    let front = client_front(&env, server, CHAT);
    let mut app = tcp_connect(front.addr()).unwrap();
    app.write_all(b"ping\n").unwrap();
    let mut r = BufReader::new(app.try_clone().unwrap());
    let mut line = String::new();
    r.read_line(&mut line).unwrap();
    assert_eq!(line, "echo ping\n", "the app talks inside the TLS session");
    assert_eq!(heard.recv().unwrap(), "TLS please\r\n");
    app.shutdown(Shutdown::Write).unwrap();
}

#[test]
fn a_chat_step_that_never_matches_times_out() {
    let env = TestEnv::new();
    let (heard_tx, _heard) = mpsc::channel();
    let server = line_server(&env, heard_tx, "NO thanks\r\n");
    let front = client_front(&env, server, CHAT);
    let mut app = tcp_connect(front.addr()).unwrap();
    let started = std::time::Instant::now();
    let (got, eof) = read_to_eof(&mut app);
    assert!(got.is_empty() && eof, "{got:?}");
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(2500) && waited < Duration::from_secs(8),
        "closed after {waited:?}; starttls_timeout is 3s"
    );
    assert!(
        front.wait_for_log("reason=starttls_failed", Duration::from_secs(10)),
        "{}",
        front.log()
    );
}

/// PostgreSQL from the distribution, with `ssl = on` and only `hostssl` connections allowed;
/// run as the `postgres` user when the tests run as root. Stopped on drop.
struct Postgres {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

fn pg_bin(name: &str) -> Option<std::path::PathBuf> {
    let on_path = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|d| d.join(name));
    let debian = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .map(|v| v.path().join("bin").join(name));
    on_path.chain(debian).find(|p| p.is_file())
}

impl Postgres {
    /// With `ssl`, TLS on and only TLS clients allowed; without, plaintext only.
    fn start(env: &TestEnv, ssl: bool) -> Option<Postgres> {
        let (initdb, postgres) = (pg_bin("initdb")?, pg_bin("postgres")?);
        let root = rustix::process::geteuid().is_root();
        let dir = tempfile::Builder::new()
            .prefix("tlsfront-pg-")
            .tempdir()
            .unwrap();
        let data = dir.path().join("data");
        let owner = if root {
            let out = Command::new("id").args(["-u", "postgres"]).output().ok()?;
            let uid: u32 = String::from_utf8_lossy(&out.stdout).trim().parse().ok()?;
            let gid = std::os::unix::fs::MetadataExt::gid(&std::fs::metadata("/").unwrap());
            std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid)).unwrap();
            Some(uid)
        } else {
            None
        };
        let as_owner = |program: &Path| {
            let mut c = if root {
                let mut c = Command::new("runuser");
                c.args(["-u", "postgres", "--"]).arg(program);
                c
            } else {
                Command::new(program)
            };
            c.stdin(Stdio::null());
            c
        };
        let ok = as_owner(&initdb)
            .arg("-D")
            .arg(&data)
            .args(["-A", "trust", "-U", "postgres"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "initdb failed");
        for (name, from) in [("server.crt", &env.cert_pem), ("server.key", &env.key_pem)] {
            let to = data.join(name);
            std::fs::copy(from, &to).unwrap();
            std::fs::set_permissions(&to, std::os::unix::fs::PermissionsExt::from_mode(0o600))
                .unwrap();
            if let Some(uid) = owner {
                std::os::unix::fs::chown(&to, Some(uid), None).unwrap();
            }
        }
        let port = closed_port_addr().port();
        let conf = format!(
            "\nport = {port}\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = '{}'\nssl = {}\nssl_cert_file = 'server.crt'\nssl_key_file = 'server.key'\n",
            data.display(),
            if ssl { "on" } else { "off" }
        );
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(data.join("postgresql.conf"))
            .unwrap();
        f.write_all(conf.as_bytes()).unwrap();
        // With ssl, only TLS connections: a plaintext one would be refused.
        let hba = if ssl {
            "hostssl all all 127.0.0.1/32 trust\n"
        } else {
            "host all all 127.0.0.1/32 trust\n"
        };
        std::fs::write(data.join("pg_hba.conf"), hba).unwrap();
        let child = as_owner(&postgres)
            .arg("-D")
            .arg(&data)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("postgres");
        let pg = Postgres {
            child,
            port,
            _dir: dir,
        };
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "postgres did not start"
            );
            thread::sleep(Duration::from_millis(100));
        }
        Some(pg)
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn psql_without_ssl_reaches_postgres_over_tls_through_tlsfront() {
    let env = TestEnv::new();
    let Some(psql) = pg_bin("psql") else {
        assert!(
            std::env::var_os("TLSFRONT_REQUIRE_PEERS").is_none(),
            "psql missing"
        );
        eprintln!("SKIP: PostgreSQL is not installed");
        return;
    };
    let Some(pg) = Postgres::start(&env, true) else {
        assert!(
            std::env::var_os("TLSFRONT_REQUIRE_PEERS").is_none(),
            "postgres missing"
        );
        eprintln!("SKIP: PostgreSQL server is not installed");
        return;
    };
    let server: SocketAddr = format!("127.0.0.1:{}", pg.port).parse().unwrap();
    let front = client_front(&env, server, &["starttls = \"postgres\""]);
    let query = |port: u16| {
        Command::new(&psql)
            .arg(format!(
                "host=127.0.0.1 port={port} user=postgres dbname=postgres sslmode=disable connect_timeout=10"
            ))
            .args(["-tAc", "select ssl from pg_stat_ssl where pid = pg_backend_pid()"])
            .stdin(Stdio::null())
            .output()
            .expect("psql")
    };
    // Directly, without SSL, the server refuses (hostssl only)...
    let direct = query(pg.port);
    assert!(!direct.status.success(), "plaintext was accepted directly");
    // ...through tlsfront the same plaintext client gets a TLS session.
    let out = query(front.addr().port());
    assert!(
        out.status.success(),
        "psql through tlsfront: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        front.log()
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "t");
}

/// Server-side STARTTLS for PostgreSQL: tlsfront answers the client's SSLRequest with `S`,
/// terminates TLS, and relays the StartupMessage to a plaintext PostgreSQL.
#[test]
fn psql_verifying_tlsfront_reaches_a_plaintext_postgres() {
    let env = TestEnv::new();
    let (Some(psql), Some(pg)) = (pg_bin("psql"), Postgres::start(&env, false)) else {
        assert!(
            std::env::var_os("TLSFRONT_REQUIRE_PEERS").is_none(),
            "PostgreSQL missing"
        );
        eprintln!("SKIP: PostgreSQL is not installed");
        return;
    };
    let backend = format!("127.0.0.1:{}", pg.port);
    let front = env
        .config(backend)
        .service("starttls = \"postgres\"")
        .start();
    let query = |sslmode: &str| {
        Command::new(&psql)
            .arg(format!(
                "host=localhost hostaddr=127.0.0.1 port={} user=postgres dbname=postgres sslmode={sslmode} sslrootcert={} connect_timeout=10",
                front.addr().port(),
                env.ca_pem.display()
            ))
            .args(["-tAc", "select 40 + 2"])
            .stdin(Stdio::null())
            .output()
            .expect("psql")
    };
    let out = query("verify-full");
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        front.log()
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "42");
    // A client that does not ask for SSL gets an error and never reaches the database.
    let out = query("disable");
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("TLS connections only"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Client mode toward IMAP and POP3 servers that require STARTTLS (a small asyncio server
/// from tests/peers/, on Python's own TLS): the local client logs in inside TLS.
#[test]
fn imap_and_pop3_starttls_to_python_servers() {
    let env = TestEnv::new();
    let (imap, pop3) = (closed_port_addr(), closed_port_addr());
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/peers/imap_pop3_server.py"
    );
    let mut server = Command::new("python3")
        .arg(script)
        .arg(imap.port().to_string())
        .arg(pop3.port().to_string())
        .arg(&env.cert_pem)
        .arg(&env.key_pem)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("python3 imap_pop3_server.py");
    let mut first = String::new();
    BufReader::new(server.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    let _server = KillOnDrop(server);
    assert_eq!(first.trim(), "READY");

    for (remote, protocol, command, want) in [
        (
            imap,
            "imap",
            "a9 LOGIN alice secret\r\n",
            "a9 OK LOGIN completed over TLS",
        ),
        (pop3, "pop3", "USER alice\r\n", "+OK USER over TLS"),
    ] {
        let front = client_front(&env, remote, &[&format!("starttls = \"{protocol}\"")]);
        let mut app = tcp_connect(front.addr()).unwrap();
        app.write_all(command.as_bytes()).unwrap();
        let mut line = String::new();
        BufReader::new(app.try_clone().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(line.trim_end(), want, "{protocol}: {}", front.log());
    }
}

/// A peer process, stopped however the test ends.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Server-side STARTTLS in front of a real plaintext SMTP server (aiosmtpd without TLS),
/// driven by `openssl s_client -starttls smtp`: the mail arrives, and before STARTTLS
/// tlsfront refused plaintext AUTH.
#[test]
fn openssl_starttls_smtp_through_tlsfront_to_plaintext_aiosmtpd() {
    if !have_peers("openssl_starttls_smtp_through_tlsfront_to_plaintext_aiosmtpd") {
        return;
    }
    let Some(openssl) = openssl_or_skip("openssl_starttls_smtp_through_tlsfront") else {
        return;
    };
    let env = TestEnv::new();
    let server = SmtpServer::start(None);
    let front = env
        .config(server.addr)
        .service("starttls = \"smtp\"")
        .start();

    // Plaintext AUTH first: refused, and the backend is not even connected yet.
    let mut plain = tcp_connect(front.addr()).unwrap();
    let mut r = BufReader::new(plain.try_clone().unwrap());
    let mut line = String::new();
    r.read_line(&mut line).unwrap();
    assert!(line.starts_with("220 "), "{line}");
    plain
        .write_all(b"AUTH PLAIN AGFsaWNlAHNlY3JldA==\r\n")
        .unwrap();
    line.clear();
    r.read_line(&mut line).unwrap();
    assert!(line.starts_with("530 "), "{line}");
    drop((plain, r));

    let mut child = Command::new(openssl)
        .args([
            "s_client",
            "-connect",
            &front.addr().to_string(),
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
        .write_all(
            b"EHLO sclient.example\nMAIL FROM:<ops@example.com>\nRCPT TO:<dba@example.com>\nDATA\nSubject: via tlsfront\n\nhello\n.\nQUIT\n",
        )
        .unwrap();
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    let out = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("s_client finished")
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("Verification: OK"), "{stderr}");
    let message = server
        .lines
        .recv_timeout(Duration::from_secs(10))
        .expect("aiosmtpd got the message");
    // aiosmtpd is plaintext: TLS ended at tlsfront.
    assert!(
        message.starts_with("MESSAGE tls=False from=ops@example.com to=dba@example.com"),
        "{message}\n{}",
        String::from_utf8_lossy(&out.stdout)
    );
}
