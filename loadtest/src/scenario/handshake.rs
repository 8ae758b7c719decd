//! New connections with a handshake each: closed loop (`concurrency` in flight, as fast as
//! they complete) or open model (`rate` per second, latency from the intended start).

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;

use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio::time::Instant;

use super::{nanos, share, Target, CLOSE_LIMIT, ERROR_BACKOFF};
use crate::engine::{Ctx, Schedule, Work};
use crate::net::{self, Dialer};

#[derive(Clone)]
pub struct Handshake {
    pub target: Target,
    /// Connections in flight (closed loop), or the cap on them (open model).
    pub concurrency: usize,
    /// Open model: new connections per second over all threads.
    pub rate: Option<f64>,
    /// Keep session tickets and resume with them.
    pub resume: bool,
}

pub fn work(cfg: Handshake) -> Work {
    let cfg = Arc::new(cfg);
    Arc::new(move |ctx| Box::pin(run(ctx, cfg.clone())))
}

async fn run(ctx: Ctx, cfg: Arc<Handshake>) {
    let slots = share(cfg.concurrency, &ctx);
    // With --resume every slot has its own session cache, as separate clients would: one
    // shared cache holds only 8 tickets per server, which a burst of completions overflows.
    let shared = Rc::new(cfg.target.dialer(cfg.resume));
    let dialer_for_slot = || {
        if cfg.resume {
            Rc::new(cfg.target.dialer(true))
        } else {
            shared.clone()
        }
    };
    let mut tasks = JoinSet::new();
    match cfg.rate {
        None => {
            for _ in 0..slots {
                let (ctx, dialer) = (ctx.clone(), dialer_for_slot());
                tasks.spawn_local(async move {
                    while !ctx.stopping() {
                        if !one(&ctx, &dialer, Instant::now()).await {
                            tokio::time::sleep(ERROR_BACKOFF).await;
                        }
                    }
                });
            }
        }
        Some(rate) => {
            let schedule = Schedule::new(&ctx, rate);
            // A permit guarantees a free dialer in the pool.
            let pool: Rc<RefCell<Vec<Rc<Dialer>>>> = Rc::new(RefCell::new(
                (0..slots).map(|_| dialer_for_slot()).collect(),
            ));
            let slots = Arc::new(Semaphore::new(slots));
            let mut free_since = Instant::now();
            while !ctx.stopping() {
                let due = schedule.claim();
                if !ctx.wait_until(due).await {
                    break;
                }
                // A connection that could start when due is timed from its start (the
                // client's clock lag is not the target's); one that waited for a free slot
                // (the cap on connections in flight) is timed from `due`.
                let (permit, waited) = match slots.clone().try_acquire_owned() {
                    Ok(p) => (p, false),
                    Err(_) => match ctx.until_stop(slots.clone().acquire_owned()).await {
                        Some(Ok(p)) => (p, true),
                        _ => break,
                    },
                };
                let now = Instant::now();
                let origin = if !waited && free_since <= due {
                    now
                } else {
                    due
                };
                free_since = now;
                let Some(dialer) = pool.borrow_mut().pop() else {
                    break;
                };
                let (ctx, pool) = (ctx.clone(), pool.clone());
                tasks.spawn_local(async move {
                    one(&ctx, &dialer, origin).await;
                    pool.borrow_mut().push(dialer);
                    drop(permit);
                });
                // Reap finished tasks so the set does not grow with the run.
                while tasks.try_join_next().is_some() {}
            }
            // Connections due but never started (the --concurrency cap was reached).
            schedule.record_unclaimed(&ctx);
        }
    }
    while tasks.join_next().await.is_some() {}
}

/// One connection: handshake, then a polite close. Returns whether it succeeded.
async fn one(ctx: &Ctx, dialer: &Dialer, origin: Instant) -> bool {
    let began = Instant::now();
    let op = ctx.op();
    let res = dialer.connect().await;
    op.done();
    match res {
        Ok(conn) => {
            let done = Instant::now();
            ctx.rec(|s| {
                s.counts.ok += 1;
                s.counts.resumed += u64::from(conn.resumed);
                s.record(nanos(done - origin), nanos(done - began));
            });
            ctx.negotiated(&conn.negotiated);
            net::close(conn.stream, CLOSE_LIMIT).await;
            true
        }
        Err(f) => {
            ctx.fail(&f);
            false
        }
    }
}
