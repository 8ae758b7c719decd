//! Counters the admin endpoint scrapes: each worker writes its own, the admin thread reads
//! them all and merges them into Prometheus text ([`render`]).
//!
//! A [`Counter`] is an `AtomicU64` that only its worker writes, with a relaxed load and a
//! store (a plain `mov` on x86: no lock prefix, no read-modify-write; exact, because there
//! is one writer). The scraper reads with relaxed loads: a scrape may see one counter a few
//! events ahead of another, never a torn value. The only lock is the [`Registry`]'s list of
//! counter sets, taken when a worker creates a set (start-up, a reload that adds a service)
//! and when the endpoint is scraped — never per connection or per byte.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::conn::close::CloseReason;

/// A counter (or gauge) with one writer thread.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    pub fn get(&self) -> u64 {
        self.0.load(Relaxed)
    }

    pub fn set(&self, value: u64) {
        self.0.store(value, Relaxed)
    }

    /// Only the owning worker adds (one writer: load + store is exact).
    pub fn add(&self, n: u64) {
        self.set(self.get().wrapping_add(n))
    }
}

/// Upper bounds (seconds) of the handshake-duration histogram's buckets.
pub const HANDSHAKE_BUCKETS: [f64; 12] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];

/// A Prometheus histogram with fixed buckets, written by one worker.
#[derive(Debug, Default)]
pub struct Histogram {
    /// Observations per bucket (not cumulative; summed when rendered).
    buckets: [Counter; HANDSHAKE_BUCKETS.len()],
    count: Counter,
    sum_micros: Counter,
}

impl Histogram {
    pub fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        if let Some(i) = HANDSHAKE_BUCKETS.iter().position(|le| secs <= *le) {
            self.buckets[i].add(1);
        }
        self.count.add(1);
        self.sum_micros.add(d.as_micros() as u64);
    }
}

/// Why a backend connect failed (`backend_connect_failures_total{reason}`).
#[derive(Debug, Clone, Copy)]
pub enum ConnectFailure {
    Refused,
    Timeout,
    Error,
}

const CONNECT_FAILURES: [&str; 3] = ["refused", "timeout", "error"];

/// How a connection's records are encrypted (`offload_total{mode, reason}`), in the order
/// of [`OFFLOADS`].
#[derive(Debug, Clone, Copy)]
pub enum OffloadLabel {
    Ktls,
    Disabled,
    KernelLacksTlsUlp,
    CipherUnsupported,
    InstallFailed,
    Reencrypt,
}

const OFFLOADS: [(&str, &str); 6] = [
    ("ktls", ""),
    ("userspace", "disabled"),
    ("userspace", "kernel_lacks_tls_ulp"),
    ("userspace", "cipher_unsupported"),
    ("userspace", "install_failed"),
    ("userspace", "reencrypt"),
];

/// TLS versions and suites handshakes are counted by: every suite tlsfront can negotiate.
fn suites() -> &'static [rustls::SupportedCipherSuite] {
    rustls::crypto::aws_lc_rs::ALL_CIPHER_SUITES
}

/// One service's counters on one worker. They carry over a reload that keeps the service's
/// listener (the same set is handed to the new configuration). Aligned to keep workers'
/// sets off each other's cache lines.
#[derive(Debug)]
#[repr(align(128))]
pub struct ServiceStats {
    pub service: String,
    pub worker: usize,
    pub accepted: Counter,
    /// Open connections (a gauge).
    pub active: Counter,
    /// Completed handshakes by suite (index in `suites()`) and resumption.
    handshakes: Vec<[Counter; 2]>,
    /// Failed handshakes by reason (index `CloseReason as usize`).
    handshake_failures: Vec<Counter>,
    /// Accept to handshake done, for completed handshakes.
    pub handshake_seconds: Histogram,
    /// Closed connections by reason.
    closed: Vec<Counter>,
    pub bytes_client_to_backend: Counter,
    pub bytes_backend_to_client: Counter,
    backend_connect_failures: [Counter; 3],
    offload: [Counter; 6],
}

impl ServiceStats {
    pub fn new(service: &str, worker: usize) -> ServiceStats {
        let reasons = || {
            (0..CloseReason::ALL.len())
                .map(|_| Counter::default())
                .collect()
        };
        ServiceStats {
            service: service.to_owned(),
            worker,
            accepted: Counter::default(),
            active: Counter::default(),
            handshakes: suites().iter().map(|_| Default::default()).collect(),
            handshake_failures: reasons(),
            handshake_seconds: Histogram::default(),
            closed: reasons(),
            bytes_client_to_backend: Counter::default(),
            bytes_backend_to_client: Counter::default(),
            backend_connect_failures: Default::default(),
            offload: Default::default(),
        }
    }

    /// A completed handshake: its suite, whether it resumed, and how long it took.
    pub fn handshake_done(
        &self,
        suite: Option<rustls::SupportedCipherSuite>,
        resumed: bool,
        took: Duration,
    ) {
        let index = suite.and_then(|s| suites().iter().position(|k| k.suite() == s.suite()));
        if let Some(i) = index {
            self.handshakes[i][resumed as usize].add(1);
        }
        self.handshake_seconds.observe(took);
    }

    /// Completed handshakes that were (`true`) or were not resumptions, over all suites.
    pub fn handshakes(&self, resumed: bool) -> u64 {
        self.handshakes
            .iter()
            .map(|h| h[resumed as usize].get())
            .sum()
    }

    pub fn handshake_failed(&self, reason: CloseReason) {
        self.handshake_failures[reason as usize].add(1);
    }

    /// A connection ended (its `active` count is dropped separately, however it ends).
    pub fn closed(&self, reason: CloseReason, up: u64, down: u64) {
        self.closed[reason as usize].add(1);
        self.bytes_client_to_backend.add(up);
        self.bytes_backend_to_client.add(down);
    }

    pub fn backend_connect_failed(&self, why: ConnectFailure) {
        self.backend_connect_failures[why as usize].add(1);
    }

    pub fn offloaded(&self, how: OffloadLabel) {
        self.offload[how as usize].add(1);
    }
}

/// What the endpoint reports besides the workers' counters (written by the main thread).
#[derive(Debug, Default)]
pub struct ProcessState {
    /// Serving and not shutting down (`/ready`).
    pub ready: AtomicBool,
    /// SIGTERM received: draining.
    pub draining: AtomicBool,
    pub reloads_ok: AtomicU64,
    pub reloads_failed: AtomicU64,
    /// Each service's ticket keys (set at start and on reload).
    pub ticketers: Mutex<Vec<(String, Arc<crate::tls::tickets::Ticketer>)>>,
}

/// Every counter set of the process, for the scraper.
#[derive(Debug, Default)]
pub struct Registry {
    workers: Mutex<Vec<(usize, Arc<super::WorkerStats>)>>,
    services: Mutex<Vec<Arc<ServiceStats>>>,
    pub process: ProcessState,
}

impl Registry {
    pub fn add_worker(&self, id: usize, stats: Arc<super::WorkerStats>) {
        lock(&self.workers).push((id, stats));
    }

    /// A new counter set for `service` on `worker`. Sets nobody else holds any more (a
    /// service removed by a reload, once its last connection closed) are dropped here.
    pub fn add_service(&self, service: &str, worker: usize) -> Arc<ServiceStats> {
        let stats = Arc::new(ServiceStats::new(service, worker));
        let mut all = lock(&self.services);
        all.retain(|s| Arc::strong_count(s) > 1);
        all.push(stats.clone());
        stats
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding it (in rendering) leaves plain data behind: still usable.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Escapes a label value (Prometheus text format: backslash, quote, newline).
fn escape(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

/// The process's metrics in the Prometheus text exposition format (version 0.0.4).
pub fn render(registry: &Registry) -> String {
    let workers = lock(&registry.workers).clone();
    let mut services = lock(&registry.services).clone();
    services.sort_by(|a, b| (&a.service, a.worker).cmp(&(&b.service, b.worker)));
    let mut out = String::with_capacity(16 * 1024);
    let p = &registry.process;

    family(
        &mut out,
        "tlsfront_ready",
        "gauge",
        "1 while serving and not shutting down.",
    );
    let _ = writeln!(out, "tlsfront_ready {}", p.ready.load(Relaxed) as u8);
    family(
        &mut out,
        "tlsfront_draining",
        "gauge",
        "1 once SIGTERM was received.",
    );
    let _ = writeln!(out, "tlsfront_draining {}", p.draining.load(Relaxed) as u8);
    family(
        &mut out,
        "tlsfront_reloads_total",
        "counter",
        "Configuration reloads (SIGHUP) by result.",
    );
    let _ = writeln!(
        out,
        "tlsfront_reloads_total{{result=\"ok\"}} {}",
        p.reloads_ok.load(Relaxed)
    );
    let _ = writeln!(
        out,
        "tlsfront_reloads_total{{result=\"failed\"}} {}",
        p.reloads_failed.load(Relaxed)
    );
    let keys: Vec<_> = lock(&p.ticketers)
        .iter()
        .map(|(svc, t)| (svc.clone(), t.state()))
        .collect();
    family(&mut out, "tlsfront_ticket_keys", "gauge", "Session ticket keys a service holds (the first encrypts, all decrypt), by where they come from.");
    for (svc, (source, n, _)) in &keys {
        let _ = writeln!(
            out,
            "tlsfront_ticket_keys{{service=\"{}\",source=\"{source}\"}} {n}",
            escape(svc)
        );
    }
    family(
        &mut out,
        "tlsfront_ticket_key_age_seconds",
        "gauge",
        "Age of the key that encrypts new tickets (rotated keys only).",
    );
    for (svc, (_, _, age)) in &keys {
        if let Some(age) = age {
            let _ = writeln!(
                out,
                "tlsfront_ticket_key_age_seconds{{service=\"{}\"}} {age}",
                escape(svc)
            );
        }
    }

    // Per worker: every counter of the `worker stats` line.
    let mut sorted = workers;
    sorted.sort_by_key(|(id, _)| *id);
    for (name, help, gauge) in super::WorkerStats::describe() {
        let metric = if gauge {
            format!("tlsfront_worker_{name}")
        } else {
            format!("tlsfront_worker_{name}_total")
        };
        family(
            &mut out,
            &metric,
            if gauge { "gauge" } else { "counter" },
            &help,
        );
        for (id, stats) in &sorted {
            let value = stats.value(name).unwrap_or_default();
            let _ = writeln!(out, "{metric}{{worker=\"{id}\"}} {value}");
        }
    }

    // Per service and worker.
    let labels =
        |s: &ServiceStats| format!("service=\"{}\",worker=\"{}\"", escape(&s.service), s.worker);
    family(
        &mut out,
        "tlsfront_connections_accepted_total",
        "counter",
        "Connections accepted.",
    );
    for s in &services {
        let _ = writeln!(
            out,
            "tlsfront_connections_accepted_total{{{}}} {}",
            labels(s),
            s.accepted.get()
        );
    }
    family(
        &mut out,
        "tlsfront_connections_active",
        "gauge",
        "Connections open now.",
    );
    for s in &services {
        let _ = writeln!(
            out,
            "tlsfront_connections_active{{{}}} {}",
            labels(s),
            s.active.get()
        );
    }
    family(
        &mut out,
        "tlsfront_connections_closed_total",
        "counter",
        "Connections closed, by reason.",
    );
    for s in &services {
        for (i, reason) in CloseReason::ALL.iter().enumerate() {
            let n = s.closed[i].get();
            if n > 0 {
                let _ = writeln!(
                    out,
                    "tlsfront_connections_closed_total{{{},reason=\"{}\"}} {n}",
                    labels(s),
                    reason.as_str()
                );
            }
        }
    }
    family(&mut out, "tlsfront_handshakes_total", "counter", "TLS handshakes by result; completed ones (result=\"ok\") by version, suite and resumption.");
    for s in &services {
        for (i, suite) in suites().iter().enumerate() {
            let version = match suite {
                rustls::SupportedCipherSuite::Tls13(_) => "TLSv1.3",
                rustls::SupportedCipherSuite::Tls12(_) => "TLSv1.2",
            };
            for resumed in [false, true] {
                let n = s.handshakes[i][resumed as usize].get();
                if n > 0 {
                    let _ = writeln!(
                        out,
                        "tlsfront_handshakes_total{{{},result=\"ok\",version=\"{version}\",suite=\"{:?}\",resumed=\"{resumed}\"}} {n}",
                        labels(s),
                        suite.suite()
                    );
                }
            }
        }
        for (i, reason) in CloseReason::ALL.iter().enumerate() {
            let n = s.handshake_failures[i].get();
            if n > 0 {
                let _ = writeln!(
                    out,
                    "tlsfront_handshakes_total{{{},result=\"{}\"}} {n}",
                    labels(s),
                    reason.as_str()
                );
            }
        }
    }
    family(
        &mut out,
        "tlsfront_handshake_duration_seconds",
        "histogram",
        "From accept to a completed handshake.",
    );
    for s in &services {
        let h = &s.handshake_seconds;
        let mut cumulative = 0;
        for (i, le) in HANDSHAKE_BUCKETS.iter().enumerate() {
            cumulative += h.buckets[i].get();
            let _ = writeln!(
                out,
                "tlsfront_handshake_duration_seconds_bucket{{{},le=\"{le}\"}} {cumulative}",
                labels(s)
            );
        }
        let count = h.count.get();
        let _ = writeln!(
            out,
            "tlsfront_handshake_duration_seconds_bucket{{{},le=\"+Inf\"}} {count}",
            labels(s)
        );
        let _ = writeln!(
            out,
            "tlsfront_handshake_duration_seconds_sum{{{}}} {}",
            labels(s),
            h.sum_micros.get() as f64 / 1e6
        );
        let _ = writeln!(
            out,
            "tlsfront_handshake_duration_seconds_count{{{}}} {count}",
            labels(s)
        );
    }
    family(
        &mut out,
        "tlsfront_bytes_total",
        "counter",
        "Plaintext bytes relayed, by direction (counted when a connection closes).",
    );
    for s in &services {
        let _ = writeln!(
            out,
            "tlsfront_bytes_total{{{},direction=\"client_to_backend\"}} {}",
            labels(s),
            s.bytes_client_to_backend.get()
        );
        let _ = writeln!(
            out,
            "tlsfront_bytes_total{{{},direction=\"backend_to_client\"}} {}",
            labels(s),
            s.bytes_backend_to_client.get()
        );
    }
    family(
        &mut out,
        "tlsfront_backend_connect_failures_total",
        "counter",
        "Backend connect attempts that failed, by reason.",
    );
    for s in &services {
        for (i, reason) in CONNECT_FAILURES.iter().enumerate() {
            let _ = writeln!(
                out,
                "tlsfront_backend_connect_failures_total{{{},reason=\"{reason}\"}} {}",
                labels(s),
                s.backend_connect_failures[i].get()
            );
        }
    }
    family(&mut out, "tlsfront_offload_total", "counter", "Terminated connections by who encrypts their records: the kernel (ktls) or tlsfront (userspace, with the reason).");
    for s in &services {
        for (i, (mode, reason)) in OFFLOADS.iter().enumerate() {
            let _ = writeln!(
                out,
                "tlsfront_offload_total{{{},mode=\"{mode}\",reason=\"{reason}\"}} {}",
                labels(s),
                s.offload[i].get()
            );
        }
    }
    out
}

fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(
        out,
        "# HELP {name} {}",
        help.replace('\\', "\\\\").replace('\n', " ")
    );
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_histogram_counts_each_observation_in_its_bucket_and_renders_cumulatively() {
        let registry = Registry::default();
        let s = registry.add_service("edge", 0);
        let aes = Some(rustls::crypto::aws_lc_rs::cipher_suite::TLS13_AES_128_GCM_SHA256);
        s.handshake_done(aes, false, Duration::from_micros(800));
        s.handshake_done(aes, true, Duration::from_millis(3));
        s.handshake_done(aes, false, Duration::from_secs(9));
        let text = render(&registry);
        let line = |le: &str| {
            let key = format!("tlsfront_handshake_duration_seconds_bucket{{service=\"edge\",worker=\"0\",le=\"{le}\"}} ");
            text.lines()
                .find_map(|l| l.strip_prefix(key.as_str()))
                .unwrap_or_else(|| panic!("no bucket {le} in\n{text}"))
                .to_owned()
        };
        assert_eq!(line("0.001"), "1");
        assert_eq!(line("0.0025"), "1");
        assert_eq!(line("0.005"), "2");
        assert_eq!(line("5"), "2");
        assert_eq!(line("+Inf"), "3");
        assert!(
            text.contains(
                "tlsfront_handshake_duration_seconds_count{service=\"edge\",worker=\"0\"} 3"
            ),
            "{text}"
        );
        assert!(
            text.contains(
                "tlsfront_handshake_duration_seconds_sum{service=\"edge\",worker=\"0\"} 9.0038"
            ),
            "{text}"
        );
        assert_eq!(s.handshakes(false), 2);
        assert_eq!(s.handshakes(true), 1);
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }

    #[test]
    fn sets_only_the_registry_holds_are_dropped_when_a_new_one_comes() {
        let registry = Registry::default();
        let kept = registry.add_service("kept", 0);
        drop(registry.add_service("gone", 0));
        let _new = registry.add_service("new", 1);
        let names: Vec<String> = lock(&registry.services)
            .iter()
            .map(|s| s.service.clone())
            .collect();
        assert_eq!(names, ["kept", "new"]);
        drop(kept);
    }
}
