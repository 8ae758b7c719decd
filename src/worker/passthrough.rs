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
use super::ktls_relay::{drain_pipe, splice_fds, PipeLease};
use super::WorkerCtx;
use crate::conn::close::CloseReason;
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
            debug!(conn = %tally.id, error = %e, "cannot prepare sockets for splicing");
            return CloseReason::ClientIoError;
        }
    };
    let last_activity = Cell::new(Instant::now());
    let up = Pump {
        ctx,
        from: &client_fd,
        to: &backend_fd,
        bytes: &tally.up,
        last_activity: &last_activity,
        read_error: CloseReason::ClientIoError,
        write_error: CloseReason::BackendIoError,
    };
    let down = Pump {
        ctx,
        from: &backend_fd,
        to: &client_fd,
        bytes: &tally.down,
        last_activity: &last_activity,
        read_error: CloseReason::BackendIoError,
        write_error: CloseReason::ClientIoError,
    };
    let flows = std::pin::pin!(async {
        match tokio::try_join!(up.run(), down.run()) {
            Ok(((), ())) => CloseReason::Done,
            Err(reason) => reason,
        }
    });
    let reason = supervise(ctx, idle, &last_activity, flows).await;
    // Ends ops still in flight (they hold their own fds); a pipe one of them still holds
    // was closed rather than reused when its flow was dropped.
    let _ = SockRef::from(&*client_fd).shutdown(Shutdown::Both);
    let _ = SockRef::from(&*backend_fd).shutdown(Shutdown::Both);
    reason
}

/// One direction: `from` → pipe (leased while bytes flow) → `to`, then FIN onward.
struct Pump<'a> {
    ctx: &'a WorkerCtx,
    from: &'a Rc<OwnedFd>,
    to: &'a Rc<OwnedFd>,
    bytes: &'a Cell<u64>,
    last_activity: &'a Cell<Instant>,
    read_error: CloseReason,
    write_error: CloseReason,
}

impl Pump<'_> {
    async fn run(&self) -> Result<(), CloseReason> {
        let mut lease = PipeLease::new(self.ctx);
        loop {
            let pipe = lease.get().map_err(|_| CloseReason::PipeUnavailable)?;
            match splice::splice(self.from, &pipe.write, pipe.capacity as u32).await {
                Ok(0) => {
                    let _ = SockRef::from(&**self.to).shutdown(Shutdown::Write);
                    return Ok(());
                }
                Ok(n) => {
                    self.last_activity.set(Instant::now());
                    drain_pipe(pipe, self.to, n)
                        .await
                        .map_err(|_| self.write_error)?;
                    self.bytes.set(self.bytes.get() + n as u64);
                }
                Err(e) if e.raw_os_error() == Some(libc::EAGAIN) => {
                    lease.release_drained();
                    poll::ready(self.from, Interest::Readable)
                        .await
                        .map_err(|_| self.read_error)?;
                }
                Err(_) => return Err(self.read_error),
            }
        }
    }
}
