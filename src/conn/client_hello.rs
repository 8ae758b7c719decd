//! A pure ClientHello peek: reads the server name, ALPN offer and cipher suite list from the
//! first TLS record without consuming anything. It never panics on any input and can say "need more bytes".
//!
//! Only a ClientHello carried whole in the first record is parsed (every mainstream client
//! sends it that way); one split across records reports [`Peek::Fragmented`].

/// What the first bytes of a connection say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Peek<'a> {
    /// Not enough bytes yet for a verdict.
    NeedMore,
    /// Not a TLS handshake record (plaintext protocol, garbage, SSLv2).
    NotTls,
    /// A TLS handshake record, but the ClientHello continues in a later record.
    Fragmented,
    /// A handshake record longer than TLS allows a plaintext record to be (16 KiB).
    TooLarge,
    Hello(ClientHello<'a>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientHello<'a> {
    pub sni: Option<&'a str>,
    /// The ALPN extension's protocol list, still encoded (u8 length-prefixed names).
    pub alpn_raw: Option<&'a [u8]>,
    /// The offered cipher suites, still encoded (big-endian u16 each), in client order.
    pub suites_raw: &'a [u8],
}

impl<'a> ClientHello<'a> {
    /// The offered cipher suite codes, in client order.
    pub fn cipher_suites(&self) -> impl Iterator<Item = u16> + 'a {
        self.suites_raw
            .chunks_exact(2)
            .map(|c| u16::from_be_bytes([c[0], c[1]]))
    }

    /// The offered ALPN protocols, in client order.
    pub fn alpn(&self) -> impl Iterator<Item = &'a [u8]> + Clone {
        let mut rest = self.alpn_raw.unwrap_or_default();
        std::iter::from_fn(move || {
            let (&len, tail) = rest.split_first()?;
            let name = tail.get(..usize::from(len))?;
            rest = &tail[usize::from(len)..];
            Some(name)
        })
    }
}

const RECORD_HANDSHAKE: u8 = 22;
const HANDSHAKE_CLIENT_HELLO: u8 = 1;
const EXT_SERVER_NAME: u16 = 0;
const EXT_ALPN: u16 = 16;
/// Largest TLSPlaintext fragment (RFC 8446 §5.1).
const MAX_RECORD: usize = 16384;

/// A cursor over a byte slice; every read is bounds-checked.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Some(head)
    }
    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }
    fn u16(&mut self) -> Option<u16> {
        self.take(2).map(|b| u16::from_be_bytes([b[0], b[1]]))
    }
    fn u24(&mut self) -> Option<usize> {
        self.take(3)
            .map(|b| usize::from(b[0]) << 16 | usize::from(b[1]) << 8 | usize::from(b[2]))
    }
    fn vec8(&mut self) -> Option<&'a [u8]> {
        let n = self.u8()?;
        self.take(usize::from(n))
    }
    fn vec16(&mut self) -> Option<&'a [u8]> {
        let n = self.u16()?;
        self.take(usize::from(n))
    }
}

/// Peeks at the start of a connection.
pub fn peek(buf: &[u8]) -> Peek<'_> {
    if buf.len() < 5 {
        // Decide early on obvious garbage so a plaintext client is rejected promptly.
        return match buf.first() {
            Some(&t) if t != RECORD_HANDSHAKE => Peek::NotTls,
            Some(_) if buf.len() >= 2 && buf[1] != 3 => Peek::NotTls,
            _ => Peek::NeedMore,
        };
    }
    let mut rec = Reader(buf);
    let (Some(content_type), Some(major), Some(_minor), Some(len)) =
        (rec.u8(), rec.u8(), rec.u8(), rec.u16())
    else {
        return Peek::NeedMore;
    };
    let len = usize::from(len);
    if content_type != RECORD_HANDSHAKE || major != 3 || len == 0 {
        return Peek::NotTls;
    }
    if len > MAX_RECORD {
        return Peek::TooLarge;
    }
    let Some(fragment) = rec.take(len) else {
        return Peek::NeedMore;
    };
    let mut hs = Reader(fragment);
    match (hs.u8(), hs.u24()) {
        (Some(HANDSHAKE_CLIENT_HELLO), Some(body_len)) => match hs.take(body_len) {
            Some(body) => parse_body(body).map_or(Peek::NotTls, Peek::Hello),
            None => Peek::Fragmented,
        },
        (Some(HANDSHAKE_CLIENT_HELLO), None) => Peek::Fragmented,
        _ => Peek::NotTls,
    }
}

fn parse_body(body: &[u8]) -> Option<ClientHello<'_>> {
    let mut r = Reader(body);
    r.take(2 + 32)?; // legacy_version, random
    r.vec8()?; // legacy_session_id
    let suites_raw = r.vec16()?;
    r.vec8()?; // legacy_compression_methods
    let mut hello = ClientHello {
        sni: None,
        alpn_raw: None,
        suites_raw,
    };
    if r.0.is_empty() {
        return Some(hello); // no extensions (very old clients)
    }
    let mut exts = Reader(r.vec16()?);
    while !exts.0.is_empty() {
        let ty = exts.u16()?;
        let mut data = Reader(exts.vec16()?);
        match ty {
            EXT_SERVER_NAME => {
                let mut list = Reader(data.vec16()?);
                while !list.0.is_empty() {
                    let name_type = list.u8()?;
                    let name = list.vec16()?;
                    if name_type == 0 && hello.sni.is_none() {
                        hello.sni = std::str::from_utf8(name).ok();
                    }
                }
            }
            EXT_ALPN => hello.alpn_raw = Some(data.vec16()?),
            _ => {}
        }
    }
    Some(hello)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    /// A real ClientHello, produced by the rustls client.
    fn rustls_client_hello(sni: &str, alpn: &[&[u8]]) -> Vec<u8> {
        let mut roots = rustls::RootCertStore::empty();
        let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        roots.add(cert.cert.der().clone()).unwrap();
        let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        let mut conn =
            rustls::ClientConnection::new(Arc::new(config), sni.to_owned().try_into().unwrap())
                .unwrap();
        let mut out = Vec::new();
        conn.write_tls(&mut out).unwrap();
        out
    }

    #[test]
    fn reads_sni_and_alpn_from_a_real_hello() {
        let bytes = rustls_client_hello("db.example.com", &[b"h2", b"postgresql"]);
        let Peek::Hello(hello) = peek(&bytes) else {
            panic!("expected a ClientHello, got {:?}", peek(&bytes));
        };
        assert_eq!(hello.sni, Some("db.example.com"));
        assert_eq!(
            hello.alpn().collect::<Vec<_>>(),
            vec![&b"h2"[..], &b"postgresql"[..]]
        );
    }

    #[test]
    fn reads_the_cipher_suites_in_client_order() {
        let bytes = rustls_client_hello("localhost", &[]);
        let Peek::Hello(hello) = peek(&bytes) else {
            panic!("expected a ClientHello");
        };
        let expected: Vec<u16> = rustls::crypto::aws_lc_rs::default_provider()
            .cipher_suites
            .iter()
            .map(|s| u16::from(s.suite()))
            .collect();
        let offered: Vec<u16> = hello.cipher_suites().collect();
        // rustls appends the TLS_EMPTY_RENEGOTIATION_INFO_SCSV signalling value.
        assert_eq!(&offered[..expected.len()], &expected[..]);
    }

    #[test]
    fn every_prefix_needs_more() {
        let bytes = rustls_client_hello("localhost", &[]);
        for cut in 0..bytes.len() {
            assert_eq!(peek(&bytes[..cut]), Peek::NeedMore, "prefix of {cut} bytes");
        }
    }

    #[test]
    fn plaintext_and_garbage_are_not_tls() {
        assert_eq!(peek(b"GET / HTTP/1.1\r\n"), Peek::NotTls);
        assert_eq!(peek(b"EHLO"), Peek::NotTls);
        assert_eq!(peek(&[22, 3, 1, 0xff, 0xff, 1]), Peek::TooLarge);
        assert_eq!(peek(&[22, 3, 1, 0x40, 0x01]), Peek::TooLarge); // 16385 bytes
        assert_eq!(peek(&[22, 3, 1, 0, 4, 2, 0, 0, 0]), Peek::NotTls); // not a ClientHello
    }

    #[test]
    fn hello_continuing_in_next_record_is_fragmented() {
        // Handshake header says 1000 bytes of body but the record carries 4.
        assert_eq!(
            peek(&[22, 3, 1, 0, 8, 1, 0, 3, 232, 3, 3, 0, 0]),
            Peek::Fragmented
        );
    }

    #[test]
    fn mangled_hellos_never_panic() {
        let bytes = rustls_client_hello("localhost", &[b"x"]);
        for i in 5..bytes.len() {
            for v in [0u8, 0xff, 0x7f] {
                let mut m = bytes.clone();
                m[i] = v;
                let _ = peek(&m);
            }
        }
    }
}
