//! tlsfront: TLS termination for legacy TCP services.
//!
//! Module map (see `../shared/docs/architecture.md`):
//! - [`config`]: two-stage configuration — TOML/CLI syntax, then a validated runtime config
//!   (certificates loaded, CPU sets chosen). Every error names file, line and field.
//! - [`tls`]: rustls server and client configs from a TLS policy; certificates, keys, client
//!   certificate verification (mTLS), ticket keys.
//! - [`conn`]: per-connection protocol logic without I/O (TLS driving for either side,
//!   ClientHello peek, PROXY header parsing, STARTTLS dialogues).
//! - [`io`]: the only module allowed `unsafe`: io_uring ops tokio-uring lacks, socket options.
//! - [`worker`]: thread-per-core workers: pinned threads, SO_REUSEPORT listeners, the relays
//!   (userspace, kTLS splice, pass-through, client mode, re-encryption), drain.
//! - [`obs`]: per-worker counters and logging set-up.
//! - [`doctor`]: `tlsfront doctor`, host checks (kTLS, io_uring, limits, sysctls, CPUs).
//! - [`demo`]: `tlsfront demo`, the whole loop on loopback with tlsfront-load.
//! - [`route`]: where a connection goes (SNI routes, backend pools and health) and what the
//!   backend is told about it (PROXY header, the identity lookup socket).
//! - [`server`]: start-up and lifecycle glue used by the binary (bind, spawn, signals).
#![deny(unsafe_code)]
#![warn(clippy::undocumented_unsafe_blocks)]

pub mod config;
pub mod conn;
pub mod demo;
pub mod doctor;
pub mod io;
pub mod obs;
pub mod route;
pub mod server;
pub mod tls;
pub mod worker;
