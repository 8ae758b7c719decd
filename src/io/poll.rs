//! io_uring POLL_ADD (one shot): waits until a descriptor is readable or writable.
//! The op holds the fd (`Rc<OwnedFd>`) until its completion arrives.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
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
    let mask = match interest {
        Interest::Readable => libc::POLLIN | libc::POLLRDHUP,
        Interest::Writable => libc::POLLOUT,
    } as u32;
    let sqe = opcode::PollAdd::new(types::Fd(fd.as_raw_fd()), mask).build();
    UnsubmittedOneshot::new(PollData { _fd: fd.clone() }, Completion::new(), sqe)
        .submit()
        .await
}
