//! The run engine: N pinned worker threads, each with its own current-thread tokio runtime
//! running a scenario, cut into reporting intervals on a common clock.
//!
//! Workers share nothing while running: each records into its own [`Sample`] and, at every
//! interval boundary, sends it to the calling thread, which merges interval k once every
//! worker has sent it. The first interval is the warm-up (not counted) when one is set. At
//! the end (or on abort) workers signal their scenario to stop, give it `grace` to finish
//! politely, then drop whatever is still running.

use std::cell::RefCell;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

use tokio::sync::watch;

use crate::stats::Sample;
use crate::tls::Negotiated;

/// Set (by a SIGINT handler, say) to end the current run early; its results are still
/// reported, with `aborted` saying it was interrupted.
pub fn interrupted() -> &'static Arc<AtomicBool> {
    static FLAG: OnceLock<Arc<AtomicBool>> = OnceLock::new();
    FLAG.get_or_init(|| Arc::new(AtomicBool::new(false)))
}

/// Time shape and placement of a run.
#[derive(Clone, Debug)]
pub struct Plan {
    pub threads: usize,
    /// Pin worker i to `cpus[i % len]`; empty: core i % (number of cores).
    pub cpus: Vec<usize>,
    /// Whether to pin at all (tests that share a machine do not).
    pub pin: bool,
    pub warmup: Duration,
    pub duration: Duration,
    /// Reporting interval (progress lines, hlog entries).
    pub interval: Duration,
    /// How long a stopping scenario may take to close its connections.
    pub grace: Duration,
}

/// What a scenario task sees of its worker thread.
#[derive(Clone)]
pub struct Ctx {
    pub thread: usize,
    pub threads: usize,
    /// When load starts (after the threads are up); the open-model schedules count from it.
    pub start: tokio::time::Instant,
    rec: Rc<RefCell<Sample>>,
    info: Rc<RefCell<ThreadInfo>>,
    stop: watch::Receiver<bool>,
    unfinished: Rc<std::cell::Cell<u64>>,
}

impl Ctx {
    /// Record into this thread's current interval.
    pub fn rec<R>(&self, f: impl FnOnce(&mut Sample) -> R) -> R {
        f(&mut self.rec.borrow_mut())
    }

    /// Count a failure; the first detail per reason is kept for the report.
    pub fn fail(&self, f: &crate::net::Failure) {
        self.rec(|s| s.error(&f.reason));
        let mut info = self.info.borrow_mut();
        if info.first_errors.len() < 8 && !info.first_errors.iter().any(|(r, _)| r == &f.reason) {
            info.first_errors.push((f.reason.clone(), f.detail.clone()));
        }
    }

    pub fn negotiated(&self, n: &Option<Negotiated>) {
        let mut info = self.info.borrow_mut();
        if info.negotiated.is_none() {
            info.negotiated.clone_from(n);
        }
    }

    pub fn stopping(&self) -> bool {
        *self.stop.borrow()
    }

    /// Mark an operation as started; [`Op::done`] when it ends either way. One still open
    /// when the run's grace period is over counts as an error ("unfinished at the end").
    pub fn op(&self) -> Op {
        self.unfinished.set(self.unfinished.get() + 1);
        Op(self.unfinished.clone())
    }

    /// Wait until `due`. Waits longer than the timer's 1 ms granularity sleep (waking up to
    /// ~1 ms late, which the scenarios do not charge to the target); shorter ones are spun,
    /// yielding to the other tasks, so a schedule denser than the timer is kept instead of
    /// bunched. Spinning costs client CPU only for such dense schedules.
    pub async fn wait_until(&self, due: tokio::time::Instant) -> bool {
        loop {
            let now = tokio::time::Instant::now();
            if now >= due {
                return !self.stopping();
            }
            if self.stopping() {
                return false;
            }
            if due - now > Duration::from_millis(1) {
                if self
                    .until_stop(tokio::time::sleep_until(due))
                    .await
                    .is_none()
                {
                    return false;
                }
            } else {
                tokio::task::yield_now().await;
            }
        }
    }

    /// Resolves when the run ends (immediately if it has).
    pub async fn stopped(&self) {
        let mut stop = self.stop.clone();
        let _ = stop.wait_for(|s| *s).await;
    }

    /// Run `fut` unless the run ends first.
    pub async fn until_stop<F: Future>(&self, fut: F) -> Option<F::Output> {
        tokio::select! {
            biased;
            _ = self.stopped() => None,
            out = fut => Some(out),
        }
    }
}

/// An operation in progress (see [`Ctx::op`]).
pub struct Op(Rc<std::cell::Cell<u64>>);

impl Op {
    pub fn done(self) {
        self.0.set(self.0.get() - 1);
    }
}

/// Per-thread facts reported once at the end.
#[derive(Clone, Debug, Default)]
pub struct ThreadInfo {
    pub negotiated: Option<Negotiated>,
    /// (reason, first full message) for the first few distinct reasons.
    pub first_errors: Vec<(String, String)>,
}

/// The scenario body for one worker thread.
pub type Work = Arc<dyn Fn(Ctx) -> Pin<Box<dyn Future<Output = ()>>> + Send + Sync>;

/// One merged reporting interval.
#[derive(Debug)]
pub struct Interval {
    pub index: usize,
    /// Offsets from the start of load.
    pub from: Duration,
    pub to: Duration,
    pub warmup: bool,
    pub sample: Sample,
}

/// What the caller's interval callback decides.
pub enum Next {
    Continue,
    Abort(String),
}

pub struct Outcome {
    /// Measured intervals, in order (warm-up excluded).
    pub intervals: Vec<Interval>,
    /// All measured intervals merged.
    pub total: Sample,
    /// Length of the measured window.
    pub window: Duration,
    /// The warm-up interval (not in `total`).
    pub warmup: Sample,
    /// What happened after the window (closing, draining).
    pub tail: Sample,
    pub threads: Vec<ThreadInfo>,
    pub aborted: Option<String>,
    /// Wall-clock time the load started.
    pub started: std::time::SystemTime,
}

enum Msg {
    Interval {
        index: usize,
        to: Duration,
        sample: Sample,
    },
    Done {
        tail: Sample,
        info: ThreadInfo,
    },
}

/// Run `work` on every worker per `plan`; `on_interval` sees each merged interval in order.
pub fn run(
    plan: &Plan,
    work: Work,
    mut on_interval: impl FnMut(&Interval) -> Next,
) -> anyhow::Result<Outcome> {
    let threads = plan.threads.max(1);
    // A zero or tiny interval would spin; a reporting interval below 10 ms is noise anyway.
    let interval = plan.interval.max(Duration::from_millis(10));
    let cores = core_affinity::get_core_ids().unwrap_or_default();
    let abort = Arc::new(AtomicBool::new(false));
    let (tx, rx) = mpsc::channel::<Msg>();
    // Boundaries from the start of load: [warmup,] then every interval up to the end.
    let mut bounds = Vec::new();
    if !plan.warmup.is_zero() {
        bounds.push(plan.warmup);
    }
    let end = plan.warmup + plan.duration;
    let mut t = plan.warmup;
    while t < end {
        t = (t + interval).min(end);
        bounds.push(t);
    }
    let bounds = Arc::new(bounds);
    // Leave the threads time to come up so that every one starts on the same clock.
    let start = Instant::now() + Duration::from_millis(30);
    let started = std::time::SystemTime::now() + Duration::from_millis(30);
    let mut handles = Vec::with_capacity(threads);
    for i in 0..threads {
        let core = if !plan.pin {
            None
        } else if plan.cpus.is_empty() {
            cores.get(i % cores.len().max(1)).copied()
        } else {
            let cpu = plan.cpus[i % plan.cpus.len()];
            Some(core_affinity::CoreId { id: cpu })
        };
        let (work, tx, abort, bounds) = (work.clone(), tx.clone(), abort.clone(), bounds.clone());
        let grace = plan.grace;
        let handle = thread::Builder::new()
            .name(format!("load-{i}"))
            .spawn(move || {
                if let Some(core) = core {
                    if !core_affinity::set_for_current(core) {
                        eprintln!("warning: cannot pin load worker {i} to CPU {}", core.id);
                    }
                }
                worker(i, threads, start, &bounds, grace, &work, &abort, &tx);
            })?;
        handles.push(handle);
    }
    drop(tx);

    let warm = !plan.warmup.is_zero();
    let mut pending: Vec<(usize, Duration, Sample)> = Vec::new();
    let mut next = 0usize;
    let mut out = Outcome {
        intervals: Vec::new(),
        total: Sample::default(),
        window: Duration::ZERO,
        warmup: Sample::default(),
        tail: Sample::default(),
        threads: Vec::new(),
        aborted: None,
        started,
    };
    for msg in rx {
        match msg {
            Msg::Interval { index, to, sample } => {
                while pending.len() <= index {
                    pending.push((0, Duration::ZERO, Sample::default()));
                }
                let slot = &mut pending[index];
                slot.0 += 1;
                slot.1 = slot.1.max(to);
                slot.2.merge(&sample);
                while next < pending.len() && pending[next].0 == threads {
                    let (_, to, sample) = std::mem::take(&mut pending[next]);
                    let from = if next == 0 {
                        Duration::ZERO
                    } else {
                        bounds[next - 1]
                    };
                    let interval = Interval {
                        index: next,
                        from,
                        to,
                        warmup: warm && next == 0,
                        sample,
                    };
                    next += 1;
                    if let Next::Abort(why) = on_interval(&interval) {
                        if out.aborted.is_none() {
                            out.aborted = Some(why);
                        }
                        abort.store(true, Ordering::Relaxed);
                    }
                    if interval.warmup {
                        out.warmup.merge(&interval.sample);
                    } else {
                        out.total.merge(&interval.sample);
                        out.window += interval.to.saturating_sub(interval.from);
                        out.intervals.push(interval);
                    }
                }
            }
            Msg::Done { tail, info } => {
                out.tail.merge(&tail);
                out.threads.push(info);
            }
        }
    }
    // After an abort, workers may have cut different intervals short: whatever arrived but
    // never completed a slot still belongs to the window.
    let mut leftover = Sample::default();
    let mut last_to = Duration::ZERO;
    for (count, to, sample) in pending.iter().skip(next) {
        if *count > 0 {
            leftover.merge(sample);
            last_to = last_to.max(*to);
        }
    }
    if last_to > Duration::ZERO {
        let from = out.intervals.last().map_or(plan.warmup, |i| i.to);
        out.total.merge(&leftover);
        out.window += last_to.saturating_sub(from);
        out.intervals.push(Interval {
            index: next,
            from,
            to: last_to.max(from),
            warmup: false,
            sample: leftover,
        });
    }
    if interrupted().load(Ordering::Relaxed) && out.aborted.is_none() {
        out.aborted = Some("interrupted".into());
    }
    for h in handles {
        if h.join().is_err() {
            anyhow::bail!("a load worker thread panicked");
        }
    }
    Ok(out)
}

#[allow(clippy::too_many_arguments)]
fn worker(
    thread: usize,
    threads: usize,
    start: Instant,
    bounds: &[Duration],
    grace: Duration,
    work: &Work,
    abort: &AtomicBool,
    tx: &mpsc::Sender<Msg>,
) {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("load worker {thread}: cannot start a runtime: {e}");
            let _ = tx.send(Msg::Done {
                tail: Sample::default(),
                info: ThreadInfo::default(),
            });
            return;
        }
    };
    let local = tokio::task::LocalSet::new();
    let rec = Rc::new(RefCell::new(Sample::default()));
    let info = Rc::new(RefCell::new(ThreadInfo::default()));
    let (stop_tx, stop) = watch::channel(false);
    let start = tokio::time::Instant::from_std(start);
    let unfinished = Rc::new(std::cell::Cell::new(0u64));
    let ctx = Ctx {
        thread,
        threads,
        start,
        rec: rec.clone(),
        info: info.clone(),
        stop,
        unfinished: unfinished.clone(),
    };
    local.block_on(&rt, async {
        tokio::time::sleep_until(start).await;
        let task = tokio::task::spawn_local((work)(ctx));
        'bounds: for (index, bound) in bounds.iter().enumerate() {
            let due = start + *bound;
            loop {
                // Wake at least every 50 ms to notice an abort.
                let now = tokio::time::Instant::now();
                if now >= due {
                    break;
                }
                tokio::time::sleep_until(due.min(now + Duration::from_millis(50))).await;
                if abort.load(Ordering::Relaxed) || interrupted().load(Ordering::Relaxed) {
                    let sample = std::mem::take(&mut *rec.borrow_mut());
                    let to = start.elapsed();
                    let _ = tx.send(Msg::Interval { index, to, sample });
                    break 'bounds;
                }
            }
            let sample = std::mem::take(&mut *rec.borrow_mut());
            let _ = tx.send(Msg::Interval {
                index,
                to: *bound,
                sample,
            });
        }
        let _ = stop_tx.send(true);
        let _ = tokio::time::timeout(grace, task).await;
    });
    // Dropping the tasks drops their `Op`s without `done`: what is left is unfinished.
    drop(local);
    let mut tail = std::mem::take(&mut *rec.borrow_mut());
    for _ in 0..unfinished.get() {
        tail.error("unfinished at the end of the run");
    }
    let info = info.borrow().clone();
    let _ = tx.send(Msg::Done { tail, info });
}

/// An open-model schedule: the k-th operation of this thread is due at
/// `start + (k + phase) × period`, where the threads' phases interleave.
pub struct Schedule {
    start: tokio::time::Instant,
    period: Duration,
    phase: f64,
    next: std::cell::Cell<u64>,
}

impl Schedule {
    /// `rate` per second over all `threads`; this is thread `thread`'s share, from the
    /// start of the run.
    pub fn new(ctx: &Ctx, rate: f64) -> Self {
        Self::starting_at(ctx, rate, ctx.start)
    }

    /// The same, counted from `start`.
    pub fn starting_at(ctx: &Ctx, rate: f64, start: tokio::time::Instant) -> Self {
        let per_thread = rate / ctx.threads as f64;
        Self {
            start,
            period: Duration::from_secs_f64(1.0 / per_thread.max(1e-9)),
            phase: ctx.thread as f64 / ctx.threads as f64,
            next: std::cell::Cell::new(0),
        }
    }

    /// Claim the next slot: its intended start time.
    pub fn claim(&self) -> tokio::time::Instant {
        let k = self.next.get();
        self.next.set(k + 1);
        self.start + self.period.mul_f64(k as f64 + self.phase)
    }

    /// Records the slots that fell due by now but were never claimed (the target kept
    /// every connection or slot busy) as unsent, their wait so far a lower bound of their
    /// latency. Called when the run stops.
    pub fn record_unclaimed(&self, ctx: &Ctx) {
        let end = tokio::time::Instant::now();
        let elapsed = end.saturating_duration_since(self.start).as_secs_f64();
        let due = (elapsed / self.period.as_secs_f64() - self.phase).floor() + 1.0;
        ctx.rec(|r| {
            for k in self.next.get()..due.max(0.0) as u64 {
                let at = self.start + self.period.mul_f64(k as f64 + self.phase);
                let waited = end.saturating_duration_since(at).as_nanos();
                r.unsent(u64::try_from(waited).unwrap_or(u64::MAX));
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(duration: Duration) -> Plan {
        Plan {
            threads: 2,
            cpus: Vec::new(),
            pin: false,
            warmup: Duration::ZERO,
            duration,
            interval: Duration::from_millis(100),
            grace: Duration::from_secs(1),
        }
    }

    #[test]
    fn slots_that_fell_due_but_were_never_claimed_are_recorded_as_unsent() {
        // 200/s over two threads for 0.5 s: about 100 slots, of which each thread claims
        // its first three and then blocks until the end.
        let work: Work = Arc::new(|ctx: Ctx| {
            Box::pin(async move {
                let schedule = Schedule::new(&ctx, 200.0);
                for _ in 0..3 {
                    schedule.claim();
                }
                ctx.stopped().await;
                schedule.record_unclaimed(&ctx);
            })
        });
        let out = run(&plan(Duration::from_millis(500)), work, |_| Next::Continue).unwrap();
        let unsent = out.tail.counts.unsent;
        assert!((90..=104).contains(&unsent), "{unsent}");
        assert_eq!(
            out.tail.latency.len(),
            unsent,
            "each one has its wait recorded"
        );
        // The oldest waited about the whole run.
        assert!(
            out.tail.latency.max() >= 450_000_000,
            "{}",
            out.tail.latency.max()
        );
    }

    #[test]
    fn intervals_merge_every_threads_sample_and_the_window_adds_up() {
        let work: Work = Arc::new(|ctx: Ctx| {
            Box::pin(async move {
                while !ctx.stopping() {
                    ctx.rec(|r| r.counts.ok += 1);
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            })
        });
        let mut seen = 0;
        let out = run(&plan(Duration::from_millis(300)), work, |i| {
            seen += 1;
            assert!(!i.warmup);
            Next::Continue
        })
        .unwrap();
        assert_eq!(seen, 3);
        assert_eq!(out.intervals.len(), 3);
        assert_eq!(out.window, Duration::from_millis(300));
        let sum: u64 = out.intervals.iter().map(|i| i.sample.counts.ok).sum();
        assert_eq!(sum, out.total.counts.ok);
        // Two threads, one op per ~10 ms each, for 0.3 s.
        assert!(
            (40..=62).contains(&out.total.counts.ok),
            "{}",
            out.total.counts.ok
        );
    }
}
