//! rustls client configuration: trust (CA file or none at all) and suite choice.

use std::path::Path;
use std::sync::Arc;

use anyhow::{anyhow, bail, Context};
use rustls::crypto::aws_lc_rs;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, RootCertStore};
use tlsfront::tls::danger::AcceptAnyServerCert;

/// How the server certificate is checked.
pub enum Trust<'a> {
    /// Against the CA certificates in this PEM file.
    CaFile(&'a Path),
    /// Not at all (benchmarking only).
    Insecure,
}

pub const INSECURE_WARNING: &str = "WARNING: --insecure: the server certificate is NOT verified. \
     For benchmarking on a trusted host only; never use it to reach a real service.";

/// Names of the TLS 1.3 suites `--tls13-suite` accepts.
pub fn tls13_suite_names() -> Vec<String> {
    aws_lc_rs::default_provider()
        .cipher_suites
        .iter()
        .filter(|s| s.version() == &rustls::version::TLS13)
        .map(|s| format!("{:?}", s.suite()))
        .collect()
}

/// Client config. With `tls13_suite`, only TLS 1.3 with that one suite is offered.
pub fn client_config(trust: Trust, tls13_suite: Option<&str>) -> anyhow::Result<Arc<ClientConfig>> {
    let mut provider = aws_lc_rs::default_provider();
    let versions: &[&rustls::SupportedProtocolVersion] = match tls13_suite {
        Some(name) => {
            provider.cipher_suites.retain(|s| {
                s.version() == &rustls::version::TLS13 && format!("{:?}", s.suite()) == name
            });
            if provider.cipher_suites.is_empty() {
                bail!(
                    "unknown TLS 1.3 suite {name:?}; known: {}",
                    tls13_suite_names().join(", ")
                );
            }
            &[&rustls::version::TLS13]
        }
        None => rustls::DEFAULT_VERSIONS,
    };
    // The first use of aws-lc's RNG seeds it (tens of ms here): do it now so
    // that it does not count as the first connection's handshake time.
    provider
        .secure_random
        .fill(&mut [0u8; 16])
        .map_err(|_| anyhow!("aws-lc RNG failed"))?;
    let provider = Arc::new(provider);
    let builder =
        ClientConfig::builder_with_provider(provider.clone()).with_protocol_versions(versions)?;
    let config = match trust {
        Trust::CaFile(path) => {
            let certs = CertificateDer::pem_file_iter(path)
                .and_then(|it| it.collect::<Result<Vec<_>, _>>())
                .with_context(|| format!("reading CA file {}", path.display()))?;
            let mut roots = RootCertStore::empty();
            let (added, _) = roots.add_parsable_certificates(certs);
            if added == 0 {
                bail!("no usable CA certificate in {}", path.display());
            }
            builder.with_root_certificates(roots).with_no_client_auth()
        }
        Trust::Insecure => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAnyServerCert::new(provider)))
            .with_no_client_auth(),
    };
    Ok(Arc::new(config))
}

/// SNI / name to verify: `sni` if given, else the host part of `connect`.
pub fn server_name(sni: Option<&str>, connect: &str) -> anyhow::Result<ServerName<'static>> {
    let host = match sni {
        Some(s) => s,
        None => connect.rsplit_once(':').map_or(connect, |(h, _)| h),
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    ServerName::try_from(host.to_string()).with_context(|| format!("bad server name {host:?}"))
}
