//! Request/response latency at a fixed offered rate (open model, as wrk2 does it).
//!
//! Requests are due on a fixed schedule, whatever the target does. Each connection takes the
//! next due request when it is free; when all are busy, due requests wait, and that wait is
//! part of their latency, which is measured from the intended send time. The time from the
//! actual send (what a closed-loop tool reports) is kept too as `service`, so the report
//! shows how much of the latency was queueing. A request whose connection was free when it
//! fell due is timed from its actual send, so the client's own timer lag is not charged to
//! the target; waits under 2 ms are spun rather than slept, so schedules denser than the
//! timer's 1 ms granularity are kept. A request without a response within the connect
//! timeout is an error; one that fell due but was never sent by the end goes into the
//! histogram with its wait so far (a lower bound) and is counted as `unsent`.

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
    let limit = cfg.target.connect_timeout;
    // Connect first: the schedule starts once this thread's connections are up, so the
    // first requests are not charged with the handshakes. Reconnects later are.
    let mut opening = JoinSet::new();
    for _ in 0..share(cfg.connections, &ctx) {
        let (ctx, dialer) = (ctx.clone(), dialer.clone());
        opening.spawn_local(async move { connect(&ctx, &dialer).await });
    }
    let mut streams = Vec::new();
    while let Some(res) = opening.join_next().await {
        if let Ok(Some(stream)) = res {
            streams.push(stream);
        }
    }
    let schedule = Rc::new(Schedule::starting_at(&ctx, cfg.rate, Instant::now()));
    let mut tasks = JoinSet::new();
    for stream in streams {
        let (ctx, dialer, schedule, size) =
            (ctx.clone(), dialer.clone(), schedule.clone(), cfg.size);
        tasks.spawn_local(async move {
            let mut response = vec![0u8; size];
            let mut stream = Some(stream);
            while !ctx.stopping() {
                let mut s = match stream.take() {
                    Some(s) => s,
                    None => match connect(&ctx, &dialer).await {
                        Some(s) => s,
                        None => break,
                    },
                };
                match requests(&ctx, &schedule, &mut s, &mut response, limit).await {
                    Ok(()) => {
                        net::close(s, CLOSE_LIMIT).await;
                        break;
                    }
                    // The request in flight failed; reconnect and go on with the schedule.
                    Err(f) => ctx.fail(&f),
                }
            }
        });
    }
    ctx.stopped().await;
    // Requests that fell due while every connection was busy and were never sent.
    schedule.record_unclaimed(&ctx);
    while tasks.join_next().await.is_some() {}
}

/// Connect (retrying after failures) until it works or the run stops.
async fn connect(ctx: &Ctx, dialer: &net::Dialer) -> Option<Stream> {
    while !ctx.stopping() {
        match ctx.until_stop(dialer.connect()).await? {
            Ok(c) => {
                ctx.negotiated(&c.negotiated);
                return Some(c.stream);
            }
            Err(f) => {
                ctx.fail(&f);
                tokio::time::sleep(ERROR_BACKOFF).await;
            }
        }
    }
    None
}

/// Serve due requests on one connection until the run stops or the connection fails.
async fn requests(
    ctx: &Ctx,
    schedule: &Schedule,
    s: &mut Stream,
    response: &mut [u8],
    limit: std::time::Duration,
) -> Result<(), Failure> {
    let size = response.len();
    let request = pattern().slice(0, size);
    // When this connection last became free (connected, or finished a request).
    let mut free_since = Instant::now();
    while !ctx.stopping() {
        let due = schedule.claim();
        if !ctx.wait_until(due).await {
            return Ok(());
        }
        let sent_at = Instant::now();
        // A connection that was free when the request fell due only waited for the clock:
        // time it from the send. One that was busy kept the request waiting: from `due`.
        let origin = if free_since <= due { sent_at } else { due };
        let op = ctx.op();
        let exchange = async {
            s.write_all(request)
                .await
                .map_err(|e| Failure::io("write", &e))?;
            s.read_exact(response)
                .await
                .map_err(|e| Failure::io("read", &e))
        };
        let res = tokio::time::timeout(limit, exchange).await;
        op.done();
        match res {
            Ok(Ok(_)) => {}
            Ok(Err(f)) => return Err(f),
            Err(_) => {
                return Err(Failure::new(
                    "request: timed out",
                    format!("no complete response within {limit:?}"),
                ))
            }
        }
        let done = Instant::now();
        free_since = done;
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
    Ok(())
}
