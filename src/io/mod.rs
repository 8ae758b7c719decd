//! The only module allowed `unsafe`: io_uring operations tokio-uring lacks (one file per op)
//! and socket-option helpers that borrow a raw fd.
//!
//! Rule for every op: whatever the kernel may still touch (fd, address, buffer) lives in the
//! op's stored data, which tokio-uring keeps until the completion arrives — even when the
//! awaiting future is dropped.
#![allow(unsafe_code)]

pub mod connect;
pub mod ktls;
pub mod pipe;
pub mod poll;
pub mod rusage;
pub mod sockopt;
pub mod splice;
