//! `tlsfront-load` command line: parse, build the scenario, run it, write the outputs, pick
//! the exit code (0 passed, 1 the run failed or was aborted, 2 bad usage or setup).

use std::io::Write;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{ArgGroup, Args, Parser, Subcommand};
use tlsfront_load::backend::{Backend, Mode};
use tlsfront_load::engine::Plan;
use tlsfront_load::report::Report;
use tlsfront_load::run::{self, Options, Run, Scenario};
use tlsfront_load::scenario::handshake::Handshake;
use tlsfront_load::scenario::hold::Hold;
use tlsfront_load::scenario::latency::Latency;
use tlsfront_load::scenario::ramp::{self, Ramp};
use tlsfront_load::scenario::throughput::{Direction, Throughput};
use tlsfront_load::scenario::Target;
use tlsfront_load::tls::{self, ClientSpec, Offer, Trust};
use tlsfront_load::{hlog, plot};

#[derive(Parser)]
#[command(
    name = "tlsfront-load",
    version,
    about = "Load generator for TLS capacity planning: handshakes, throughput, latency at a \
             fixed rate (open model), idle connections, rate ramps"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Plaintext TCP backend, thread per core. Prints `listening ADDR` first.
    #[command(group(ArgGroup::new("mode").required(true).args(["echo", "sink", "source"])))]
    Backend {
        #[arg(long, default_value = "127.0.0.1:9000")]
        listen: String,
        /// Write back what is read; half-close on EOF.
        #[arg(long)]
        echo: bool,
        /// Read and discard (checks the load pattern).
        #[arg(long)]
        sink: bool,
        /// Write the load pattern until the peer closes.
        #[arg(long)]
        source: bool,
        /// Worker threads (default: one per CPU).
        #[arg(long)]
        threads: Option<usize>,
        /// Pin the workers to these CPUs, e.g. 1 or 0,2.
        #[arg(long, value_delimiter = ',')]
        cpus: Vec<usize>,
        /// Echo: hold each chunk this long before writing it back (a slow service).
        #[arg(long, value_parser = parse_duration)]
        delay: Option<Duration>,
        /// With --delay: delay only every N-th chunk.
        #[arg(long, default_value_t = 1)]
        delay_every: u64,
        /// One line per closed connection on stderr (bytes in/out, pattern check).
        #[arg(long, short)]
        verbose: bool,
    },
    /// New connections per second, each with a full handshake (or resumed with --resume).
    Handshake {
        #[command(flatten)]
        target: TargetArgs,
        #[command(flatten)]
        run: RunArgs,
        /// Connections in flight (closed loop), or their cap with --rate.
        #[arg(long, default_value_t = 64)]
        concurrency: usize,
        /// Open model: start this many connections per second, latency from the intended start.
        #[arg(long, value_parser = positive)]
        rate: Option<f64>,
        /// Keep session tickets and resume with them; reports the resumed share.
        #[arg(long)]
        resume: bool,
    },
    /// Bulk transfer over long-lived streams; MB/s per direction.
    Throughput {
        #[command(flatten)]
        target: TargetArgs,
        #[command(flatten)]
        run: RunArgs,
        #[arg(long, default_value_t = 1)]
        streams: usize,
        #[arg(long, value_enum, default_value_t = Direction::Send)]
        direction: Direction,
    },
    /// Request/response latency at a fixed offered rate (open model; needs an echo behind the target).
    Latency {
        #[command(flatten)]
        target: TargetArgs,
        #[command(flatten)]
        run: RunArgs,
        /// Requests per second over all threads.
        #[arg(long, value_parser = positive)]
        rate: f64,
        #[arg(long, default_value_t = 16)]
        connections: usize,
        /// Request (and response) size in bytes, at most 65536.
        #[arg(long, default_value_t = 64)]
        size: usize,
    },
    /// Open and hold idle TLS connections; with --pid, the target's memory and fds per connection.
    Hold {
        #[command(flatten)]
        target: TargetArgs,
        #[command(flatten)]
        run: RunArgs,
        #[arg(long)]
        connections: usize,
        /// Handshakes in flight while opening.
        #[arg(long, default_value_t = 64)]
        concurrency: usize,
        /// Open at most this many connections per second.
        #[arg(long, value_parser = positive)]
        rate: Option<f64>,
    },
    /// Step the offered rate until the p99 SLO or the error budget breaks.
    Ramp {
        #[command(flatten)]
        target: TargetArgs,
        #[command(flatten)]
        run: RunArgs,
        /// What to step: new connections/s (handshakes) or requests/s (latency).
        #[arg(long, value_enum, default_value_t = RampOf::Connections)]
        of: RampOf,
        /// p99 SLO in milliseconds.
        #[arg(long, value_parser = positive)]
        slo_p99: f64,
        /// First offered rate.
        #[arg(long, default_value_t = 100.0, value_parser = positive)]
        start: f64,
        /// Add this much each step (default: multiply by --factor).
        #[arg(long, value_parser = positive)]
        step: Option<f64>,
        /// Multiply the rate by this each step (above 1).
        #[arg(long, default_value_t = 1.5, value_parser = positive)]
        factor: f64,
        #[arg(long, default_value_t = 1e6, value_parser = positive)]
        max_rate: f64,
        /// Cap on connections in flight (connections ramp) or connections used (requests ramp).
        #[arg(long, default_value_t = 256)]
        concurrency: usize,
        /// Requests ramp: request size.
        #[arg(long, default_value_t = 64)]
        size: usize,
        /// Connections ramp: resume sessions.
        #[arg(long)]
        resume: bool,
    },
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum RampOf {
    Connections,
    Requests,
}

#[derive(Args)]
#[command(group(ArgGroup::new("trust").required(true).args(["ca", "insecure", "plain"])))]
struct TargetArgs {
    /// host:port of the endpoint under test (any TLS server: tlsfront, HAProxy, nginx...).
    #[arg(long)]
    connect: String,
    /// Server name to send and verify (default: the host of --connect).
    #[arg(long)]
    sni: Option<String>,
    /// Verify the server against the CA certificates in this PEM file.
    #[arg(long)]
    ca: Option<PathBuf>,
    /// Accept any server certificate. FOR BENCHMARKING ONLY.
    #[arg(long)]
    insecure: bool,
    /// Plain TCP, no TLS (to measure a backend directly).
    #[arg(long)]
    plain: bool,
    /// Offer only these TLS versions: 1.2, 1.3 (repeat or comma-separate).
    #[arg(long = "tls-version", value_delimiter = ',')]
    versions: Vec<String>,
    /// Offer only these suites: aes128gcm, aes256gcm, chacha20 or IANA names.
    #[arg(long = "suite", value_delimiter = ',')]
    suites: Vec<String>,
    /// Offer only these key exchange groups: x25519, p256, p384, x25519mlkem768.
    #[arg(long = "group", value_delimiter = ',')]
    groups: Vec<String>,
    /// ALPN protocols to offer.
    #[arg(long, value_delimiter = ',')]
    alpn: Vec<String>,
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    connect_timeout: Duration,
}

#[derive(Args)]
struct RunArgs {
    /// Worker threads, each pinned to a core (default: one per CPU).
    #[arg(long)]
    threads: Option<std::num::NonZeroUsize>,
    /// Pin the workers to these CPUs, e.g. 1 or 0,2.
    #[arg(long, value_delimiter = ',')]
    cpus: Vec<usize>,
    /// Length of the measured window (per step for ramp): 10s, 500ms, 2m.
    #[arg(long, default_value = "10s", value_parser = run_length)]
    duration: Duration,
    /// Load before the window that is not counted.
    #[arg(long, default_value = "0s", value_parser = parse_duration)]
    warmup: Duration,
    /// Progress and interval-log period (10ms or more).
    #[arg(long, default_value = "1s", value_parser = interval)]
    interval: Duration,
    /// Largest share of failed operations that still passes (0.001 = 0.1%).
    #[arg(long, default_value_t = 0.001, value_parser = fraction)]
    error_budget: f64,
    /// The target's process id: report its CPU (per-CPU-second rates) and, for hold, memory.
    #[arg(long)]
    pid: Option<u32>,
    /// Write the report as JSON.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Write the latency histograms as an HdrHistogram interval log.
    #[arg(long)]
    hlog: Option<PathBuf>,
    /// Draw an SVG: the latency percentile spectrum, throughput over time, or a ramp.
    #[arg(long)]
    plot: Option<PathBuf>,
    /// No progress lines.
    #[arg(long, short)]
    quiet: bool,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s).map_err(|e| format!("{e} (examples: 10s, 500ms, 2m)"))?;
    if d > Duration::from_secs(7 * 24 * 3600) {
        return Err("at most a week".into());
    }
    Ok(d)
}

fn run_length(s: &str) -> Result<Duration, String> {
    parse_duration(s).and_then(|d| {
        if d.is_zero() {
            Err("must be longer than 0".into())
        } else {
            Ok(d)
        }
    })
}

fn interval(s: &str) -> Result<Duration, String> {
    parse_duration(s).and_then(|d| {
        if d < Duration::from_millis(10) {
            Err("must be 10ms or more".into())
        } else {
            Ok(d)
        }
    })
}

fn positive(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v.is_finite() && v > 0.0 => Ok(v),
        _ => Err(format!("{s:?} is not a positive number")),
    }
}

fn fraction(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if (0.0..=1.0).contains(&v) => Ok(v),
        _ => Err(format!("{s:?} is not between 0 and 1")),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if !matches!(cli.command, Command::Backend { .. }) {
        // Ctrl-C ends the run early but still reports and writes what it measured; a
        // second Ctrl-C exits at once.
        let flag = tlsfront_load::engine::interrupted().clone();
        for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
            let _ = signal_hook::flag::register_conditional_shutdown(sig, 130, flag.clone());
            let _ = signal_hook::flag::register(sig, flag.clone());
        }
    }
    match run_command(cli.command) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn run_command(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Backend {
            listen,
            echo,
            sink,
            source: _,
            threads,
            cpus,
            delay,
            delay_every,
            verbose,
        } => {
            let mode = if echo {
                Mode::Echo
            } else if sink {
                Mode::Sink
            } else {
                Mode::Source
            };
            let mut backend = Backend::bind(&listen, mode)
                .with_context(|| format!("bind {listen}"))?
                .verbose(verbose)
                .cpus(cpus)
                .delay_every(delay_every.max(1));
            if let Some(n) = threads {
                backend = backend.threads(n);
            }
            if let Some(d) = delay {
                backend = backend.delay(d);
            }
            println!("listening {}", backend.local_addr()?);
            std::io::stdout().flush()?;
            backend.run()?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Handshake {
            target,
            run,
            concurrency,
            rate,
            resume,
        } => {
            let t = target.build()?;
            let scenario = Scenario::Handshake(Handshake {
                target: t.target,
                concurrency,
                rate,
                resume,
            });
            single(scenario, &run, t.transport)
        }
        Command::Throughput {
            target,
            run,
            streams,
            direction,
        } => {
            let t = target.build()?;
            let scenario = Scenario::Throughput(Throughput {
                target: t.target,
                streams,
                direction,
            });
            single(scenario, &run, t.transport)
        }
        Command::Latency {
            target,
            run,
            rate,
            connections,
            size,
        } => {
            check_size(size)?;
            let t = target.build()?;
            let scenario = Scenario::Latency(Latency {
                target: t.target,
                connections,
                rate,
                size,
            });
            single(scenario, &run, t.transport)
        }
        Command::Hold {
            target,
            run,
            connections,
            concurrency,
            rate,
        } => {
            let t = target.build()?;
            raise_fd_limit(connections + 1024);
            let scenario = Scenario::Hold(Hold {
                target: t.target,
                connections,
                concurrency,
                rate,
            });
            single(scenario, &run, t.transport)
        }
        Command::Ramp {
            target,
            run,
            of,
            slo_p99,
            start,
            step,
            factor,
            max_rate,
            concurrency,
            size,
            resume,
        } => {
            check_size(size)?;
            if step.is_none() && factor <= 1.0 {
                bail!("--factor must be above 1 (or give --step)");
            }
            let t = target.build()?;
            let scenario = match of {
                RampOf::Connections => Scenario::Handshake(Handshake {
                    target: t.target,
                    concurrency,
                    rate: Some(start),
                    resume,
                }),
                RampOf::Requests => Scenario::Latency(Latency {
                    target: t.target,
                    connections: concurrency,
                    rate: start,
                    size,
                }),
            };
            let ramp = Ramp {
                scenario,
                start,
                step,
                factor,
                max: max_rate,
                slo_p99_ms: slo_p99,
            };
            run.check_outputs()?;
            let opts = run.options(t.transport);
            let report = ramp::run(&ramp, &opts)?;
            report.print(&mut std::io::stdout())?;
            if let Some(path) = &run.json {
                report.write_json(path)?;
                eprintln!("wrote {}", path.display());
            }
            if let (Some(path), Some(r)) = (&run.plot, &report.ramp) {
                plot::ramp(path, &r.unit, &r.steps, r.slo_p99_ms)?;
                eprintln!("wrote {}", path.display());
            }
            Ok(exit(&report))
        }
    }
}

struct BuiltTarget {
    target: Target,
    transport: String,
}

impl TargetArgs {
    fn build(&self) -> anyhow::Result<BuiltTarget> {
        let addr = resolve(&self.connect)?;
        let (tls, transport) = if self.plain {
            (None, "plain TCP".to_string())
        } else {
            let (trust, transport) = match &self.ca {
                Some(path) => (
                    Trust::CaFile(path.clone()),
                    format!("TLS, verified against {}", path.display()),
                ),
                None => {
                    eprintln!("{}", tls::INSECURE_WARNING);
                    (
                        Trust::Insecure,
                        "TLS, certificate NOT verified (--insecure)".to_string(),
                    )
                }
            };
            let offer = Offer {
                versions: self.versions.clone(),
                suites: self.suites.clone(),
                groups: self.groups.clone(),
                alpn: self.alpn.clone(),
            };
            let name = tls::server_name(self.sni.as_deref(), &self.connect)?;
            (Some(ClientSpec::new(&trust, &offer, name)?), transport)
        };
        Ok(BuiltTarget {
            target: Target {
                addr,
                tls,
                connect_timeout: self.connect_timeout,
            },
            transport,
        })
    }
}

fn resolve(connect: &str) -> anyhow::Result<SocketAddr> {
    connect
        .to_socket_addrs()
        .with_context(|| format!("resolving --connect {connect}"))?
        .next()
        .with_context(|| format!("--connect {connect}: no address"))
}

impl RunArgs {
    fn options(&self, transport: String) -> Options {
        let threads = self.threads.map_or_else(
            || std::thread::available_parallelism().map_or(1, |n| n.get()),
            |n| n.get(),
        );
        Options {
            plan: Plan {
                threads,
                cpus: self.cpus.clone(),
                pin: true,
                warmup: self.warmup,
                duration: self.duration,
                interval: self.interval.max(Duration::from_millis(100)),
                grace: Duration::from_secs(3),
            },
            quiet: self.quiet,
            pid: self.pid,
            error_budget: self.error_budget,
            transport,
        }
    }
}

impl RunArgs {
    /// Create (empty) every output file now, so that a bad path fails before the run.
    fn check_outputs(&self) -> anyhow::Result<()> {
        for path in [&self.json, &self.hlog, &self.plot].into_iter().flatten() {
            std::fs::File::create(path)
                .with_context(|| format!("cannot write {}", path.display()))?;
        }
        Ok(())
    }
}

/// Run one scenario and write every requested output, also when the run failed.
fn single(scenario: Scenario, args: &RunArgs, transport: String) -> anyhow::Result<ExitCode> {
    args.check_outputs()?;
    let opts = args.options(transport);
    let Run { report, outcome } = run::run(&scenario, &opts)?;
    report.print(&mut std::io::stdout())?;
    std::io::stdout().flush()?;
    if let Some(path) = &args.json {
        report.write_json(path)?;
        eprintln!("wrote {}", path.display());
    }
    if let Some(path) = &args.hlog {
        hlog::write(path, outcome.started, &outcome.intervals)?;
        eprintln!("wrote {}", path.display());
    }
    if let Some(path) = &args.plot {
        let title = format!(
            "{} {} ({})",
            report.scenario, report.target, report.transport
        );
        if report.scenario == "throughput" {
            plot::timeline(path, &title, &report.intervals)?;
        } else {
            let service_name = "service time (what a closed loop reports)";
            let mut series = vec![("latency from intended start", &outcome.total.latency)];
            if report.scenario == "latency" {
                series.push((service_name, &outcome.total.service));
            }
            plot::spectrum(path, &title, &series)?;
        }
        eprintln!("wrote {}", path.display());
    }
    Ok(exit(&report))
}

fn exit(report: &Report) -> ExitCode {
    if report.failed.is_some() {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

fn check_size(size: usize) -> anyhow::Result<()> {
    if size == 0 || size > tlsfront_load::pattern::CHUNK {
        bail!("--size must be 1..=65536 bytes");
    }
    Ok(())
}

/// Holding many connections needs as many fds: raise the soft limit toward the hard one.
fn raise_fd_limit(want: usize) {
    use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
    let lim = getrlimit(Resource::Nofile);
    let want = want as u64;
    if lim.current.is_some_and(|c| c >= want) {
        return;
    }
    let new = lim.maximum.map_or(want, |m| m.min(want));
    if setrlimit(
        Resource::Nofile,
        Rlimit {
            current: Some(new),
            maximum: lim.maximum,
        },
    )
    .is_err()
        || new < want
    {
        eprintln!(
            "warning: open files limited to {new}, fewer than the {want} this run needs (ulimit -n)"
        );
    }
}
