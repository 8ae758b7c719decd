//! Per-connection protocol logic with no I/O: the caller owns sockets, buffers and clocks.
//!
//! - [`tls`]: drives a rustls unbuffered connection (server or client side) over caller-owned
//!   buffers.
//! - [`client_hello`]: a pure ClientHello peek (SNI, ALPN) that can say "need more bytes".
//! - [`close`]: why a connection ended, as a stable label for logs and counters.
//! - [`offload`]: kernel TLS or userspace for a connection, and why.
//! - [`proxy_in`]: the inbound PROXY v1/v2 header parser.
//! - [`starttls`]: the plaintext openings of STARTTLS protocols (client mode).
//! - [`starttls_offer`]: STARTTLS offered to clients in front of a plaintext server.

pub mod client_hello;
pub mod close;
pub mod offload;
pub mod proxy_in;
pub mod starttls;
pub mod starttls_offer;
pub mod tls;
