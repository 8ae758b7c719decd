//! Bulk transfer over long-lived streams: send to a sink, receive from a source, or both
//! through an echo. Every byte read is checked against the shared pattern; after the window,
//! senders close politely and wait for the peer's end so nothing in flight goes unnoticed.

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::task::JoinSet;

use super::{share, Target, CLOSE_LIMIT};
use crate::engine::{Ctx, Work};
use crate::net::{Failure, Stream};
use crate::pattern::{pattern, CHUNK};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    /// Write the pattern (pair with a sink backend).
    Send,
    /// Read and check the pattern (pair with a source backend).
    Receive,
    /// Write and read at once, checking the echo (pair with an echo backend).
    Both,
}

#[derive(Clone)]
pub struct Throughput {
    pub target: Target,
    pub streams: usize,
    pub direction: Direction,
}

pub fn work(cfg: Throughput) -> Work {
    let cfg = Arc::new(cfg);
    Arc::new(move |ctx| Box::pin(run(ctx, cfg.clone())))
}

async fn run(ctx: Ctx, cfg: Arc<Throughput>) {
    let dialer = cfg.target.dialer(false);
    let mut tasks = JoinSet::new();
    for _ in 0..share(cfg.streams, &ctx) {
        let (ctx, dialer, direction) = (ctx.clone(), dialer.clone(), cfg.direction);
        tasks.spawn_local(async move {
            // Open until the stream has ended cleanly: one still open when the grace period
            // is over counts as unfinished.
            let op = ctx.op();
            let conn = match dialer.connect().await {
                Ok(c) => c,
                Err(f) => {
                    op.done();
                    return ctx.fail(&f);
                }
            };
            ctx.rec(|s| s.counts.ok += 1);
            ctx.negotiated(&conn.negotiated);
            let res = match direction {
                Direction::Send => send(&ctx, conn.stream).await,
                Direction::Receive => receive(&ctx, conn.stream).await,
                Direction::Both => both(&ctx, conn.stream).await,
            };
            op.done();
            if let Err(f) = res {
                ctx.fail(&f);
            }
        });
    }
    while tasks.join_next().await.is_some() {}
}

async fn send(ctx: &Ctx, mut s: Stream) -> Result<(), Failure> {
    let mut sent = 0u64;
    while let Some(res) = ctx.until_stop(s.write(pattern().slice(sent, CHUNK))).await {
        let n = res.map_err(|e| Failure::io("write", &e))?;
        sent += n as u64;
        ctx.rec(|r| r.counts.sent += n as u64);
    }
    // The sink never writes: its EOF says it has read everything we sent.
    finish(s).await
}

async fn receive(ctx: &Ctx, mut s: Stream) -> Result<(), Failure> {
    let mut buf = vec![0u8; CHUNK];
    let mut received = 0u64;
    while let Some(res) = ctx.until_stop(s.read(&mut buf)).await {
        let n = res.map_err(|e| Failure::io("read", &e))?;
        if n == 0 {
            return Err(Failure::new(
                "read: closed by peer",
                "peer closed during the run",
            ));
        }
        check(&buf[..n], received)?;
        received += n as u64;
        ctx.rec(|r| r.counts.received += n as u64);
    }
    // The source never stops on its own: just close.
    let _ = tokio::time::timeout(CLOSE_LIMIT, s.shutdown()).await;
    Ok(())
}

async fn both(ctx: &Ctx, s: Stream) -> Result<(), Failure> {
    let (mut rd, mut wr) = tokio::io::split(s);
    let writer = async {
        let mut sent = 0u64;
        while let Some(res) = ctx.until_stop(wr.write(pattern().slice(sent, CHUNK))).await {
            let n = res.map_err(|e| Failure::io("write", &e))?;
            sent += n as u64;
            ctx.rec(|r| r.counts.sent += n as u64);
        }
        let _ = tokio::time::timeout(CLOSE_LIMIT, wr.shutdown()).await;
        Ok::<u64, Failure>(sent)
    };
    let reader = async {
        let mut buf = vec![0u8; CHUNK];
        let mut received = 0u64;
        loop {
            let n = rd
                .read(&mut buf)
                .await
                .map_err(|e| Failure::io("read", &e))?;
            if n == 0 {
                return Ok::<u64, Failure>(received);
            }
            check(&buf[..n], received)?;
            received += n as u64;
            ctx.rec(|r| r.counts.received += n as u64);
        }
    };
    let (sent, received) = tokio::try_join!(writer, reader)?;
    if sent != received {
        return Err(Failure::new(
            "echo: incomplete",
            format!("sent {sent} bytes, got {received} back"),
        ));
    }
    Ok(())
}

/// close_notify and FIN, then wait for the peer's end within the limit.
async fn finish(mut s: Stream) -> Result<(), Failure> {
    let res = tokio::time::timeout(CLOSE_LIMIT, async {
        s.shutdown().await?;
        let mut buf = [0u8; 4096];
        while s.read(&mut buf).await? != 0 {}
        Ok::<(), std::io::Error>(())
    })
    .await;
    match res {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(Failure::io("close", &e)),
        Err(_) => Err(Failure::new("close: timed out", "peer did not close")),
    }
}

fn check(data: &[u8], offset: u64) -> Result<(), Failure> {
    if pattern().matches(offset, data) {
        Ok(())
    } else {
        Err(Failure::new(
            "data: mismatch",
            format!("received bytes differ from what was sent, at offset {offset}"),
        ))
    }
}
