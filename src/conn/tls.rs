//! Drives a rustls unbuffered connection over caller-owned buffers, with no I/O: the server
//! side ([`ServerTls`], tlsfront terminating) or the client side ([`ClientTls`], tlsfront
//! originating TLS toward a remote server). Below, "peer" is the TLS side and "plain" the
//! other one.
//!
//! The caller reads peer bytes into `incoming`, calls [`Tls::read`], writes the decrypted
//! bytes to the plain side and the [`OutBuf`] bytes to the peer. Encryption of plain bytes
//! ([`Tls::encrypt`]) appends to the same [`OutBuf`], so every record — handshake, alert,
//! ticket, application data — reaches the peer in the order rustls produced it, whichever
//! direction produced it.
//!
//! Invariants:
//! - when `read` returns, rustls holds no undelivered plaintext, so `encrypt` always finds the
//!   connection ready to write;
//! - every call gets the same `incoming` bytes rustls saw last (minus what it said to
//!   discard): its handshake deframer keeps offsets into that buffer between calls (a
//!   handshake message split across records), so a different buffer — even an empty one —
//!   would make it index out of bounds. The write path therefore takes `incoming` too.

use std::sync::Arc;

use rustls::client::{ClientConnectionData, UnbufferedClientConnection};
use rustls::kernel::KernelConnection;
use rustls::pki_types::ServerName;
use rustls::server::{ServerConnectionData, UnbufferedServerConnection};
use rustls::unbuffered::{ConnectionState, EncodeError, EncryptError, UnbufferedStatus};
use rustls::{ClientConfig, CommonState, HandshakeKind, ServerConfig};

/// Largest plaintext one TLS record can carry.
pub const MAX_RECORD_PLAINTEXT: usize = 16 * 1024;
/// Largest TLS record on the wire (header + 2^14 + 256 expansion, RFC 8446 §5.2).
pub const MAX_RECORD_WIRE: usize = 5 + MAX_RECORD_PLAINTEXT + 256;
/// Per-record expansion bound used to size output buffers (header, nonce, tag, type).
const RECORD_OVERHEAD: usize = 64;
/// Room kept in output buffers for alerts, tickets and key updates between data records.
pub const CONTROL_SLACK: usize = 4096;

/// How many more bytes `incoming` needs before its first record is whole (0 if it is, or if
/// `incoming` is empty). While fewer than 5 bytes are there, only the header is asked for.
pub fn record_remaining(incoming: &[u8]) -> usize {
    match incoming.len() {
        0 => 0,
        n if n < 5 => 5 - n,
        n => (5 + usize::from(u16::from_be_bytes([incoming[3], incoming[4]]))).saturating_sub(n),
    }
}

/// Output buffer size needed to encrypt `plain_len` bytes of plaintext plus control records.
pub fn out_capacity(plain_len: usize) -> usize {
    plain_len + plain_len.div_ceil(MAX_RECORD_PLAINTEXT).max(1) * RECORD_OVERHEAD + CONTROL_SLACK
}

/// Bytes waiting to go to the client: a fixed-capacity buffer filled from the front.
///
/// The backing `Vec` always has `len == capacity` (initialised once) so rustls can encode
/// straight into the spare part. The bytes still to send are `buf[start..filled]`: a partial
/// send moves `start` (no copy), and the rest moves to the front only when more is appended.
#[derive(Debug)]
pub struct OutBuf {
    buf: Vec<u8>,
    start: usize,
    filled: usize,
}

impl OutBuf {
    pub fn with_capacity(cap: usize) -> Self {
        OutBuf {
            buf: vec![0; cap],
            start: 0,
            filled: 0,
        }
    }
    /// How many bytes wait to be sent.
    pub fn filled(&self) -> usize {
        self.filled - self.start
    }
    pub fn is_empty(&self) -> bool {
        self.filled == self.start
    }
    /// Room to append without growing (once what was sent is reclaimed).
    pub fn spare(&self) -> usize {
        self.buf.len() - self.filled()
    }
    pub fn as_slice(&self) -> &[u8] {
        &self.buf[self.start..self.filled]
    }
    /// Hands out the backing storage (for an owned-buffer write) and how much of it is filled.
    pub fn take(&mut self, replacement: Vec<u8>) -> (Vec<u8>, usize) {
        self.compact();
        let filled = std::mem::replace(&mut self.filled, 0);
        (std::mem::replace(&mut self.buf, replacement), filled)
    }
    /// Size of the backing storage (0 once it was handed out and not replaced).
    pub fn storage(&self) -> usize {
        self.buf.len()
    }
    /// Drops the first `n` bytes waiting (they were sent).
    pub fn consume(&mut self, n: usize) {
        self.start = (self.start + n).min(self.filled);
        if self.start == self.filled {
            self.start = 0;
            self.filled = 0;
        }
    }
    /// Returns storage handed out by [`OutBuf::take`] once its bytes were sent.
    pub fn restore(&mut self, buf: Vec<u8>) {
        debug_assert!(self.is_empty());
        self.buf = buf;
        self.start = 0;
        self.filled = 0;
    }
    /// Moves the bytes still to send to the front (before appending).
    fn compact(&mut self) {
        if self.start > 0 {
            self.buf.copy_within(self.start..self.filled, 0);
            self.filled -= self.start;
            self.start = 0;
        }
    }
    fn spare_mut(&mut self) -> &mut [u8] {
        self.compact();
        &mut self.buf[self.filled..]
    }
    fn grow_for(&mut self, extra: usize) {
        self.compact();
        let need = self.filled + extra;
        if need > self.buf.len() {
            self.buf.resize(need, 0);
        }
    }
}

/// What a [`ServerTls::read`] call achieved.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    /// The client sent close_notify: no more application data will come.
    pub peer_closed: bool,
}

#[derive(Debug)]
pub enum TlsError {
    /// The peer broke the protocol (or sent an alert). Alert bytes, if any, are in the OutBuf.
    Protocol(rustls::Error),
    /// The connection cannot take application data in its current state.
    NotWritable(&'static str),
}

impl std::fmt::Display for TlsError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TlsError::Protocol(e) => write!(f, "{e}"),
            TlsError::NotWritable(why) => write!(f, "connection not writable: {why}"),
        }
    }
}

impl std::error::Error for TlsError {}

/// Handshake facts for logs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HandshakeInfo {
    pub version: &'static str,
    pub suite: &'static str,
    pub alpn: Option<String>,
    pub resumed: bool,
}

/// rustls's unbuffered server or client connection, as [`Tls`] drives it.
pub trait Side: Sized {
    type Data;
    fn process<'c, 'i>(
        &'c mut self,
        incoming: &'i mut [u8],
    ) -> UnbufferedStatus<'c, 'i, Self::Data>;
    fn common(&self) -> &CommonState;
    fn into_kernel(self) -> KernelHandoff<Self::Data>;
}

/// What a hand-off to kernel TLS yields: the traffic secrets to install, and what rustls
/// keeps for key updates (and a client's late tickets).
pub type KernelHandoff<Data> =
    Result<(rustls::ExtractedSecrets, KernelConnection<Data>), rustls::Error>;

/// The two sides have the same methods, each in its own inherent impl.
macro_rules! side {
    ($conn:ty, $data:ty) => {
        impl Side for $conn {
            type Data = $data;
            fn process<'c, 'i>(
                &'c mut self,
                incoming: &'i mut [u8],
            ) -> UnbufferedStatus<'c, 'i, Self::Data> {
                self.process_tls_records(incoming)
            }
            fn common(&self) -> &CommonState {
                self
            }
            fn into_kernel(self) -> KernelHandoff<Self::Data> {
                self.dangerous_into_kernel_connection()
            }
        }
    };
}

side!(UnbufferedServerConnection, ServerConnectionData);
side!(UnbufferedClientConnection, ClientConnectionData);

/// A TLS connection driven over caller-owned buffers (see the module docs).
pub struct Tls<S: Side> {
    conn: S,
    failed: bool,
    /// The protocol error that failed the connection, for the caller's diagnosis.
    last_error: Option<rustls::Error>,
}

/// tlsfront terminating TLS from a client.
pub type ServerTls = Tls<UnbufferedServerConnection>;
/// tlsfront originating TLS toward a remote server (client mode).
pub type ClientTls = Tls<UnbufferedClientConnection>;

impl ServerTls {
    pub fn new(config: Arc<ServerConfig>) -> Result<Self, rustls::Error> {
        Ok(Tls {
            conn: UnbufferedServerConnection::new(config)?,
            failed: false,
            last_error: None,
        })
    }

    /// The client's certificate (the leaf, DER) when it presented one; the handshake verified
    /// it (or restored it with the resumed session).
    pub fn client_certificate(&self) -> Option<&[u8]> {
        self.conn
            .peer_certificates()
            .and_then(|chain| chain.first())
            .map(|c| c.as_ref())
    }
}

impl ClientTls {
    /// A client connection to `name`; its ClientHello is produced by the first
    /// [`Tls::read`] (with nothing received yet).
    pub fn new(
        config: Arc<ClientConfig>,
        name: ServerName<'static>,
    ) -> Result<Self, rustls::Error> {
        Ok(Tls {
            conn: UnbufferedClientConnection::new(config, name)?,
            failed: false,
            last_error: None,
        })
    }
}

impl<S: Side> Tls<S> {
    /// Hands the connection to the kernel: rustls keeps only what it needs for key updates
    /// (and, on a client, for tickets that arrive later). Needs a finished handshake,
    /// nothing left to send and secret extraction enabled.
    pub fn into_kernel(self) -> KernelHandoff<S::Data> {
        self.conn.into_kernel()
    }

    /// The protocol error that failed the connection, if one did.
    pub fn last_error(&self) -> Option<&rustls::Error> {
        self.last_error.as_ref()
    }

    pub fn is_handshaking(&self) -> bool {
        self.conn.common().is_handshaking()
    }

    pub fn negotiated_suite(&self) -> Option<rustls::SupportedCipherSuite> {
        self.conn.common().negotiated_cipher_suite()
    }

    pub fn info(&self) -> HandshakeInfo {
        let c = self.conn.common();
        HandshakeInfo {
            version: c.protocol_version().and_then(|v| v.as_str()).unwrap_or("-"),
            suite: c
                .negotiated_cipher_suite()
                .map_or("-", crate::tls::suite_name),
            alpn: c
                .alpn_protocol()
                .map(|p| String::from_utf8_lossy(p).into_owned()),
            resumed: c.handshake_kind() == Some(HandshakeKind::Resumed),
        }
    }

    /// Processes every complete record in `incoming` (removing them from its front):
    /// application data is appended to `plain`, TLS output to `out`.
    ///
    /// It always consumes every complete record, so the write path never finds unread input
    /// (see the module invariants). Plaintext is never longer than its ciphertext, so a
    /// `plain` with as much spare room as `incoming` holds never reallocates.
    /// On a protocol error the alert rustls wants to send is put in `out`.
    pub fn read(
        &mut self,
        incoming: &mut Vec<u8>,
        plain: &mut Vec<u8>,
        out: &mut OutBuf,
    ) -> Result<Progress, TlsError> {
        let mut progress = Progress::default();
        loop {
            let UnbufferedStatus { mut discard, state } = self.conn.process(incoming);
            let mut rest = false;
            let result = match state {
                Err(e) => Err(e),
                Ok(ConnectionState::ReadTraffic(mut traffic)) => {
                    let mut r = Ok(());
                    while let Some(record) = traffic.next_record() {
                        match record {
                            Ok(record) => {
                                // Nonzero once rustls decrypts in place (0.24); 0 in 0.23.
                                discard += record.discard;
                                plain.extend_from_slice(record.payload);
                            }
                            Err(e) => {
                                r = Err(e);
                                break;
                            }
                        }
                    }
                    r
                }
                Ok(ConnectionState::EncodeTlsData(mut encode)) => encode_into(&mut encode, out),
                Ok(ConnectionState::TransmitTlsData(transmit)) => {
                    // The bytes are already queued in `out`, in order; the caller sends them.
                    transmit.done();
                    Ok(())
                }
                Ok(ConnectionState::PeerClosed) => {
                    progress.peer_closed = true;
                    Ok(())
                }
                Ok(ConnectionState::Closed) => {
                    progress.peer_closed = true;
                    rest = true;
                    Ok(())
                }
                Ok(ConnectionState::BlockedHandshake | ConnectionState::WriteTraffic(_)) => {
                    rest = true;
                    Ok(())
                }
                Ok(_) => Err(rustls::Error::General(
                    "unexpected TLS connection state".into(),
                )),
            };
            incoming.drain(..discard);
            if let Err(e) = result {
                self.fail(incoming, out);
                self.last_error = Some(e.clone());
                return Err(TlsError::Protocol(e));
            }
            if rest {
                return Ok(progress);
            }
        }
    }

    /// Encrypts `plain` as application data records appended to `out`.
    ///
    /// `out` must have room for [`out_capacity`]`(plain.len())` minus the control slack.
    /// `incoming` holds the client bytes not yet processed (see the module invariants); it is
    /// only looked at, never consumed.
    pub fn encrypt(
        &mut self,
        incoming: &mut [u8],
        plain: &[u8],
        out: &mut OutBuf,
    ) -> Result<(), TlsError> {
        self.write_with(incoming, out, |traffic, spare| {
            traffic.encrypt(plain, spare)
        })
    }

    /// Appends a close_notify alert to `out`.
    pub fn close_notify(&mut self, incoming: &mut [u8], out: &mut OutBuf) -> Result<(), TlsError> {
        self.write_with(incoming, out, |traffic, spare| {
            traffic.queue_close_notify(spare)
        })
    }

    fn write_with(
        &mut self,
        incoming: &mut [u8],
        out: &mut OutBuf,
        mut write: impl FnMut(
            &mut rustls::unbuffered::WriteTraffic<'_, S::Data>,
            &mut [u8],
        ) -> Result<usize, EncryptError>,
    ) -> Result<(), TlsError> {
        if self.failed {
            return Err(TlsError::NotWritable("connection failed"));
        }
        // Bounded: each pass either finishes or flushes one queued control record first.
        for _ in 0..16 {
            let UnbufferedStatus { discard, state } = self.conn.process(incoming);
            if discard != 0 {
                // `read` consumes every complete record, so nothing here can be new input.
                self.failed = true;
                return Err(TlsError::NotWritable("unprocessed client records"));
            }
            match state.map_err(TlsError::Protocol)? {
                ConnectionState::WriteTraffic(mut traffic) => {
                    return match write(&mut traffic, out.spare_mut()) {
                        Ok(n) => {
                            out.filled += n;
                            Ok(())
                        }
                        Err(EncryptError::InsufficientSize(need)) => {
                            out.grow_for(need.required_size);
                            let n = write(&mut traffic, out.spare_mut()).map_err(|e| {
                                TlsError::Protocol(rustls::Error::General(e.to_string()))
                            })?;
                            out.filled += n;
                            Ok(())
                        }
                        Err(e) => Err(TlsError::Protocol(rustls::Error::General(e.to_string()))),
                    };
                }
                ConnectionState::EncodeTlsData(mut encode) => {
                    encode_into(&mut encode, out).map_err(TlsError::Protocol)?
                }
                ConnectionState::TransmitTlsData(transmit) => transmit.done(),
                ConnectionState::PeerClosed => {}
                ConnectionState::Closed => return Err(TlsError::NotWritable("closed")),
                ConnectionState::BlockedHandshake => {
                    return Err(TlsError::NotWritable("handshaking"))
                }
                _ => return Err(TlsError::NotWritable("unread plaintext pending")),
            }
        }
        Err(TlsError::NotWritable("no write state reached"))
    }

    /// After a protocol error: move the alert rustls queued into `out`.
    fn fail(&mut self, incoming: &mut [u8], out: &mut OutBuf) {
        self.failed = true;
        // Some deframing errors queue their alert only on the next pass, so allow one more
        // pass; stop at the first alert, since rustls must not be asked to fail twice.
        for _ in 0..2 {
            let UnbufferedStatus { state, .. } = self.conn.process(incoming);
            match state {
                Ok(ConnectionState::EncodeTlsData(mut encode)) => {
                    let _ = encode_into(&mut encode, out);
                    return;
                }
                Err(_) => {}
                Ok(_) => return,
            }
        }
    }
}

fn encode_into<Data>(
    encode: &mut rustls::unbuffered::EncodeTlsData<'_, Data>,
    out: &mut OutBuf,
) -> Result<(), rustls::Error> {
    match encode.encode(out.spare_mut()) {
        Ok(n) => {
            out.filled += n;
            Ok(())
        }
        Err(EncodeError::InsufficientSize(need)) => {
            // Only handshake flights (long certificate chains) get here; grow once.
            out.grow_for(need.required_size);
            let n = encode
                .encode(out.spare_mut())
                .map_err(|e| rustls::Error::General(e.to_string()))?;
            out.filled += n;
            Ok(())
        }
        Err(e) => Err(rustls::Error::General(e.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tls::{build_server_config, CertSource, TlsPolicy};
    use std::io::{Read, Write};

    struct Pair {
        client: rustls::ClientConnection,
        server: ServerTls,
        incoming: Vec<u8>,
        plain: Vec<u8>,
        out: OutBuf,
    }

    fn pair(versions: &[&'static rustls::SupportedProtocolVersion]) -> Pair {
        let policy = TlsPolicy::default();
        let built = build_server_config(&policy, &CertSource::Ephemeral, None).unwrap();
        let client_cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_protocol_versions(versions)
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(accept_any())
        .with_no_client_auth();
        Pair {
            client: rustls::ClientConnection::new(
                Arc::new(client_cfg),
                "localhost".try_into().unwrap(),
            )
            .unwrap(),
            server: ServerTls::new(Arc::new(built.config)).unwrap(),
            incoming: Vec::with_capacity(MAX_RECORD_WIRE * 2),
            plain: Vec::with_capacity(MAX_RECORD_PLAINTEXT * 2),
            out: OutBuf::with_capacity(out_capacity(MAX_RECORD_PLAINTEXT)),
        }
    }

    impl Pair {
        fn client_config(&self) -> Arc<rustls::ClientConfig> {
            let mut cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
                rustls::crypto::aws_lc_rs::default_provider(),
            ))
            .with_safe_default_protocol_versions()
            .unwrap()
            .dangerous()
            .with_custom_certificate_verifier(accept_any())
            .with_no_client_auth();
            cfg.alpn_protocols.clear();
            Arc::new(cfg)
        }

        /// Moves bytes both ways until neither side has anything to say.
        fn pump(&mut self) -> Progress {
            let mut progress = Progress::default();
            for _ in 0..20 {
                let mut moved = false;
                while self.client.wants_write() {
                    self.client.write_tls(&mut self.incoming).unwrap();
                    moved = true;
                }
                let p = self
                    .server
                    .read(&mut self.incoming, &mut self.plain, &mut self.out)
                    .unwrap();
                progress.peer_closed |= p.peer_closed;
                if !self.out.is_empty() {
                    let mut bytes = self.out.as_slice();
                    while !bytes.is_empty() {
                        self.client.read_tls(&mut bytes).unwrap();
                        self.client.process_new_packets().unwrap();
                    }
                    self.out.take(vec![0; self.out.buf.len()]);
                    moved = true;
                }
                if !moved {
                    break;
                }
            }
            progress
        }
    }

    fn accept_any() -> Arc<tlsfront_load::danger::AcceptAnyServerCert> {
        Arc::new(tlsfront_load::danger::AcceptAnyServerCert::new(Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        )))
    }

    /// A client that closes right after its Finished (both arrive in one read, as with a
    /// busy proxy and a client like `openssl s_time`) must still get its session tickets.
    #[test]
    fn tickets_are_sent_when_close_notify_follows_finished_in_one_read() {
        let built =
            build_server_config(&TlsPolicy::default(), &CertSource::Ephemeral, None).unwrap();
        let server_cfg = Arc::new(built.config);
        let mut client_cfg = (*pair(&[&rustls::version::TLS13]).client_config()).clone();
        client_cfg.resumption = rustls::client::Resumption::in_memory_sessions(8);
        let client_cfg = Arc::new(client_cfg);
        let mut kinds = Vec::new();
        for _ in 0..3 {
            let mut client =
                rustls::ClientConnection::new(client_cfg.clone(), "localhost".try_into().unwrap())
                    .unwrap();
            let mut server = ServerTls::new(server_cfg.clone()).unwrap();
            let (mut incoming, mut plain) = (Vec::with_capacity(MAX_RECORD_WIRE * 2), Vec::new());
            let mut out = OutBuf::with_capacity(out_capacity(MAX_RECORD_PLAINTEXT));
            let mut closed = false;
            for _ in 0..10 {
                while client.wants_write() {
                    client.write_tls(&mut incoming).unwrap();
                }
                if !client.is_handshaking() && !closed {
                    client.send_close_notify();
                    while client.wants_write() {
                        client.write_tls(&mut incoming).unwrap();
                    }
                    closed = true;
                }
                let _ = server.read(&mut incoming, &mut plain, &mut out);
                let mut bytes = out.as_slice();
                while !bytes.is_empty() {
                    client.read_tls(&mut bytes).unwrap();
                    let _ = client.process_new_packets();
                }
                out.take(vec![0; out.buf.len()]);
            }
            kinds.push(client.handshake_kind());
        }
        assert_eq!(
            kinds[1..],
            [Some(rustls::HandshakeKind::Resumed); 2],
            "{kinds:?}"
        );
    }

    fn round_trip(versions: &[&'static rustls::SupportedProtocolVersion], expect: &str) {
        let mut p = pair(versions);
        p.pump();
        assert!(!p.client.is_handshaking());
        assert!(!p.server.is_handshaking());
        assert_eq!(p.server.info().version, expect);

        // Client → server, more than one record, byte-exact.
        let data: Vec<u8> = (0..40_000u32).map(|i| (i * 7 + i / 251) as u8).collect();
        p.client.writer().write_all(&data).unwrap();
        let mut got = Vec::new();
        for _ in 0..10 {
            p.pump();
            got.extend_from_slice(&p.plain);
            p.plain.clear();
        }
        assert_eq!(got, data);

        // Server → client.
        p.server
            .encrypt(&mut p.incoming, &data[..20_000], &mut p.out)
            .unwrap();
        p.pump();
        let mut back = vec![0; 20_000];
        p.client.reader().read_exact(&mut back).unwrap();
        assert_eq!(back, &data[..20_000]);

        // Client close_notify is reported; the server can still send, then close.
        p.client.send_close_notify();
        assert!(p.pump().peer_closed);
        p.server
            .encrypt(&mut p.incoming, b"after", &mut p.out)
            .unwrap();
        p.server.close_notify(&mut p.incoming, &mut p.out).unwrap();
        p.pump();
        let mut tail = Vec::new();
        p.client.reader().read_to_end(&mut tail).unwrap();
        assert_eq!(tail, b"after");
    }

    #[test]
    fn tls13_round_trip_and_half_close() {
        round_trip(&[&rustls::version::TLS13], "TLSv1_3");
    }

    #[test]
    fn tls12_round_trip_and_half_close() {
        round_trip(&[&rustls::version::TLS12], "TLSv1_2");
    }

    #[test]
    fn garbage_is_a_protocol_error_with_an_alert() {
        let mut p = pair(&[&rustls::version::TLS13]);
        p.incoming
            .extend_from_slice(b"\x16\x03\x01\x00\x05hello-this-is-not-tls");
        let err = p
            .server
            .read(&mut p.incoming, &mut p.plain, &mut p.out)
            .unwrap_err();
        assert!(matches!(err, TlsError::Protocol(_)), "{err}");
        // An alert record (content type 21) was queued for the client.
        assert_eq!(p.out.as_slice().first(), Some(&21));
        assert!(p.server.encrypt(&mut p.incoming, b"x", &mut p.out).is_err());
    }

    #[test]
    fn consumed_bytes_leave_the_rest_at_the_front() {
        let mut out = OutBuf::with_capacity(8);
        out.spare_mut()[..5].copy_from_slice(b"hello");
        out.filled = 5;
        out.consume(2);
        assert_eq!(out.as_slice(), b"llo");
        out.consume(3);
        assert!(out.is_empty());
        assert_eq!(out.storage(), 8);
        // A partial send moves a cursor; appending brings the rest to the front first.
        out.spare_mut()[..6].copy_from_slice(b"abcdef");
        out.filled = 6;
        out.consume(4);
        assert_eq!(
            (out.as_slice(), out.filled(), out.spare()),
            (&b"ef"[..], 2, 6)
        );
        out.spare_mut()[..3].copy_from_slice(b"ghi");
        out.filled += 3;
        assert_eq!(out.as_slice(), b"efghi");
        out.consume(1);
        let (storage, filled) = out.take(vec![0; 8]);
        assert_eq!(
            &storage[..filled],
            b"fghi",
            "take hands out the unsent bytes from 0"
        );
        let (storage, filled) = out.take(Vec::new());
        assert_eq!((storage.len(), filled, out.storage()), (8, 0, 0));
    }

    #[test]
    fn out_capacity_covers_full_records() {
        assert!(out_capacity(16384) >= 16384 + 22 + CONTROL_SLACK);
        assert!(out_capacity(65536) >= 65536 + 4 * 22);
    }

    #[test]
    fn mangled_client_flights_never_panic() {
        let mut hello = Vec::new();
        pair(&[&rustls::version::TLS13])
            .client
            .write_tls(&mut hello)
            .unwrap();
        for i in 0..hello.len() {
            for v in [0u8, 0x7f, 0xff] {
                let mut p = pair(&[&rustls::version::TLS13]);
                p.incoming.extend_from_slice(&hello);
                p.incoming[i] = v;
                if p.server
                    .read(&mut p.incoming, &mut p.plain, &mut p.out)
                    .is_err()
                {
                    assert!(p.server.encrypt(&mut p.incoming, b"x", &mut p.out).is_err());
                }
            }
        }
    }

    #[test]
    fn write_path_with_a_partial_handshake_message_pending() {
        let mut p = pair(&[&rustls::version::TLS13]);
        let mut cfg = (*p.client_config()).clone();
        cfg.max_fragment_size = Some(64);
        p.client =
            rustls::ClientConnection::new(Arc::new(cfg), "localhost".try_into().unwrap()).unwrap();
        let mut hello = Vec::new();
        p.client.write_tls(&mut hello).unwrap();
        // First three records only: rustls keeps offsets into `incoming` between calls.
        p.incoming.extend_from_slice(&hello[..(5 + 64) * 3]);
        p.server
            .read(&mut p.incoming, &mut p.plain, &mut p.out)
            .unwrap();
        assert!(
            !p.incoming.is_empty(),
            "rustls keeps the partial message in `incoming`"
        );
        // The write path must see the same buffer: with offsets pending, an empty one panics.
        let r = p.server.encrypt(&mut p.incoming, b"x", &mut p.out);
        assert!(matches!(r, Err(TlsError::NotWritable(_))), "{r:?}");
        p.incoming.extend_from_slice(b"\x17\x03\x03\x00\x02zz");
        let _ = p.server.read(&mut p.incoming, &mut p.plain, &mut p.out);
    }

    #[test]
    fn split_client_hello_completes_the_handshake() {
        let mut p = pair(&[&rustls::version::TLS12, &rustls::version::TLS13]);
        let mut cfg = (*p.client_config()).clone();
        cfg.max_fragment_size = Some(64);
        p.client =
            rustls::ClientConnection::new(Arc::new(cfg), "localhost".try_into().unwrap()).unwrap();
        p.pump();
        assert!(!p.server.is_handshaking());
    }

    #[test]
    fn read_consumes_every_record_so_the_write_path_finds_no_input() {
        for version in [&rustls::version::TLS12, &rustls::version::TLS13] {
            let mut p = pair(&[version]);
            p.pump();
            // Four full records arrive in one read; `plain` starts smaller than their sum.
            let data = vec![0xa5; 4 * MAX_RECORD_PLAINTEXT];
            p.client.writer().write_all(&data).unwrap();
            while p.client.wants_write() {
                p.client.write_tls(&mut p.incoming).unwrap();
            }
            p.plain = Vec::with_capacity(MAX_RECORD_PLAINTEXT);
            p.server
                .read(&mut p.incoming, &mut p.plain, &mut p.out)
                .unwrap();
            assert!(p.incoming.is_empty());
            assert_eq!(p.plain, data);
            // Before the fix this failed: complete records were left for the write path.
            p.server
                .encrypt(&mut p.incoming, b"reply", &mut p.out)
                .unwrap();
        }
    }

    #[test]
    fn remaining_bytes_of_the_first_record() {
        assert_eq!(record_remaining(&[]), 0);
        assert_eq!(record_remaining(&[23, 3]), 3);
        assert_eq!(record_remaining(&[23, 3, 3, 0, 10]), 10);
        assert_eq!(record_remaining(&[23, 3, 3, 0, 10, 1, 2, 3]), 7);
        assert_eq!(record_remaining(&[23, 3, 3, 0, 2, 1, 2, 23]), 0);
    }
}
