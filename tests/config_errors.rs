//! Config validation: `tlsfront check` and `tlsfront serve` must reject bad configs with exit
//! code 2 and a message naming the file, the line and the field.

mod common;

use std::path::Path;
use std::time::Duration;

use common::*;

/// Backend address for configs that are never served.
const BACKEND: &str = "127.0.0.1:9";
const RUN_TIMEOUT: Duration = Duration::from_secs(15);

fn run(mode: &str, config: &Path) -> RunOutput {
    run_tlsfront(
        [mode.as_ref(), "--config".as_ref(), config.as_os_str()],
        RUN_TIMEOUT,
    )
}

fn assert_config_error(
    mode: &str,
    out: &RunOutput,
    path: &Path,
    lines: &[usize],
    needles: &[&str],
) {
    assert_eq!(
        out.code(),
        Some(2),
        "`{mode}` must exit with 2 on a config error: {out:?}"
    );
    let err = &out.stderr;
    let path_s = path.to_str().unwrap();
    assert!(
        err.contains(path_s),
        "`{mode}`: error must name the config file {path_s}: {out:?}"
    );
    let found = line_numbers(err);
    assert!(
        found.iter().any(|n| lines.contains(n)),
        "`{mode}`: error must say `line N` with N in {lines:?}, found {found:?}: {out:?}"
    );
    let lower = err.to_ascii_lowercase();
    for n in needles {
        assert!(
            lower.contains(&n.to_ascii_lowercase()),
            "`{mode}`: error must mention {n:?}: {out:?}"
        );
    }
    assert!(
        !err.contains("ready workers="),
        "`{mode}` must not start serving"
    );
    assert!(!out.stdout.contains("config OK"), "{out:?}");
}

/// Writes `toml`, runs both `check` and `serve`, and expects a config error located at the
/// first line containing `at` (or any of `also_ok_at`), mentioning every needle.
fn expect_error(env: &TestEnv, toml: &str, at: &str, also_ok_at: &[&str], needles: &[&str]) {
    let path = env.write_config(toml);
    let mut lines = vec![line_of(toml, at)];
    lines.extend(also_ok_at.iter().map(|n| line_of(toml, n)));
    for mode in ["check", "serve"] {
        let out = run(mode, &path);
        assert_config_error(mode, &out, &path, &lines, needles);
    }
}

#[test]
fn unknown_field_in_service() {
    let env = TestEnv::new();
    let toml = env.config(BACKEND).service("bogus_option = 1").to_toml();
    expect_error(&env, &toml, "bogus_option", &[], &["bogus_option"]);
}

#[test]
fn unknown_field_in_global() {
    let env = TestEnv::new();
    let toml = env.config(BACKEND).global("wrokers = 2").to_toml();
    expect_error(&env, &toml, "wrokers", &[], &["wrokers"]);
}

#[test]
fn wrong_type() {
    let env = TestEnv::new();
    let toml = env.config(BACKEND).service(r#"backlog = "many""#).to_toml();
    expect_error(&env, &toml, "backlog", &[], &["backlog"]);
}

#[test]
fn bad_durations() {
    let env = TestEnv::new();
    for (field, value) in [
        ("handshake_timeout", "ten"),
        ("connect_timeout", "5x"),
        ("idle_timeout", ""),
    ] {
        let toml = env
            .config(BACKEND)
            .service(&format!("{field} = {}", toml_str(value)))
            .to_toml();
        expect_error(&env, &toml, field, &[], &[field]);
    }
}

#[test]
fn missing_cert_file() {
    let env = TestEnv::new();
    let missing = env.path("no-such-cert.pem");
    let toml = env
        .config(BACKEND)
        .to_toml()
        .replace(env.cert_pem.to_str().unwrap(), missing.to_str().unwrap());
    expect_error(
        &env,
        &toml,
        "cert =",
        &[],
        &["cert", missing.to_str().unwrap()],
    );
}

#[test]
fn cert_file_without_certificate() {
    let env = TestEnv::new();
    // A PEM file that holds only a private key.
    let toml = env.config(BACKEND).to_toml().replace(
        env.cert_pem.to_str().unwrap(),
        env.other_key_pem.to_str().unwrap(),
    );
    expect_error(&env, &toml, "cert =", &[], &["cert"]);
}

#[test]
fn missing_key_file() {
    let env = TestEnv::new();
    let missing = env.path("no-such-key.pem");
    let toml = env
        .config(BACKEND)
        .to_toml()
        .replace(env.key_pem.to_str().unwrap(), missing.to_str().unwrap());
    expect_error(
        &env,
        &toml,
        "key =",
        &[],
        &["key", missing.to_str().unwrap()],
    );
}

#[test]
fn unreadable_key_file() {
    let env = TestEnv::new();
    let garbage = env.write_file("garbage-key.pem", "this is not a PEM private key\n");
    let toml = env
        .config(BACKEND)
        .to_toml()
        .replace(env.key_pem.to_str().unwrap(), garbage.to_str().unwrap());
    expect_error(&env, &toml, "key =", &[], &["key"]);
}

#[test]
fn key_does_not_match_cert() {
    let env = TestEnv::new();
    let toml = env.config(BACKEND).to_toml().replace(
        env.key_pem.to_str().unwrap(),
        env.other_key_pem.to_str().unwrap(),
    );
    // Either the key line or the cert line is a reasonable location.
    expect_error(&env, &toml, "key =", &["cert ="], &["key does not match"]);
}

#[test]
fn unknown_cipher() {
    let env = TestEnv::new();
    let toml = env
        .config(BACKEND)
        .service(r#"min_version = "1.2""#)
        .service(r#"ciphers = ["TLS13_AES_128_GCM_SHA256", "TLS_FOO"]"#)
        .to_toml();
    expect_error(
        &env,
        &toml,
        "ciphers",
        &[],
        &["unknown cipher", "ciphers", "TLS_FOO"],
    );
}

#[test]
fn unknown_group() {
    let env = TestEnv::new();
    let toml = env
        .config(BACKEND)
        .service(r#"groups = ["X25519", "P-999"]"#)
        .to_toml();
    expect_error(
        &env,
        &toml,
        "groups",
        &[],
        &["unknown group", "groups", "P-999"],
    );
}

#[test]
fn error_in_second_service_names_it() {
    let env = TestEnv::new();
    let toml = env
        .config(BACKEND)
        .add_service("second", BACKEND, &[r#"handshake_timeout = "soon""#])
        .to_toml();
    expect_error(&env, &toml, "soon", &[], &["handshake_timeout"]);
}

#[test]
fn port_in_use() {
    let env = TestEnv::new();
    // std binds with SO_REUSEADDR but without SO_REUSEPORT, so the proxy cannot share it.
    let holder = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let busy = holder.local_addr().unwrap().to_string();
    let toml = env.config(BACKEND).to_toml().replace(
        r#"listen = "127.0.0.1:0""#,
        &format!("listen = {}", toml_str(&busy)),
    );
    let path = env.write_config(&toml);
    let out = run("serve", &path);
    assert!(
        matches!(out.code(), Some(c) if c != 0),
        "serve on a busy port must fail with a non-zero exit: {out:?}"
    );
    assert!(out.stderr.contains("listen"), "must name `listen`: {out:?}");
    assert!(out.stderr.contains(&busy), "must name {busy}: {out:?}");
    assert!(!out.stderr.contains("ready workers="), "{out:?}");
    drop(holder);
}

#[test]
fn missing_config_file() {
    let env = TestEnv::new();
    let path = env.path("does-not-exist.toml");
    for mode in ["check", "serve"] {
        let out = run(mode, &path);
        assert_eq!(out.code(), Some(2), "{mode}: {out:?}");
        assert!(
            out.stderr.contains(path.to_str().unwrap()),
            "{mode}: must name the file: {out:?}"
        );
    }
}

#[test]
fn unknown_flag_is_usage_error() {
    let out = run_tlsfront(["serve", "--no-such-flag"], RUN_TIMEOUT);
    assert_eq!(out.code(), Some(2), "{out:?}");
}

/// The complete example from the spec, with two services.
fn full_example(env: &TestEnv, pin: bool, backend: &str) -> String {
    let cert = toml_path(&env.cert_pem);
    let key = toml_path(&env.key_pem);
    let pin_lines = if pin {
        "pin = true\ncpus = [0]"
    } else {
        "pin = false"
    };
    format!(
        r#"# full example
[global]
workers = "auto"
{pin_lines}
drain_timeout = "30s"
log_level = "info"

[[service]]
name = "web"
listen = "127.0.0.1:0"
backend = "{backend}"
cert = {cert}
key = {key}
min_version = "1.2"
max_version = "1.3"
ciphers = ["TLS13_AES_128_GCM_SHA256", "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384"]
groups = ["X25519MLKEM768", "X25519", "P-256", "P-384"]
alpn = ["h2", "http/1.1"]
buffer_size = "16KiB"
nodelay = true
keepalive = {{ idle = "60s", interval = "10s", count = 5 }}
rcvbuf = 262144
sndbuf = 262144
backlog = 1024
max_connections = 10000
handshake_timeout = "10s"
connect_timeout = "500ms"
idle_timeout = "5m"

[[service]]
name = "other"
listen = "127.0.0.1:0"
backend = "{backend}"
cert = {cert}
key = {key}
buffer_size = 16384
keepalive = false
handshake_timeout = 10
idle_timeout = "1h"
"#
    )
}

#[test]
fn check_accepts_full_example() {
    let env = TestEnv::new();
    let path = env.write_config(&full_example(&env, true, BACKEND));
    let out = run("check", &path);
    assert_eq!(out.code(), Some(0), "{out:?}");
    assert!(
        out.stdout.contains("config OK: 2 service(s)"),
        "stdout should say `config OK: 2 service(s)`: {out:?}"
    );
}

#[test]
fn serve_full_example_binds_both_services() {
    let env = TestEnv::new();
    let echo = Backend::echo();
    let path = env.write_config(&full_example(&env, false, &echo.addr.to_string()));
    let proxy = Proxy::start(["serve".as_ref(), "--config".as_ref(), path.as_os_str()]);
    let names: Vec<&str> = proxy.services().iter().map(|s| s.0.as_str()).collect();
    assert!(
        names.contains(&"web") && names.contains(&"other"),
        "{names:?}"
    );
    assert_ne!(proxy.service_addr("web"), proxy.service_addr("other"));
    for name in ["web", "other"] {
        let mut tls = tls_connect_ok(proxy.service_addr(name), &env.client());
        if name == "web" {
            // `ciphers` restricts TLS 1.3 to AES-128-GCM.
            assert_eq!(
                negotiated(&tls).1,
                Some(rustls::CipherSuite::TLS13_AES_128_GCM_SHA256)
            );
        }
        assert_echo(&mut tls, name.as_bytes(), name);
    }
}

/// `line` (added to the service, replacing its single backend when it sets `backend`) is
/// refused by check and serve with `line N: service[0].FIELD: MESSAGE` pointing at it.
fn expect_service_error(line: &str, field: &str, message: &str) {
    let env = TestEnv::new();
    let mut toml = env.config(BACKEND).service(line).to_toml();
    if field == "backend" {
        toml = toml.replace(&format!("backend = \"{BACKEND}\"\n"), "");
    }
    let at = line_of(&toml, line);
    let exact = format!("line {at}: service[0].{field}: {message}");
    expect_error(&env, &toml, line, &[], &[&exact]);
}

#[test]
fn bad_cipher_preference() {
    expect_service_error(
        r#"cipher_preference = "fastest""#,
        "cipher_preference",
        r#"must be "auto", "server" or "client", got "fastest""#,
    );
}

#[test]
fn bad_proxy_protocol_settings() {
    expect_service_error(
        r#"proxy_protocol = "v3""#,
        "proxy_protocol",
        r#"must be "v1", "v2" or "off", got "v3""#,
    );
    expect_service_error("accept_proxy = true", "accept_proxy", "needs proxy_sources");
    expect_service_error(
        r#"proxy_sources = ["10.0.0.0/8"]"#,
        "proxy_sources",
        "only used with accept_proxy = true",
    );
}

#[test]
fn bad_backend_pool_settings() {
    expect_service_error("backend = []", "backend", "an empty list");
    let many = format!("backend = [{}]", vec!["\"127.0.0.1:9\""; 65].join(", "));
    expect_service_error(&many, "backend", "at most 64 backends per pool");
    expect_service_error(
        r#"balance = "random""#,
        "balance",
        r#"must be "round_robin" or "least_connections""#,
    );
    expect_service_error(
        "health_fail_after = 0",
        "health_fail_after",
        "must be at least 1",
    );
    expect_service_error(
        r#"health_check = "10ms""#,
        "health_check",
        "must be 100ms or more",
    );
}
