//! Step the offered rate (new connections/s, or requests/s) until the p99 SLO or the error
//! budget breaks; the answer is the highest rate that held both.

use crate::report::{RampReport, RampStep, Report};
use crate::run::{self, Options, Scenario};
use crate::stats::Counts;

#[derive(Clone)]
pub struct Ramp {
    /// A handshake or latency scenario; its rate is set for each step.
    pub scenario: Scenario,
    pub start: f64,
    /// Added each step; when `None`, `factor` multiplies instead.
    pub step: Option<f64>,
    pub factor: f64,
    pub max: f64,
    pub slo_p99_ms: f64,
}

impl Ramp {
    fn unit(&self) -> &'static str {
        match self.scenario {
            Scenario::Handshake(_) => "connections",
            _ => "requests",
        }
    }

    fn at(&self, rate: f64) -> Scenario {
        let mut s = self.scenario.clone();
        match &mut s {
            Scenario::Handshake(h) => h.rate = Some(rate),
            Scenario::Latency(l) => l.rate = rate,
            _ => {}
        }
        s
    }

    fn next(&self, rate: f64) -> f64 {
        match self.step {
            Some(step) => rate + step,
            None => rate * self.factor,
        }
    }
}

/// Run the steps (each with `opts.plan`'s warm-up and duration) and report them.
pub fn run(ramp: &Ramp, opts: &Options) -> anyhow::Result<Report> {
    let mut steps = Vec::new();
    let mut sustainable = None;
    let mut best: Option<Report> = None;
    let mut totals = Counts::default();
    let mut aborted = None;
    let mut rate = ramp.start;
    let stop;
    loop {
        let run = run::run(&ramp.at(rate), opts)?;
        let r = run.report;
        let attempts = (r.counts.ok + r.counts.errors).max(1);
        let error_share = r.counts.errors as f64 / attempts as f64;
        let p99 = r.latency.map_or(f64::INFINITY, |l| l.p99);
        // An open model that fell behind its schedule did not sustain the rate, whatever
        // the latency of what it did send.
        let kept_up = r.rates.ops_per_s >= 0.95 * rate;
        let ok = r.aborted.is_none()
            && p99 <= ramp.slo_p99_ms
            && error_share <= opts.error_budget
            && kept_up;
        steps.push(RampStep {
            offered: rate,
            achieved: r.rates.ops_per_s,
            p99_ms: if p99.is_finite() { p99 } else { 0.0 },
            error_share,
            ok,
        });
        if !opts.quiet {
            eprintln!(
                "ramp step {rate:.0} {}/s: achieved {:.0}/s, p99 {p99:.3} ms, errors {:.2}% → {}",
                ramp.unit(),
                r.rates.ops_per_s,
                error_share * 100.0,
                if ok { "ok" } else { "broken" }
            );
        }
        totals.add(&r.counts);
        if !ok {
            stop = if let Some(a) = &r.aborted {
                aborted = Some(format!("at {rate:.0}/s: {a}"));
                format!("stopped at {rate:.0}/s: {a}")
            } else if p99 > ramp.slo_p99_ms {
                format!("p99 {p99:.3} ms over the SLO at {rate:.0}/s")
            } else if error_share > opts.error_budget {
                format!(
                    "error share {:.2}% over the budget at {rate:.0}/s",
                    error_share * 100.0
                )
            } else {
                format!(
                    "achieved only {:.0}/s of {rate:.0}/s offered",
                    r.rates.ops_per_s
                )
            };
            if best.is_none() {
                best = Some(r);
            }
            break;
        }
        sustainable = Some(rate);
        best = Some(r);
        let next = ramp.next(rate);
        if next > ramp.max || next <= rate {
            stop = format!("reached --max-rate {:.0} with the SLO held", ramp.max);
            break;
        }
        rate = next;
    }
    // The report's figures are those of the highest sustainable step (or the first step);
    // the totals over all steps are in the ramp section.
    let mut report = best.unwrap_or_default();
    report.scenario = "ramp".into();
    report
        .settings
        .insert("ramp_of".into(), ramp.scenario.name().into());
    report.aborted = aborted;
    report.failed = match (&report.aborted, sustainable) {
        (Some(a), _) => Some(format!("ramp interrupted {a}")),
        (None, None) => Some(format!("no step held the SLO: {stop}")),
        (None, Some(_)) => None,
    };
    report.ramp = Some(RampReport {
        unit: ramp.unit().into(),
        slo_p99_ms: ramp.slo_p99_ms,
        error_budget: opts.error_budget,
        steps,
        sustainable,
        stop,
        total: totals,
    });
    Ok(report)
}
