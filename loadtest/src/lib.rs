//! `tlsfront-load`: load generator for TLS capacity planning.
//!
//! Scenarios (`scenario/`) run on pinned worker threads, one tokio runtime each
//! (`engine`), against any TLS or TCP endpoint; `backend` is the plaintext peer
//! (echo, sink, source) so a full loop needs nothing else installed. `run` turns a
//! scenario into a [`report::Report`]; `hlog` and `plot` write it in other forms.

pub mod backend;
pub mod danger;
pub mod engine;
pub mod hlog;
pub mod net;
pub mod pattern;
pub mod plot;
pub mod procfs;
pub mod progress;
pub mod report;
pub mod run;
pub mod scenario;
pub mod stats;
pub mod tls;
