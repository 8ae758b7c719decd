//! tlsfront-load against the real tlsfront and its own backend: every scenario, latency
//! correctness with a backend that delays by known amounts, the outputs read back with
//! independent readers (serde, the hdrhistogram crate's log reader, an XML parser), the
//! error paths of the command line, and `tlsfront demo`.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::OnceLock;
use std::time::Duration;

use common::*;
use tlsfront_load::backend::{Backend as LoadBackend, Mode};
use tlsfront_load::engine::Plan;
use tlsfront_load::report::Report;
use tlsfront_load::run::{self, Options, Run, Scenario};
use tlsfront_load::scenario::handshake::Handshake;
use tlsfront_load::scenario::hold::Hold;
use tlsfront_load::scenario::latency::Latency;
use tlsfront_load::scenario::ramp::{self, Ramp};
use tlsfront_load::scenario::throughput::{Direction, Throughput};
use tlsfront_load::scenario::Target;
use tlsfront_load::tls::{ClientSpec, Offer, Trust};

/// The tests here measure time and load the CPUs: one at a time.
fn serial() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

fn backend(mode: Mode) -> (SocketAddr, std::sync::Arc<tlsfront_load::backend::Stats>) {
    let b = LoadBackend::bind("127.0.0.1:0", mode).unwrap().threads(1);
    let stats = b.stats();
    (b.spawn().unwrap(), stats)
}

/// tlsfront (one worker, `service_lines` added) in front of this tool's echo backend.
fn echo_proxy(env: &TestEnv, service_lines: &[&str]) -> Proxy {
    let (echo, _) = backend(Mode::Echo);
    let mut config = env.config(echo);
    for line in service_lines {
        config = config.service(line);
    }
    config.start()
}

fn tls_target(env: &TestEnv, addr: SocketAddr, offer: Offer) -> Target {
    let name = "localhost".try_into().unwrap();
    Target {
        addr,
        tls: Some(ClientSpec::new(&Trust::CaFile(env.ca_pem.clone()), &offer, name).unwrap()),
        connect_timeout: Duration::from_secs(5),
    }
}

fn plain_target(addr: SocketAddr) -> Target {
    Target {
        addr,
        tls: None,
        connect_timeout: Duration::from_secs(5),
    }
}

fn options(duration: Duration, warmup: Duration, pid: Option<u32>) -> Options {
    Options {
        plan: Plan {
            threads: 1,
            cpus: Vec::new(),
            // Tests share the machine (and each other's CPUs): let the scheduler place them.
            pin: false,
            warmup,
            duration,
            interval: Duration::from_millis(500),
            grace: Duration::from_secs(3),
        },
        quiet: true,
        pid,
        error_budget: 0.0,
        transport: "test".into(),
    }
}

fn go(s: Scenario, opts: &Options) -> Run {
    let run = run::run(&s, opts).unwrap();
    let mut text = Vec::new();
    run.report.print(&mut text).unwrap();
    eprintln!("{}", String::from_utf8_lossy(&text));
    run
}

fn passed(r: &Report) {
    assert_eq!(r.failed, None, "{r:#?}");
    assert_eq!(r.counts.errors, 0, "{:?} {:?}", r.errors, r.error_details);
}

#[test]
fn handshake_full_then_resumed_and_tlsfront_agrees() {
    let _serial = serial();
    let env = TestEnv::new();
    let proxy = echo_proxy(&env, &[]);
    let hs = |resume| {
        Scenario::Handshake(Handshake {
            target: tls_target(&env, proxy.addr(), Offer::default()),
            concurrency: 4,
            rate: None,
            resume,
        })
    };
    let opts = options(
        Duration::from_secs(1),
        Duration::from_millis(300),
        Some(proxy.pid()),
    );
    let full = go(hs(false), &opts).report;
    passed(&full);
    assert!(full.counts.ok >= 20, "{full:#?}");
    assert_eq!(full.counts.resumed, 0);
    let n = full.negotiated.clone().unwrap();
    assert_eq!(n.version, "TLSv1_3");
    assert!(full.latency.unwrap().p50 > 0.0);
    assert!(
        full.target_cpu_s.unwrap() > 0.0,
        "the proxy's CPU is read from /proc"
    );

    let before: u64 = worker_stats(&proxy, 1)
        .values()
        .map(|l| num(l, "handshakes_resumed"))
        .sum();
    let resumed = go(hs(true), &opts).report;
    passed(&resumed);
    assert!(resumed.rates.resumed_share > 0.9, "{resumed:#?}");
    let after: u64 = worker_stats(&proxy, 1)
        .values()
        .map(|l| num(l, "handshakes_resumed"))
        .sum();
    // The proxy counted at least the resumptions the tool counted (it also saw warm-up ones).
    assert!(
        after - before >= resumed.counts.resumed,
        "proxy resumed {} vs tool {}",
        after - before,
        resumed.counts.resumed
    );
}

#[test]
fn throughput_each_direction_through_tlsfront_is_byte_exact() {
    let _serial = serial();
    let env = TestEnv::new();
    let (sink, sink_stats) = backend(Mode::Sink);
    let (source, _) = backend(Mode::Source);
    let (echo, _) = backend(Mode::Echo);
    let proxy = env
        .config(sink)
        .add_service("source", source, &[])
        .add_service("echo", echo, &[])
        .start();
    let opts = options(Duration::from_millis(800), Duration::ZERO, None);
    let tp = |svc: &str, direction, suite: &str| {
        Scenario::Throughput(Throughput {
            target: tls_target(
                &env,
                proxy.service_addr(svc),
                Offer {
                    suites: vec![suite.into()],
                    ..Default::default()
                },
            ),
            streams: 2,
            direction,
        })
    };

    let send = go(tp("svc", Direction::Send, "aes128gcm"), &opts);
    passed(&send.report);
    let sent = send.report.counts.sent + send.outcome.tail.counts.sent;
    assert!(sent > 1_000_000, "{:#?}", send.report);
    // Each stream waited for the sink's EOF, so the sink has counted every byte.
    assert_eq!(sink_stats.bytes_in.load(Relaxed), sent);
    assert_eq!(sink_stats.pattern_errors.load(Relaxed), 0);
    assert_eq!(
        send.report.negotiated.unwrap().suite,
        "TLS13_AES_128_GCM_SHA256"
    );

    let recv = go(tp("source", Direction::Receive, "aes256gcm"), &opts).report;
    passed(&recv);
    assert!(recv.counts.received > 1_000_000 && recv.counts.sent == 0);

    let both = go(tp("echo", Direction::Both, "chacha20"), &opts);
    passed(&both.report);
    let c = (both.report.counts, both.outcome.tail.counts);
    assert!(c.0.sent > 0 && c.0.received > 0);
    // The echo returned everything: the tool checks sent == received per stream, and the
    // totals agree too.
    assert_eq!(c.0.sent + c.1.sent, c.0.received + c.1.received);
    assert_eq!(
        both.report.negotiated.unwrap().suite,
        "TLS13_CHACHA20_POLY1305_SHA256"
    );
}

/// Latency tolerance: loopback plus the proxy add well under 1 ms and the backend's own timer
/// up to ~1 ms, so a backend delay D must show as D..D+6 ms at p50 and under D+25 ms at p99
/// (CI machines are noisy).
#[test]
fn latency_percentiles_match_a_backend_with_known_delay() {
    let _serial = serial();
    let env = TestEnv::new();
    let delay = Duration::from_millis(30);
    let b = LoadBackend::bind("127.0.0.1:0", Mode::Echo)
        .unwrap()
        .threads(1)
        .delay(delay);
    let echo = b.spawn().unwrap();
    let proxy = env.config(echo).start();
    // 100 requests/s over 8 connections: a request every 10 ms, each taking 30 ms, so about
    // 3 are busy and a free connection is always there: nothing queues. 400 samples, so
    // p99 is not just the single slowest request of a noisy moment.
    let s = Scenario::Latency(Latency {
        target: tls_target(&env, proxy.addr(), Offer::default()),
        connections: 8,
        rate: 100.0,
        size: 100,
    });
    let r = go(
        s,
        &options(Duration::from_secs(4), Duration::from_millis(300), None),
    )
    .report;
    passed(&r);
    let l = r.latency.unwrap();
    assert!(
        (380..=420).contains(&r.counts.ok),
        "{} requests in 4 s at 100/s",
        r.counts.ok
    );
    assert!(l.p50 >= 30.0 && l.p50 <= 36.0, "{l:?}");
    assert!(l.p99 >= 30.0 && l.p99 <= 55.0, "{l:?}");
    assert_eq!(r.counts.sent, r.counts.ok * 100);
}

/// The open model shows queueing a closed loop hides: every 10th response stalls 200 ms on
/// the only connection, and the requests due meanwhile wait. Per 10 requests (400 ms at
/// 25/s) the latencies from the intended send are about 200, 160, 120, 80, 40 and five near
/// 0 ms (mean ≈ 60 ms, p90 ≈ 160 ms), while the service times are one 200 and nine near 0
/// (mean ≈ 20 ms, p50 near 0).
#[test]
fn open_model_latency_includes_queueing_that_service_time_hides() {
    let _serial = serial();
    let b = LoadBackend::bind("127.0.0.1:0", Mode::Echo)
        .unwrap()
        .threads(1)
        .delay(Duration::from_millis(200))
        .delay_every(10);
    let echo = b.spawn().unwrap();
    let s = Scenario::Latency(Latency {
        target: plain_target(echo),
        connections: 1,
        rate: 25.0,
        size: 16,
    });
    let run = go(s, &options(Duration::from_secs(4), Duration::ZERO, None));
    passed(&run.report);
    let (l, svc) = (run.report.latency.unwrap(), run.report.service.unwrap());
    assert!(svc.p50 < 5.0, "service {svc:?}");
    assert!(svc.max >= 200.0 && svc.max < 260.0, "service {svc:?}");
    assert!(l.p90 > 100.0, "latency {l:?}");
    assert!(l.mean > 2.5 * svc.mean, "latency {l:?} vs service {svc:?}");
    assert!(l.max >= 200.0 && l.max < 300.0, "latency {l:?}");
}

#[test]
fn hold_reports_the_proxys_fds_and_memory_per_connection() {
    let _serial = serial();
    let env = TestEnv::new();
    let proxy = echo_proxy(&env, &[]);
    let s = Scenario::Hold(Hold {
        target: tls_target(&env, proxy.addr(), Offer::default()),
        connections: 200,
        concurrency: 32,
        rate: None,
    });
    let r = go(
        s,
        &options(Duration::from_secs(2), Duration::ZERO, Some(proxy.pid())),
    )
    .report;
    passed(&r);
    let h = r.hold.unwrap();
    assert_eq!(h.open, 200);
    // Userspace relay: a client socket and a backend socket per connection.
    let fds = h.fds_per_conn.unwrap();
    assert!((1.9..=2.1).contains(&fds), "{h:#?}");
    let rss = h.rss_bytes_per_conn.unwrap();
    assert!(rss > 0.0 && rss < 1_000_000.0, "{h:#?}");
}

/// The memory budget of an idle TLS connection (issue 9): the proxy's RSS per connection
/// with 2000 of them held open after their handshakes. A size check, not a timing one. The
/// budget is where tlsfront is now (6.6 KB measured at 2000 in a debug build, 6.8 KB
/// release; no I/O buffer while idle, the opening phase boxed, the relay's future held
/// once: 8.2 KB before that, 37 KB before the readiness relay), with a little room; the
/// target is 4 KB.
const IDLE_BUDGET_BYTES: f64 = 8.0 * 1024.0;

#[test]
fn two_thousand_idle_tls_connections_stay_within_the_memory_budget() {
    let _serial = serial();
    // 2000 client sockets here, 4000 in the proxy (which inherits this limit), 2000 in the
    // backend: above the usual soft limit of 1024.
    let hard = rustix::process::getrlimit(rustix::process::Resource::Nofile).maximum;
    let _ = rustix::process::setrlimit(
        rustix::process::Resource::Nofile,
        rustix::process::Rlimit {
            current: hard,
            maximum: hard,
        },
    );
    let env = TestEnv::new();
    let proxy = echo_proxy(&env, &[]);
    let s = Scenario::Hold(Hold {
        target: tls_target(&env, proxy.addr(), Offer::default()),
        connections: 2000,
        concurrency: 64,
        rate: None,
    });
    let r = go(
        s,
        &options(Duration::from_secs(3), Duration::ZERO, Some(proxy.pid())),
    )
    .report;
    passed(&r);
    let h = r.hold.unwrap();
    assert_eq!(h.open, 2000, "{h:#?}");
    let rss = h.rss_bytes_per_conn.unwrap();
    assert!(
        rss > 0.0 && rss <= IDLE_BUDGET_BYTES,
        "{rss:.0} bytes per idle connection, budget {IDLE_BUDGET_BYTES}: {h:#?}"
    );
}

#[test]
fn ramp_finds_the_capacity_of_a_slow_service() {
    let _serial = serial();
    // One connection to a service taking 20 ms per request can do 50 requests/s; with a
    // 30 ms p99 SLO the ramp (10, 20, ... per second) must stop by 60/s. (A single slow
    // wake-up on a busy machine can break an earlier step: from 20/s on is accepted.)
    let b = LoadBackend::bind("127.0.0.1:0", Mode::Echo)
        .unwrap()
        .threads(1)
        .delay(Duration::from_millis(20));
    let echo = b.spawn().unwrap();
    let ramp = Ramp {
        scenario: Scenario::Latency(Latency {
            target: plain_target(echo),
            connections: 1,
            rate: 10.0,
            size: 16,
        }),
        start: 10.0,
        step: Some(10.0),
        factor: 1.0,
        max: 100.0,
        slo_p99_ms: 30.0,
    };
    let mut opts = options(Duration::from_secs(2), Duration::ZERO, None);
    opts.error_budget = 0.01;
    let r = ramp::run(&ramp, &opts).unwrap();
    let rr = r.ramp.unwrap();
    let sustainable = rr.sustainable.unwrap();
    assert!((20.0..=50.0).contains(&sustainable), "{rr:#?}");
    let last = rr.steps.last().unwrap();
    assert!(!last.ok && last.offered <= 60.0, "{rr:#?}");
    assert!(rr.steps.iter().filter(|s| s.ok).all(|s| s.p99_ms <= 30.0));
}

#[test]
fn handshake_ramp_through_tlsfront_reaches_its_max() {
    let _serial = serial();
    let env = TestEnv::new();
    let proxy = echo_proxy(&env, &[]);
    let ramp = Ramp {
        scenario: Scenario::Handshake(Handshake {
            target: tls_target(&env, proxy.addr(), Offer::default()),
            concurrency: 64,
            rate: None,
            resume: false,
        }),
        start: 25.0,
        step: None,
        factor: 2.0,
        max: 100.0,
        slo_p99_ms: 2000.0,
    };
    let r = ramp::run(
        &ramp,
        &options(Duration::from_secs(1), Duration::ZERO, None),
    )
    .unwrap();
    let rr = r.ramp.unwrap();
    assert_eq!(
        rr.steps.iter().map(|s| s.offered).collect::<Vec<_>>(),
        [25.0, 50.0, 100.0]
    );
    assert_eq!(rr.sustainable, Some(100.0), "{rr:#?}");
    // An open model keeps its schedule: the achieved rate follows the offered one.
    for s in &rr.steps {
        assert!(
            s.achieved > 0.8 * s.offered && s.achieved < 1.2 * s.offered,
            "{s:?}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// The command line
// ---------------------------------------------------------------------------------------------

/// The `tlsfront-load` binary next to this test's, built (or found up to date) by cargo.
fn load_bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let exe = std::env::current_exe().unwrap();
        let dir = exe.parent().unwrap().parent().unwrap().to_path_buf();
        let bin = dir.join("tlsfront-load");
        // Always ask cargo: a binary left from an older build would test old code.
        let mut cmd = Command::new(env!("CARGO"));
        cmd.args([
            "build",
            "-q",
            "-p",
            "tlsfront-load",
            "--bin",
            "tlsfront-load",
        ]);
        if dir.ends_with("release") {
            cmd.arg("--release");
        }
        assert!(cmd.status().unwrap().success(), "building tlsfront-load");
        bin
    })
}

fn load(args: &[&str]) -> Output {
    let out = Command::new(load_bin())
        .args(args)
        .output()
        .expect("running tlsfront-load");
    eprintln!(
        "tlsfront-load {}\n-- stdout\n{}-- stderr\n{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn cli_latency_writes_json_hlog_and_svg_that_read_back() {
    let _serial = serial();
    let env = TestEnv::new();
    let proxy = echo_proxy(&env, &[]);
    let (json, hlog, svg) = (env.path("r.json"), env.path("r.hlog"), env.path("r.svg"));
    let addr = proxy.addr().to_string();
    let out = load(&[
        "latency",
        "--connect",
        &addr,
        "--sni",
        "localhost",
        "--ca",
        env.ca_pem.to_str().unwrap(),
        "--rate",
        "200",
        "--connections",
        "4",
        "--size",
        "128",
        "--duration",
        "2s",
        "--interval",
        "500ms",
        "--threads",
        "1",
        "--suite",
        "chacha20",
        "--json",
        json.to_str().unwrap(),
        "--hlog",
        hlog.to_str().unwrap(),
        "--plot",
        svg.to_str().unwrap(),
    ]);
    assert!(out.status.success());
    // Not a terminal: plain progress lines, one per interval.
    let progress = text(&out.stderr)
        .lines()
        .filter(|l| l.starts_with('[') && l.contains("req/s"))
        .count();
    assert!(progress >= 3, "progress lines: {progress}");
    let stdout = text(&out.stdout);
    assert!(stdout.contains("p99") && stdout.contains("TLS13_CHACHA20_POLY1305_SHA256"));

    let report: Report = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(report.scenario, "latency");
    assert!((350..=450).contains(&report.counts.ok), "{report:#?}");
    assert_eq!(report.intervals.len(), 4);
    assert_eq!(
        report.intervals.iter().map(|i| i.ops).sum::<u64>(),
        report.counts.ok
    );

    // The interval log, with the hdrhistogram crate's own reader: 4 intervals × 2 tags,
    // holding every request exactly once per tag.
    use hdrhistogram::serialization::interval_log::{IntervalLogIterator, LogEntry};
    use hdrhistogram::serialization::Deserializer;
    let bytes = std::fs::read(&hlog).unwrap();
    let (mut untagged, mut service, mut count) = (0, 0, 0u64);
    let mut de = Deserializer::new();
    for entry in IntervalLogIterator::new(&bytes) {
        if let LogEntry::Interval(h) = entry.expect("log parses") {
            let decoded = base64::Engine::decode(
                &base64::engine::general_purpose::STANDARD,
                h.encoded_histogram(),
            )
            .unwrap();
            let hist: hdrhistogram::Histogram<u64> =
                de.deserialize(&mut decoded.as_slice()).unwrap();
            match h.tag().map(|t| t.as_str()) {
                None => {
                    untagged += 1;
                    count += hist.len();
                }
                Some("service") => service += 1,
                Some(other) => panic!("unexpected tag {other}"),
            }
        }
    }
    assert_eq!((untagged, service), (4, 4));
    assert_eq!(count, report.counts.ok);

    let svg_text = std::fs::read_to_string(&svg).unwrap();
    let doc = roxmltree::Document::parse(&svg_text).expect("well-formed SVG");
    assert_eq!(doc.root_element().tag_name().name(), "svg");
    let texts: Vec<String> = doc
        .descendants()
        .filter(|n| n.has_tag_name("text"))
        .filter_map(|n| n.text().map(|t| t.trim().to_string()))
        .collect();
    assert!(
        texts.iter().any(|t| t == "latency from intended start"),
        "{texts:?}"
    );
    assert!(
        texts.iter().any(|t| t.starts_with("service time")),
        "{texts:?}"
    );
    let lines = doc
        .descendants()
        .filter(|n| n.has_tag_name("polyline"))
        .count();
    assert!(lines >= 2, "one polyline per series, found {lines}");
}

#[test]
fn cli_wrong_ca_fails_clearly_and_still_writes_results() {
    let _serial = serial();
    let env = TestEnv::new();
    let other = TestEnv::new();
    let proxy = echo_proxy(&env, &[]);
    let json = env.path("wrong-ca.json");
    let out = load(&[
        "handshake",
        "--connect",
        &proxy.addr().to_string(),
        "--sni",
        "localhost",
        "--ca",
        other.ca_pem.to_str().unwrap(),
        "--duration",
        "5s",
        "--threads",
        "1",
        "--json",
        json.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1));
    let stdout = text(&out.stdout);
    // Both test CAs have the same name, so webpki finds "the" issuer and its signature fails.
    assert!(
        stdout.contains("tls: invalid certificate (BadSignature)"),
        "{stdout}"
    );
    assert!(stdout.contains("ABORTED"), "{stdout}");
    let report: Report = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert!(report.aborted.unwrap().contains("nothing succeeded"));
    assert!(report.counts.errors > 0 && report.counts.ok == 0);
    // Aborted after the first interval, not after the 5 s asked for.
    assert!(report.window_s < 2.0, "{}", report.window_s);
}

#[test]
fn cli_unreachable_target_and_tls_version_mismatch_exit_nonzero() {
    let _serial = serial();
    let closed = closed_port_addr().to_string();
    let out = load(&[
        "throughput",
        "--connect",
        &closed,
        "--insecure",
        "--duration",
        "2s",
        "--threads",
        "1",
    ]);
    assert_eq!(out.status.code(), Some(1));
    let stdout = text(&out.stdout);
    assert!(stdout.contains("connect: connection refused"), "{stdout}");
    assert!(
        text(&out.stderr).contains("NOT verified"),
        "--insecure is labelled"
    );

    let env = TestEnv::new();
    let proxy = echo_proxy(&env, &["min_version = \"1.3\""]);
    let out = load(&[
        "handshake",
        "--connect",
        &proxy.addr().to_string(),
        "--sni",
        "localhost",
        "--ca",
        env.ca_pem.to_str().unwrap(),
        "--tls-version",
        "1.2",
        "--duration",
        "2s",
        "--threads",
        "1",
    ]);
    assert_eq!(out.status.code(), Some(1));
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains("tls: alert received (ProtocolVersion)"),
        "{stdout}"
    );

    let out = load(&[
        "handshake",
        "--connect",
        &closed,
        "--insecure",
        "--suite",
        "rot13",
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("unknown suite \"rot13\""));
}

#[test]
fn cli_ramp_and_hold_against_tlsfront() {
    let _serial = serial();
    let env = TestEnv::new();
    let proxy = echo_proxy(&env, &[]);
    let addr = proxy.addr().to_string();
    let ca = env.ca_pem.to_str().unwrap();
    let svg = env.path("ramp.svg");
    let out = load(&[
        "ramp",
        "--connect",
        &addr,
        "--sni",
        "localhost",
        "--ca",
        ca,
        "--of",
        "connections",
        "--start",
        "20",
        "--factor",
        "2",
        "--max-rate",
        "40",
        "--slo-p99",
        "2000",
        "--duration",
        "1s",
        "--threads",
        "1",
        "--quiet",
        "--plot",
        svg.to_str().unwrap(),
    ]);
    assert!(out.status.success());
    assert!(text(&out.stdout).contains("sustainable  40 connections/s"));
    let svg_text = std::fs::read_to_string(&svg).unwrap();
    let doc = roxmltree::Document::parse(&svg_text).unwrap();
    let texts: Vec<&str> = doc
        .descendants()
        .filter(|n| n.has_tag_name("text"))
        .filter_map(|n| n.text().map(str::trim))
        .collect();
    assert!(
        texts.contains(&"p99") && texts.contains(&"SLO"),
        "{texts:?}"
    );

    let pid = proxy.pid().to_string();
    let out = load(&[
        "hold",
        "--connect",
        &addr,
        "--sni",
        "localhost",
        "--ca",
        ca,
        "--connections",
        "100",
        "--duration",
        "2s",
        "--threads",
        "2",
        "--pid",
        &pid,
        "--quiet",
    ]);
    assert!(out.status.success());
    let stdout = text(&out.stdout);
    assert!(stdout.contains("held         100 of 100 open"), "{stdout}");
    assert!(stdout.contains("fds per connection"), "{stdout}");
}

#[test]
fn demo_runs_the_whole_loop_and_writes_its_results() {
    let _serial = serial();
    let env = TestEnv::new();
    let out_dir = env.path("demo");
    let out = run_tlsfront(
        [
            "demo",
            "--duration",
            "1s",
            "--quiet",
            "--out",
            out_dir.to_str().unwrap(),
        ],
        Duration::from_secs(120),
    );
    assert_eq!(out.code(), Some(0), "{}\n{}", out.stdout, out.stderr);
    for step in [
        "full handshakes",
        "resumed handshakes",
        "throughput AES-128-GCM",
        "throughput ChaCha20",
        "latency 64 B at 2000/s",
    ] {
        assert!(out.stdout.contains(step), "{step} missing:\n{}", out.stdout);
    }
    let json: std::collections::BTreeMap<String, Report> =
        serde_json::from_str(&std::fs::read_to_string(out_dir.join("demo.json")).unwrap()).unwrap();
    assert_eq!(json.len(), 5);
    assert!(json["resumed handshakes"].rates.resumed_share > 0.9);
    assert_eq!(json["full handshakes"].counts.resumed, 0);
    assert_eq!(
        json["throughput ChaCha20"]
            .negotiated
            .as_ref()
            .unwrap()
            .suite,
        "TLS13_CHACHA20_POLY1305_SHA256"
    );
    assert!(json["latency 64 B at 2000/s"].counts.ok > 1000);
    let svg = std::fs::read_to_string(out_dir.join("latency.svg")).unwrap();
    roxmltree::Document::parse(&svg).expect("well-formed SVG");
    assert!(out
        .stdout
        .contains(&out_dir.join("demo.json").display().to_string()));
}

#[test]
fn cli_interrupted_run_still_reports_and_writes_json() {
    let _serial = serial();
    let env = TestEnv::new();
    let proxy = echo_proxy(&env, &[]);
    let json = env.path("interrupted.json");
    let child = Command::new(load_bin())
        .args([
            "handshake",
            "--connect",
            &proxy.addr().to_string(),
            "--sni",
            "localhost",
            "--ca",
            env.ca_pem.to_str().unwrap(),
            "--duration",
            "60s",
            "--threads",
            "1",
            "--concurrency",
            "2",
            "--json",
            json.to_str().unwrap(),
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Interrupt once the first interval has been reported.
    let mut child = child;
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let reader = std::thread::spawn(move || {
        use std::io::BufRead;
        let mut all = String::new();
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            if line.starts_with('[') {
                let _ = tx.send(());
            }
            all.push_str(&line);
            all.push('\n');
        }
        all
    });
    rx.recv_timeout(Duration::from_secs(20))
        .expect("a progress line within 20 s");
    let pid = rustix::process::Pid::from_child(&child);
    rustix::process::kill_process(pid, Signal::INT).unwrap();
    let started = std::time::Instant::now();
    let out = child.wait_with_output().unwrap();
    let stderr = reader.join().unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "stopped promptly"
    );
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        text(&out.stdout).contains("ABORTED      interrupted"),
        "{}",
        text(&out.stdout)
    );
    let report: Report = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(report.aborted.as_deref(), Some("interrupted"));
    assert!(report.counts.ok > 0 && report.window_s < 5.0, "{report:#?}");
}

#[test]
fn handshake_offers_the_version_suite_group_and_alpn_asked_for() {
    let _serial = serial();
    let env = TestEnv::new();
    let proxy = echo_proxy(&env, &["alpn = [\"h2\", \"imap\"]"]);
    let opts = options(Duration::from_millis(500), Duration::ZERO, None);
    for (versions, suite, group, alpn, expect) in [
        (
            "1.3",
            "chacha20",
            "p256",
            "imap",
            ("TLSv1_3", "TLS13_CHACHA20_POLY1305_SHA256", "secp256r1"),
        ),
        (
            "1.3",
            "aes128gcm",
            "x25519mlkem768",
            "h2",
            ("TLSv1_3", "TLS13_AES_128_GCM_SHA256", "X25519MLKEM768"),
        ),
        (
            "1.2",
            "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256",
            "x25519",
            "imap",
            (
                "TLSv1_2",
                "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256",
                "X25519",
            ),
        ),
    ] {
        let offer = Offer {
            versions: vec![versions.into()],
            suites: vec![suite.into()],
            groups: vec![group.into()],
            alpn: vec![alpn.into()],
        };
        let r = go(
            Scenario::Handshake(Handshake {
                target: tls_target(&env, proxy.addr(), offer),
                concurrency: 2,
                rate: None,
                resume: false,
            }),
            &opts,
        )
        .report;
        passed(&r);
        let n = r.negotiated.unwrap();
        assert_eq!(
            (n.version.as_str(), n.suite.as_str(), n.group.as_str()),
            expect
        );
        assert_eq!(n.alpn.as_deref(), Some(alpn));
    }
}

#[test]
fn a_stalled_target_fails_the_run_instead_of_passing() {
    let _serial = serial();
    // Every 5th response stalls 5 s on the only connection: requests time out (1 s) and the
    // schedule runs ahead of what is sent; the run must fail, not pass on what did finish.
    let b = LoadBackend::bind("127.0.0.1:0", Mode::Echo)
        .unwrap()
        .threads(1)
        .delay(Duration::from_secs(5))
        .delay_every(5);
    let echo = b.spawn().unwrap();
    let mut target = plain_target(echo);
    target.connect_timeout = Duration::from_secs(1);
    let s = Scenario::Latency(Latency {
        target,
        connections: 1,
        rate: 20.0,
        size: 16,
    });
    let r = go(s, &options(Duration::from_secs(2), Duration::ZERO, None)).report;
    assert!(r.failed.is_some(), "{r:#?}");
    assert!(
        r.errors.contains_key("request: timed out"),
        "{:?}",
        r.errors
    );
    // The requests that waited behind the stall carry that wait in their latency.
    assert!(r.latency.unwrap().max > 500.0, "{r:#?}");
    assert!(
        r.rates.ops_per_s < 10.0,
        "far below the 20/s offered: {r:#?}"
    );
}

#[test]
fn hold_notices_a_target_that_closes_idle_connections() {
    let _serial = serial();
    let env = TestEnv::new();
    let proxy = echo_proxy(&env, &[r#"idle_timeout = "1s""#]);
    let s = Scenario::Hold(Hold {
        target: tls_target(&env, proxy.addr(), Offer::default()),
        connections: 50,
        concurrency: 16,
        rate: None,
    });
    let r = go(
        s,
        &options(Duration::from_secs(3), Duration::ZERO, Some(proxy.pid())),
    )
    .report;
    assert!(r.failed.is_some(), "{r:#?}");
    assert_eq!(r.counts.lost, 50, "{r:#?}");
    assert_eq!(r.errors.get("hold: closed by peer"), Some(&50));
    let h = r.hold.unwrap();
    // Sampled (if at all) only while all 50 were held, and per connection held then.
    if let Some(fds) = h.fds_per_conn {
        assert!((1.9..=2.1).contains(&fds), "{h:#?}");
    }
}
