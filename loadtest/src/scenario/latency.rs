//! Request/response latency at a fixed offered rate (open model, as wrk2 does it).
//!
//! Requests are due on a fixed schedule, whatever the target does. Each connection takes the
//! next due request when it is free; when all are busy, due requests wait, and that wait is
//! part of their latency, which is measured from the intended send time. The time from the
//! actual send (what a closed-loop tool reports) is kept too as `service`, so the report
//! shows how much of the latency was queueing. A request whose connection was free when it
//! fell due is timed from its actual send, so the client timer's lag (tokio's timer has
//! 1 ms granularity) is not charged to the target.

use std::rc::Rc;
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::task::JoinSet;
use tokio::time::Instant;

use super::{nanos, share, Target, CLOSE_LIMIT, ERROR_BACKOFF};
use crate::engine::{Ctx, Schedule, Work};
use crate::net::{self, Failure, Stream};
use crate::pattern::pattern;

#[derive(Clone)]
pub struct Latency {
    pub target: Target,
    pub connections: usize,
    /// Requests per second over all threads.
    pub rate: f64,
    /// Request size; the target (an echo) answers with as many bytes.
    pub size: usize,
}

pub fn work(cfg: Latency) -> Work {
    let cfg = Arc::new(cfg);
    Arc::new(move |ctx| Box::pin(run(ctx, cfg.clone())))
}

async fn run(ctx: Ctx, cfg: Arc<Latency>) {
    let dialer = Rc::new(cfg.target.dialer(true));
    let schedule = Rc::new(Schedule::new(&ctx, cfg.rate));
    let mut tasks = JoinSet::new();
    for _ in 0..share(cfg.connections, &ctx).max(1) {
        let (ctx, dialer, schedule, size) =
            (ctx.clone(), dialer.clone(), schedule.clone(), cfg.size);
        tasks.spawn_local(async move {
            let mut response = vec![0u8; size];
            while !ctx.stopping() {
                let conn = match ctx.until_stop(dialer.connect()).await {
                    None => break,
                    Some(Ok(c)) => c,
                    Some(Err(f)) => {
                        ctx.fail(&f);
                        tokio::time::sleep(ERROR_BACKOFF).await;
                        continue;
                    }
                };
                ctx.negotiated(&conn.negotiated);
                let mut stream = conn.stream;
                match requests(&ctx, &schedule, &mut stream, &mut response).await {
                    Ok(()) => {
                        net::close(stream, CLOSE_LIMIT).await;
                        break;
                    }
                    // The request in flight failed; reconnect and go on with the schedule.
                    Err(f) => ctx.fail(&f),
                }
            }
        });
    }
    while tasks.join_next().await.is_some() {}
}

/// Serve due requests on one connection until the run stops or the connection fails.
async fn requests(
    ctx: &Ctx,
    schedule: &Schedule,
    s: &mut Stream,
    response: &mut [u8],
) -> Result<(), Failure> {
    let size = response.len();
    let request = pattern().slice(0, size);
    loop {
        let due = schedule.claim();
        let early = Instant::now() < due;
        if early
            && ctx
                .until_stop(tokio::time::sleep_until(due))
                .await
                .is_none()
        {
            return Ok(());
        }
        let sent_at = Instant::now();
        // A free connection waited only for the timer (which wakes up to ~1 ms late): that
        // lag is the client's, so the clock starts at the send. A request claimed after it
        // was due waited for a busy connection: its clock started when it was due.
        let origin = if early { sent_at } else { due };
        s.write_all(request)
            .await
            .map_err(|e| Failure::io("write", &e))?;
        s.read_exact(response)
            .await
            .map_err(|e| Failure::io("read", &e))?;
        let done = Instant::now();
        if response != request {
            return Err(Failure::new(
                "data: mismatch",
                "the response is not the echo of the request",
            ));
        }
        ctx.rec(|r| {
            r.counts.ok += 1;
            r.counts.sent += size as u64;
            r.counts.received += size as u64;
            r.record(nanos(done - origin), nanos(done - sent_at));
        });
    }
}
