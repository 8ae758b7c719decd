//! `tlsfront-load` command line.

use std::io::Write;
use std::net::ToSocketAddrs;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{ArgGroup, Parser, Subcommand};
use tlsfront_load::backend::{Backend, Mode};
use tlsfront_load::throughput::{self, Direction};
use tlsfront_load::tls::{self, Trust};

#[derive(Parser)]
#[command(
    name = "tlsfront-load",
    version,
    about = "Load generator for tlsfront capacity planning"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Plaintext TCP backend, one thread per connection. Prints `listening ADDR` first.
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
        /// One line per closed connection on stderr (bytes in/out, pattern check).
        #[arg(long, short)]
        verbose: bool,
    },
    /// Bulk throughput over N parallel connections (TLS, or plain TCP with --plain).
    #[command(group(ArgGroup::new("trust").required(true).args(["ca", "insecure", "plain"])))]
    Throughput {
        #[arg(long)]
        connect: String,
        /// Server name to send and verify (default: the host of --connect).
        #[arg(long)]
        sni: Option<String>,
        /// Verify the server against the CA certificates in this PEM file.
        #[arg(long)]
        ca: Option<PathBuf>,
        /// Accept any server certificate (benchmarking only).
        #[arg(long)]
        insecure: bool,
        /// Plain TCP, no TLS (to measure a backend directly).
        #[arg(long)]
        plain: bool,
        #[arg(long, default_value_t = 1)]
        streams: usize,
        /// Length of the measured window: 10s, 500ms, 2m.
        #[arg(long, default_value = "10s", value_parser = tlsfront::config::file::parse_duration)]
        duration: Duration,
        #[arg(long, value_enum, default_value_t = Direction::Send)]
        direction: Direction,
        /// Offer only TLS 1.3 with this suite, e.g. TLS13_AES_128_GCM_SHA256.
        #[arg(long)]
        tls13_suite: Option<String>,
        /// Also write the report as JSON to this file.
        #[arg(long)]
        json: Option<PathBuf>,
    },
}

fn main() -> ExitCode {
    match run(Cli::parse().command) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn run(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Backend {
            listen,
            echo,
            sink,
            source: _,
            verbose,
        } => {
            let mode = if echo {
                Mode::Echo
            } else if sink {
                Mode::Sink
            } else {
                Mode::Source
            };
            let backend = Backend::bind(&listen, mode).with_context(|| format!("bind {listen}"))?;
            println!("listening {}", backend.local_addr()?);
            std::io::stdout().flush()?;
            backend.verbose(verbose).run()?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Throughput {
            connect,
            sni,
            ca,
            insecure,
            plain,
            streams,
            duration,
            direction,
            tls13_suite,
            json,
        } => {
            let addr = connect
                .to_socket_addrs()
                .with_context(|| format!("resolve {connect}"))?
                .next()
                .context("no address")?;
            let tls = if plain {
                None
            } else {
                let trust = match &ca {
                    Some(path) => Trust::CaFile(path),
                    None => Trust::Insecure,
                };
                if insecure {
                    eprintln!("{}", tls::INSECURE_WARNING);
                }
                let config = tls::client_config(trust, tls13_suite.as_deref())?;
                Some((config, tls::server_name(sni.as_deref(), &connect)?))
            };
            let cfg = throughput::Config {
                connect: addr,
                tls,
                streams,
                duration,
                direction,
            };
            let report = throughput::run(&cfg);
            report.print(&mut std::io::stdout())?;
            if let Some(path) = json {
                std::fs::write(&path, serde_json::to_string_pretty(&report)?)
                    .with_context(|| format!("write {}", path.display()))?;
            }
            Ok(if report.failed() {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            })
        }
    }
}
