//! `tlsfront` command line: parse, build the runtime config, run, pick the exit code.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tlsfront::config::{self, Overrides};

#[derive(Parser)]
#[command(
    name = "tlsfront",
    version,
    about = "TLS termination proxy for legacy TCP services"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Accept TLS and relay plaintext to the backend (no options: a demo on 127.0.0.1:8443).
    Serve {
        /// TOML configuration file.
        #[arg(long, short = 'c')]
        config: Option<PathBuf>,
        /// Listen address (overrides the first service's `listen`).
        #[arg(long)]
        listen: Option<String>,
        /// Backend address (overrides the first service's `backend`).
        #[arg(long)]
        backend: Option<String>,
        /// Certificate chain, PEM (overrides `cert`).
        #[arg(long)]
        cert: Option<String>,
        /// Private key, PEM: PKCS#8, SEC1 or PKCS#1 (overrides `key`).
        #[arg(long)]
        key: Option<String>,
        /// Number of worker threads (overrides `[global] workers`).
        #[arg(long)]
        workers: Option<usize>,
        /// Log level or filter (RUST_LOG wins when set).
        #[arg(long)]
        log_level: Option<String>,
        /// Serve as root without a `user` to drop to (as `[global] allow_root = true`).
        #[arg(long)]
        allow_root: bool,
        /// Log lines as text or as one JSON object per line (overrides `log_format`).
        #[arg(long, value_enum)]
        log_format: Option<tlsfront::obs::LogFormat>,
    },
    /// Validate a configuration (loads certificates and keys too), then exit.
    Check {
        #[arg(long, short = 'c')]
        config: PathBuf,
    },
    /// Start an echo backend and tlsfront on loopback, load them briefly, print the results.
    Demo {
        /// Measured time per step (five steps).
        #[arg(long, default_value = "3s", value_parser = parse_demo_duration)]
        duration: std::time::Duration,
        /// Where the certificates, config, JSON report and plot go.
        #[arg(long)]
        out: Option<PathBuf>,
        /// No progress lines.
        #[arg(long, short)]
        quiet: bool,
    },
    /// This CPU's crypto features and each suite's record speed on one core; a recommended order.
    Ciphers {
        /// Measuring time per suite and record size.
        #[arg(long, default_value = "1s", value_parser = parse_demo_duration)]
        duration: std::time::Duration,
        /// Print the results as JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Check this host for running tlsfront: kernel TLS, io_uring, fd limits, sysctls, CPUs.
    ///
    /// One line per check (OK, WARN or FAIL, what was found, the fix). Exit code 0 when no
    /// check FAILs, 1 when one does, 2 when the config cannot be loaded.
    Doctor {
        /// Check against this configuration (default: the built-in defaults).
        #[arg(long, short = 'c')]
        config: Option<PathBuf>,
        /// Print one JSON document: {"checks": [...], "summary": {...}}.
        #[arg(long)]
        json: bool,
    },
    /// Session ticket key files for `ticket_keys_file`.
    TicketKeys {
        #[command(subcommand)]
        command: TicketKeysCommand,
    },
}

#[derive(Subcommand)]
enum TicketKeysCommand {
    /// Write a new keys file (mode 0600): random keys, newest first.
    Generate {
        /// File to create; refuses to overwrite an existing one.
        #[arg(long)]
        out: PathBuf,
        /// Number of keys (the first encrypts, the first two decrypt).
        #[arg(long, default_value_t = 2)]
        count: usize,
    },
}

fn generate_ticket_keys(out: &std::path::Path, count: usize) -> Result<(), String> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let text = tlsfront::tls::tickets::generate_keys_file(count)?;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(out)
        .map_err(|e| format!("cannot create {}: {e}", out.display()))?;
    file.write_all(text.as_bytes())
        .map_err(|e| format!("cannot write {}: {e}", out.display()))
}

fn parse_demo_duration(text: &str) -> Result<std::time::Duration, String> {
    let d = config::file::parse_duration(text)?;
    if d.is_zero() || d > std::time::Duration::from_secs(600) {
        return Err("between 1ms and 10m".into());
    }
    Ok(d)
}

fn demo(step: std::time::Duration, out: Option<PathBuf>, quiet: bool) -> ExitCode {
    let exe = match std::env::current_exe() {
        Ok(e) => e,
        Err(e) => {
            eprintln!("error: cannot find this program's path: {e}");
            return ExitCode::from(2);
        }
    };
    let opts = tlsfront::demo::DemoOptions {
        exe,
        out: out.unwrap_or_else(|| std::env::temp_dir().join("tlsfront-demo")),
        step,
        quiet,
    };
    match tlsfront::demo::run(&opts) {
        Ok(done) => {
            let _ = tlsfront::demo::print_summary(&mut std::io::stdout(), &done);
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: demo: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// `tlsfront ciphers`: detect, measure, recommend.
fn ciphers(time: std::time::Duration, json: bool) -> Result<(), String> {
    use tlsfront::tls::{cpu, measure};
    let cpu = cpu::detect();
    let mut results = Vec::new();
    for suite in measure::tls13_suites() {
        for record in [1024, 16 * 1024] {
            results.push(measure::measure(suite, record, time)?);
        }
    }
    // Fastest first, by seal + open at full-size records (what bulk relaying does).
    let mut order: Vec<(&str, f64)> = results
        .iter()
        .filter(|r| r.record == 16 * 1024)
        .map(|r| (r.suite, r.seal_mb_s + r.open_mb_s))
        .collect();
    order.sort_by(|a, b| b.1.total_cmp(&a.1));
    let recommended: Vec<&str> = order.iter().map(|(s, _)| *s).collect();
    let auto = if cpu.aes_gcm_accelerated {
        "AES-GCM first; ChaCha20 for clients that list it before AES-GCM"
    } else {
        "ChaCha20 first (no AES-GCM acceleration detected)"
    };
    if json {
        let doc = serde_json::json!({
            "cpu": cpu,
            "results": results,
            "recommended_order": recommended,
            "cipher_preference_auto": auto,
        });
        println!(
            "{}",
            serde_json::to_string_pretty(&doc).map_err(|e| e.to_string())?
        );
        return Ok(());
    }
    let flags: Vec<String> = cpu
        .features
        .iter()
        .map(|(n, on)| format!("{n}={}", if *on { "yes" } else { "no" }))
        .collect();
    println!("CPU {}: {}", cpu.arch, flags.join(" "));
    println!(
        "AES-GCM {}",
        if cpu.aes_gcm_accelerated {
            "accelerated"
        } else {
            "NOT accelerated"
        }
    );
    println!(
        "\n{:<32} {:>7} {:>11} {:>11}   (one core, rustls record layer; MB = 10^6 bytes)",
        "suite", "record", "seal MB/s", "open MB/s"
    );
    for r in &results {
        println!(
            "{:<32} {:>7} {:>11.0} {:>11.0}",
            r.suite, r.record, r.seal_mb_s, r.open_mb_s
        );
    }
    println!(
        "\nrecommended server order (fastest first): {}",
        recommended.join(", ")
    );
    println!("TLS 1.2 ECDHE suites rank the same by their AEAD.");
    println!("cipher_preference = \"auto\" on this CPU: {auto}.");
    Ok(())
}

/// `tlsfront doctor`: inspect the host, judge it against the config, print, pick the exit code.
fn doctor(path: Option<PathBuf>, json: bool) -> ExitCode {
    use tlsfront::doctor::{self, Host, Needs};
    let (needs, probed) = match &path {
        Some(path) => match config::load(Some(path), &Overrides::default()) {
            Ok(cfg) => (Needs::from_config(&cfg, path), cfg.kernel_tls.clone()),
            Err(e) => {
                eprintln!("config error: {e}");
                return ExitCode::from(2);
            }
        },
        None => (
            Needs::defaults(std::thread::available_parallelism().ok().map(|n| n.get())),
            None,
        ),
    };
    let host = Host::inspect(probed);
    let checks = doctor::evaluate(&host, &needs);
    let summary = doctor::summarize(&checks, &needs);
    if json {
        println!("{:#}", doctor::to_json(&checks, &summary));
    } else {
        println!("{}", needs.describe());
        for check in &checks {
            println!("{check}");
        }
        println!(
            "{} OK, {} WARN, {} FAIL",
            summary.ok, summary.warn, summary.fail
        );
    }
    ExitCode::from(summary.exit_code)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Demo {
            duration,
            out,
            quiet,
        } => demo(duration, out, quiet),
        Command::Ciphers { duration, json } => match ciphers(duration, json) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::FAILURE
            }
        },
        Command::Doctor { config, json } => doctor(config, json),
        Command::TicketKeys {
            command: TicketKeysCommand::Generate { out, count },
        } => match generate_ticket_keys(&out, count) {
            Ok(()) => {
                println!("wrote {count} ticket key(s) to {}", out.display());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::FAILURE
            }
        },
        Command::Check { config: path } => match config::load(Some(&path), &Overrides::default()) {
            Ok(cfg) => {
                println!("config OK: {} service(s)", cfg.services.len());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("config error: {e}");
                ExitCode::from(2)
            }
        },
        Command::Serve {
            config: path,
            listen,
            backend,
            cert,
            key,
            workers,
            log_level,
            allow_root,
            log_format,
        } => {
            let overrides = Overrides {
                listen,
                backend,
                cert,
                key,
                workers,
                allow_root,
                log_format,
            };
            let cfg = match config::load(path.as_deref(), &overrides) {
                Ok(cfg) => cfg,
                Err(e) => {
                    eprintln!("config error: {e}");
                    return ExitCode::from(2);
                }
            };
            tlsfront::obs::init_logging(
                log_level.as_deref().or(cfg.global.log_level.as_deref()),
                cfg.global.log_format,
            );
            let source = tlsfront::server::ReloadSource { path, overrides };
            match tlsfront::server::run(cfg, source) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("error: {e}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}
