//! rustls server configs from a service's TLS policy, and certificate/key loading.
//!
//! Everything here runs at configuration time; errors say which policy field is at fault so
//! the config layer can point at the right line.

pub mod client_auth;
pub mod cpu;
pub mod measure;
pub mod tickets;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::crypto::aws_lc_rs::{self as provider, kx_group};
use rustls::crypto::{CryptoProvider, SupportedKxGroup};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::ResolvesServerCert;
use rustls::sign::CertifiedKey;
use rustls::{ServerConfig, SupportedCipherSuite};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Version {
    Tls12,
    Tls13,
}

impl Version {
    pub fn parse(text: &str) -> Option<Version> {
        match text
            .trim()
            .to_ascii_lowercase()
            .trim_start_matches("tls")
            .trim_start_matches('v')
        {
            "1.2" => Some(Version::Tls12),
            "1.3" => Some(Version::Tls13),
            _ => None,
        }
    }
}

/// A service's TLS policy as written in the config (names not yet checked).
/// The default is the config's: TLS 1.2–1.3, default suites and groups, no ALPN.
#[derive(Debug, Clone)]
pub struct TlsPolicy {
    pub min_version: Version,
    pub max_version: Version,
    pub ciphers: Option<Vec<String>>,
    pub preference: CipherPreference,
    pub groups: Option<Vec<String>>,
    pub alpn: Vec<String>,
}

impl Default for TlsPolicy {
    fn default() -> Self {
        TlsPolicy {
            min_version: Version::Tls12,
            max_version: Version::Tls13,
            ciphers: None,
            preference: CipherPreference::default(),
            groups: None,
            alpn: Vec::new(),
        }
    }
}

/// `cipher_preference`: whose order picks the suite.
///
/// - `auto` (default): AES-GCM and ChaCha20-Poly1305 are of equal rank (BoringSSL's
///   equal-preference idea) and the CPU breaks the tie: where AES-GCM is accelerated it goes
///   first, unless the client lists a ChaCha20 suite before every AES-GCM suite (a client
///   without AES hardware says so by its order), which then gets ChaCha20. Without AES
///   acceleration ChaCha20 goes first. Otherwise the configured order holds.
/// - `server`: the configured `ciphers` order (or rustls's default order) wins.
/// - `client`: the client's order wins among the configured suites.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CipherPreference {
    #[default]
    Auto,
    Server,
    Client,
}

impl CipherPreference {
    pub fn parse(text: &str) -> Option<Self> {
        match text.trim().to_ascii_lowercase().as_str() {
            "auto" => Some(Self::Auto),
            "server" => Some(Self::Server),
            "client" => Some(Self::Client),
            _ => None,
        }
    }
}

fn is_chacha(suite: SupportedCipherSuite) -> bool {
    suite_name(suite).contains("CHACHA20")
}

/// Stable partition: ChaCha20 suites first when `chacha_first`, else AES-GCM (and anything
/// else) first; the configured order holds within each family.
fn order_families(
    suites: &[SupportedCipherSuite],
    chacha_first: bool,
) -> Vec<SupportedCipherSuite> {
    let (chacha, other): (Vec<_>, Vec<_>) = suites.iter().copied().partition(|s| is_chacha(*s));
    if chacha_first {
        chacha.into_iter().chain(other).collect()
    } else {
        other.into_iter().chain(chacha).collect()
    }
}

/// Whether a ClientHello's suite list (codes, client order) puts ChaCha20 before AES-GCM.
pub fn client_prefers_chacha(suites: impl IntoIterator<Item = u16>) -> bool {
    for code in suites {
        let name = rustls::CipherSuite::from(code).as_str().unwrap_or("");
        if name.contains("CHACHA20") {
            return true;
        }
        if name.contains("AES") && name.contains("GCM") {
            return false;
        }
    }
    false
}

/// Where the server certificate comes from.
#[derive(Debug, Clone)]
pub enum CertSource {
    Files {
        cert: PathBuf,
        key: PathBuf,
    },
    /// Generate a self-signed certificate for localhost / 127.0.0.1 in memory.
    Ephemeral,
}

/// The policy field an error belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PolicyField {
    Cert,
    Key,
    Ciphers,
    Groups,
    Versions,
    Alpn,
}

#[derive(Debug, Clone)]
pub struct PolicyError {
    pub field: PolicyField,
    pub message: String,
}

fn fail<T>(field: PolicyField, message: impl Into<String>) -> Result<T, PolicyError> {
    Err(PolicyError {
        field,
        message: message.into(),
    })
}

pub struct BuiltConfig {
    pub config: ServerConfig,
    /// `auto` on an AES-accelerated CPU: the variant with ChaCha20 first (see
    /// [`CipherPreference`]).
    pub chacha_first: Option<ServerConfig>,
    /// The certificate chain and key the config serves (for per-worker copies).
    pub certified: Arc<CertifiedKey>,
    pub cert_sha256: String,
}

/// A worker's own copy of a service's config: its own `Arc`, session cache and certificate
/// `Arc`, so that no reference count or cache lock is written by two workers per handshake.
///
/// `extract_secrets` keeps the session keys extractable after the handshake, which the
/// kernel TLS hand-off needs; it is off unless the connection may be offloaded.
///
/// The ticketer (stateless tickets) stays shared: a ticket from one worker resumes on any.
/// A `session_cache_size` of 0 turns the stateful cache off.
pub fn per_worker_config(
    shared: &ServerConfig,
    certified: &CertifiedKey,
    session_cache_size: usize,
    extract_secrets: bool,
) -> Arc<ServerConfig> {
    let mut config = shared.clone();
    config.enable_secret_extraction = extract_secrets;
    config.session_storage = if session_cache_size == 0 {
        Arc::new(rustls::server::NoServerSessionStorage {})
    } else {
        rustls::server::ServerSessionMemoryCache::new(session_cache_size)
    };
    config.cert_resolver = Arc::new(SingleCert(Arc::new(certified.clone())));
    Arc::new(config)
}

/// A worker's copy of a variant of `primary` (same service, another suite order): it shares
/// the worker's session cache and certificate, so sessions resume across variants.
pub fn per_worker_variant(variant: &ServerConfig, primary: &ServerConfig) -> Arc<ServerConfig> {
    let mut config = variant.clone();
    config.enable_secret_extraction = primary.enable_secret_extraction;
    config.session_storage = primary.session_storage.clone();
    config.cert_resolver = primary.cert_resolver.clone();
    Arc::new(config)
}

/// Group names accepted in `groups`, in the default preference order.
pub const GROUP_NAMES: &[(&str, &dyn SupportedKxGroup)] = &[
    ("X25519MLKEM768", kx_group::X25519MLKEM768),
    ("X25519", kx_group::X25519),
    ("P-256", kx_group::SECP256R1),
    ("P-384", kx_group::SECP384R1),
];

/// The IANA name rustls uses for a suite, e.g. `TLS13_AES_128_GCM_SHA256`.
pub fn suite_name(suite: SupportedCipherSuite) -> &'static str {
    suite.suite().as_str().unwrap_or("unknown")
}

/// The default order: rustls's suites with each AES-128-GCM suite moved before the
/// AES-256-GCM suite of its version (Mozilla's order). AES-128 seals ~20% faster, and its
/// SHA-256 key schedule runs on the SHA extensions, while aws-lc's SHA-384 uses its generic
/// code on non-Intel CPUs (full handshakes on a Zen 4 core: +18%,
/// `tuning/runs/2026-11-23-perf/summary.md`).
fn aes128_first(suites: &[SupportedCipherSuite]) -> Vec<SupportedCipherSuite> {
    let mut out = suites.to_vec();
    for i in 0..out.len() {
        let name = suite_name(out[i]);
        if !name.contains("AES_128_GCM") {
            continue;
        }
        let twin = name.replace("AES_128_GCM_SHA256", "AES_256_GCM_SHA384");
        if let Some(j) = out[..i].iter().position(|s| suite_name(*s) == twin) {
            let s = out.remove(i);
            out.insert(j, s);
        }
    }
    out
}

fn select_suites(policy: &TlsPolicy) -> Result<Vec<SupportedCipherSuite>, PolicyError> {
    let all = provider::ALL_CIPHER_SUITES;
    let chosen: Vec<SupportedCipherSuite> = match &policy.ciphers {
        None => aes128_first(provider::DEFAULT_CIPHER_SUITES),
        Some(names) => {
            let mut out = Vec::with_capacity(names.len());
            for name in names {
                let found = all
                    .iter()
                    .find(|s| suite_name(**s).eq_ignore_ascii_case(name.trim()))
                    .copied();
                match found {
                    Some(s) if !out.contains(&s) => out.push(s),
                    Some(_) => {}
                    None => {
                        let known: Vec<&str> = all.iter().map(|s| suite_name(*s)).collect();
                        return fail(
                            PolicyField::Ciphers,
                            format!("unknown cipher {name:?}; known: {}", known.join(", ")),
                        );
                    }
                }
            }
            out
        }
    };
    let usable: Vec<SupportedCipherSuite> = chosen
        .into_iter()
        .filter(|s| {
            let v = match s {
                SupportedCipherSuite::Tls12(_) => Version::Tls12,
                SupportedCipherSuite::Tls13(_) => Version::Tls13,
            };
            (policy.min_version..=policy.max_version).contains(&v)
        })
        .collect();
    if usable.is_empty() {
        return fail(
            PolicyField::Ciphers,
            "no listed cipher suite is usable with the allowed TLS versions",
        );
    }
    Ok(usable)
}

fn select_groups(policy: &TlsPolicy) -> Result<Vec<&'static dyn SupportedKxGroup>, PolicyError> {
    let Some(names) = &policy.groups else {
        return Ok(GROUP_NAMES.iter().map(|(_, g)| *g).collect());
    };
    if names.is_empty() {
        return fail(PolicyField::Groups, "must list at least one group");
    }
    names
        .iter()
        .map(|name| {
            let canon = match name.trim().to_ascii_lowercase().as_str() {
                "secp256r1" | "prime256v1" => "P-256".to_owned(),
                "secp384r1" => "P-384".to_owned(),
                other => other.to_owned(),
            };
            GROUP_NAMES
                .iter()
                .find(|(n, _)| n.eq_ignore_ascii_case(&canon))
                .map(|(_, g)| *g)
                .ok_or_else(|| PolicyError {
                    field: PolicyField::Groups,
                    message: format!(
                        "unknown group {name:?}; known: {}",
                        GROUP_NAMES
                            .iter()
                            .map(|(n, _)| *n)
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                })
        })
        .collect()
}

/// Loads a PEM chain and its key, checking that they belong together.
pub fn load_certified_key(
    cert: &Path,
    key: &Path,
    provider: &CryptoProvider,
) -> Result<CertifiedKey, PolicyError> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .and_then(|it| it.collect::<Result<_, _>>())
        .or_else(|e| {
            fail(
                PolicyField::Cert,
                format!(
                    "cannot read certificate {}: {}",
                    cert.display(),
                    pem_error(&e)
                ),
            )
        })?;
    if chain.is_empty() {
        return fail(
            PolicyField::Cert,
            format!("no certificate found in {}", cert.display()),
        );
    }
    let key_der = PrivateKeyDer::from_pem_file(key).or_else(|e| {
        fail(
            PolicyField::Key,
            format!(
                "cannot read private key {}: {}",
                key.display(),
                pem_error(&e)
            ),
        )
    })?;
    let signing_key = provider
        .key_provider
        .load_private_key(key_der)
        .or_else(|e| {
            fail(
                PolicyField::Key,
                format!("unusable private key {}: {e}", key.display()),
            )
        })?;
    let certified = CertifiedKey::new(chain, signing_key);
    certified.keys_match().or_else(|e| {
        fail(
            PolicyField::Key,
            format!(
                "key does not match the certificate ({} vs {}): {e}",
                key.display(),
                cert.display()
            ),
        )
    })?;
    Ok(certified)
}

fn pem_error(e: &rustls::pki_types::pem::Error) -> String {
    match e {
        rustls::pki_types::pem::Error::Io(io) => io.to_string(),
        rustls::pki_types::pem::Error::NoItemsFound => {
            "no PEM item of the expected kind found".into()
        }
        other => format!("{other:?}"),
    }
}

/// A self-signed certificate for `localhost` and 127.0.0.1 (ECDSA P-256), in memory.
pub fn ephemeral_certified_key(provider: &CryptoProvider) -> Result<CertifiedKey, PolicyError> {
    let generated = rcgen::generate_simple_self_signed(vec![
        "localhost".into(),
        "127.0.0.1".into(),
        "::1".into(),
    ])
    .or_else(|e| {
        fail(
            PolicyField::Cert,
            format!("cannot generate a self-signed certificate: {e}"),
        )
    })?;
    let key_der = PrivateKeyDer::try_from(generated.key_pair.serialize_der())
        .or_else(|e| fail(PolicyField::Key, format!("generated key: {e}")))?;
    let signing_key = provider
        .key_provider
        .load_private_key(key_der)
        .or_else(|e| fail(PolicyField::Key, format!("generated key: {e}")))?;
    Ok(CertifiedKey::new(
        vec![generated.cert.der().clone()],
        signing_key,
    ))
}

/// Hex SHA-256 of a DER certificate, `aa:bb:…` style like `openssl x509 -fingerprint`.
pub fn fingerprint_sha256(der: &[u8]) -> String {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, der);
    digest
        .as_ref()
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect::<Vec<_>>()
        .join(":")
}

#[derive(Debug)]
struct SingleCert(Arc<CertifiedKey>);

impl ResolvesServerCert for SingleCert {
    fn resolve(&self, _hello: rustls::server::ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }
}

/// The TLS versions a policy allows, as rustls names them.
fn protocol_versions(policy: &TlsPolicy) -> Vec<&'static rustls::SupportedProtocolVersion> {
    let mut versions: Vec<&'static rustls::SupportedProtocolVersion> = Vec::with_capacity(2);
    if policy.min_version <= Version::Tls12 && policy.max_version >= Version::Tls12 {
        versions.push(&rustls::version::TLS12);
    }
    if policy.max_version >= Version::Tls13 {
        versions.push(&rustls::version::TLS13);
    }
    versions
}

fn check_alpn(policy: &TlsPolicy) -> Result<(), PolicyError> {
    match policy.alpn.iter().find(|p| p.is_empty() || p.len() > 255) {
        Some(proto) => fail(
            PolicyField::Alpn,
            format!("ALPN protocol {proto:?} must be 1 to 255 bytes"),
        ),
        None => Ok(()),
    }
}

/// Builds the rustls server config for one service.
/// `client_verifier` asks for client certificates (mTLS); `None` asks for none.
pub fn build_server_config(
    policy: &TlsPolicy,
    source: &CertSource,
    client_verifier: Option<Arc<dyn rustls::server::danger::ClientCertVerifier>>,
) -> Result<BuiltConfig, PolicyError> {
    let provider = CryptoProvider {
        cipher_suites: select_suites(policy)?,
        kx_groups: select_groups(policy)?,
        ..provider::default_provider()
    };
    let versions = protocol_versions(policy);
    let certified = match source {
        CertSource::Files { cert, key } => load_certified_key(cert, key, &provider)?,
        CertSource::Ephemeral => ephemeral_certified_key(&provider)?,
    };
    let cert_sha256 = fingerprint_sha256(
        certified
            .end_entity_cert()
            .map(|c| c.as_ref())
            .unwrap_or_default(),
    );
    let certified = Arc::new(certified);
    check_alpn(policy)?;
    let accelerated = cpu::aes_gcm_accelerated();
    let (order, variant) = match policy.preference {
        CipherPreference::Auto if accelerated => {
            let has_both = provider.cipher_suites.iter().any(|s| is_chacha(*s))
                && provider.cipher_suites.iter().any(|s| !is_chacha(*s));
            (Some(false), has_both)
        }
        CipherPreference::Auto => (Some(true), false),
        CipherPreference::Server | CipherPreference::Client => (None, false),
    };
    let assemble = |chacha_first: Option<bool>| {
        let mut p = provider.clone();
        if let Some(chacha_first) = chacha_first {
            p.cipher_suites = order_families(&p.cipher_suites, chacha_first);
        }
        let mut config = ServerConfig::builder_with_provider(Arc::new(p))
            .with_protocol_versions(&versions)
            .or_else(|e| {
                fail(
                    PolicyField::Versions,
                    format!("inconsistent TLS policy: {e}"),
                )
            })?
            .with_client_cert_verifier(match &client_verifier {
                Some(v) => v.clone(),
                None => rustls::server::WebPkiClientVerifier::no_client_auth(),
            })
            .with_cert_resolver(Arc::new(SingleCert(certified.clone())));
        config.ignore_client_order = policy.preference != CipherPreference::Client;
        config.alpn_protocols = policy.alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
        Ok(config)
    };
    let config = assemble(order)?;
    let chacha_first = if variant {
        Some(assemble(Some(true))?)
    } else {
        None
    };
    Ok(BuiltConfig {
        config,
        chacha_first,
        certified,
        cert_sha256,
    })
}

/// Where a client-mode service's trusted roots come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Roots {
    /// The operating system's store (rustls-native-certs: /etc/ssl/certs and the like).
    System,
    /// A PEM bundle.
    File(PathBuf),
}

/// The roots a client trusts; an error says what is wrong with the bundle.
pub fn load_roots(roots: &Roots) -> Result<rustls::RootCertStore, String> {
    let mut store = rustls::RootCertStore::empty();
    let certs: Vec<CertificateDer<'static>> = match roots {
        Roots::System => {
            let found = rustls_native_certs::load_native_certs();
            if found.certs.is_empty() {
                let why = found
                    .errors
                    .first()
                    .map_or("none found".to_owned(), |e| e.to_string());
                return Err(format!("no system CA certificates: {why}"));
            }
            found.certs
        }
        Roots::File(path) => CertificateDer::pem_file_iter(path)
            .and_then(|it| it.collect::<Result<_, _>>())
            .map_err(|e| {
                format!(
                    "cannot read CA bundle {}: {}",
                    path.display(),
                    pem_error(&e)
                )
            })?,
    };
    let (added, _ignored) = store.add_parsable_certificates(certs);
    if added == 0 {
        return Err(match roots {
            Roots::System => "no usable system CA certificate".to_owned(),
            Roots::File(p) => format!("no usable CA certificate in {}", p.display()),
        });
    }
    Ok(store)
}

/// How a client decides that the server is the right one.
pub enum ServerTrust {
    /// A chain to one of these roots, for the server name.
    Roots(rustls::RootCertStore),
    /// The leaf's SubjectPublicKeyInfo has one of these SHA-256 digests (no CA, no name:
    /// a pinned key is the identity), and the handshake signature verifies with it.
    Pins(Vec<[u8; 32]>),
}

/// The verifier for [`ServerTrust::Pins`].
#[derive(Debug)]
struct PinnedServer {
    pins: Vec<[u8; 32]>,
    algorithms: rustls::crypto::WebPkiSupportedAlgorithms,
}

impl rustls::client::danger::ServerCertVerifier for PinnedServer {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        let id = client_auth::Identity::from_der(end_entity.as_ref()).map_err(|_| {
            rustls::Error::InvalidCertificate(rustls::CertificateError::BadEncoding)
        })?;
        if self.pins.contains(&id.spki_sha256) {
            Ok(rustls::client::danger::ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::ApplicationVerificationFailure,
            ))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// The client certificate a client-mode service presents when the server asks.
#[derive(Debug)]
struct ClientIdentity(Arc<CertifiedKey>);

impl rustls::client::ResolvesClientCert for ClientIdentity {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[rustls::SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// Builds the rustls client config of a client-mode service: the policy's versions,
/// suites, groups and ALPN; the given roots; a client certificate when `identity` is set.
pub fn build_client_config(
    policy: &TlsPolicy,
    trust: ServerTrust,
    identity: Option<(&Path, &Path)>,
) -> Result<rustls::ClientConfig, PolicyError> {
    let provider = CryptoProvider {
        cipher_suites: select_suites(policy)?,
        kx_groups: select_groups(policy)?,
        ..provider::default_provider()
    };
    let versions = protocol_versions(policy);
    check_alpn(policy)?;
    let identity = match identity {
        Some((cert, key)) => Some(load_certified_key(cert, key, &provider)?),
        None => None,
    };
    let algorithms = provider.signature_verification_algorithms;
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(provider))
        .with_protocol_versions(&versions)
        .or_else(|e| {
            fail(
                PolicyField::Versions,
                format!("inconsistent TLS policy: {e}"),
            )
        })?;
    let builder = match trust {
        ServerTrust::Roots(roots) => builder.with_root_certificates(roots),
        ServerTrust::Pins(pins) => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(PinnedServer { pins, algorithms })),
    };
    let mut config = match identity {
        Some(certified) => {
            builder.with_client_cert_resolver(Arc::new(ClientIdentity(Arc::new(certified))))
        }
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = policy.alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
    Ok(config)
}

/// A worker's copy of a client config: its own session store (tickets per remote server
/// name, `cache_size` entries; 0 turns resumption off), nothing shared per handshake.
pub fn per_worker_client_config(
    shared: &rustls::ClientConfig,
    cache_size: usize,
    extract_secrets: bool,
) -> Arc<rustls::ClientConfig> {
    let mut config = shared.clone();
    config.enable_secret_extraction = extract_secrets;
    config.resumption = if cache_size == 0 {
        rustls::client::Resumption::disabled()
    } else {
        rustls::client::Resumption::in_memory_sessions(cache_size)
    };
    Arc::new(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chacha_preference_is_read_from_the_first_aead_family_listed() {
        use rustls::CipherSuite as C;
        let codes = |l: &[C]| l.iter().map(|c| u16::from(*c)).collect::<Vec<_>>();
        let prefers = |l: &[C]| client_prefers_chacha(codes(l));
        assert!(prefers(&[
            C::TLS13_CHACHA20_POLY1305_SHA256,
            C::TLS13_AES_128_GCM_SHA256
        ]));
        assert!(!prefers(&[
            C::TLS13_AES_256_GCM_SHA384,
            C::TLS13_CHACHA20_POLY1305_SHA256
        ]));
        // Suites of neither family do not decide (CCM, CBC, signalling values).
        assert!(prefers(&[
            C::TLS13_AES_128_CCM_SHA256,
            C::TLS_EMPTY_RENEGOTIATION_INFO_SCSV,
            C::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
            C::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
        ]));
        assert!(!prefers(&[]));
    }

    #[test]
    fn the_default_order_puts_aes128_before_aes256_in_each_version() {
        let names: Vec<&str> = aes128_first(provider::DEFAULT_CIPHER_SUITES)
            .into_iter()
            .map(suite_name)
            .collect();
        let at = |n: &str| names.iter().position(|x| *x == n).unwrap();
        assert!(at("TLS13_AES_128_GCM_SHA256") < at("TLS13_AES_256_GCM_SHA384"));
        assert!(
            at("TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256")
                < at("TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384")
        );
        assert!(
            at("TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256")
                < at("TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384")
        );
        // Nothing lost, nothing added, TLS 1.3 still first.
        assert_eq!(names.len(), provider::DEFAULT_CIPHER_SUITES.len());
        assert!(names[..3].iter().all(|n| n.starts_with("TLS13_")));
    }

    #[test]
    fn families_move_as_blocks_and_keep_their_inner_order() {
        use provider::cipher_suite as s;
        let all = [
            s::TLS13_AES_256_GCM_SHA384,
            s::TLS13_CHACHA20_POLY1305_SHA256,
            s::TLS13_AES_128_GCM_SHA256,
            s::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
        ];
        let names =
            |v: Vec<SupportedCipherSuite>| v.into_iter().map(suite_name).collect::<Vec<_>>();
        assert_eq!(
            names(order_families(&all, true)),
            [
                "TLS13_CHACHA20_POLY1305_SHA256",
                "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256",
                "TLS13_AES_256_GCM_SHA384",
                "TLS13_AES_128_GCM_SHA256"
            ]
        );
        assert_eq!(
            names(order_families(&all, false)),
            [
                "TLS13_AES_256_GCM_SHA384",
                "TLS13_AES_128_GCM_SHA256",
                "TLS13_CHACHA20_POLY1305_SHA256",
                "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256"
            ]
        );
    }

    #[test]
    fn auto_builds_a_chacha_variant_only_where_it_can_matter() {
        let built = build_server_config(&policy(), &CertSource::Ephemeral, None).unwrap();
        assert!(built.config.ignore_client_order);
        assert_eq!(built.chacha_first.is_some(), cpu::aes_gcm_accelerated());
        let aes_only = TlsPolicy {
            ciphers: Some(vec!["TLS13_AES_128_GCM_SHA256".into()]),
            ..policy()
        };
        let built = build_server_config(&aes_only, &CertSource::Ephemeral, None).unwrap();
        assert!(built.chacha_first.is_none(), "nothing to reorder");
        let client = TlsPolicy {
            preference: CipherPreference::Client,
            ..policy()
        };
        let built = build_server_config(&client, &CertSource::Ephemeral, None).unwrap();
        assert!(!built.config.ignore_client_order && built.chacha_first.is_none());
    }

    fn policy() -> TlsPolicy {
        TlsPolicy::default()
    }

    #[test]
    fn worker_copies_share_no_per_handshake_state() {
        let built = build_server_config(&policy(), &CertSource::Ephemeral, None).unwrap();
        let a = per_worker_config(&built.config, &built.certified, 16, false);
        let b = per_worker_config(&built.config, &built.certified, 16, true);
        assert!(!a.enable_secret_extraction && b.enable_secret_extraction);
        assert!(!Arc::ptr_eq(&a, &b));
        assert!(!Arc::ptr_eq(&a.session_storage, &b.session_storage));
        assert!(!Arc::ptr_eq(
            &a.session_storage,
            &built.config.session_storage
        ));
        assert!(!Arc::ptr_eq(&a.cert_resolver, &b.cert_resolver));
        // Same policy otherwise.
        assert_eq!(a.alpn_protocols, built.config.alpn_protocols);
        assert_eq!(
            a.crypto_provider().cipher_suites.len(),
            built.config.crypto_provider().cipher_suites.len()
        );
    }

    #[test]
    fn default_groups_put_the_hybrid_first() {
        let built = build_server_config(&policy(), &CertSource::Ephemeral, None).unwrap();
        let names: Vec<_> = built
            .config
            .crypto_provider()
            .kx_groups
            .iter()
            .map(|g| g.name())
            .collect();
        assert_eq!(
            names.first(),
            Some(&rustls::NamedGroup::X25519MLKEM768),
            "{names:?}"
        );
    }

    #[test]
    fn version_names() {
        assert_eq!(Version::parse("1.2"), Some(Version::Tls12));
        assert_eq!(Version::parse("TLSv1.3"), Some(Version::Tls13));
        assert_eq!(Version::parse("1.1"), None);
    }
}
