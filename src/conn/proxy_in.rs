//! Reading a PROXY protocol header (v1 or v2) an upstream L4 load balancer put in front of
//! the client's bytes. Pure: it looks at the bytes received so far and says "need more",
//! "not a PROXY header", "invalid", or how long the header is and which client it names.
//! Parsing is the `ppp` crate's; this module adds the limits and the decision.

use std::net::{IpAddr, SocketAddr};

use ppp::{HeaderResult, PartialResult};

/// Longest header accepted: a v1 line is at most 107 bytes; v2 TLVs from cloud balancers
/// stay well under this.
pub const MAX_HEADER: usize = 4096;

const V1_PREFIX: &[u8] = b"PROXY ";
const V2_SIGNATURE: &[u8] = b"\r\n\r\n\0\r\nQUIT\n";

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Inbound {
    NeedMore,
    /// The bytes do not start a PROXY header.
    NotProxy,
    /// A malformed or oversized header.
    Invalid(&'static str),
    /// A complete header of `len` bytes; `client` is `None` for LOCAL / UNKNOWN headers
    /// (health checks), which name no client.
    Header {
        len: usize,
        client: Option<SocketAddr>,
    },
}

/// Whether `ip` is one of the balancers allowed to send PROXY headers. An IPv4 balancer
/// reaching an IPv6 listener shows up IPv4-mapped and is matched as IPv4.
pub fn is_allowed_source(nets: &[ipnet::IpNet], ip: IpAddr) -> bool {
    let ip = match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    };
    nets.iter().any(|n| n.contains(&ip))
}

fn starts_like(buf: &[u8], sig: &[u8]) -> bool {
    let n = buf.len().min(sig.len());
    buf[..n] == sig[..n]
}

pub fn parse(buf: &[u8]) -> Inbound {
    if buf.is_empty() {
        return Inbound::NeedMore;
    }
    if !starts_like(buf, V1_PREFIX) && !starts_like(buf, V2_SIGNATURE) {
        return Inbound::NotProxy;
    }
    if starts_like(buf, V1_PREFIX) {
        return parse_v1(buf);
    }
    let window = &buf[..buf.len().min(MAX_HEADER)];
    let result = HeaderResult::parse(window);
    if result.is_incomplete() {
        return if window.len() == MAX_HEADER {
            Inbound::Invalid("header longer than 4096 bytes")
        } else {
            Inbound::NeedMore
        };
    }
    match result {
        HeaderResult::V2(Ok(h)) => {
            let client = match (h.command, h.addresses) {
                (ppp::v2::Command::Local, _) => None,
                (_, ppp::v2::Addresses::IPv4(a)) => {
                    Some(SocketAddr::new(IpAddr::V4(a.source_address), a.source_port))
                }
                (_, ppp::v2::Addresses::IPv6(a)) => {
                    Some(SocketAddr::new(IpAddr::V6(a.source_address), a.source_port))
                }
                _ => None,
            };
            Inbound::Header {
                len: h.len(),
                client,
            }
        }
        HeaderResult::V1(_) | HeaderResult::V2(Err(_)) => Inbound::Invalid("malformed v2 header"),
    }
}

/// v1 is a line: wait for its CRLF (at most 107 bytes), then judge the whole line.
fn parse_v1(buf: &[u8]) -> Inbound {
    const MAX_V1: usize = 107;
    let Some(end) = buf.windows(2).take(MAX_V1 - 1).position(|w| w == b"\r\n") else {
        return if buf.len() >= MAX_V1 {
            Inbound::Invalid("v1 header longer than 107 bytes")
        } else {
            Inbound::NeedMore
        };
    };
    let line = &buf[..end + 2];
    match HeaderResult::parse(line) {
        HeaderResult::V1(Ok(h)) => {
            let client = match h.addresses {
                ppp::v1::Addresses::Tcp4(a) => {
                    Some(SocketAddr::new(IpAddr::V4(a.source_address), a.source_port))
                }
                ppp::v1::Addresses::Tcp6(a) => {
                    Some(SocketAddr::new(IpAddr::V6(a.source_address), a.source_port))
                }
                ppp::v1::Addresses::Unknown => None,
            };
            Inbound::Header {
                len: line.len(),
                client,
            }
        }
        _ => Inbound::Invalid("malformed v1 header"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::route::proxy_header::{encode, ConnInfo, ProxyVersion};

    fn header(v: ProxyVersion, client: &str) -> Vec<u8> {
        encode(
            v,
            &ConnInfo {
                client: client.parse().unwrap(),
                local: "10.0.0.1:443".parse().unwrap(),
                sni: Some("a.example"),
                alpn: None,
                tls: None,
            },
        )
        .unwrap()
    }

    #[test]
    fn both_versions_name_the_client_and_their_length() {
        for v in [ProxyVersion::V1, ProxyVersion::V2] {
            let mut bytes = header(v, "192.0.2.9:5555");
            let len = bytes.len();
            bytes.extend_from_slice(&[0x16, 3, 1, 0, 5]); // the ClientHello that follows
            assert_eq!(
                parse(&bytes),
                Inbound::Header {
                    len,
                    client: Some("192.0.2.9:5555".parse().unwrap())
                },
                "{v:?}"
            );
        }
    }

    #[test]
    fn allowed_sources_match_plain_and_mapped_addresses() {
        let nets: Vec<ipnet::IpNet> = vec![
            "10.0.0.0/8".parse().unwrap(),
            "2001:db8::/32".parse().unwrap(),
        ];
        let ok = |ip: &str| is_allowed_source(&nets, ip.parse().unwrap());
        assert!(ok("10.1.2.3"));
        assert!(ok("::ffff:10.1.2.3"));
        assert!(ok("2001:db8::5"));
        assert!(!ok("192.0.2.1"));
        assert!(!ok("::ffff:192.0.2.1"));
        assert!(!ok("2001:db9::5"));
    }

    #[test]
    fn every_prefix_needs_more() {
        for v in [ProxyVersion::V1, ProxyVersion::V2] {
            let bytes = header(v, "[2001:db8::1]:5555");
            for cut in 0..bytes.len() {
                assert_eq!(
                    parse(&bytes[..cut]),
                    Inbound::NeedMore,
                    "{v:?} cut at {cut}"
                );
            }
        }
    }

    #[test]
    fn tls_and_garbage_are_not_proxy_and_bad_headers_are_invalid() {
        assert_eq!(parse(&[0x16, 3, 1, 0, 200, 1]), Inbound::NotProxy);
        assert_eq!(parse(b"GET / HTTP/1.1\r\n"), Inbound::NotProxy);
        assert!(matches!(
            parse(b"PROXY TCP4 1.2.3.4 nonsense\r\n"),
            Inbound::Invalid(_)
        ));
        assert_eq!(
            parse(b"PROXY UNKNOWN\r\n"),
            Inbound::Header {
                len: 15,
                client: None
            }
        );
        let mut huge = b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2".to_vec();
        huge.resize(MAX_HEADER + 10, b' ');
        assert!(matches!(parse(&huge), Inbound::Invalid(_)));
        let mut v2 = V2_SIGNATURE.to_vec();
        v2.extend_from_slice(&[0x21, 0x11, 0xff, 0xff]); // claims 65535 bytes
        v2.resize(MAX_HEADER, 0);
        assert!(matches!(parse(&v2), Inbound::Invalid(_)));
    }
}
