//! Where a connection goes and what the backend is told about it. So far: the PROXY
//! protocol header sent to backends (`proxy_header`).

pub mod proxy_header;
