//! `tlsfront-load`: load generator for tlsfront capacity planning.
//!
//! First version: a plaintext TCP backend (`backend`) and a bulk throughput
//! client (`throughput`) over rustls or plain TCP, std threads only.

pub mod backend;
pub mod conn;
pub mod pattern;
pub mod report;
pub mod throughput;
pub mod tls;

/// CPU seconds (user + system) used so far by this whole process.
pub fn process_cpu_seconds() -> f64 {
    tlsfront::io::rusage::process_cpu_time().as_secs_f64()
}
