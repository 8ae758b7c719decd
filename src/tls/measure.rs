//! Record-layer speed of each cipher suite on this CPU: a rustls client and server joined in
//! memory, one suite offered, the client sealing records and the server opening them. Used
//! by `tlsfront ciphers` and the criterion benches, so both measure the same thing.

use std::io::{Read, Write};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::crypto::aws_lc_rs as provider;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::{ClientConfig, ClientConnection, RootCertStore, ServerConfig, ServerConnection};
use rustls::{SupportedCipherSuite, SupportedProtocolVersion};
use serde::Serialize;

/// A connected client/server pair with one suite, and the buffers between them.
pub struct RecordPair {
    client: ClientConnection,
    server: ServerConnection,
    wire: Vec<u8>,
    plain: Vec<u8>,
}

impl RecordPair {
    pub fn new(suite: SupportedCipherSuite) -> Result<Self, String> {
        let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()])
            .map_err(|e| e.to_string())?;
        let der = CertificateDer::from(cert.cert.der().to_vec());
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(cert.key_pair.serialize_der()));
        let version: &'static SupportedProtocolVersion = match suite {
            SupportedCipherSuite::Tls12(_) => &rustls::version::TLS12,
            SupportedCipherSuite::Tls13(_) => &rustls::version::TLS13,
        };
        let provider = Arc::new(CryptoProvider {
            cipher_suites: vec![suite],
            ..provider::default_provider()
        });
        let server_cfg = ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[version])
            .map_err(|e| e.to_string())?
            .with_no_client_auth()
            .with_single_cert(vec![der.clone()], key)
            .map_err(|e| e.to_string())?;
        let mut roots = RootCertStore::empty();
        roots.add(der).map_err(|e| e.to_string())?;
        let client_cfg = ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[version])
            .map_err(|e| e.to_string())?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let name = "localhost".try_into().map_err(|_| "bad name".to_string())?;
        let mut pair = RecordPair {
            client: ClientConnection::new(Arc::new(client_cfg), name).map_err(|e| e.to_string())?,
            server: ServerConnection::new(Arc::new(server_cfg)).map_err(|e| e.to_string())?,
            wire: Vec::with_capacity(1 << 20),
            plain: vec![0; 1 << 16],
        };
        pair.handshake()?;
        Ok(pair)
    }

    fn handshake(&mut self) -> Result<(), String> {
        for _ in 0..16 {
            if !self.client.is_handshaking() && !self.server.is_handshaking() {
                // Take in the server's tickets so that sealing starts from a quiet state.
                self.transfer_to_client()?;
                return Ok(());
            }
            self.wire.clear();
            while self.client.wants_write() {
                self.client
                    .write_tls(&mut self.wire)
                    .map_err(|e| e.to_string())?;
            }
            self.transfer_to_server()?;
            self.transfer_to_client()?;
        }
        Err("handshake did not finish".into())
    }

    fn transfer_to_server(&mut self) -> Result<(), String> {
        let mut rd = &self.wire[..];
        while !rd.is_empty() {
            self.server.read_tls(&mut rd).map_err(|e| e.to_string())?;
            self.server
                .process_new_packets()
                .map_err(|e| e.to_string())?;
        }
        self.wire.clear();
        Ok(())
    }

    fn transfer_to_client(&mut self) -> Result<(), String> {
        self.wire.clear();
        while self.server.wants_write() {
            self.server
                .write_tls(&mut self.wire)
                .map_err(|e| e.to_string())?;
        }
        let mut rd = &self.wire[..];
        while !rd.is_empty() {
            self.client.read_tls(&mut rd).map_err(|e| e.to_string())?;
            self.client
                .process_new_packets()
                .map_err(|e| e.to_string())?;
        }
        self.wire.clear();
        Ok(())
    }

    /// The client seals `data` (one record if it fits in 16 KiB) into the wire buffer.
    pub fn seal(&mut self, data: &[u8]) {
        self.wire.clear();
        // In-memory writes into a Vec cannot fail.
        let _ = self.client.writer().write_all(data);
        while self.client.wants_write() {
            let _ = self.client.write_tls(&mut self.wire);
        }
    }

    /// The server opens what was last sealed; returns the plaintext length.
    pub fn open(&mut self) -> usize {
        let mut rd = &self.wire[..];
        let mut total = 0;
        while !rd.is_empty() {
            if self.server.read_tls(&mut rd).is_err() || self.server.process_new_packets().is_err()
            {
                return total;
            }
            while let Ok(n) = self.server.reader().read(&mut self.plain) {
                if n == 0 {
                    break;
                }
                total += n;
            }
        }
        total
    }
}

/// One suite's measured speed at one record size, MB = 10^6 bytes.
#[derive(Debug, Clone, Serialize)]
pub struct SuiteSpeed {
    pub suite: &'static str,
    pub record: usize,
    pub seal_mb_s: f64,
    pub open_mb_s: f64,
}

/// Seal and open `record`-byte records with `suite` for about `time` each way.
pub fn measure(
    suite: SupportedCipherSuite,
    record: usize,
    time: Duration,
) -> Result<SuiteSpeed, String> {
    let mut pair = RecordPair::new(suite)?;
    let data = vec![0x5a; record];
    let (mut sealing, mut opening, mut bytes) = (Duration::ZERO, Duration::ZERO, 0u64);
    while sealing + opening < time * 2 {
        // Batches keep the clock reads rare next to the work.
        for _ in 0..16 {
            let t0 = Instant::now();
            pair.seal(&data);
            let t1 = Instant::now();
            let n = pair.open();
            let t2 = Instant::now();
            if n != record {
                return Err(format!("opened {n} bytes of a {record}-byte record"));
            }
            sealing += t1 - t0;
            opening += t2 - t1;
            bytes += record as u64;
        }
    }
    let mb = bytes as f64 / 1e6;
    Ok(SuiteSpeed {
        suite: crate::tls::suite_name(suite),
        record,
        seal_mb_s: mb / sealing.as_secs_f64(),
        open_mb_s: mb / opening.as_secs_f64(),
    })
}

/// The TLS 1.3 suites of the provider, one per AEAD.
pub fn tls13_suites() -> Vec<SupportedCipherSuite> {
    provider::ALL_CIPHER_SUITES
        .iter()
        .copied()
        .filter(|s| matches!(s, SupportedCipherSuite::Tls13(_)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_suite_round_trips_records_of_each_size() {
        for suite in provider::ALL_CIPHER_SUITES.iter().copied() {
            // TLS 1.2 RSA suites need an RSA certificate; the pair uses ECDSA.
            if crate::tls::suite_name(suite).contains("_RSA_") {
                continue;
            }
            let mut pair = RecordPair::new(suite).unwrap();
            for size in [64, 1024, 16 * 1024] {
                pair.seal(&vec![7; size]);
                assert!(pair.wire.len() > size, "sealed record carries a tag");
                assert_eq!(pair.open(), size, "{}", crate::tls::suite_name(suite));
            }
        }
    }

    #[test]
    fn measurement_reports_positive_speeds() {
        let s = measure(tls13_suites()[0], 1024, Duration::from_millis(20)).unwrap();
        assert!(s.seal_mb_s > 0.0 && s.open_mb_s > 0.0, "{s:?}");
    }
}
