//! The PROXY protocol header tlsfront sends a backend before the client's bytes, so a
//! plaintext service learns the real client address and what the TLS session was
//! (HAProxy's proxy-protocol.txt; built with the `ppp` crate).
//!
//! v1 is the text line (`PROXY TCP4 src dst sport dport\r\n`). v2 is binary and carries
//! TLVs: ALPN (0x01) and authority (0x02, the SNI) when the client sent them, and SSL (0x20)
//! with the client flags (PP2_CLIENT_SSL, plus PP2_CLIENT_CERT_CONN when the client
//! presented a certificate, PP2_CLIENT_CERT_SESS when its session had one), the verify result (0: a client certificate was presented and
//! verified; 1 otherwise) and the sub-TLVs version (0x21, e.g. `TLSv1.3`), CN (0x22, the
//! client certificate's subject CN) and cipher (0x23, the IANA name with TLS 1.3's `TLS13_`
//! shortened to `TLS_`, as OpenSSL says it). tlsfront's own TLVs, in the range the
//! specification reserves for custom use: 0xE0 the client certificate's first URI SAN
//! (a SPIFFE ID, say) and 0xE1 the SHA-256 of the client certificate (32 bytes).
//! A pass-through connection (TLS not terminated here) gets the addresses and the
//! authority TLV only.
//! Mixed address families (an IPv4 client on an IPv6 listener) are sent as IPv6 with the
//! IPv4 address mapped.

use std::net::{IpAddr, SocketAddr};

use ppp::v2::{Builder, Command, Protocol, Type, Version};

use crate::tls::client_auth::Identity;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyVersion {
    V1,
    V2,
}

impl ProxyVersion {
    pub fn parse(text: &str) -> Option<Self> {
        match text.trim().to_ascii_lowercase().as_str() {
            "v1" | "1" => Some(Self::V1),
            "v2" | "2" => Some(Self::V2),
            _ => None,
        }
    }
}

/// What the header says about one connection.
#[derive(Debug, Clone)]
pub struct ConnInfo<'a> {
    /// The client as tlsfront sees it.
    pub client: SocketAddr,
    /// The address the client connected to.
    pub local: SocketAddr,
    pub sni: Option<&'a str>,
    pub alpn: Option<&'a [u8]>,
    /// The terminated session; `None` on a pass-through route.
    pub tls: Option<TlsSummary<'a>>,
}

/// What the SSL TLV says about a terminated session.
#[derive(Debug, Clone)]
pub struct TlsSummary<'a> {
    /// rustls's name, e.g. `TLSv1_3`.
    pub version: &'a str,
    /// IANA name, e.g. `TLS13_AES_128_GCM_SHA256`.
    pub cipher: &'a str,
    /// The verified client certificate, if the client presented one.
    pub client_cert: Option<&'a Identity>,
    /// The session was resumed (a client certificate came with it, not on this connection).
    pub resumed: bool,
}

const PP2_CLIENT_SSL: u8 = 0x01;
const PP2_CLIENT_CERT_CONN: u8 = 0x02;
const PP2_CLIENT_CERT_SESS: u8 = 0x04;
/// `verify` when no client certificate was presented and verified.
const NOT_VERIFIED: u32 = 1;
/// tlsfront's TLVs (0xE0..=0xEF is PP2_TYPE_MIN_CUSTOM..=PP2_TYPE_MAX_CUSTOM).
pub const PP2_TYPE_TLSFRONT_URI_SAN: u8 = 0xE0;
pub const PP2_TYPE_TLSFRONT_CERT_SHA256: u8 = 0xE1;

/// Both addresses in one family (IPv4-mapped IPv6 when they differ).
fn same_family(a: SocketAddr, b: SocketAddr) -> (SocketAddr, SocketAddr) {
    let v6 = |s: SocketAddr| match s.ip() {
        IpAddr::V4(ip) => SocketAddr::new(IpAddr::V6(ip.to_ipv6_mapped()), s.port()),
        IpAddr::V6(_) => s,
    };
    if a.is_ipv4() == b.is_ipv4() {
        (a, b)
    } else {
        (v6(a), v6(b))
    }
}

/// The header bytes for `info`; `None` when a value does not fit its TLV (64 KiB). The
/// caller must then not relay at all: a backend that got no header would read the client's
/// own bytes as one.
pub fn encode(version: ProxyVersion, info: &ConnInfo<'_>) -> Option<Vec<u8>> {
    let (src, dst) = same_family(info.client, info.local);
    match version {
        ProxyVersion::V1 => {
            let addresses = match (src, dst) {
                (SocketAddr::V4(s), SocketAddr::V4(d)) => {
                    ppp::v1::Addresses::new_tcp4(*s.ip(), *d.ip(), s.port(), d.port())
                }
                _ => ppp::v1::Addresses::new_tcp6(
                    ipv6(src.ip()),
                    ipv6(dst.ip()),
                    src.port(),
                    dst.port(),
                ),
            };
            Some(addresses.to_string().into_bytes())
        }
        // Writing into a Vec fails only when a length does not fit 16 bits.
        ProxyVersion::V2 => encode_v2(src, dst, info).ok(),
    }
}

fn ipv6(ip: IpAddr) -> std::net::Ipv6Addr {
    match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped(),
        IpAddr::V6(v6) => v6,
    }
}

fn encode_v2(src: SocketAddr, dst: SocketAddr, info: &ConnInfo<'_>) -> std::io::Result<Vec<u8>> {
    let mut header =
        Builder::with_addresses(Version::Two | Command::Proxy, Protocol::Stream, (src, dst));
    if let Some(alpn) = info.alpn {
        header = header.write_tlv(Type::ALPN, alpn)?;
    }
    if let Some(sni) = info.sni {
        header = header.write_tlv(Type::Authority, sni.as_bytes())?;
    }
    let Some(tls) = &info.tls else {
        return header.build();
    };
    header = header.write_tlv(Type::SSL, &ssl_tlv(tls)?)?;
    if let Some(cert) = tls.client_cert {
        if let Some(uri) = cert.uri.first() {
            header = header.write_tlv(PP2_TYPE_TLSFRONT_URI_SAN, uri.as_bytes())?;
        }
        header = header.write_tlv(PP2_TYPE_TLSFRONT_CERT_SHA256, &cert.sha256)?;
    }
    header.build()
}

/// The SSL TLV's value: client flags, verify, then its sub-TLVs.
fn ssl_tlv(tls: &TlsSummary<'_>) -> std::io::Result<Vec<u8>> {
    let version = tls.version.replace('_', ".");
    let cipher = match tls.cipher.strip_prefix("TLS13_") {
        Some(rest) => format!("TLS_{rest}"),
        None => tls.cipher.to_string(),
    };
    let cn = tls.client_cert.and_then(|c| c.cn.as_deref());
    // A certificate restored with a resumed session was presented on the session, not on
    // this connection.
    let (client, verify) = match tls.client_cert {
        Some(_) if tls.resumed => (PP2_CLIENT_SSL | PP2_CLIENT_CERT_SESS, 0),
        Some(_) => (
            PP2_CLIENT_SSL | PP2_CLIENT_CERT_CONN | PP2_CLIENT_CERT_SESS,
            0,
        ),
        None => (PP2_CLIENT_SSL, NOT_VERIFIED),
    };
    let mut v = Vec::with_capacity(5 + 9 + version.len() + cipher.len() + cn.map_or(0, str::len));
    v.push(client);
    v.extend_from_slice(&verify.to_be_bytes());
    // Sub-TLVs in type order: version 0x21, CN 0x22, cipher 0x23.
    let subs = [
        Some((Type::SSLVersion as u8, version.as_bytes())),
        cn.map(|cn| (Type::SSLCommonName as u8, cn.as_bytes())),
        Some((Type::SSLCipher as u8, cipher.as_bytes())),
    ];
    for (kind, value) in subs.into_iter().flatten() {
        let len = u16::try_from(value.len())
            .map_err(|_| std::io::Error::other("sub-TLV value longer than 64 KiB"))?;
        v.push(kind);
        v.extend_from_slice(&len.to_be_bytes());
        v.extend_from_slice(value);
    }
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info<'a>(client: &str, local: &str) -> ConnInfo<'a> {
        ConnInfo {
            client: client.parse().unwrap(),
            local: local.parse().unwrap(),
            sni: Some("db.example.com"),
            alpn: Some(b"postgresql"),
            tls: Some(TlsSummary {
                version: "TLSv1_3",
                cipher: "TLS13_AES_128_GCM_SHA256",
                client_cert: None,
                resumed: false,
            }),
        }
    }

    #[test]
    fn v1_is_the_text_line() {
        let h = encode(ProxyVersion::V1, &info("192.0.2.7:40000", "10.0.0.1:443")).unwrap();
        assert_eq!(h, b"PROXY TCP4 192.0.2.7 10.0.0.1 40000 443\r\n");
        let h = encode(ProxyVersion::V1, &info("[2001:db8::7]:40000", "[::1]:443")).unwrap();
        assert_eq!(h, b"PROXY TCP6 2001:db8::7 ::1 40000 443\r\n");
    }

    #[test]
    fn mixed_families_are_sent_as_mapped_ipv6() {
        let h = encode(ProxyVersion::V1, &info("192.0.2.7:40000", "[::]:443")).unwrap();
        assert_eq!(h, b"PROXY TCP6 ::ffff:192.0.2.7 :: 40000 443\r\n");
    }

    #[test]
    fn v2_parses_back_with_its_tlvs() {
        let h = encode(ProxyVersion::V2, &info("192.0.2.7:40000", "10.0.0.1:443")).unwrap();
        let parsed = ppp::v2::Header::try_from(h.as_slice()).unwrap();
        assert_eq!(
            parsed.addresses,
            ppp::v2::Addresses::from((
                "192.0.2.7:40000".parse::<SocketAddr>().unwrap(),
                "10.0.0.1:443".parse::<SocketAddr>().unwrap()
            ))
        );
        let tlvs: Vec<(u8, Vec<u8>)> = parsed
            .tlvs()
            .map(|t| {
                let t = t.unwrap();
                (t.kind, t.value.to_vec())
            })
            .collect();
        assert_eq!(tlvs[0], (0x01, b"postgresql".to_vec()));
        assert_eq!(tlvs[1], (0x02, b"db.example.com".to_vec()));
        assert_eq!(tlvs[2].0, 0x20);
        let ssl = &tlvs[2].1;
        assert_eq!(ssl[0], PP2_CLIENT_SSL);
        assert_eq!(&ssl[1..5], &[0, 0, 0, 1]);
        assert_eq!(
            &ssl[5..],
            b"\x21\x00\x07TLSv1.3\x23\x00\x16TLS_AES_128_GCM_SHA256"
        );
    }

    #[test]
    fn client_certificates_set_the_flags_and_oversized_values_fail_closed() {
        let id = Identity {
            cn: Some("billing".into()),
            dns: Vec::new(),
            uri: vec!["spiffe://corp/billing".into()],
            sha256: [7; 32],
            spki_sha256: [8; 32],
        };
        let mut conn = info("192.0.2.7:40000", "10.0.0.1:443");
        let tls = conn.tls.as_mut().unwrap();
        tls.client_cert = Some(&id);
        let client_byte = |conn: &ConnInfo<'_>| {
            let h = encode(ProxyVersion::V2, conn).unwrap();
            let parsed = ppp::v2::Header::try_from(h.as_slice()).unwrap();
            let ssl = parsed
                .tlvs()
                .map(|t| t.unwrap())
                .find(|t| t.kind == 0x20)
                .unwrap();
            (
                ssl.value[0],
                u32::from_be_bytes(ssl.value[1..5].try_into().unwrap()),
            )
        };
        assert_eq!(client_byte(&conn), (0x07, 0));
        conn.tls.as_mut().unwrap().resumed = true;
        assert_eq!(client_byte(&conn), (0x05, 0));
        let long = Identity {
            cn: Some("x".repeat(70_000)),
            ..id.clone()
        };
        conn.tls.as_mut().unwrap().client_cert = Some(&long);
        assert_eq!(encode(ProxyVersion::V2, &conn), None);
    }
}
