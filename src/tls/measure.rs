//! Record-layer speed of each cipher suite on this CPU, through the proxy's own TLS driver
//! (`conn::tls::ServerTls` over rustls's unbuffered connection, decrypting in place): a
//! rustls client joined to it in memory with one suite offered. `seal` is what the proxy does
//! for backend → client bytes, `open` for client → backend. Used by `tlsfront ciphers` and
//! the criterion benches, so both measure the same thing.

use std::io::Write;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::crypto::aws_lc_rs as provider;
use rustls::{ClientConfig, ClientConnection, RootCertStore, SupportedCipherSuite};
use serde::Serialize;

use crate::conn::tls::{out_capacity, OutBuf, ServerTls, MAX_RECORD_PLAINTEXT, MAX_RECORD_WIRE};
use crate::tls::{build_server_config, per_worker_config, suite_name, CertSource, TlsPolicy};

/// A connected client and proxy-side session with one suite, and the buffers between them.
pub struct RecordPair {
    client: ClientConnection,
    server: ServerTls,
    /// Client → server bytes not yet processed by the server.
    incoming: Vec<u8>,
    plain: Vec<u8>,
    out: OutBuf,
}

impl RecordPair {
    pub fn new(suite: SupportedCipherSuite) -> Result<Self, String> {
        let tls13 = matches!(suite, SupportedCipherSuite::Tls13(_));
        let version = if tls13 {
            crate::tls::Version::Tls13
        } else {
            crate::tls::Version::Tls12
        };
        let policy = TlsPolicy {
            min_version: version,
            max_version: version,
            ciphers: Some(vec![suite_name(suite).to_string()]),
            ..TlsPolicy::default()
        };
        let built =
            build_server_config(&policy, &CertSource::Ephemeral, None).map_err(|e| e.message)?;
        let server_cfg = per_worker_config(&built.config, &built.certified, 64, false);
        let mut roots = RootCertStore::empty();
        roots
            .add(built.certified.cert[0].clone())
            .map_err(|e| e.to_string())?;
        let versions: &[&'static rustls::SupportedProtocolVersion] = if tls13 {
            &[&rustls::version::TLS13]
        } else {
            &[&rustls::version::TLS12]
        };
        let client_cfg =
            ClientConfig::builder_with_provider(Arc::new(rustls::crypto::CryptoProvider {
                cipher_suites: vec![suite],
                ..provider::default_provider()
            }))
            .with_protocol_versions(versions)
            .map_err(|e| e.to_string())?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let name = "localhost".try_into().map_err(|_| "bad name".to_string())?;
        let mut pair = RecordPair {
            client: ClientConnection::new(Arc::new(client_cfg), name).map_err(|e| e.to_string())?,
            server: ServerTls::new(server_cfg).map_err(|e| e.to_string())?,
            incoming: Vec::with_capacity(MAX_RECORD_WIRE * 8),
            plain: Vec::with_capacity(MAX_RECORD_PLAINTEXT * 8),
            out: OutBuf::with_capacity(out_capacity(64 * 1024)),
        };
        pair.handshake()?;
        Ok(pair)
    }

    fn handshake(&mut self) -> Result<(), String> {
        for _ in 0..16 {
            while self.client.wants_write() {
                self.client
                    .write_tls(&mut self.incoming)
                    .map_err(|e| e.to_string())?;
            }
            self.server
                .read(&mut self.incoming, &mut self.plain, &mut self.out)
                .map_err(|e| format!("{e:?}"))?;
            // The client takes in everything the server wrote (tickets included).
            let mut bytes = self.out.as_slice();
            while !bytes.is_empty() {
                self.client
                    .read_tls(&mut bytes)
                    .map_err(|e| e.to_string())?;
                self.client
                    .process_new_packets()
                    .map_err(|e| e.to_string())?;
            }
            self.clear_out();
            if !self.client.is_handshaking() && !self.server.is_handshaking() {
                return Ok(());
            }
        }
        Err("handshake did not finish".into())
    }

    fn clear_out(&mut self) {
        let (storage, _) = self.out.take(Vec::new());
        self.out.restore(storage);
    }

    /// The proxy seals `data` (at most 64 KiB) as records, then drops them.
    pub fn seal(&mut self, data: &[u8]) {
        // Cannot fail once the handshake is done: the output buffer is sized for 64 KiB.
        let _ = self.server.encrypt(&mut self.incoming, data, &mut self.out);
        self.clear_out();
    }

    /// The client seals `data` for the next [`open`](Self::open) (not part of the timing).
    pub fn prepare_open(&mut self, data: &[u8]) {
        let _ = self.client.writer().write_all(data);
        while self.client.wants_write() {
            let _ = self.client.write_tls(&mut self.incoming);
        }
    }

    /// The proxy opens what [`prepare_open`](Self::prepare_open) sealed; returns the
    /// plaintext length.
    pub fn open(&mut self) -> usize {
        self.plain.clear();
        if self
            .server
            .read(&mut self.incoming, &mut self.plain, &mut self.out)
            .is_err()
        {
            return 0;
        }
        self.plain.len()
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
            // Sealing needs no unread input queued (the driver's invariant), so the client's
            // records come after it, outside the timing.
            pair.prepare_open(&data);
            let t2 = Instant::now();
            let n = pair.open();
            let t3 = Instant::now();
            if n != record {
                return Err(format!("opened {n} bytes of a {record}-byte record"));
            }
            sealing += t1 - t0;
            opening += t3 - t2;
            bytes += record as u64;
        }
    }
    let mb = bytes as f64 / 1e6;
    Ok(SuiteSpeed {
        suite: suite_name(suite),
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
            // TLS 1.2 RSA suites need an RSA certificate; the ephemeral one is ECDSA.
            if suite_name(suite).contains("_RSA_") {
                continue;
            }
            let mut pair = RecordPair::new(suite).unwrap();
            for size in [64, 1024, 16 * 1024, 40_000] {
                pair.prepare_open(&vec![7; size]);
                assert!(pair.incoming.len() > size, "sealed records carry tags");
                assert_eq!(pair.open(), size, "{}", suite_name(suite));
                assert!(pair.plain.iter().all(|b| *b == 7));
                assert!(pair.incoming.is_empty(), "every record consumed");
                pair.seal(&vec![9; size]);
            }
        }
    }

    #[test]
    fn measurement_reports_positive_speeds() {
        let s = measure(tls13_suites()[0], 1024, Duration::from_millis(20)).unwrap();
        assert!(s.seal_mb_s > 0.0 && s.open_mb_s > 0.0, "{s:?}");
    }
}
