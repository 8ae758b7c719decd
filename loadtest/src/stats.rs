//! What a worker thread records, per reporting interval: counts, latency histograms and
//! error reasons. Each thread owns its sample (no sharing); the engine merges them.

use std::collections::BTreeMap;

use hdrhistogram::Histogram;
use serde::Serialize;

/// Histogram range: 1 µs to 100 s, 3 significant digits; values in nanoseconds (the unit
/// HdrHistogram's log tools assume by default).
pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1_000, 100_000_000_000, 3).expect("static bounds are valid")
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct Counts {
    /// Completed operations: handshakes, requests, connections opened.
    pub ok: u64,
    /// Of `ok`, handshakes that resumed a session.
    pub resumed: u64,
    pub errors: u64,
    /// Held connections the target closed (hold scenario).
    #[serde(default)]
    pub lost: u64,
    /// Open model: operations that fell due but had not started when the run ended (every
    /// connection or slot busy). Their wait so far is in the latency histogram as a lower
    /// bound; they are not in `ok`.
    #[serde(default)]
    pub unsent: u64,
    /// Application bytes written and read.
    pub sent: u64,
    pub received: u64,
}

impl Counts {
    pub fn add(&mut self, o: &Counts) {
        self.ok += o.ok;
        self.resumed += o.resumed;
        self.errors += o.errors;
        self.lost += o.lost;
        self.unsent += o.unsent;
        self.sent += o.sent;
        self.received += o.received;
    }
}

#[derive(Clone, Debug)]
pub struct Sample {
    pub counts: Counts,
    /// Operation latency (open model: from the intended start).
    pub latency: Histogram<u64>,
    /// Time from the actual start (what a closed-loop tool would report).
    pub service: Histogram<u64>,
    /// Error reason → count.
    pub errors: BTreeMap<String, u64>,
}

impl Default for Sample {
    fn default() -> Self {
        Self {
            counts: Counts::default(),
            latency: histogram(),
            service: histogram(),
            errors: BTreeMap::new(),
        }
    }
}

impl Sample {
    pub fn merge(&mut self, o: &Sample) {
        self.counts.add(&o.counts);
        // Same bounds on both sides, and values are clamped when recorded: cannot fail.
        let _ = self.latency.add(&o.latency);
        let _ = self.service.add(&o.service);
        for (reason, n) in &o.errors {
            *self.errors.entry(reason.clone()).or_default() += n;
        }
    }

    /// Record one operation's latency and service time, in nanoseconds.
    pub fn record(&mut self, latency_ns: u64, service_ns: u64) {
        self.latency.saturating_record(latency_ns.max(1_000));
        self.service.saturating_record(service_ns.max(1_000));
    }

    /// An operation that never started: only its wait so far, as a latency lower bound.
    pub fn unsent(&mut self, waited_ns: u64) {
        self.counts.unsent += 1;
        self.latency.saturating_record(waited_ns.max(1_000));
    }

    pub fn error(&mut self, reason: &str) {
        self.counts.errors += 1;
        match self.errors.get_mut(reason) {
            Some(n) => *n += 1,
            None => {
                self.errors.insert(reason.to_string(), 1);
            }
        }
    }
}

/// The usual percentiles of a histogram, in milliseconds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, serde::Deserialize)]
pub struct Percentiles {
    pub count: u64,
    pub mean: f64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
}

impl Percentiles {
    pub fn of(h: &Histogram<u64>) -> Self {
        let ms = |ns: u64| ns as f64 / 1e6;
        if h.is_empty() {
            return Self::default();
        }
        Self {
            count: h.len(),
            mean: h.mean() / 1e6,
            p50: ms(h.value_at_quantile(0.50)),
            p90: ms(h.value_at_quantile(0.90)),
            p99: ms(h.value_at_quantile(0.99)),
            p999: ms(h.value_at_quantile(0.999)),
            max: ms(h.max()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merge_adds_counts_histograms_and_reasons() {
        let mut a = Sample::default();
        let mut b = Sample::default();
        for v in 1..=90 {
            a.record(v * 1_000_000, 1_000_000);
        }
        for v in 91..=100 {
            b.record(v * 1_000_000, 1_000_000);
        }
        a.counts.ok = 90;
        b.counts.ok = 10;
        a.error("connect: refused");
        b.error("connect: refused");
        b.error("tls: alert");
        a.merge(&b);
        assert_eq!(a.counts.ok, 100);
        assert_eq!(a.counts.errors, 3);
        assert_eq!(a.errors["connect: refused"], 2);
        let p = Percentiles::of(&a.latency);
        assert_eq!(p.count, 100);
        assert!((p.p50 - 50.0).abs() < 0.1, "{p:?}");
        assert!((p.p99 - 99.0).abs() < 0.1, "{p:?}");
        assert!((p.max - 100.0).abs() < 0.1, "{p:?}");
    }

    #[test]
    fn out_of_range_values_are_clamped_not_lost() {
        let mut s = Sample::default();
        s.record(0, u64::MAX);
        assert_eq!(s.latency.len(), 1);
        assert_eq!(s.service.len(), 1);
    }
}
