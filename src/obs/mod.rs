//! Observability: per-worker counters, the admin endpoint and log set-up.
//!
//! Counters are owned by one worker thread each ([`metrics::Counter`]: written by that
//! thread only, no read-modify-write, no sharing between workers on the hot path). They are
//! logged on request (SIGUSR1) and at exit as one line per worker, and scraped by the admin
//! endpoint ([`admin`]), which merges every worker's into Prometheus text.

pub mod access;
pub mod admin;
pub mod metrics;

use std::fmt::Write as _;

use tracing_subscriber::EnvFilter;

pub use metrics::Counter;

/// Worker counters that are gauges (a level now, not a running total).
const GAUGES: [&str; 2] = ["active", "pipes_idle"];

macro_rules! counters {
    ($( $(#[doc = $doc:literal])* $name:ident ),* $(,)?) => {
        /// One worker's counters (see the README for their meaning). Aligned to keep
        /// workers' sets off each other's cache lines.
        #[derive(Debug, Default)]
        #[repr(align(128))]
        pub struct WorkerStats {
            $( $(#[doc = $doc])* pub $name: Counter, )*
        }

        impl WorkerStats {
            /// `name=value` pairs in a stable order.
            pub fn pairs(&self) -> Vec<(&'static str, u64)> {
                vec![$( (stringify!($name), self.$name.get()), )*]
            }

            /// Each counter's name, its documentation and whether it is a gauge.
            pub fn describe() -> Vec<(&'static str, String, bool)> {
                vec![$( (
                    stringify!($name),
                    [$($doc),*].iter().map(|d| d.trim()).collect::<Vec<_>>().join(" "),
                    GAUGES.contains(&stringify!($name)),
                ), )*]
            }
        }
    };
}

counters! {
    /// Connections accepted.
    accepted,
    /// Connections open right now.
    active,
    /// TLS handshakes completed.
    handshakes,
    /// Of `handshakes`, those that resumed a session (ticket or session ID).
    handshakes_resumed,
    /// Tickets presented whose key name this process does not hold (full handshake instead).
    ticket_decrypt_unknown_key,
    /// Tickets that failed authentication or were malformed (full handshake instead).
    ticket_decrypt_corrupt,
    /// Handshakes that ended in a TLS error or an early close.
    handshake_failures,
    /// Handshakes cut off by `handshake_timeout`.
    handshake_timeouts,
    /// Clients refused for their certificate (missing, invalid, revoked or not allowed).
    client_cert_rejected,
    /// Clients refused because no route matched their SNI (`unknown_sni = "reject"`).
    sni_rejected,
    /// Connections forwarded without terminating TLS (pass-through routes).
    passthrough,
    /// Backend connects refused, timed out or failed.
    backend_connect_failures,
    /// Connections closed (any reason).
    closed,
    /// Connections closed for a reason other than a normal end.
    closed_with_error,
    /// Connections closed by `idle_timeout`.
    idle_timeouts,
    /// Plaintext bytes relayed client → backend.
    bytes_client_to_backend,
    /// Plaintext bytes relayed backend → client.
    bytes_backend_to_client,
    /// Times accepting paused because `max_connections` was reached.
    max_conn_pauses,
    /// accept() errors (e.g. out of file descriptors).
    accept_errors,
    /// Connections whose records the kernel encrypts (kTLS + splice).
    offload_ktls,
    /// Connections kept in userspace because `ktls = "off"`.
    offload_userspace_disabled,
    /// ... because the kernel has no TLS ULP.
    offload_userspace_kernel_lacks_tls_ulp,
    /// ... because the kernel cannot run the negotiated cipher.
    offload_userspace_cipher_unsupported,
    /// ... because attaching the TLS ULP to the socket failed.
    offload_userspace_install_failed,
    /// ... because the backend is TLS as well (re-encryption).
    offload_userspace_reencrypt,
    /// Bytes moved client → backend by splice (the zero-copy path).
    spliced_client_to_backend,
    /// Bytes moved backend → client by splice.
    spliced_backend_to_client,
    /// Non-data records read from kTLS sockets (alerts, key updates).
    ktls_control_records,
    /// Pipes kept for reuse by the splice relay right now (a gauge; 2 fds each).
    pipes_idle,
}

/// Adds `n` to a counter of this thread's worker.
pub fn add(counter: &Counter, n: u64) {
    counter.add(n);
}

pub fn inc(counter: &Counter) {
    counter.add(1);
}

pub fn dec(counter: &Counter) {
    counter.set(counter.get().saturating_sub(1));
}

impl WorkerStats {
    /// The value of the counter called `name`.
    pub fn value(&self, name: &str) -> Option<u64> {
        self.pairs()
            .into_iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v)
    }

    /// `accepted=3 active=0 ...` for the stats log line.
    pub fn render(&self) -> String {
        let mut s = String::with_capacity(256);
        for (i, (name, value)) in self.pairs().into_iter().enumerate() {
            if i > 0 {
                s.push(' ');
            }
            let _ = write!(s, "{name}={value}");
        }
        s
    }
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum LogFormat {
    /// `time LEVEL target: message key=value ...`
    #[default]
    Text,
    /// One JSON object per line: `timestamp`, `level`, `target`, `message` and every field.
    Json,
}

/// Installs the tracing subscriber: RUST_LOG wins, then `--log-level`/`log_level`, then info.
pub fn init_logging(level: Option<&str>, format: LogFormat) {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(level.unwrap_or("info")))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Text => builder
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .try_init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .try_init(),
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn render_lists_every_counter() {
        let s = WorkerStats::default();
        inc(&s.accepted);
        add(&s.bytes_client_to_backend, 10);
        dec(&s.active);
        let line = s.render();
        assert!(line.starts_with("accepted=1 active=0 "), "{line}");
        assert!(line.contains("bytes_client_to_backend=10"), "{line}");
        assert_eq!(line.split(' ').count(), s.pairs().len());
    }
}
