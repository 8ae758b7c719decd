//! rustls client configuration for a run: trust, protocol versions, suites, groups, ALPN,
//! resumption. Every worker thread gets its own copy (own session cache), so threads never
//! share a lock while handshaking.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{anyhow, bail, Context};
use rustls::client::Resumption;
use rustls::crypto::{aws_lc_rs, CryptoProvider};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, RootCertStore, SupportedProtocolVersion};
use serde::Serialize;

use crate::danger::AcceptAnyServerCert;

/// How the server certificate is checked.
#[derive(Clone, Debug)]
pub enum Trust {
    /// Against the CA certificates in this PEM file.
    CaFile(PathBuf),
    /// Not at all (benchmarking only).
    Insecure,
}

pub const INSECURE_WARNING: &str = "WARNING: --insecure: the server certificate is NOT verified. \
     For benchmarking on a trusted host only; never use it to reach a real service.";

/// What the client offers. Empty lists mean the provider's defaults.
#[derive(Clone, Debug, Default)]
pub struct Offer {
    /// `"1.2"`, `"1.3"`; empty: both.
    pub versions: Vec<String>,
    /// IANA names (`TLS13_AES_128_GCM_SHA256`) or families: `aes128gcm`, `aes256gcm`, `chacha20`.
    pub suites: Vec<String>,
    /// `x25519`, `p256`, `p384`, `x25519mlkem768` (IANA names work too).
    pub groups: Vec<String>,
    pub alpn: Vec<String>,
}

/// A checked client setup; [`ClientSpec::thread_config`] makes each thread's config.
#[derive(Clone)]
pub struct ClientSpec {
    base: Arc<ClientConfig>,
    pub server_name: ServerName<'static>,
}

impl ClientSpec {
    pub fn new(
        trust: &Trust,
        offer: &Offer,
        server_name: ServerName<'static>,
    ) -> anyhow::Result<Self> {
        let mut provider = aws_lc_rs::default_provider();
        let versions = versions(&offer.versions)?;
        if !offer.suites.is_empty() {
            let all = provider.cipher_suites.clone();
            provider.cipher_suites = select(
                &all,
                &offer.suites,
                "suite",
                |s| format!("{:?}", s.suite()),
                |name, key| suite_family(key).is_some_and(|f| name.contains(f)),
            )?;
        }
        provider
            .cipher_suites
            .retain(|s| versions.iter().any(|v| v.version == s.version().version));
        if provider.cipher_suites.is_empty() {
            bail!("no offered suite fits the offered TLS versions");
        }
        if !offer.groups.is_empty() {
            provider.kx_groups = select(
                aws_lc_rs::ALL_KX_GROUPS,
                &offer.groups,
                "group",
                |g| format!("{:?}", g.name()),
                |name, key| group_alias(key).is_some_and(|g| name.eq_ignore_ascii_case(g)),
            )?;
        }
        // The first use of aws-lc's RNG seeds it (tens of ms): do it now, not in the first
        // handshake's time.
        provider
            .secure_random
            .fill(&mut [0u8; 16])
            .map_err(|_| anyhow!("aws-lc RNG failed"))?;
        let provider = Arc::new(provider);
        let builder = ClientConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&versions)?;
        let mut config = match trust {
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
        config.alpn_protocols = offer.alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
        Ok(Self {
            base: Arc::new(config),
            server_name,
        })
    }

    /// This thread's config: with `resume`, its own ticket/session cache; without, none.
    pub fn thread_config(&self, resume: bool) -> Arc<ClientConfig> {
        let mut config = (*self.base).clone();
        config.resumption = if resume {
            Resumption::in_memory_sessions(64)
        } else {
            Resumption::disabled()
        };
        Arc::new(config)
    }
}

fn versions(names: &[String]) -> anyhow::Result<Vec<&'static SupportedProtocolVersion>> {
    if names.is_empty() {
        return Ok(rustls::DEFAULT_VERSIONS.to_vec());
    }
    names
        .iter()
        .map(
            |v| match v.trim_start_matches("TLSv").trim_start_matches("tls") {
                "1.2" | "12" => Ok(&rustls::version::TLS12),
                "1.3" | "13" => Ok(&rustls::version::TLS13),
                other => bail!("unknown TLS version {other:?}; known: 1.2, 1.3"),
            },
        )
        .collect()
}

/// Items of `all` named in `wanted` (in that order), by exact name or by `alias_matches(name,
/// key)` where key is the wanted word lowercased without `-`/`_`.
fn select<T: Copy>(
    all: &[T],
    wanted: &[String],
    what: &str,
    name: impl Fn(&T) -> String,
    alias_matches: impl Fn(&str, &str) -> bool,
) -> anyhow::Result<Vec<T>> {
    let mut out: Vec<T> = Vec::new();
    for w in wanted {
        let key = w.to_ascii_lowercase().replace(['-', '_'], "");
        let found: Vec<T> = all
            .iter()
            .filter(|item| {
                let n = name(item);
                n.eq_ignore_ascii_case(w) || alias_matches(&n, &key)
            })
            .copied()
            .collect();
        if found.is_empty() {
            let known: Vec<String> = all.iter().map(&name).collect();
            bail!("unknown {what} {w:?}; known: {}", known.join(", "));
        }
        out.extend(found);
    }
    Ok(out)
}

fn suite_family(key: &str) -> Option<&'static str> {
    match key {
        "aes128gcm" | "aes128" => Some("AES_128_GCM"),
        "aes256gcm" | "aes256" => Some("AES_256_GCM"),
        "chacha20" | "chacha20poly1305" | "chacha" => Some("CHACHA20"),
        _ => None,
    }
}

fn group_alias(key: &str) -> Option<&'static str> {
    match key {
        "p256" | "secp256r1" | "prime256v1" => Some("secp256r1"),
        "p384" | "secp384r1" => Some("secp384r1"),
        "x25519mlkem768" | "mlkem" => Some("X25519MLKEM768"),
        _ => None,
    }
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

/// What a handshake settled on.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct Negotiated {
    pub version: String,
    pub suite: String,
    pub group: String,
    pub alpn: Option<String>,
}

impl Negotiated {
    pub fn of(conn: &rustls::ClientConnection) -> Self {
        Self {
            version: conn
                .protocol_version()
                .map(|v| format!("{v:?}"))
                .unwrap_or_default(),
            suite: conn
                .negotiated_cipher_suite()
                .map(|s| format!("{:?}", s.suite()))
                .unwrap_or_default(),
            group: conn
                .negotiated_key_exchange_group()
                .map(|g| format!("{:?}", g.name()))
                .unwrap_or_else(|| "(resumed)".into()),
            alpn: conn
                .alpn_protocol()
                .map(|p| String::from_utf8_lossy(p).into_owned()),
        }
    }
}

/// The provider this tool uses (for listing names in help and errors).
pub fn provider() -> CryptoProvider {
    aws_lc_rs::default_provider()
}
