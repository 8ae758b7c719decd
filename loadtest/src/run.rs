//! One run of a scenario, start to report: the engine, the live progress, the early abort
//! when nothing succeeds, /proc samples of the target, and the [`Report`].

use std::collections::BTreeMap;

use crate::engine::{self, Interval, Next, Outcome, Plan, Work};
use crate::procfs::{Proc, ProcSample};
use crate::progress::Progress;
use crate::report::{HoldReport, IntervalRow, Rates, Report};
use crate::scenario::handshake::Handshake;
use crate::scenario::hold::Hold;
use crate::scenario::latency::Latency;
use crate::scenario::throughput::Throughput;
use crate::scenario::{self, Target};
use crate::stats::{Counts, Percentiles};

#[derive(Clone)]
pub enum Scenario {
    Handshake(Handshake),
    Throughput(Throughput),
    Latency(Latency),
    Hold(Hold),
}

impl Scenario {
    pub fn name(&self) -> &'static str {
        match self {
            Scenario::Handshake(_) => "handshake",
            Scenario::Throughput(_) => "throughput",
            Scenario::Latency(_) => "latency",
            Scenario::Hold(_) => "hold",
        }
    }

    fn target(&self) -> &Target {
        match self {
            Scenario::Handshake(s) => &s.target,
            Scenario::Throughput(s) => &s.target,
            Scenario::Latency(s) => &s.target,
            Scenario::Hold(s) => &s.target,
        }
    }

    /// How many worker threads can have something to do (one stream, connection or
    /// in-flight slot each at least).
    fn parallelism(&self) -> usize {
        match self {
            Scenario::Handshake(s) => s.concurrency,
            Scenario::Throughput(s) => s.streams,
            Scenario::Latency(s) => s.connections,
            Scenario::Hold(s) => s.connections.min(s.concurrency),
        }
        .max(1)
    }

    fn work(&self) -> Work {
        match self {
            Scenario::Handshake(s) => scenario::handshake::work(s.clone()),
            Scenario::Throughput(s) => scenario::throughput::work(s.clone()),
            Scenario::Latency(s) => scenario::latency::work(s.clone()),
            Scenario::Hold(s) => scenario::hold::work(s.clone()),
        }
    }

    fn settings(&self) -> BTreeMap<String, String> {
        let mut m = BTreeMap::new();
        let mut set = |k: &str, v: String| {
            m.insert(k.to_string(), v);
        };
        match self {
            Scenario::Handshake(s) => {
                set("concurrency", s.concurrency.to_string());
                if let Some(r) = s.rate {
                    set("rate", format!("{r}"));
                }
                set("resume", s.resume.to_string());
            }
            Scenario::Throughput(s) => {
                set("streams", s.streams.to_string());
                set("direction", format!("{:?}", s.direction).to_lowercase());
            }
            Scenario::Latency(s) => {
                set("connections", s.connections.to_string());
                set("rate", format!("{}", s.rate));
                set("size", s.size.to_string());
            }
            Scenario::Hold(s) => {
                set("connections", s.connections.to_string());
                set("concurrency", s.concurrency.to_string());
                if let Some(r) = s.rate {
                    set("rate", format!("{r}"));
                }
            }
        }
        m
    }
}

#[derive(Clone)]
pub struct Options {
    pub plan: Plan,
    pub quiet: bool,
    /// The target's process, for its CPU (and memory in hold runs).
    pub pid: Option<u32>,
    /// Largest share of failed operations the run may have and still pass.
    pub error_budget: f64,
    /// Label for the transport line: "TLS, verified against ca.pem" and so on.
    pub transport: String,
}

pub struct Run {
    pub report: Report,
    pub outcome: Outcome,
}

pub fn run(scenario: &Scenario, opts: &Options) -> anyhow::Result<Run> {
    let mut opts = opts.clone();
    opts.plan.threads = opts.plan.threads.clamp(1, scenario.parallelism());
    let opts = &opts;
    let target_proc = opts.pid.map(|p| Proc(Some(p)));
    if let Some(p) = &target_proc {
        p.cpu_seconds()
            .map_err(|e| anyhow::anyhow!("--pid: {e:#}"))?;
    }
    let me = Proc(None);
    let hold_wanted = match scenario {
        Scenario::Hold(h) => Some(h.connections as u64),
        _ => None,
    };
    let hold_before = match (&target_proc, hold_wanted) {
        (Some(p), Some(_)) => Some(p.sample()?),
        _ => None,
    };
    let cpu = |p: &Proc| p.cpu_seconds().ok();
    // CPU at the start of the measured window and at the latest interval end.
    let mut my_cpu = (cpu(&me), None);
    let mut target_cpu = (target_proc.as_ref().and_then(cpu), None);
    let mut progress = Progress::new(opts.quiet);
    let (mut ok, mut errors, mut lost) = (0u64, 0u64, 0u64);
    let mut hold_after: Option<ProcSample> = None;
    let window_end = opts.plan.warmup + opts.plan.duration;
    let mut held = 0u64;
    let outcome = engine::run(&opts.plan, scenario.work(), |i: &Interval| {
        progress.interval(scenario.name(), i);
        if i.warmup {
            my_cpu.0 = cpu(&me);
            target_cpu.0 = target_proc.as_ref().and_then(cpu);
        } else {
            my_cpu.1 = cpu(&me);
            target_cpu.1 = target_proc.as_ref().and_then(cpu);
        }
        ok += i.sample.counts.ok;
        errors += i.sample.counts.errors;
        lost += i.sample.counts.lost;
        let live = ok.saturating_sub(lost);
        if let Some(wanted) = hold_wanted {
            // Hold: sample the target while every connection is open and still held; the
            // last such sample is the report's. Not at the window's end: the workers start
            // closing their connections as soon as they report the last interval, so the
            // target may already have let some go when this runs.
            if live >= wanted && i.to < window_end {
                held = live;
                if let Some(p) = &target_proc {
                    hold_after = p.sample().ok().or(hold_after);
                }
            } else if hold_after.is_none() {
                held = held.max(live);
            }
        }
        if ok == 0 && errors > 0 {
            let reason = most_common(&i.sample.errors);
            return Next::Abort(format!(
                "nothing succeeded in the first {:.1} s ({errors} failures, mostly {reason})",
                i.to.as_secs_f64()
            ));
        }
        Next::Continue
    })?;
    progress.finish();
    let mut report = build(scenario, opts, &outcome);
    report.client_cpu_s = delta(my_cpu).unwrap_or_default();
    report.target_cpu_s = delta(target_cpu);
    if let Some(t) = report.target_cpu_s.filter(|t| *t > 0.0) {
        let c = &report.counts;
        report.rates.ops_per_target_cpu_s = Some(c.ok as f64 / t);
        report.rates.mb_per_target_cpu_s = Some((c.sent + c.received) as f64 / 1e6 / t);
    }
    if let Some(wanted) = hold_wanted {
        report.hold = Some(hold_report(wanted, held, hold_before, hold_after, opts.pid));
    }
    report.failed = verdict(&report, opts.error_budget);
    Ok(Run { report, outcome })
}

fn delta((a, b): (Option<f64>, Option<f64>)) -> Option<f64> {
    Some(b? - a?)
}

fn most_common(errors: &BTreeMap<String, u64>) -> String {
    errors
        .iter()
        .max_by_key(|(_, n)| **n)
        .map(|(r, _)| r.clone())
        .unwrap_or_else(|| "unknown".into())
}

fn build(scenario: &Scenario, opts: &Options, o: &Outcome) -> Report {
    let secs = o.window.as_secs_f64().max(1e-9);
    let c: Counts = o.total.counts;
    let warmup = opts.plan.warmup;
    let latency = Percentiles::of(&o.total.latency);
    let mut error_details = BTreeMap::new();
    for t in &o.threads {
        for (reason, detail) in &t.first_errors {
            error_details
                .entry(reason.clone())
                .or_insert_with(|| detail.clone());
        }
    }
    // Errors while stopping (a close that timed out) still count against the run.
    let mut errors = o.total.errors.clone();
    for (r, n) in &o.tail.errors {
        *errors.entry(r.clone()).or_default() += n;
    }
    let mut counts = c;
    counts.errors += o.tail.counts.errors;
    if matches!(scenario, Scenario::Throughput(_) | Scenario::Hold(_)) {
        // Streams and held connections opened during the warm-up are still the run's, and
        // so are their failures.
        counts.ok += o.warmup.counts.ok;
        counts.errors += o.warmup.counts.errors;
        counts.lost += o.warmup.counts.lost;
        for (r, n) in &o.warmup.errors {
            *errors.entry(r.clone()).or_default() += n;
        }
    }
    Report {
        scenario: scenario.name().into(),
        target: scenario.target().addr.to_string(),
        transport: opts.transport.clone(),
        negotiated: o.threads.iter().find_map(|t| t.negotiated.clone()),
        settings: scenario.settings(),
        threads: opts.plan.threads,
        warmup_s: warmup.as_secs_f64(),
        window_s: o.window.as_secs_f64(),
        counts,
        rates: Rates {
            ops_per_s: c.ok as f64 / secs,
            resumed_share: c.resumed as f64 / c.ok.max(1) as f64,
            sent_mb_s: c.sent as f64 / 1e6 / secs,
            received_mb_s: c.received as f64 / 1e6 / secs,
            ops_per_target_cpu_s: None,
            mb_per_target_cpu_s: None,
        },
        latency: (latency.count > 0).then_some(latency),
        service: (latency.count > 0).then(|| Percentiles::of(&o.total.service)),
        errors,
        error_details,
        client_cpu_s: 0.0,
        target_cpu_s: None,
        hold: None,
        ramp: None,
        intervals: o
            .intervals
            .iter()
            .map(|i| IntervalRow {
                t_s: i.to.saturating_sub(warmup).as_secs_f64(),
                ops: i.sample.counts.ok,
                errors: i.sample.counts.errors,
                sent: i.sample.counts.sent,
                received: i.sample.counts.received,
                p99_ms: Percentiles::of(&i.sample.latency).p99,
            })
            .collect(),
        aborted: o.aborted.clone(),
        failed: None,
    }
}

fn hold_report(
    wanted: u64,
    open: u64,
    before: Option<ProcSample>,
    after: Option<ProcSample>,
    pid: Option<u32>,
) -> HoldReport {
    let mut h = HoldReport {
        requested: wanted as usize,
        open,
        before,
        after,
        ..Default::default()
    };
    match (before, after, pid) {
        (Some(b), Some(a), _) => {
            let n = open.max(1) as f64;
            h.rss_bytes_per_conn = Some((a.rss_bytes as f64 - b.rss_bytes as f64) / n);
            h.fds_per_conn = Some((a.fds as f64 - b.fds as f64) / n);
        }
        (_, _, None) => {
            h.note = Some("no --pid given: the target's memory was not measured".into())
        }
        _ => {
            h.note = Some(format!(
                "at most {open} of {wanted} connections were held at once at an interval \
                 end before the last: nothing measured (raise --duration, or see the errors)"
            ))
        }
    }
    h
}

/// Why the run failed, if it did.
pub fn verdict(r: &Report, budget: f64) -> Option<String> {
    if let Some(a) = &r.aborted {
        return Some(format!("aborted: {a}"));
    }
    let attempts = r.counts.ok + r.counts.errors;
    if attempts == 0 && r.counts.sent + r.counts.received == 0 {
        return Some("nothing completed in the window".into());
    }
    if r.scenario == "throughput" && r.counts.sent + r.counts.received == 0 {
        return Some("no bytes moved in the window".into());
    }
    let share = r.counts.errors as f64 / attempts.max(1) as f64;
    if r.counts.errors > 0 && share > budget {
        return Some(format!(
            "{} errors ({:.3}% of {attempts}) exceed the error budget of {:.3}%",
            r.counts.errors,
            share * 100.0,
            budget * 100.0
        ));
    }
    None
}
