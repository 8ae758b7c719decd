//! io_uring POLL_ADD (one shot): waits until a descriptor is readable or writable.
//! The op holds the fd (`Rc<OwnedFd>`) until its completion arrives.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::rc::Rc;

use io_uring::{opcode, types};
use tokio_uring::{OneshotOutputTransform, UnsubmittedOneshot};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Interest {
    Readable,
    Writable,
}

struct PollData {
    _fd: Rc<OwnedFd>,
}

struct PollDone;

impl OneshotOutputTransform for PollDone {
    type Output = io::Result<u32>;
    type StoredData = PollData;

    fn transform_oneshot_output(
        self,
        data: PollData,
        cqe: io_uring::cqueue::Entry,
    ) -> io::Result<u32> {
        drop(data);
        match cqe.result() {
            r if r >= 0 => Ok(r as u32),
            r => Err(io::Error::from_raw_os_error(-r)),
        }
    }
}

/// Resolves with the ready event mask (POLLERR/POLLHUP included) once `fd` is ready.
pub async fn ready(fd: &Rc<OwnedFd>, interest: Interest) -> io::Result<u32> {
    let mask = match interest {
        Interest::Readable => libc::POLLIN | libc::POLLRDHUP,
        Interest::Writable => libc::POLLOUT,
    } as u32;
    let sqe = opcode::PollAdd::new(types::Fd(fd.as_raw_fd()), mask).build();
    UnsubmittedOneshot::new(PollData { _fd: fd.clone() }, PollDone, sqe)
        .submit()
        .await
}
