//! Many idle TLS connections: open `connections` (at most `concurrency` handshakes in flight,
//! optionally at `rate` per second), then hold them without traffic until the run ends.
//! A connection the target closes while held counts as an error.

use std::rc::Rc;
use std::sync::Arc;

use tokio::io::AsyncReadExt;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use super::{share, Target};
use crate::engine::{Ctx, Schedule, Work};
use crate::net::Failure;

#[derive(Clone)]
pub struct Hold {
    pub target: Target,
    pub connections: usize,
    /// Handshakes in flight while opening.
    pub concurrency: usize,
    /// Opening rate per second over all threads (default: as fast as `concurrency` allows).
    pub rate: Option<f64>,
}

pub fn work(cfg: Hold) -> Work {
    let cfg = Arc::new(cfg);
    Arc::new(move |ctx| Box::pin(run(ctx, cfg.clone())))
}

async fn run(ctx: Ctx, cfg: Arc<Hold>) {
    let dialer = Rc::new(cfg.target.dialer(false));
    let opening = Arc::new(Semaphore::new(share(cfg.concurrency, &ctx).max(1)));
    let schedule = cfg.rate.map(|r| Schedule::new(&ctx, r));
    let mut tasks = JoinSet::new();
    for _ in 0..share(cfg.connections, &ctx) {
        if let Some(s) = &schedule {
            if !ctx.wait_until(s.claim()).await {
                break;
            }
        }
        let Some(Ok(permit)) = ctx.until_stop(opening.clone().acquire_owned()).await else {
            break;
        };
        let (ctx, dialer) = (ctx.clone(), dialer.clone());
        tasks.spawn_local(async move {
            let op = ctx.op();
            let conn = dialer.connect().await;
            op.done();
            drop(permit);
            let mut conn = match conn {
                Ok(c) => c,
                Err(f) => return ctx.fail(&f),
            };
            ctx.rec(|s| s.counts.ok += 1);
            ctx.negotiated(&conn.negotiated);
            // Idle: the only read is the one that notices the target closing on us.
            let mut byte = [0u8; 1];
            if let Some(res) = ctx.until_stop(conn.stream.read(&mut byte)).await {
                // No longer held: the report's live count and memory per connection use it.
                ctx.rec(|s| s.counts.lost += 1);
                let f = match res {
                    Ok(0) => {
                        Failure::new("hold: closed by peer", "target closed an idle connection")
                    }
                    Ok(_) => Failure::new(
                        "hold: unexpected data",
                        "target sent data on an idle connection",
                    ),
                    Err(e) => Failure::io("hold", &e),
                };
                ctx.fail(&f);
            }
        });
    }
    while tasks.join_next().await.is_some() {}
}
