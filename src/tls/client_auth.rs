//! Client certificates (mTLS): the `client_auth` mode, the `allow_*` allowlist, what a client
//! certificate says about its holder, and the rustls verifier that enforces all of it.
//!
//! Invariants:
//! - A client certificate is first verified by webpki against `client_ca` (and the CRLs); the
//!   allowlist is only consulted for a certificate that already passed, so an allowlist can
//!   narrow who gets in but never admit a certificate the CA bundle would refuse.
//! - Every refusal surfaces as a `rustls::Error` that [`refusal`] maps to one of four close
//!   reasons, and rustls picks the alert the client sees from that same error.
//! - Nothing here panics on what a peer sends: certificates are parsed with fallible parsers.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use aws_lc_rs::digest;
use base64::Engine as _;
use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, CertificateRevocationListDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::WebPkiClientVerifier;
use rustls::{
    CertificateError, DigitallySignedStruct, DistinguishedName, Error, RootCertStore,
    SignatureScheme,
};
use x509_parser::asn1_rs::Tag;
use x509_parser::extensions::GeneralName;
use x509_parser::x509::AttributeTypeAndValue;

/// `client_auth`: whether the server asks for a client certificate and whether it insists.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ClientAuthMode {
    /// No CertificateRequest is sent; clients stay anonymous.
    #[default]
    None,
    /// A certificate is requested; none is fine, but one that is sent must verify.
    Optional,
    /// A verified certificate is a condition of the handshake.
    Required,
}

impl ClientAuthMode {
    pub fn parse(text: &str) -> Option<Self> {
        match text.trim().to_ascii_lowercase().as_str() {
            "none" => Some(Self::None),
            "optional" => Some(Self::Optional),
            "required" => Some(Self::Required),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Optional => "optional",
            Self::Required => "required",
        }
    }
}

/// An allowlist / identity matcher (`allow_cn`, `allow_dns`, `allow_uri`, `allow_spki`): a
/// certificate matches when ANY entry of ANY list matches, so lists widen, never narrow, each
/// other. The same type serves the service's allowlist and the `by_identity` route matchers.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Allow {
    /// Subject common names, compared exactly: a CN is free text, so no case folding is safe.
    pub cn: Vec<String>,
    /// DNS SANs, compared ASCII case-insensitively as DNS names are; no wildcard expansion,
    /// a `*.x` entry matches only a certificate that literally carries `*.x`.
    pub dns: Vec<String>,
    /// URI SAN prefixes, case-sensitive, so `spiffe://corp/ns/billing/` admits every workload
    /// of that namespace.
    pub uri_prefix: Vec<String>,
    /// SHA-256 of the SubjectPublicKeyInfo DER: pins a key, which survives re-issuing.
    pub spki_sha256: Vec<[u8; 32]>,
}

impl Allow {
    /// True when no list has an entry: the verifier then admits every verified certificate.
    pub fn is_empty(&self) -> bool {
        self.cn.is_empty()
            && self.dns.is_empty()
            && self.uri_prefix.is_empty()
            && self.spki_sha256.is_empty()
    }

    /// Parses one `allow_spki` entry: 64 hex digits (either case, optionally as 32 colon
    /// separated pairs as `openssl` prints them) or the standard base64 of the 32 bytes (as in
    /// HPKP / curl's `--pinnedpubkey sha256//`), so pins can be pasted from either tool.
    pub fn parse_spki_pin(text: &str) -> Result<[u8; 32], String> {
        let text = text.trim();
        let hex: Option<String> = if text.contains(':') {
            let pairs: Vec<&str> = text.split(':').collect();
            if pairs.len() != 32 || pairs.iter().any(|p| p.len() != 2) {
                return Err(format!(
                    "{text:?}: colon-separated SPKI pin must be 32 pairs of hex digits"
                ));
            }
            Some(pairs.concat())
        } else if text.len() == 64 {
            Some(text.to_owned())
        } else {
            None
        };
        if let Some(hex) = hex {
            return decode_hex32(&hex)
                .ok_or_else(|| format!("{text:?}: SPKI pin has a non-hex digit"));
        }
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(text)
            .map_err(|_| {
                format!("{text:?}: SPKI pin must be 64 hex digits or base64 of 32 bytes")
            })?;
        <[u8; 32]>::try_from(bytes.as_slice()).map_err(|_| {
            format!(
                "{text:?}: SPKI pin decodes to {} bytes, a SHA-256 is 32",
                bytes.len()
            )
        })
    }

    /// Whether any entry matches `id`. An empty `Allow` matches nothing; callers decide what
    /// an empty list means (the verifier treats it as "no allowlist").
    pub fn permits(&self, id: &Identity) -> bool {
        let cn = id.cn.as_deref();
        self.cn.iter().any(|want| cn == Some(want.as_str()))
            || self
                .dns
                .iter()
                .any(|want| id.dns.iter().any(|have| have.eq_ignore_ascii_case(want)))
            || self
                .uri_prefix
                .iter()
                .any(|want| id.uri.iter().any(|have| have.starts_with(want.as_str())))
            || self.spki_sha256.contains(&id.spki_sha256)
    }
}

fn decode_hex32(hex: &str) -> Option<[u8; 32]> {
    let digits = hex.as_bytes();
    if digits.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (byte, pair) in out.iter_mut().zip(digits.chunks_exact(2)) {
        let high = char::from(pair[0]).to_digit(16)?;
        let low = char::from(pair[1]).to_digit(16)?;
        *byte = u8::try_from(high * 16 + low).ok()?;
    }
    Some(out)
}

fn hex(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        // Writing to a String cannot fail.
        let _ = write!(out, "{b:02x}");
    }
    out
}

fn sha256(data: &[u8]) -> [u8; 32] {
    let mut out = [0u8; 32];
    out.copy_from_slice(digest::digest(&digest::SHA256, data).as_ref());
    out
}

/// What tlsfront knows about a client certificate (the leaf): what the allowlist matches on
/// and what is passed to backends (PROXY v2 TLVs, the identity socket).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The subject's first common name; `None` without one, or when it is not text.
    pub cn: Option<String>,
    /// DNS SANs in certificate order.
    pub dns: Vec<String>,
    /// URI SANs in certificate order (the first is the SPIFFE ID, if any).
    pub uri: Vec<String>,
    /// SHA-256 of the whole certificate DER (the usual certificate fingerprint).
    pub sha256: [u8; 32],
    /// SHA-256 of the SubjectPublicKeyInfo DER (what `allow_spki` pins).
    pub spki_sha256: [u8; 32],
}

impl Identity {
    /// Reads a DER certificate. Errors (not panics) on anything that is not exactly one
    /// well-formed certificate, including trailing bytes, since the input comes from the peer.
    pub fn from_der(der: &[u8]) -> Result<Identity, String> {
        let (rest, cert) = x509_parser::parse_x509_certificate(der)
            .map_err(|e| format!("cannot parse certificate: {e}"))?;
        if !rest.is_empty() {
            return Err(format!("{} bytes after the certificate's end", rest.len()));
        }
        // The first CN, as nginx's `$ssl_client_s_dn` consumers and most CAs assume one; a
        // CN that is not text (or not decodable) simply matches no `allow_cn` entry.
        let cn = cert
            .subject()
            .iter_common_name()
            .next()
            .and_then(attribute_text);
        let mut dns = Vec::new();
        let mut uri = Vec::new();
        let san = cert
            .subject_alternative_name()
            .map_err(|e| format!("bad subjectAltName: {e}"))?;
        if let Some(san) = san {
            for name in &san.value.general_names {
                match name {
                    GeneralName::DNSName(name) => dns.push((*name).to_owned()),
                    GeneralName::URI(name) => uri.push((*name).to_owned()),
                    _ => {}
                }
            }
        }
        Ok(Identity {
            cn,
            dns,
            uri,
            sha256: sha256(der),
            spki_sha256: sha256(cert.public_key().raw),
        })
    }

    /// Lowercase hex without colons, the identity socket's `sha256` field.
    pub fn sha256_hex(&self) -> String {
        hex(&self.sha256)
    }

    /// Lowercase hex without colons; the same form `allow_spki` accepts.
    pub fn spki_sha256_hex(&self) -> String {
        hex(&self.spki_sha256)
    }
}

/// A directory string as text. x509-parser reads only the single-byte string types; BMPString
/// (UTF-16BE) and UniversalString (UTF-32BE) are decoded here because Windows CAs still emit
/// them, and a CN that silently failed to match would be hard to diagnose.
fn attribute_text(attr: &AttributeTypeAndValue<'_>) -> Option<String> {
    if let Ok(text) = attr.as_str() {
        return Some(text.to_owned());
    }
    let value = attr.attr_value();
    let data = value.data;
    match value.tag() {
        Tag::BmpString if data.len() % 2 == 0 => {
            let units = data
                .chunks_exact(2)
                .map(|pair| u16::from_be_bytes([pair[0], pair[1]]));
            char::decode_utf16(units)
                .collect::<Result<String, _>>()
                .ok()
        }
        Tag::UniversalString if data.len() % 4 == 0 => data
            .chunks_exact(4)
            .map(|quad| char::from_u32(u32::from_be_bytes([quad[0], quad[1], quad[2], quad[3]])))
            .collect::<Option<String>>(),
        _ => None,
    }
}

/// Why a client certificate was refused; each maps to a close reason
/// (`client_cert_missing`, `client_cert_invalid`, `client_cert_revoked`, `client_not_allowed`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    Missing,
    Invalid,
    Revoked,
    NotAllowed,
}

/// Classifies the error a *server* connection's failed handshake returned: `Some(..)` when it
/// is about the client certificate.
///
/// Server-side, rustls returns the verifier's error itself (after sending the alert derived
/// from it), and `NoCertificatesPresented` for a required certificate that was not sent. A
/// server has no certificate of its own to verify, so any `InvalidCertificate` there is the
/// client's, including a bad CertificateVerify signature. A CRL that fails at verification
/// time (e.g. signed by a key that may not sign CRLs) is counted as invalid: the certificate
/// could not be verified.
pub fn refusal(err: &Error) -> Option<Refusal> {
    match err {
        Error::NoCertificatesPresented => Some(Refusal::Missing),
        Error::InvalidCertificate(CertificateError::Revoked) => Some(Refusal::Revoked),
        Error::InvalidCertificate(CertificateError::ApplicationVerificationFailure) => {
            Some(Refusal::NotAllowed)
        }
        Error::InvalidCertificate(_) | Error::InvalidCertRevocationList(_) => {
            Some(Refusal::Invalid)
        }
        _ => None,
    }
}

/// Builds the client-certificate verifier for a service or route.
///
/// `None` returns rustls's verifier that never sends a CertificateRequest, without reading
/// `ca` or `crls`. Otherwise the CA bundle (PEM) and every CRL file (PEM or DER) are read and
/// checked here, at configuration time, so a bad file is reported by name before anything
/// binds; errors name the file.
///
/// Revocation: every certificate of the chain below the trust anchor is checked (an
/// intermediate revoked by the root's CRL takes its leaves with it), but a certificate whose
/// issuer has no CRL configured counts as not revoked (`allow_unknown_revocation_status`).
/// Without that, a root-issued CRL for leaves would make every chain with an intermediate fail
/// with "unknown revocation status", and `client_crl` would have to cover every issuing CA.
/// Expired CRLs are still used (rustls's default): a stale list still revokes what it lists,
/// and refusing all clients because a CRL refresh is late would turn a monitoring problem into
/// an outage.
pub fn build_verifier(
    mode: ClientAuthMode,
    ca: &Path,
    crls: &[PathBuf],
    allow: Allow,
    provider: Arc<CryptoProvider>,
) -> Result<Arc<dyn ClientCertVerifier>, String> {
    if mode == ClientAuthMode::None {
        return Ok(WebPkiClientVerifier::no_client_auth());
    }
    let roots = Arc::new(load_roots(ca)?);
    let mut all_crls = Vec::new();
    for path in crls {
        let file_crls = load_crls(path)?;
        // The builder parses all CRLs at once and its error does not say which one failed;
        // parsing each file alone lets the message name it.
        WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone())
            .with_crls(file_crls.iter().cloned())
            .build()
            .map_err(|e| format!("unusable client_crl {}: {e}", path.display()))?;
        all_crls.extend(file_crls);
    }
    let mut builder = WebPkiClientVerifier::builder_with_provider(roots, provider)
        .with_crls(all_crls)
        .allow_unknown_revocation_status();
    if mode == ClientAuthMode::Optional {
        builder = builder.allow_unauthenticated();
    }
    let inner = builder
        .build()
        .map_err(|e| format!("unusable client_ca {}: {e}", ca.display()))?;
    if allow.is_empty() {
        return Ok(inner);
    }
    Ok(Arc::new(AllowlistVerifier { inner, allow }))
}

fn load_roots(ca: &Path) -> Result<RootCertStore, String> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(ca)
        .and_then(|it| it.collect::<Result<_, _>>())
        .map_err(|e| {
            format!(
                "cannot read client_ca {}: {}",
                ca.display(),
                super::pem_error(&e)
            )
        })?;
    if certs.is_empty() {
        return Err(format!(
            "no certificate found in client_ca {}",
            ca.display()
        ));
    }
    let mut roots = RootCertStore::empty();
    for (index, cert) in certs.into_iter().enumerate() {
        // One bad certificate fails the bundle instead of being skipped: a CA silently
        // missing would show up only as refused clients.
        roots.add(cert).map_err(|e| {
            format!(
                "client_ca {}: certificate #{} is not a usable trust anchor: {e}",
                ca.display(),
                index + 1
            )
        })?;
    }
    Ok(roots)
}

/// A CRL file in PEM (one or more `X509 CRL` blocks) or DER (exactly one CRL); PEM is
/// recognised by its armour rather than guessed from the first byte.
fn load_crls(path: &Path) -> Result<Vec<CertificateRevocationListDer<'static>>, String> {
    let bytes = std::fs::read(path)
        .map_err(|e| format!("cannot read client_crl {}: {e}", path.display()))?;
    let is_pem = bytes.windows(11).any(|w| w == b"-----BEGIN ");
    if !is_pem {
        if bytes.is_empty() {
            return Err(format!("client_crl {} is empty", path.display()));
        }
        return Ok(vec![CertificateRevocationListDer::from(bytes)]);
    }
    let crls: Vec<CertificateRevocationListDer<'static>> =
        CertificateRevocationListDer::pem_slice_iter(&bytes)
            .collect::<Result<_, _>>()
            .map_err(|e| {
                format!(
                    "cannot read client_crl {}: {}",
                    path.display(),
                    super::pem_error(&e)
                )
            })?;
    if crls.is_empty() {
        return Err(format!(
            "no X509 CRL found in client_crl {}",
            path.display()
        ));
    }
    Ok(crls)
}

/// webpki's verifier plus the allowlist. Everything but `verify_client_cert` is delegated
/// unchanged, so CA hints, signature checks and the optional/required policy stay webpki's.
#[derive(Debug)]
struct AllowlistVerifier {
    inner: Arc<dyn ClientCertVerifier>,
    allow: Allow,
}

impl ClientCertVerifier for AllowlistVerifier {
    fn offer_client_auth(&self) -> bool {
        self.inner.offer_client_auth()
    }

    fn client_auth_mandatory(&self) -> bool {
        self.inner.client_auth_mandatory()
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    /// The allowlist runs only after webpki accepted the chain, so it never sees an
    /// unverified certificate. A refusal is `ApplicationVerificationFailure`, which rustls
    /// turns into the `access_denied` alert and [`refusal`] into `NotAllowed`.
    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, Error> {
        let verified = self
            .inner
            .verify_client_cert(end_entity, intermediates, now)?;
        // webpki accepted it, so a parse failure here means x509-parser is stricter than
        // webpki for this certificate: refuse as badly encoded rather than let it through.
        let identity = Identity::from_der(end_entity)
            .map_err(|_| Error::InvalidCertificate(CertificateError::BadEncoding))?;
        if self.allow.permits(&identity) {
            Ok(verified)
        } else {
            Err(Error::InvalidCertificate(
                CertificateError::ApplicationVerificationFailure,
            ))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }

    fn requires_raw_public_keys(&self) -> bool {
        self.inner.requires_raw_public_keys()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{
        date_time_ymd, BasicConstraints, CertificateParams, CertificateRevocationListParams,
        DistinguishedName as Dn, DnType, ExtendedKeyUsagePurpose, IsCa, KeyIdMethod, KeyPair,
        KeyUsagePurpose, RevocationReason, RevokedCertParams, SanType, SerialNumber,
    };
    use rustls::pki_types::{PrivateKeyDer, ServerName};
    use rustls::{AlertDescription, ClientConfig, Connection, ServerConfig};

    fn provider() -> Arc<CryptoProvider> {
        Arc::new(rustls::crypto::aws_lc_rs::default_provider())
    }

    struct Ca {
        cert: rcgen::Certificate,
        key: KeyPair,
    }

    fn ca_params(name: &str, serial: u64) -> CertificateParams {
        let mut params = CertificateParams::default();
        params.distinguished_name = Dn::new();
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.serial_number = Some(SerialNumber::from(serial));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params
    }

    fn root_ca(name: &str) -> Ca {
        let key = KeyPair::generate().unwrap();
        let cert = ca_params(name, 1).self_signed(&key).unwrap();
        Ca { cert, key }
    }

    fn intermediate_ca(parent: &Ca, name: &str, serial: u64) -> Ca {
        let key = KeyPair::generate().unwrap();
        let cert = ca_params(name, serial)
            .signed_by(&key, &parent.cert, &parent.key)
            .unwrap();
        Ca { cert, key }
    }

    /// A client certificate and its key, with the chain the client sends.
    struct Client {
        chain: Vec<CertificateDer<'static>>,
        key: KeyPair,
    }

    #[derive(Default)]
    struct LeafSpec<'a> {
        cn: Option<&'a str>,
        dns: &'a [&'a str],
        uri: &'a [&'a str],
        serial: u64,
    }

    fn leaf(issuer: &Ca, spec: LeafSpec<'_>, intermediates: &[&Ca]) -> Client {
        let mut params = CertificateParams::default();
        params.distinguished_name = Dn::new();
        if let Some(cn) = spec.cn {
            params.distinguished_name.push(DnType::CommonName, cn);
        }
        params.subject_alt_names = spec
            .dns
            .iter()
            .map(|d| SanType::DnsName((*d).try_into().unwrap()))
            .chain(
                spec.uri
                    .iter()
                    .map(|u| SanType::URI((*u).try_into().unwrap())),
            )
            .collect();
        params.serial_number = Some(SerialNumber::from(spec.serial));
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &issuer.cert, &issuer.key).unwrap();
        let mut chain = vec![cert.der().clone()];
        chain.extend(intermediates.iter().map(|ca| ca.cert.der().clone()));
        Client { chain, key }
    }

    fn crl(issuer: &Ca, revoked: &[u64]) -> rcgen::CertificateRevocationList {
        CertificateRevocationListParams {
            this_update: date_time_ymd(2024, 1, 1),
            next_update: date_time_ymd(2099, 1, 1),
            crl_number: SerialNumber::from(1u64),
            issuing_distribution_point: None,
            revoked_certs: revoked
                .iter()
                .map(|serial| RevokedCertParams {
                    serial_number: SerialNumber::from(*serial),
                    revocation_time: date_time_ymd(2024, 1, 1),
                    reason_code: Some(RevocationReason::KeyCompromise),
                    invalidity_date: None,
                })
                .collect(),
            key_identifier_method: KeyIdMethod::Sha256,
        }
        .signed_by(&issuer.cert, &issuer.key)
        .unwrap()
    }

    /// Files for `build_verifier`, kept alive by the returned directory.
    struct Files {
        dir: tempfile::TempDir,
    }

    impl Files {
        fn new() -> Self {
            Files {
                dir: tempfile::tempdir().unwrap(),
            }
        }

        fn write(&self, name: &str, contents: impl AsRef<[u8]>) -> PathBuf {
            let path = self.dir.path().join(name);
            std::fs::write(&path, contents).unwrap();
            path
        }

        fn ca(&self, cas: &[&Ca]) -> PathBuf {
            let pem: String = cas.iter().map(|ca| ca.cert.pem()).collect();
            self.write("ca.pem", pem)
        }
    }

    fn verifier(
        mode: ClientAuthMode,
        ca: &Ca,
        crls: &[PathBuf],
        allow: Allow,
    ) -> Arc<dyn ClientCertVerifier> {
        let files = Files::new();
        let ca_path = files.ca(&[ca]);
        build_verifier(mode, &ca_path, crls, allow, provider()).unwrap()
    }

    struct Outcome {
        server: Result<(), Error>,
        client: Result<(), Error>,
    }

    /// One real handshake in memory: bytes are pumped between the two connections until
    /// neither has anything to send, so a rejection that TLS 1.3 delivers after the client
    /// already thinks it is done still reaches the client as an alert.
    fn handshake(
        verifier: Arc<dyn ClientCertVerifier>,
        client: Option<&Client>,
        version: &'static rustls::SupportedProtocolVersion,
    ) -> Outcome {
        let server_key = KeyPair::generate().unwrap();
        let server_cert = CertificateParams::new(vec!["localhost".to_owned()])
            .unwrap()
            .self_signed(&server_key)
            .unwrap();
        let server_config = ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&[version])
            .unwrap()
            .with_client_cert_verifier(verifier)
            .with_single_cert(
                vec![server_cert.der().clone()],
                PrivateKeyDer::try_from(server_key.serialize_der()).unwrap(),
            )
            .unwrap();
        let mut roots = RootCertStore::empty();
        roots.add(server_cert.der().clone()).unwrap();
        let builder = ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[version])
            .unwrap()
            .with_root_certificates(roots);
        let client_config = match client {
            Some(c) => builder
                .with_client_auth_cert(
                    c.chain.clone(),
                    PrivateKeyDer::try_from(c.key.serialize_der()).unwrap(),
                )
                .unwrap(),
            None => builder.with_no_client_auth(),
        };
        let mut client_conn = Connection::from(
            rustls::ClientConnection::new(
                Arc::new(client_config),
                ServerName::try_from("localhost").unwrap(),
            )
            .unwrap(),
        );
        let mut server_conn =
            Connection::from(rustls::ServerConnection::new(Arc::new(server_config)).unwrap());
        let mut client_err = None;
        let mut server_err = None;
        for _ in 0..32 {
            let sent = pump(&mut client_conn, &mut server_conn, &mut server_err);
            let answered = pump(&mut server_conn, &mut client_conn, &mut client_err);
            if !sent && !answered {
                break;
            }
        }
        let done = |conn: &Connection, err: Option<Error>| match err {
            Some(e) => Err(e),
            None if conn.is_handshaking() => Err(Error::General("handshake stalled".into())),
            None => Ok(()),
        };
        Outcome {
            server: done(&server_conn, server_err),
            client: done(&client_conn, client_err),
        }
    }

    /// Moves what `from` has to send into `to`; false when nothing moved.
    fn pump(from: &mut Connection, to: &mut Connection, to_err: &mut Option<Error>) -> bool {
        let mut wire = Vec::new();
        while from.wants_write() {
            from.write_tls(&mut wire).unwrap();
        }
        if wire.is_empty() || to_err.is_some() {
            return false;
        }
        let mut rest = wire.as_slice();
        while !rest.is_empty() {
            to.read_tls(&mut rest).unwrap();
        }
        if let Err(e) = to.process_new_packets() {
            *to_err = Some(e);
        }
        true
    }

    const BOTH: [&rustls::SupportedProtocolVersion; 2] =
        [&rustls::version::TLS13, &rustls::version::TLS12];

    fn billing(ca: &Ca) -> Client {
        leaf(
            ca,
            LeafSpec {
                cn: Some("billing"),
                dns: &["svc.corp.internal"],
                uri: &["spiffe://corp/ns/billing/sa/api"],
                serial: 101,
            },
            &[],
        )
    }

    fn expect_refused(outcome: Outcome, refused: Refusal, alert: AlertDescription) {
        let server = outcome.server.expect_err("server should refuse");
        assert_eq!(refusal(&server), Some(refused), "server error {server:?}");
        assert_eq!(
            outcome.client.expect_err("client should see the refusal"),
            Error::AlertReceived(alert)
        );
    }

    #[test]
    fn required_without_a_certificate_is_missing() {
        let ca = root_ca("clients");
        for version in BOTH {
            let v = verifier(ClientAuthMode::Required, &ca, &[], Allow::default());
            let outcome = handshake(v, None, version);
            assert_eq!(
                outcome.server.as_ref().unwrap_err(),
                &Error::NoCertificatesPresented
            );
            // rustls sends certificate_required for TLS 1.2 too (not handshake_failure).
            expect_refused(
                outcome,
                Refusal::Missing,
                AlertDescription::CertificateRequired,
            );
        }
    }

    #[test]
    fn optional_admits_anonymous_clients_and_verified_ones() {
        let ca = root_ca("clients");
        let client = billing(&ca);
        for version in BOTH {
            let v = verifier(ClientAuthMode::Optional, &ca, &[], Allow::default());
            let outcome = handshake(v.clone(), None, version);
            assert!(outcome.server.is_ok() && outcome.client.is_ok());
            let outcome = handshake(v, Some(&client), version);
            assert!(outcome.server.is_ok() && outcome.client.is_ok());
        }
    }

    #[test]
    fn a_certificate_from_another_ca_is_invalid_even_when_optional() {
        let ca = root_ca("clients");
        let stranger = billing(&root_ca("elsewhere"));
        for mode in [ClientAuthMode::Required, ClientAuthMode::Optional] {
            for version in BOTH {
                let outcome = handshake(
                    verifier(mode, &ca, &[], Allow::default()),
                    Some(&stranger),
                    version,
                );
                assert_eq!(
                    outcome.server.as_ref().unwrap_err(),
                    &Error::InvalidCertificate(CertificateError::UnknownIssuer)
                );
                expect_refused(outcome, Refusal::Invalid, AlertDescription::UnknownCA);
            }
        }
    }

    #[test]
    fn a_certificate_on_the_crl_is_revoked_and_others_pass() {
        let ca = root_ca("clients");
        let files = Files::new();
        // One CRL as PEM, one (empty, from an unrelated CA) as DER: both formats load.
        let other = root_ca("other");
        let crls = [
            files.write("revoked.crl.pem", crl(&ca, &[666]).pem().unwrap()),
            files.write("other.crl", crl(&other, &[]).der().as_ref()),
        ];
        let revoked = leaf(
            &ca,
            LeafSpec {
                cn: Some("gone"),
                serial: 666,
                ..Default::default()
            },
            &[],
        );
        for version in BOTH {
            let v = verifier(ClientAuthMode::Required, &ca, &crls, Allow::default());
            let outcome = handshake(v.clone(), Some(&revoked), version);
            expect_refused(
                outcome,
                Refusal::Revoked,
                AlertDescription::CertificateRevoked,
            );
            let outcome = handshake(v, Some(&billing(&ca)), version);
            assert!(outcome.server.is_ok() && outcome.client.is_ok());
        }
    }

    #[test]
    fn the_whole_chain_is_checked_and_uncovered_issuers_pass() {
        let root = root_ca("root");
        let issuing = intermediate_ca(&root, "issuing", 50);
        let spec = || LeafSpec {
            cn: Some("billing"),
            serial: 200,
            ..Default::default()
        };
        let client = leaf(&issuing, spec(), &[&issuing]);
        let files = Files::new();
        // The root's CRL does not list the intermediate, and the intermediate has no CRL:
        // the leaf's status is unknown, which must not refuse it.
        let clean = [files.write("root-clean.crl.pem", crl(&root, &[]).pem().unwrap())];
        let outcome = handshake(
            verifier(ClientAuthMode::Required, &root, &clean, Allow::default()),
            Some(&client),
            &rustls::version::TLS13,
        );
        assert!(
            outcome.server.is_ok() && outcome.client.is_ok(),
            "{:?}",
            outcome.server
        );
        // The root revokes the intermediate: its leaves go with it.
        let revoking = [files.write("root-revokes.crl.pem", crl(&root, &[50]).pem().unwrap())];
        let outcome = handshake(
            verifier(ClientAuthMode::Required, &root, &revoking, Allow::default()),
            Some(&client),
            &rustls::version::TLS13,
        );
        expect_refused(
            outcome,
            Refusal::Revoked,
            AlertDescription::CertificateRevoked,
        );
    }

    #[test]
    fn allowlist_entries_admit_and_refuse() {
        let ca = root_ca("clients");
        let client = billing(&ca);
        let spki = Identity::from_der(&client.chain[0]).unwrap().spki_sha256;
        let admitting = [
            Allow {
                cn: vec!["billing".into()],
                ..Allow::default()
            },
            Allow {
                dns: vec!["SVC.corp.internal".into()],
                ..Allow::default()
            },
            Allow {
                uri_prefix: vec!["spiffe://corp/ns/billing/".into()],
                ..Allow::default()
            },
            Allow {
                spki_sha256: vec![spki],
                ..Allow::default()
            },
            // Lists are OR-ed: one matching entry anywhere is enough.
            Allow {
                cn: vec!["payroll".into()],
                uri_prefix: vec!["spiffe://corp/ns/billing/".into()],
                ..Allow::default()
            },
        ];
        let refusing = [
            Allow {
                cn: vec!["Billing".into()],
                ..Allow::default()
            },
            Allow {
                dns: vec!["corp.internal".into()],
                ..Allow::default()
            },
            Allow {
                uri_prefix: vec!["spiffe://corp/ns/payroll/".into()],
                ..Allow::default()
            },
            Allow {
                spki_sha256: vec![[7; 32]],
                ..Allow::default()
            },
        ];
        for version in BOTH {
            for allow in &admitting {
                let v = verifier(ClientAuthMode::Required, &ca, &[], allow.clone());
                let outcome = handshake(v, Some(&client), version);
                assert!(
                    outcome.server.is_ok() && outcome.client.is_ok(),
                    "{allow:?}"
                );
            }
            for allow in &refusing {
                let v = verifier(ClientAuthMode::Optional, &ca, &[], allow.clone());
                let outcome = handshake(v, Some(&client), version);
                assert_eq!(
                    outcome.server.as_ref().unwrap_err(),
                    &Error::InvalidCertificate(CertificateError::ApplicationVerificationFailure),
                    "{allow:?}"
                );
                expect_refused(outcome, Refusal::NotAllowed, AlertDescription::AccessDenied);
            }
        }
    }

    #[test]
    fn the_allowlist_does_not_refuse_anonymous_clients_when_optional() {
        let ca = root_ca("clients");
        let allow = Allow {
            cn: vec!["billing".into()],
            ..Allow::default()
        };
        let outcome = handshake(
            verifier(ClientAuthMode::Optional, &ca, &[], allow),
            None,
            &rustls::version::TLS13,
        );
        assert!(outcome.server.is_ok() && outcome.client.is_ok());
    }

    #[test]
    fn none_sends_no_certificate_request() {
        let v = build_verifier(
            ClientAuthMode::None,
            Path::new("/nonexistent/ca.pem"),
            &[],
            Allow::default(),
            provider(),
        )
        .unwrap();
        assert!(!v.offer_client_auth());
    }

    #[test]
    fn the_wrapper_keeps_the_inner_policy_and_hints() {
        let ca = root_ca("clients");
        let allow = Allow {
            cn: vec!["billing".into()],
            ..Allow::default()
        };
        let plain = verifier(ClientAuthMode::Optional, &ca, &[], Allow::default());
        let wrapped = verifier(ClientAuthMode::Optional, &ca, &[], allow);
        assert!(wrapped.offer_client_auth() && !wrapped.client_auth_mandatory());
        let hints = |v: &Arc<dyn ClientCertVerifier>| -> Vec<Vec<u8>> {
            v.root_hint_subjects()
                .iter()
                .map(|dn| dn.as_ref().to_vec())
                .collect()
        };
        assert_eq!(hints(&wrapped), hints(&plain));
        assert_eq!(hints(&wrapped).len(), 1);
        assert_eq!(
            wrapped.supported_verify_schemes(),
            plain.supported_verify_schemes()
        );
    }

    #[test]
    fn bad_files_are_named() {
        let files = Files::new();
        let ca = root_ca("clients");
        let ca_path = files.ca(&[&ca]);
        let build = |ca: &Path, crls: &[PathBuf]| {
            build_verifier(
                ClientAuthMode::Required,
                ca,
                crls,
                Allow::default(),
                provider(),
            )
            .map(|_| ())
            .unwrap_err()
        };
        let missing = files.dir.path().join("missing.pem");
        assert!(build(&missing, &[]).contains("missing.pem"));
        let empty = files.write("empty.pem", "");
        let err = build(&empty, &[]);
        assert!(
            err.contains("empty.pem") && err.contains("no certificate"),
            "{err}"
        );
        let not_a_cert = files.write(
            "junk.pem",
            "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
        );
        assert!(build(&not_a_cert, &[]).contains("junk.pem"));

        let garbage = files.write("garbage.crl", b"\x30\x03\x02\x01\x00");
        let err = build(&ca_path, &[garbage]);
        assert!(err.contains("garbage.crl"), "{err}");
        let cert_not_crl = files.write("cert-as-crl.pem", ca.cert.pem());
        let err = build(&ca_path, &[cert_not_crl]);
        assert!(err.contains("cert-as-crl.pem"), "{err}");
        let empty_crl = files.write("empty.crl", "");
        assert!(build(&ca_path, &[empty_crl]).contains("empty.crl"));
        assert!(build(&ca_path, &[files.dir.path().join("nope.crl")]).contains("nope.crl"));
    }

    #[test]
    fn refusal_classifies_client_certificate_errors_only() {
        use rustls::CertRevocationListError;
        let cert = |e| Error::InvalidCertificate(e);
        assert_eq!(
            refusal(&Error::NoCertificatesPresented),
            Some(Refusal::Missing)
        );
        assert_eq!(
            refusal(&cert(CertificateError::Revoked)),
            Some(Refusal::Revoked)
        );
        assert_eq!(
            refusal(&cert(CertificateError::ApplicationVerificationFailure)),
            Some(Refusal::NotAllowed)
        );
        for e in [
            CertificateError::UnknownIssuer,
            CertificateError::Expired,
            CertificateError::BadEncoding,
            CertificateError::UnknownRevocationStatus,
        ] {
            assert_eq!(refusal(&cert(e)), Some(Refusal::Invalid));
        }
        assert_eq!(
            refusal(&Error::InvalidCertRevocationList(
                CertRevocationListError::BadSignature
            )),
            Some(Refusal::Invalid)
        );
        assert_eq!(refusal(&Error::HandshakeNotComplete), None);
        assert_eq!(
            refusal(&Error::AlertReceived(AlertDescription::HandshakeFailure)),
            None
        );
    }

    #[test]
    fn spki_pins_parse_from_hex_colons_and_base64() {
        let bytes: [u8; 32] = std::array::from_fn(|i| (i * 7 + 0xa0) as u8);
        let plain = hex(&bytes);
        assert_eq!(Allow::parse_spki_pin(&plain), Ok(bytes));
        assert_eq!(Allow::parse_spki_pin(&plain.to_uppercase()), Ok(bytes));
        let colons: Vec<String> = bytes.iter().map(|b| format!("{b:02X}")).collect();
        assert_eq!(Allow::parse_spki_pin(&colons.join(":")), Ok(bytes));
        let b64 = base64::engine::general_purpose::STANDARD.encode(bytes);
        assert_eq!(b64.len(), 44);
        assert_eq!(Allow::parse_spki_pin(&format!(" {b64} ")), Ok(bytes));

        let short_b64 = base64::engine::general_purpose::STANDARD.encode([1u8; 31]);
        assert!(Allow::parse_spki_pin(&short_b64)
            .unwrap_err()
            .contains("31 bytes"));
        assert!(Allow::parse_spki_pin(&plain[..62]).is_err());
        assert!(Allow::parse_spki_pin(&format!("{}zz", &plain[..62])).is_err());
        assert!(Allow::parse_spki_pin(&colons[..31].join(":")).is_err());
        assert!(Allow::parse_spki_pin("").is_err());
        assert!(Allow::parse_spki_pin("é").is_err());
    }

    #[test]
    fn identity_reads_names_and_hashes() {
        let ca = root_ca("clients");
        let client = leaf(
            &ca,
            LeafSpec {
                cn: Some("billing"),
                dns: &["a.corp.internal", "b.corp.internal"],
                uri: &["spiffe://corp/ns/billing/sa/api", "urn:x:y"],
                serial: 300,
            },
            &[],
        );
        let der = client.chain[0].as_ref();
        let id = Identity::from_der(der).unwrap();
        assert_eq!(id.cn.as_deref(), Some("billing"));
        assert_eq!(id.dns, ["a.corp.internal", "b.corp.internal"]);
        assert_eq!(id.uri, ["spiffe://corp/ns/billing/sa/api", "urn:x:y"]);
        assert_eq!(id.sha256, sha256(der));
        assert_eq!(id.sha256_hex().len(), 64);
        assert_eq!(id.sha256_hex(), id.sha256_hex().to_lowercase());
        // The SPKI is the key pair's public key DER, which rcgen produces independently.
        assert_eq!(id.spki_sha256, sha256(&client.key.public_key_der()));
        if let Some(expected) = openssl_spki_sha256(&client.chain[0]) {
            assert_eq!(id.spki_sha256_hex(), expected);
        }

        let bare = leaf(
            &ca,
            LeafSpec {
                serial: 301,
                ..Default::default()
            },
            &[],
        );
        let id = Identity::from_der(&bare.chain[0]).unwrap();
        assert_eq!((id.cn, id.dns.len(), id.uri.len()), (None, 0, 0));
    }

    #[test]
    fn identity_refuses_garbage_without_panicking() {
        let ca = root_ca("clients");
        let der = billing(&ca).chain[0].to_vec();
        assert!(Identity::from_der(&[]).is_err());
        assert!(Identity::from_der(&der[..der.len() / 2]).is_err());
        let mut trailing = der.clone();
        trailing.push(0);
        assert!(Identity::from_der(&trailing).is_err());
        for i in 0..der.len() {
            let mut flipped = der.clone();
            flipped[i] ^= 0xff;
            let _ = Identity::from_der(&flipped);
        }
    }

    #[test]
    fn bmp_string_common_names_are_read() {
        let ca = root_ca("clients");
        let mut params = CertificateParams::default();
        params.distinguished_name = Dn::new();
        params.distinguished_name.push(
            DnType::CommonName,
            rcgen::DnValue::BmpString("bïlling".try_into().unwrap()),
        );
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &ca.cert, &ca.key).unwrap();
        let id = Identity::from_der(cert.der()).unwrap();
        assert_eq!(id.cn.as_deref(), Some("bïlling"));
    }

    #[test]
    fn modes_round_trip() {
        for mode in [
            ClientAuthMode::None,
            ClientAuthMode::Optional,
            ClientAuthMode::Required,
        ] {
            assert_eq!(ClientAuthMode::parse(mode.as_str()), Some(mode));
        }
        assert_eq!(
            ClientAuthMode::parse(" Required "),
            Some(ClientAuthMode::Required)
        );
        assert_eq!(ClientAuthMode::parse("yes"), None);
        assert_eq!(ClientAuthMode::default(), ClientAuthMode::None);
    }

    /// The SPKI hash as OpenSSL computes it, when `openssl` is installed.
    fn openssl_spki_sha256(cert: &CertificateDer<'_>) -> Option<String> {
        use std::io::Write;
        use std::process::{Command, Stdio};
        let run = |args: &[&str], input: &[u8]| -> Option<Vec<u8>> {
            let mut child = Command::new("openssl")
                .args(args)
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()
                .ok()?;
            child.stdin.take()?.write_all(input).ok()?;
            let out = child.wait_with_output().ok()?;
            out.status.success().then_some(out.stdout)
        };
        let pubkey = run(
            &["x509", "-inform", "DER", "-pubkey", "-noout"],
            cert.as_ref(),
        )?;
        let spki = run(&["pkey", "-pubin", "-outform", "DER"], &pubkey)?;
        Some(hex(&sha256(&spki)))
    }
}
