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
