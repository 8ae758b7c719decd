//! `tlsfront doctor` on this machine: every check reported, the kTLS verdict agreeing with the
//! kernel (missing here, present under User-Mode Linux), descriptor needs from a config
//! compared with the real RLIMIT_NOFILE, config errors, and the sysctl profile it points at.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::*;
use serde_json::Value;

const BACKEND: &str = "127.0.0.1:9";
const RUN_TIMEOUT: Duration = Duration::from_secs(30);
const CHECKS: [&str; 10] = [
    "kernel_tls",
    "io_uring",
    "rlimit_nofile",
    "somaxconn",
    "tcp_max_syn_backlog",
    "cpus",
    "cpu_crypto",
    "file_max",
    "nr_open",
    "local_port_range",
];
const STATUSES: [&str; 3] = ["OK", "WARN", "FAIL"];

/// Runs `tlsfront doctor --json [--config FILE]`, checks the document's shape and that the
/// exit code follows the FAILs, and returns the checks.
fn doctor_json(config: Option<&Path>) -> Vec<Value> {
    let mut args = vec!["doctor".as_ref(), "--json".as_ref()];
    if let Some(c) = config {
        args.extend(["--config".as_ref(), c.as_os_str()]);
    }
    let out = run_tlsfront(args, RUN_TIMEOUT);
    let doc: Value = serde_json::from_str(&out.stdout)
        .unwrap_or_else(|e| panic!("doctor --json is not one JSON document ({e}): {out:?}"));
    let checks = doc["checks"].as_array().expect("checks array").clone();
    let mut names = Vec::new();
    for c in &checks {
        let name = c["name"].as_str().expect("name");
        let status = c["status"].as_str().expect("status");
        assert!(STATUSES.contains(&status), "{name}: status {status:?}");
        assert!(!c["found"].as_str().expect("found").is_empty(), "{c}");
        let fix = c["fix"].as_str().expect("fix");
        assert_eq!(
            status != "OK",
            !fix.is_empty(),
            "{name}: a fix exactly when not OK: {c}"
        );
        names.push(name);
    }
    assert_eq!(names, CHECKS, "check names and order");
    let count = |s: &str| checks.iter().filter(|c| c["status"] == s).count() as u64;
    let summary = &doc["summary"];
    assert_eq!(summary["ok"], count("OK"), "{summary}");
    assert_eq!(summary["warn"], count("WARN"), "{summary}");
    assert_eq!(summary["fail"], count("FAIL"), "{summary}");
    let expected_code = i32::from(count("FAIL") > 0);
    assert_eq!(
        out.code(),
        Some(expected_code),
        "exit code follows FAILs: {out:?}"
    );
    assert_eq!(summary["exit_code"], expected_code, "{summary}");
    match config {
        Some(c) => assert_eq!(summary["config"], c.to_str().unwrap()),
        None => assert!(summary["config"].is_null(), "{summary}"),
    }
    checks
}

fn check<'a>(checks: &'a [Value], name: &str) -> &'a Value {
    checks.iter().find(|c| c["name"] == name).expect(name)
}

fn text(c: &Value) -> String {
    format!(
        "{} {}",
        c["found"].as_str().unwrap(),
        c["fix"].as_str().unwrap()
    )
}

/// Whether the kernel has TLS, found without tlsfront's probe: the tls module's statistics
/// file exists once the module is loaded (or built in); try loading it first.
fn kernel_has_tls() -> bool {
    let stat = Path::new("/proc/net/tls_stat");
    if stat.exists() {
        return true;
    }
    let loaded = Command::new("modprobe")
        .arg("tls")
        .output()
        .is_ok_and(|o| o.status.success());
    loaded && stat.exists()
}

#[test]
fn text_output_has_one_line_per_check() {
    let out = run_tlsfront(["doctor"], RUN_TIMEOUT);
    let lines: Vec<&str> = out
        .stdout
        .lines()
        .filter(|l| STATUSES.iter().any(|s| l.starts_with(s)))
        .collect();
    assert_eq!(lines.len(), CHECKS.len(), "{out:?}");
    for (line, name) in lines.iter().zip(CHECKS) {
        let mut words = line.split_whitespace();
        let status = words.next().unwrap();
        assert_eq!(words.next(), Some(name), "{line}");
        assert_eq!(status != "OK", line.contains(" — fix: "), "{line}");
    }
    assert!(out.stdout.contains("no --config"), "says defaults: {out:?}");
    let fails = lines.iter().filter(|l| l.starts_with("FAIL")).count();
    assert_eq!(out.code(), Some(i32::from(fails > 0)), "{out:?}");
}

#[test]
fn ktls_verdict_agrees_with_the_kernel() {
    let has_tls = kernel_has_tls();
    let checks = doctor_json(None);
    let c = check(&checks, "kernel_tls");
    if has_tls {
        assert_eq!(c["status"], "OK", "kernel has TLS: {c}");
        assert!(text(c).contains("AES-128-GCM"), "lists ciphers: {c}");
    } else {
        assert_ne!(c["status"], "OK", "kernel has no TLS: {c}");
        let t = text(c);
        assert!(
            t.contains("ENOENT") || t.contains("CONFIG_TLS"),
            "names the reason: {c}"
        );
        assert!(t.contains("userspace"), "says what happens instead: {c}");
    }
}

#[test]
fn io_uring_and_its_opcodes_are_available() {
    let disabled = std::fs::read_to_string("/proc/sys/kernel/io_uring_disabled")
        .map(|t| t.trim().to_string())
        .unwrap_or_default();
    let checks = doctor_json(None);
    let c = check(&checks, "io_uring");
    if disabled == "2" {
        assert_eq!(c["status"], "FAIL", "{c}");
        return;
    }
    assert_eq!(c["status"], "OK", "{c}");
    for op in ["Accept", "Read", "Write", "Connect", "PollAdd", "Splice"] {
        assert!(text(c).contains(op), "lists {op}: {c}");
    }
}

/// `need N descriptors` from the rlimit finding.
fn needed_descriptors(c: &Value) -> u64 {
    let found = c["found"].as_str().unwrap();
    let after = found
        .split("need ")
        .nth(1)
        .unwrap_or_else(|| panic!("no `need N`: {c}"));
    after
        .split_whitespace()
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no number after `need`: {c}"))
}

#[test]
fn rlimit_check_follows_the_configs_max_connections() {
    let soft = rustix::process::getrlimit(rustix::process::Resource::Nofile).current;
    let Some(soft) = soft.filter(|s| *s < u64::from(u32::MAX)) else {
        eprintln!("RLIMIT_NOFILE soft limit is unlimited here: nothing can exceed it");
        return;
    };
    let env = TestEnv::new();
    // Two descriptors per connection at least: twice the limit's worth of connections.
    let max = soft as u32;
    let cfg = env
        .config(BACKEND)
        .service(&format!("max_connections = {max}"))
        .write();
    let checks = doctor_json(Some(&cfg));
    let c = check(&checks, "rlimit_nofile");
    assert!(
        c["status"] == "WARN" || c["status"] == "FAIL",
        "{max} connections over a soft limit of {soft}: {c}"
    );
    let need = needed_descriptors(c);
    assert!(need >= 2 * u64::from(max), "need {need} for {max}: {c}");
    let found = c["found"].as_str().unwrap();
    assert!(
        found.contains(&format!("soft {soft}")),
        "names the limit: {c}"
    );
    assert!(text(c).contains("LimitNOFILE="), "{c}");
    assert!(text(c).contains("ulimit -n"), "{c}");

    // A small config fits (unless the limit is absurdly low).
    let cfg = env.config(BACKEND).service("max_connections = 10").write();
    let checks = doctor_json(Some(&cfg));
    let c = check(&checks, "rlimit_nofile");
    let need = needed_descriptors(c);
    assert!(need >= 20 && need < 2 * u64::from(max), "{c}");
    if soft >= need {
        assert_eq!(c["status"], "OK", "{c}");
    }
}

#[test]
fn more_workers_than_cpus_warns() {
    let cpus = std::thread::available_parallelism().unwrap().get();
    let env = TestEnv::new();
    let cfg = env.config(BACKEND).workers(cpus + 1).write();
    let c = check(&doctor_json(Some(&cfg)), "cpus").clone();
    assert_eq!(c["status"], "WARN", "{c}");
    assert!(
        c["found"]
            .as_str()
            .unwrap()
            .contains(&format!("{cpus} CPU")),
        "{c}"
    );
    let cfg = env.config(BACKEND).workers(1).write();
    assert_eq!(check(&doctor_json(Some(&cfg)), "cpus")["status"], "OK");
}

#[test]
fn bad_config_path_is_a_clear_error() {
    let env = TestEnv::new();
    let missing = env.path("no-such.toml");
    let out = run_tlsfront(
        ["doctor".as_ref(), "--config".as_ref(), missing.as_os_str()],
        RUN_TIMEOUT,
    );
    assert_eq!(out.code(), Some(2), "{out:?}");
    assert!(
        out.stderr.contains(missing.to_str().unwrap()),
        "names the file: {out:?}"
    );
    assert!(out.stderr.contains("cannot read"), "{out:?}");
    assert!(
        out.stdout.is_empty(),
        "no checks on a config error: {out:?}"
    );
}

/// The profile doctor's fixes point at: every setting has its reason above it, exists in
/// this kernel, and the values clear doctor's thresholds for the default config.
#[test]
fn sysctl_profile_is_complete_and_clears_the_checks() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tuning/sysctl.conf");
    let profile = std::fs::read_to_string(&path).expect("tuning/sysctl.conf");
    let lines: Vec<&str> = profile.lines().collect();
    let mut settings = std::collections::HashMap::new();
    for (i, line) in lines.iter().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (key, value) = line.split_once('=').expect("key = value");
        let key = key.trim();
        // Settings of one reason may be grouped (rmem_max and wmem_max): look above the group.
        let above = lines[..i]
            .iter()
            .rev()
            .find(|l| l.trim().is_empty() || l.trim_start().starts_with('#'))
            .unwrap_or(&"");
        assert!(above.starts_with("# "), "{key} has no reason above it");
        if Path::new("/proc/sys/net").exists() {
            let proc = format!("/proc/sys/{}", key.replace('.', "/"));
            assert!(Path::new(&proc).exists(), "{key}: no {proc}");
        }
        settings.insert(key.to_string(), value.trim().to_string());
    }
    for key in [
        "net.core.somaxconn",
        "net.ipv4.tcp_max_syn_backlog",
        "net.ipv4.ip_local_port_range",
        "net.ipv4.tcp_tw_reuse",
        "net.core.rmem_max",
        "net.core.wmem_max",
        "net.ipv4.tcp_rmem",
        "net.ipv4.tcp_wmem",
        "net.core.netdev_max_backlog",
        "fs.file-max",
        "fs.nr_open",
    ] {
        assert!(settings.contains_key(key), "profile lacks {key}");
    }
    let num = |k: &str| settings[k].parse::<u64>().unwrap();
    // tlsfront's default backlog and connections (README: 1024, 10000, 4 fds with kTLS).
    assert!(num("net.core.somaxconn") >= 1024);
    assert!(num("net.ipv4.tcp_max_syn_backlog") >= 1024);
    assert!(num("fs.nr_open") >= 4 * 10_000);
    assert!(num("fs.file-max") >= num("fs.nr_open"));
    let range: Vec<u64> = settings["net.ipv4.ip_local_port_range"]
        .split_whitespace()
        .map(|p| p.parse().unwrap())
        .collect();
    assert!(
        range[1] <= 65535 && range[1] - range[0] + 1 >= 10_000,
        "{range:?}"
    );

    // doctor's sysctl fixes name only settings the profile has.
    let checks = doctor_json(None);
    for c in &checks {
        let fix = c["fix"].as_str().unwrap();
        if let Some(rest) = fix.strip_prefix("sysctl -w ") {
            let key = rest.split('=').next().unwrap();
            assert!(
                settings.contains_key(key),
                "{key} from {c} not in the profile"
            );
            assert!(fix.contains("tuning/sysctl.conf"), "{c}");
        }
    }
}
