//! New connections with a handshake each: closed loop (`concurrency` in flight, as fast as
//! they complete) or open model (`rate` per second, latency from the intended start).

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
    let dialer = Rc::new(cfg.target.dialer(cfg.resume));
    let slots = share(cfg.concurrency, &ctx).max(1);
    let mut tasks = JoinSet::new();
    match cfg.rate {
        None => {
            for _ in 0..slots {
                let (ctx, dialer) = (ctx.clone(), dialer.clone());
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
            let slots = Arc::new(Semaphore::new(slots));
            loop {
                let due = schedule.claim();
                let early = Instant::now() < due;
                if early
                    && ctx
                        .until_stop(tokio::time::sleep_until(due))
                        .await
                        .is_none()
                {
                    break;
                }
                // Waiting for a free slot, or reaching a slot after it fell due, counts in
                // the latency (measured from `due`); only the timer's own lag does not.
                let (permit, waited) = match slots.clone().try_acquire_owned() {
                    Ok(p) => (p, false),
                    Err(_) => match ctx.until_stop(slots.clone().acquire_owned()).await {
                        Some(Ok(p)) => (p, true),
                        _ => break,
                    },
                };
                let origin = if early && !waited {
                    Instant::now()
                } else {
                    due
                };
                let (ctx, dialer) = (ctx.clone(), dialer.clone());
                tasks.spawn_local(async move {
                    one(&ctx, &dialer, origin).await;
                    drop(permit);
                });
                // Reap finished tasks so the set does not grow with the run.
                while tasks.try_join_next().is_some() {}
            }
        }
    }
    while tasks.join_next().await.is_some() {}
}

/// One connection: handshake, then a polite close. Returns whether it succeeded.
async fn one(ctx: &Ctx, dialer: &Dialer, due: Instant) -> bool {
    let began = Instant::now();
    match dialer.connect().await {
        Ok(conn) => {
            let done = Instant::now();
            ctx.rec(|s| {
                s.counts.ok += 1;
                s.counts.resumed += u64::from(conn.resumed);
                s.record(nanos(done - due), nanos(done - began));
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
