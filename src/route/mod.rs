//! Where a connection goes and what the backend is told about it: the route by SNI (`sni`),
//! backend pools with balancing and passive health (`pool`), the PROXY protocol header
//! (`proxy_header`) and the identity lookup for backends that cannot parse one (`identity`).

pub mod identity;
pub mod pool;
pub mod proxy_header;
pub mod sni;
