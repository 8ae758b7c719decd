//! The only module allowed `unsafe`: io_uring operations tokio-uring lacks (one file per op)
//! and socket-option helpers that borrow a raw fd.
//!
//! Rule for every op: whatever the kernel may still touch (fd, address, buffer) lives in the
//! op's stored data, which tokio-uring keeps until the completion arrives — even when the
//! awaiting future is dropped.
#![allow(unsafe_code)]

pub mod connect;
pub mod ktls;
pub mod nb;
pub mod pipe;
pub mod poll;
pub mod privilege;
pub mod sockopt;
pub mod splice;

use std::marker::PhantomData;

/// The completion of a one-shot io_uring op whose stored data `D` exists only to keep fds and
/// buffers alive until the kernel is done: the CQE result as `io::Result<u32>` (negative =
/// errno). The data is released when the result is delivered.
pub(crate) struct Completion<D>(PhantomData<D>);

impl<D> Completion<D> {
    pub(crate) fn new() -> Self {
        Completion(PhantomData)
    }
}

impl<D> tokio_uring::OneshotOutputTransform for Completion<D> {
    type Output = std::io::Result<u32>;
    type StoredData = D;

    fn transform_oneshot_output(
        self,
        data: D,
        cqe: io_uring::cqueue::Entry,
    ) -> std::io::Result<u32> {
        drop(data);
        match cqe.result() {
            r if r >= 0 => Ok(r as u32),
            r => Err(std::io::Error::from_raw_os_error(-r)),
        }
    }
}
