//! Log formats: `log_format = "json"` (or `--log-format json`) writes one JSON object per
//! line, and every line about a connection carries its id (`conn`), in both formats.

mod common;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use common::pki::*;
use common::*;

#[test]
fn json_lines_parse_and_every_connection_line_carries_its_id() {
    let env = TestEnv::new();
    let echo = Backend::echo();
    let proxy = env
        .config(echo.addr)
        .global("log_format = \"json\"")
        .global("log_level = \"debug\"")
        .start();
    let cfg = env.client_with(&ClientOpts::tls13());
    let mut peers = Vec::new();
    for i in 0..2 {
        let mut tls = tls_connect_ok(proxy.addr(), &cfg);
        peers.push(tls.sock.local_addr().unwrap().to_string());
        assert_echo(&mut tls, format!("json {i}").as_bytes(), "echo");
        close_session(&mut tls, Duration::from_secs(10));
    }
    // And one that is not TLS at all.
    let mut garbage = TcpStream::connect(proxy.addr()).unwrap();
    peers.push(garbage.local_addr().unwrap().to_string());
    garbage.write_all(b"not TLS\r\n\r\n").unwrap();
    let _ = garbage.read(&mut [0u8; 16]);
    assert!(
        proxy.wait_for_log_count("closed", 3, Duration::from_secs(10)),
        "{}",
        proxy.log()
    );

    let mut ids_by_peer: HashMap<String, Vec<String>> = HashMap::new();
    for line in proxy.log().lines() {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not a JSON line ({e}): {line}"));
        for key in ["timestamp", "level", "target", "message"] {
            assert!(v.get(key).is_some(), "no {key} in {line}");
        }
        // A line about a connection names its peer; it must name the connection too.
        if let Some(peer) = v.get("peer").and_then(|p| p.as_str()) {
            let conn = v
                .get("conn")
                .and_then(|c| c.as_str())
                .unwrap_or_else(|| panic!("a connection line without conn: {line}"));
            ids_by_peer
                .entry(peer.to_owned())
                .or_default()
                .push(conn.to_owned());
        }
    }
    let mut ids = Vec::new();
    for peer in &peers {
        let seen = ids_by_peer
            .get(peer)
            .unwrap_or_else(|| panic!("no line about {peer}:\n{}", proxy.log()));
        // accepted, (handshake done, offload,) closed: several lines, one id.
        assert!(seen.len() >= 2, "{peer}: {seen:?}");
        assert!(seen.iter().all(|c| c == &seen[0]), "{peer}: {seen:?}");
        ids.push(seen[0].clone());
    }
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 3, "connection ids are not distinct: {ids:?}");
    let closed: Vec<serde_json::Value> = proxy
        .log()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["message"] == "closed")
        .collect();
    assert_eq!(closed.len(), 3);
    for c in &closed {
        assert!(c["reason"].is_string() && c["bytes_in"].is_u64(), "{c}");
    }
}

#[test]
fn text_lines_carry_the_connection_id_too() {
    let env = TestEnv::new();
    let echo = Backend::echo();
    let proxy = env.config(echo.addr).start();
    let cfg = env.client_with(&ClientOpts::tls13());
    let mut tls = tls_connect_ok(proxy.addr(), &cfg);
    let peer = tls.sock.local_addr().unwrap();
    assert_echo(&mut tls, b"text", "echo");
    close_session(&mut tls, Duration::from_secs(10));
    let line = closed_line(&proxy, peer);
    let conn = field(&line, "conn").unwrap_or_else(|| panic!("no conn= in {line}"));
    let (worker, seq) = conn
        .split_once('-')
        .unwrap_or_else(|| panic!("conn={conn}"));
    assert_eq!(worker, "0");
    assert!(seq.parse::<u64>().unwrap() >= 1, "{line}");
}

/// Lines of `path` once it has `n` of them (waits up to 5 s: lines are written every second).
fn lines_of(path: &std::path::Path, n: usize) -> Vec<String> {
    let read = || -> Vec<String> {
        std::fs::read_to_string(path)
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect()
    };
    wait_until(Duration::from_secs(5), || read().len() >= n);
    read()
}

#[test]
fn the_access_log_has_one_line_per_closed_connection() {
    let env = TestEnv::new();
    let echo = Backend::echo();
    let path = env.dir.path().join("access.log");
    let proxy = env
        .config(echo.addr)
        .service(&format!("access_log = {}", toml_path(&path)))
        .start();
    let cfg = env.client_with(&ClientOpts::tls13());
    let mut sizes = Vec::new();
    for i in 0..2 {
        let mut tls = tls_connect_ok(proxy.addr(), &cfg);
        let data = random_bytes(1000 + i * 500);
        assert_echo(&mut tls, &data, "echo");
        sizes.push(data.len() as u64);
        close_session(&mut tls, Duration::from_secs(10));
    }
    let mut garbage = TcpStream::connect(proxy.addr()).unwrap();
    garbage.write_all(b"not TLS\r\n\r\n").unwrap();
    let _ = garbage.read(&mut [0u8; 16]);
    let lines = lines_of(&path, 3);
    assert_eq!(lines.len(), 3, "{lines:?}");
    // The same connections, ids and reasons as the `closed` lines of the log.
    for closed in proxy.log_lines("closed") {
        let conn = field(&closed, "conn").unwrap();
        let line = lines
            .iter()
            .find(|l| field(l, "conn") == Some(conn))
            .unwrap_or_else(|| panic!("no access line for conn={conn}: {lines:?}"));
        for key in ["reason", "bytes_in", "bytes_out", "peer", "route"] {
            assert_eq!(
                field(line, key),
                field(&closed, key),
                "{key}: {line} vs {closed}"
            );
        }
        assert!(
            field(line, "time").is_some_and(|t| t.ends_with('Z')),
            "{line}"
        );
    }
    let tls_lines: Vec<&String> = lines
        .iter()
        .filter(|l| field(l, "reason") == Some("done"))
        .collect();
    assert_eq!(tls_lines.len(), 2, "{lines:?}");
    // (The client keeps its session: the second connection resumes it.)
    for ((line, size), resumed) in tls_lines.iter().zip(&sizes).zip(["false", "true"]) {
        let size = size.to_string();
        assert_eq!(field(line, "bytes_in"), Some(size.as_str()), "{line}");
        assert_eq!(field(line, "version"), Some("TLSv1_3"), "{line}");
        assert_eq!(field(line, "resumed"), Some(resumed), "{line}");
    }
}

#[test]
fn a_json_access_log_has_one_object_per_line() {
    let env = TestEnv::new();
    let echo = Backend::echo();
    let path = env.dir.path().join("access.json");
    let proxy = env
        .config(echo.addr)
        .global("log_format = \"json\"")
        .service(&format!("access_log = {}", toml_path(&path)))
        .start();
    let cfg = env.client_with(&ClientOpts::tls13());
    let mut tls = tls_connect_ok(proxy.addr(), &cfg);
    assert_echo(&mut tls, b"json access", "echo");
    close_session(&mut tls, Duration::from_secs(10));
    let lines = lines_of(&path, 1);
    assert_eq!(lines.len(), 1, "{lines:?}");
    let v: serde_json::Value = serde_json::from_str(&lines[0]).unwrap();
    assert_eq!(v["reason"], "done", "{v}");
    assert_eq!(v["bytes_in"], 11, "{v}");
    assert_eq!(v["bytes_out"], 11, "{v}");
    assert_eq!(v["resumed"], false, "{v}");
    assert!(
        v["conn"].as_str().is_some_and(|c| c.starts_with("0-")),
        "{v}"
    );
}

#[test]
fn an_access_log_that_cannot_be_opened_is_a_config_error() {
    let env = TestEnv::new();
    let toml = env
        .config("127.0.0.1:9")
        .service("access_log = \"/nonexistent-tlsfront-dir/access.log\"")
        .to_toml();
    expect_config_error(&env, &toml, "access_log =", "access_log");
}
