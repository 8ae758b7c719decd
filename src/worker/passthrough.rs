//! The pass-through relay: a route that does not terminate TLS moves the client's raw bytes
//! to the backend and back with io_uring splice (socket ⇄ pipe ⇄ socket), never through
//! userspace buffers. FIN is relayed as shutdown(WR) each way; either side's error ends both.

use std::cell::Cell;
use std::net::Shutdown;
use std::os::fd::OwnedFd;
use std::rc::Rc;
use std::time::{Duration, Instant};

use socket2::SockRef;
use tokio_uring::net::TcpStream;
use tracing::debug;

use super::connection::{supervise, Tally};
use super::ktls_relay::{drain_pipe, splice_fds};
use super::WorkerCtx;
use crate::conn::close::CloseReason;
use crate::io::pipe::Pipe;
use crate::io::poll::{self, Interest};
use crate::io::splice;

/// Relays until both directions have ended (or an error, `idle`, or the drain deadline).
pub(super) async fn relay(
    ctx: &WorkerCtx,
    idle: Duration,
    client: &TcpStream,
    backend: &TcpStream,
    tally: &Tally,
) -> CloseReason {
    let (client_fd, backend_fd) = match splice_fds(client, backend) {
        Ok(f) => f,
        Err(e) => {
            debug!(error = %e, "cannot prepare sockets for splicing");
            return CloseReason::ClientIoError;
        }
    };
    let (up_pipe, down_pipe) = match (ctx.pipes.take(), ctx.pipes.take()) {
        (Ok(a), Ok(b)) => (a, b),
        _ => return CloseReason::ClientIoError,
    };
    ctx.stats.pipes_idle.set(ctx.pipes.idle_count() as u64);
    let last_activity = Cell::new(Instant::now());
    let up = Pump {
        from: &client_fd,
        to: &backend_fd,
        pipe: &up_pipe,
        bytes: &tally.up,
        last_activity: &last_activity,
        read_error: CloseReason::ClientIoError,
        write_error: CloseReason::BackendIoError,
    };
    let down = Pump {
        from: &backend_fd,
        to: &client_fd,
        pipe: &down_pipe,
        bytes: &tally.down,
        last_activity: &last_activity,
        read_error: CloseReason::BackendIoError,
        write_error: CloseReason::ClientIoError,
    };
    let flows = async {
        match tokio::try_join!(up.run(), down.run()) {
            Ok(((), ())) => CloseReason::Done,
            Err(reason) => reason,
        }
    };
    let reason = supervise(ctx, idle, &last_activity, flows).await;
    // Ends ops still in flight (they hold their own fds) before the pipes are judged.
    let _ = SockRef::from(&*client_fd).shutdown(Shutdown::Both);
    let _ = SockRef::from(&*backend_fd).shutdown(Shutdown::Both);
    ctx.pipes.give_back(up_pipe);
    ctx.pipes.give_back(down_pipe);
    ctx.stats.pipes_idle.set(ctx.pipes.idle_count() as u64);
    reason
}

/// One direction: `from` → pipe → `to`, then FIN onward.
struct Pump<'a> {
    from: &'a Rc<OwnedFd>,
    to: &'a Rc<OwnedFd>,
    pipe: &'a Pipe,
    bytes: &'a Cell<u64>,
    last_activity: &'a Cell<Instant>,
    read_error: CloseReason,
    write_error: CloseReason,
}

impl Pump<'_> {
    async fn run(&self) -> Result<(), CloseReason> {
        loop {
            match splice::splice(self.from, &self.pipe.write, self.pipe.capacity as u32).await {
                Ok(0) => {
                    let _ = SockRef::from(&**self.to).shutdown(Shutdown::Write);
                    return Ok(());
                }
                Ok(n) => {
                    self.last_activity.set(Instant::now());
                    drain_pipe(self.pipe, self.to, n)
                        .await
                        .map_err(|_| self.write_error)?;
                    self.bytes.set(self.bytes.get() + n as u64);
                }
                Err(e) if e.raw_os_error() == Some(libc::EAGAIN) => {
                    poll::ready(self.from, Interest::Readable)
                        .await
                        .map_err(|_| self.read_error)?;
                }
                Err(_) => return Err(self.read_error),
            }
        }
    }
}
