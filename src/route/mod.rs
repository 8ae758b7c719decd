//! Where a connection goes and what the backend is told about it: backend pools with
//! balancing and passive health (`pool`), and the PROXY protocol header (`proxy_header`).

pub mod pool;
pub mod proxy_header;
