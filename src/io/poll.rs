//! io_uring POLL_ADD (one shot): waits until a descriptor is readable or writable.
//! The op holds the fd (`Rc<OwnedFd>`) until its completion arrives.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::rc::Rc;

use io_uring::{opcode, types};
use tokio_uring::UnsubmittedOneshot;

use super::Completion;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Interest {
    Readable,
    Writable,
}

struct PollData {
    _fd: Rc<OwnedFd>,
}

/// Resolves with the ready event mask (POLLERR/POLLHUP included) once `fd` is ready.
pub async fn ready(fd: &Rc<OwnedFd>, interest: Interest) -> io::Result<u32> {
    let sqe = opcode::PollAdd::new(types::Fd(fd.as_raw_fd()), mask(interest)).build();
    UnsubmittedOneshot::new(PollData { _fd: fd.clone() }, Completion::new(), sqe)
        .submit()
        .await
}

/// Like [`ready`] for a socket the caller keeps open (no duplicate fd, so a connection costs
/// no extra descriptors). The kernel holds its own reference to the socket once the poll is
/// submitted. If the awaiting future is dropped and the socket closed before the ring
/// submits the poll, the poll may land on a socket that reuses the number: it then waits
/// there, is answered by nobody and ends with that socket — no memory is involved.
pub async fn ready_raw(fd: RawFd, interest: Interest) -> io::Result<u32> {
    let sqe = opcode::PollAdd::new(types::Fd(fd), mask(interest)).build();
    UnsubmittedOneshot::new((), Completion::new(), sqe)
        .submit()
        .await
}

fn mask(interest: Interest) -> u32 {
    (match interest {
        Interest::Readable => libc::POLLIN | libc::POLLRDHUP,
        Interest::Writable => libc::POLLOUT,
    }) as u32
}
