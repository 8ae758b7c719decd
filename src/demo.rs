//! `tlsfront demo`: the whole loop on loopback with nothing prepared. An ephemeral CA and
//! certificate, an echo backend (tlsfront-load's, in this process), tlsfront itself (a child
//! process, one worker pinned to the first CPU), then a short bounded load from the other
//! CPU: full and resumed handshakes, throughput with AES-GCM and ChaCha20, latency at a fixed
//! rate. Prints a summary with figures per proxy CPU-second; writes the JSON and a plot.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use tlsfront_load::backend::{Backend, Mode};
use tlsfront_load::engine::Plan;
use tlsfront_load::report::Report;
use tlsfront_load::run::{self, Options, Run, Scenario};
use tlsfront_load::scenario::handshake::Handshake;
use tlsfront_load::scenario::latency::Latency;
use tlsfront_load::scenario::throughput::{Direction, Throughput};
use tlsfront_load::scenario::Target;
use tlsfront_load::tls::{ClientSpec, Offer, Trust};

pub struct DemoOptions {
    /// The tlsfront binary to start as the proxy.
    pub exe: PathBuf,
    /// Where the certificate, config, JSON and plot go.
    pub out: PathBuf,
    /// Measured time per step.
    pub step: Duration,
    pub quiet: bool,
}

/// What the demo wrote, for the caller (and tests).
pub struct DemoOutput {
    pub reports: Vec<(String, Report)>,
    pub json: PathBuf,
    pub plot: PathBuf,
}

/// The proxy child; stopped (SIGTERM, then SIGKILL) when dropped.
struct Proxy {
    child: Child,
    addr: SocketAddr,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        use rustix::process::{kill_process, Pid, Signal};
        let _ = kill_process(Pid::from_child(&self.child), Signal::TERM);
        for _ in 0..50 {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn run(opts: &DemoOptions) -> anyhow::Result<DemoOutput> {
    std::fs::create_dir_all(&opts.out)
        .with_context(|| format!("creating {}", opts.out.display()))?;
    // The proxy gets the first CPU this process may use; load and backend the last one (the
    // same one on a 1-CPU machine or container).
    let cpus: Vec<usize> = core_affinity::get_core_ids()
        .unwrap_or_default()
        .iter()
        .map(|c| c.id)
        .collect();
    let proxy_cpu = cpus.first().copied().unwrap_or(0);
    let load_cpu = cpus.last().copied().unwrap_or(0);
    let ca = write_certificates(&opts.out)?;
    let backend = Backend::bind("127.0.0.1:0", Mode::Echo)?
        .threads(1)
        .cpus(vec![load_cpu]);
    let backend_addr = backend.spawn()?;
    let config = opts.out.join("tlsfront.toml");
    std::fs::write(
        &config,
        format!(
            "# A loopback benchmark: it runs as whoever starts the demo, root too.\n\
             [global]\nworkers = 1\ncpus = [{proxy_cpu}]\nallow_root = true\n\n\
             [[service]]\nname = \"demo\"\n\
             listen = \"127.0.0.1:0\"\nbackend = \"{backend_addr}\"\ncert = \"{}\"\nkey = \"{}\"\n",
            opts.out.join("cert.pem").display(),
            opts.out.join("key.pem").display()
        ),
    )?;
    let proxy = start_proxy(&opts.exe, &config)?;
    let pid = proxy.child.id();
    if !opts.quiet {
        eprintln!(
            "tlsfront pid {pid} on {} (1 worker, CPU {proxy_cpu}) → echo backend {backend_addr}; \
             load on CPU {load_cpu}; {:.1} s per step",
            proxy.addr,
            opts.step.as_secs_f64()
        );
    }
    let spec = |suites: &[&str]| -> anyhow::Result<Target> {
        let offer = Offer {
            suites: suites.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        };
        let name = "localhost".try_into().map_err(|_| anyhow!("bad name"))?;
        Ok(Target {
            addr: proxy.addr,
            tls: Some(ClientSpec::new(&Trust::CaFile(ca.clone()), &offer, name)?),
            connect_timeout: Duration::from_secs(5),
        })
    };
    let steps: Vec<(&str, Scenario)> = vec![
        (
            "full handshakes",
            Scenario::Handshake(Handshake {
                target: spec(&[])?,
                concurrency: 32,
                rate: None,
                resume: false,
            }),
        ),
        (
            "resumed handshakes",
            Scenario::Handshake(Handshake {
                target: spec(&[])?,
                concurrency: 32,
                rate: None,
                resume: true,
            }),
        ),
        (
            "throughput AES-128-GCM",
            Scenario::Throughput(Throughput {
                target: spec(&["TLS13_AES_128_GCM_SHA256"])?,
                streams: 2,
                direction: Direction::Both,
            }),
        ),
        (
            "throughput ChaCha20",
            Scenario::Throughput(Throughput {
                target: spec(&["TLS13_CHACHA20_POLY1305_SHA256"])?,
                streams: 2,
                direction: Direction::Both,
            }),
        ),
        (
            "latency 64 B at 2000/s",
            Scenario::Latency(Latency {
                target: spec(&[])?,
                connections: 16,
                rate: 2000.0,
                size: 64,
            }),
        ),
    ];
    let run_opts = Options {
        plan: Plan {
            threads: 1,
            cpus: vec![load_cpu],
            pin: true,
            warmup: (opts.step / 4).min(Duration::from_secs(1)),
            duration: opts.step,
            interval: Duration::from_secs(1).min(opts.step),
            grace: Duration::from_secs(3),
        },
        quiet: opts.quiet,
        pid: Some(pid),
        error_budget: 0.001,
        transport: format!("TLS, verified against {}", ca.display()),
    };
    let mut reports = Vec::new();
    let mut latency_plot = None;
    for (name, scenario) in &steps {
        if !opts.quiet {
            eprintln!("-- {name}");
        }
        let Run { report, outcome } = run::run(scenario, &run_opts)?;
        if let Some(f) = &report.failed {
            report.print(&mut std::io::stderr())?;
            bail!("demo step {name:?} failed: {f}");
        }
        if matches!(scenario, Scenario::Latency(_)) {
            latency_plot = Some((outcome.total.latency.clone(), outcome.total.service.clone()));
        }
        reports.push((name.to_string(), report));
    }
    drop(proxy);
    let json = opts.out.join("demo.json");
    let doc: BTreeMap<&str, &Report> = reports.iter().map(|(n, r)| (n.as_str(), r)).collect();
    std::fs::write(&json, serde_json::to_string_pretty(&doc)? + "\n")
        .with_context(|| format!("writing {}", json.display()))?;
    let plot = opts.out.join("latency.svg");
    if let Some((latency, service)) = &latency_plot {
        tlsfront_load::plot::spectrum(
            &plot,
            "tlsfront demo: latency of 64-byte requests at 2000/s",
            &[
                ("latency from intended start", latency),
                ("service time (what a closed loop reports)", service),
            ],
        )?;
    }
    Ok(DemoOutput {
        reports,
        json,
        plot,
    })
}

/// The summary table printed at the end.
pub fn print_summary(out: &mut impl std::io::Write, d: &DemoOutput) -> std::io::Result<()> {
    writeln!(
        out,
        "{:<26} {:>16} {:>20} {:>10}  negotiated",
        "step", "result", "per proxy CPU-s", "p99 ms"
    )?;
    for (name, r) in &d.reports {
        let (result, per_cpu) = match r.scenario.as_str() {
            "throughput" => (
                format!("{:.0} MB/s", r.rates.sent_mb_s + r.rates.received_mb_s),
                r.rates
                    .mb_per_target_cpu_s
                    .map_or("-".into(), |x| format!("{x:.0} MB")),
            ),
            "handshake" => (
                format!(
                    "{:.0}/s {:.0}% res",
                    r.rates.ops_per_s,
                    r.rates.resumed_share * 100.0
                ),
                r.rates
                    .ops_per_target_cpu_s
                    .map_or("-".into(), |x| format!("{x:.0} handshakes")),
            ),
            _ => (
                format!("{:.0} req/s", r.rates.ops_per_s),
                r.rates
                    .ops_per_target_cpu_s
                    .map_or("-".into(), |x| format!("{x:.0} requests")),
            ),
        };
        let p99 = r.latency.map_or("-".into(), |l| format!("{:.3}", l.p99));
        let neg = r
            .negotiated
            .as_ref()
            .map(|n| format!("{} {} {}", n.version, n.suite, n.group))
            .unwrap_or_default();
        writeln!(
            out,
            "{name:<26} {result:>16} {per_cpu:>20} {p99:>10}  {neg}"
        )?;
    }
    writeln!(out, "report (JSON): {}", d.json.display())?;
    writeln!(out, "latency plot (SVG): {}", d.plot.display())?;
    writeln!(
        out,
        "Throughput counts both directions through an echo; MB = 10^6 bytes. \
         For longer and custom runs use tlsfront-load (README: capacity planning)."
    )
}

/// An ephemeral CA and a localhost certificate it signed; returns the CA file's path.
fn write_certificates(dir: &Path) -> anyhow::Result<PathBuf> {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
    let ca_key = KeyPair::generate()?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "tlsfront demo CA (ephemeral)");
    let ca = ca_params.self_signed(&ca_key)?;
    let key = KeyPair::generate()?;
    let params = CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])?;
    let cert = params.signed_by(&key, &ca, &ca_key)?;
    let ca_path = dir.join("ca.pem");
    std::fs::write(&ca_path, ca.pem())?;
    std::fs::write(dir.join("cert.pem"), cert.pem())?;
    let key_path = dir.join("key.pem");
    std::fs::write(&key_path, key.serialize_pem())?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&key_path, std::fs::Permissions::from_mode(0o600))?;
    Ok(ca_path)
}

/// Start `exe serve` and wait (at most 20 s) for its listening address and `ready`.
fn start_proxy(exe: &Path, config: &Path) -> anyhow::Result<Proxy> {
    let mut child = Command::new(exe)
        .args(["serve", "--config"])
        .arg(config)
        .args(["--log-level", "info"])
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {}", exe.display()))?;
    let stderr = child.stderr.take().context("no stderr")?;
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        // Keep reading (and discarding) so the proxy never blocks on a full pipe.
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let mut proxy = Proxy {
        child,
        addr: SocketAddr::from(([127, 0, 0, 1], 0)),
    };
    let mut log = String::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let line = match rx.recv_timeout(left) {
            Ok(l) => l,
            Err(_) => bail!("tlsfront did not become ready:\n{log}"),
        };
        log.push_str(&line);
        log.push('\n');
        if let Some(addr) = line
            .split_whitespace()
            .find_map(|t| t.strip_prefix("addr="))
            .filter(|_| line.contains("listening service="))
        {
            proxy.addr = addr.parse().context("listening addr")?;
        }
        if line.contains("ready workers=") {
            if proxy.addr.port() == 0 {
                bail!("tlsfront is ready but logged no listening address:\n{log}");
            }
            return Ok(proxy);
        }
    }
}
