//! Backend connect as an io_uring op on a socket we build ourselves, with a deadline that
//! really ends the attempt.
//!
//! tokio-uring's `TcpStream::connect` neither lets us set options before connecting nor
//! frees the socket when its future is dropped (the op keeps it until the kernel gives up,
//! minutes for an unanswered SYN). Here the socket is shared between the op and the caller;
//! on timeout the caller shuts it down, which aborts the kernel's connect (SYN_SENT →
//! disconnect), so the op completes at once and the fd is closed.

use std::io;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Duration;

use io_uring::{opcode, types};
use socket2::{Domain, Protocol, SockAddr, Socket, Type};
use tokio_uring::net::TcpStream;
use tokio_uring::UnsubmittedOneshot;

use super::Completion;

use crate::config::Tunables;

#[derive(Debug)]
pub enum ConnectError {
    Refused,
    TimedOut,
    Other(io::Error),
}

impl std::fmt::Display for ConnectError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ConnectError::Refused => f.write_str("connection refused"),
            ConnectError::TimedOut => f.write_str("connect timed out"),
            ConnectError::Other(e) => write!(f, "{e}"),
        }
    }
}

/// What the kernel may read while the op is in flight: the socket and the address.
/// Never read: holding them is the point.
struct ConnectData {
    _socket: Rc<Socket>,
    _addr: Box<SockAddr>,
}

/// Connects to `addr` with the service's socket tunables, within `timeout`.
pub async fn connect(
    addr: SocketAddr,
    tunables: &Tunables,
    timeout: Duration,
) -> Result<TcpStream, ConnectError> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))
        .map_err(ConnectError::Other)?;
    let sref = socket2::SockRef::from(&socket);
    super::sockopt::apply_stream_tunables(&sref, tunables).map_err(ConnectError::Other)?;
    let socket = Rc::new(socket);
    let addr = Box::new(SockAddr::from(addr));
    let sqe = {
        use std::os::fd::AsRawFd;
        // The pointers stay valid: both live in `ConnectData`, which the driver keeps until
        // the completion arrives, even if this future is dropped.
        opcode::Connect::new(types::Fd(socket.as_raw_fd()), addr.as_ptr(), addr.len()).build()
    };
    let op = UnsubmittedOneshot::new(
        ConnectData {
            _socket: socket.clone(),
            _addr: addr,
        },
        Completion::new(),
        sqe,
    )
    .submit();
    match tokio::time::timeout(timeout, op).await {
        Ok(Ok(_)) => {
            let socket = Rc::try_unwrap(socket).map_err(|_| {
                ConnectError::Other(io::Error::other("connect op still holds the socket"))
            })?;
            Ok(TcpStream::from_std(socket.into()))
        }
        Ok(Err(e)) if e.kind() == io::ErrorKind::ConnectionRefused => Err(ConnectError::Refused),
        Ok(Err(e)) if e.kind() == io::ErrorKind::TimedOut => Err(ConnectError::TimedOut),
        Ok(Err(e)) => Err(ConnectError::Other(e)),
        Err(_elapsed) => {
            // Aborts SYN_SENT so the in-flight op completes now and releases the socket.
            let _ = socket.shutdown(std::net::Shutdown::Both);
            Err(ConnectError::TimedOut)
        }
    }
}
