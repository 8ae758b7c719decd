//! A small test PKI and the fixtures the SNI-routing, pass-through, mTLS and identity tests
//! share: CAs issuing server and client certificates (chosen CN / DNS / URI SANs) and CRLs,
//! written as PEM files into a [`TestEnv`] directory; rustls clients that trust some CAs and
//! may present a client certificate; backends that say who they are (plain TCP or a real TLS
//! server with its own certificate); a hand-written config head and config-error check.
//!
//! Everything that judges the proxy (SPKI digests, refusals) is computed here, independent of
//! the project's code.

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, KeyIdMethod, KeyPair, KeyUsagePurpose, RevocationReason,
    RevokedCertParams, SanType, SerialNumber, PKCS_ECDSA_P256_SHA256,
};
use rustls::crypto::aws_lc_rs as provider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore, ServerConfig, ServerConnection};

use super::*;

// ---------------------------------------------------------------------------------------------
// Certificates
// ---------------------------------------------------------------------------------------------

/// A certificate authority whose files live in the env's directory, prefixed with its name.
pub struct Ca {
    pub name: String,
    pub cert_pem: PathBuf,
    pub der: CertificateDer<'static>,
    cert: rcgen::Certificate,
    key: KeyPair,
    dir: PathBuf,
}

/// A certificate issued by a [`Ca`], with its key.
#[derive(Clone)]
pub struct Issued {
    pub cert_pem: PathBuf,
    pub key_pem: PathBuf,
    pub der: CertificateDer<'static>,
    /// PKCS#8.
    pub key_der: Vec<u8>,
    pub serial: Vec<u8>,
}

/// What a client certificate says about its holder.
#[derive(Clone, Debug, Default)]
pub struct ClientId {
    pub cn: Option<String>,
    pub dns: Vec<String>,
    pub uri: Vec<String>,
}

impl ClientId {
    pub fn cn(cn: &str) -> ClientId {
        ClientId {
            cn: Some(cn.to_string()),
            ..Default::default()
        }
    }

    pub fn dns(mut self, name: &str) -> ClientId {
        self.dns.push(name.to_string());
        self
    }

    pub fn uri(mut self, uri: &str) -> ClientId {
        self.uri.push(uri.to_string());
        self
    }
}

fn ia5(s: &str) -> rcgen::Ia5String {
    s.try_into()
        .unwrap_or_else(|e| panic!("{s:?} not IA5: {e:?}"))
}

/// A positive 16-byte serial, so a CRL can name it.
fn fresh_serial() -> Vec<u8> {
    let mut s = random_bytes(16);
    s[0] = (s[0] & 0x7f) | 0x01;
    s
}

impl Ca {
    pub fn new(env: &TestEnv, name: &str) -> Ca {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).expect("CA key");
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, format!("tlsfront test CA {name}"));
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.serial_number = Some(SerialNumber::from_slice(&fresh_serial()));
        let cert = params.self_signed(&key).expect("CA cert");
        let cert_pem = env.write_file(&format!("{name}-ca.pem"), &cert.pem());
        Ca {
            name: name.to_string(),
            der: cert.der().clone(),
            cert_pem,
            cert,
            key,
            dir: env.dir.path().to_path_buf(),
        }
    }

    fn issue(&self, file: &str, mut params: CertificateParams) -> Issued {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).expect("leaf key");
        let serial = fresh_serial();
        params.serial_number = Some(SerialNumber::from_slice(&serial));
        params.use_authority_key_identifier_extension = true;
        let cert = params
            .signed_by(&key, &self.cert, &self.key)
            .expect("sign leaf");
        // The digest helpers below walk the DER themselves; make sure they find this key.
        assert_eq!(
            spki_der(cert.der()),
            key.public_key_der().as_slice(),
            "DER walk found the wrong SubjectPublicKeyInfo"
        );
        let write = |suffix: &str, contents: &str| {
            let p = self.dir.join(format!("{}-{file}{suffix}", self.name));
            std::fs::write(&p, contents).expect("write pem");
            p
        };
        Issued {
            cert_pem: write(".pem", &cert.pem()),
            key_pem: write("-key.pem", &key.serialize_pem()),
            der: cert.der().clone(),
            key_der: key.serialize_der(),
            serial,
        }
    }

    /// A server certificate for `names` (CN = the first name).
    pub fn server(&self, file: &str, names: &[&str]) -> Issued {
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, names[0]);
        params.subject_alt_names = names
            .iter()
            .map(|n| match n.parse() {
                Ok(ip) => SanType::IpAddress(ip),
                Err(_) => SanType::DnsName(ia5(n)),
            })
            .collect();
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        self.issue(file, params)
    }

    /// A client certificate saying `id`.
    pub fn client_cert(&self, file: &str, id: &ClientId) -> Issued {
        self.client_with(file, id, |_| {})
    }

    /// A client certificate whose validity ended in 2001.
    pub fn expired_client_cert(&self, file: &str, id: &ClientId) -> Issued {
        self.client_with(file, id, |p| {
            p.not_before = rcgen::date_time_ymd(2000, 1, 1);
            p.not_after = rcgen::date_time_ymd(2001, 1, 1);
        })
    }

    fn client_with(
        &self,
        file: &str,
        id: &ClientId,
        tweak: impl FnOnce(&mut CertificateParams),
    ) -> Issued {
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        if let Some(cn) = &id.cn {
            params.distinguished_name.push(DnType::CommonName, cn);
        }
        params
            .distinguished_name
            .push(DnType::OrganizationName, "tlsfront tests");
        params.subject_alt_names = id
            .dns
            .iter()
            .map(|d| SanType::DnsName(ia5(d)))
            .chain(id.uri.iter().map(|u| SanType::URI(ia5(u))))
            .collect();
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        tweak(&mut params);
        self.issue(file, params)
    }

    /// A CRL (PEM) by this CA revoking `revoked`.
    pub fn crl(&self, file: &str, revoked: &[&Issued]) -> PathBuf {
        let now = rcgen::date_time_ymd(2020, 1, 1);
        let params = CertificateRevocationListParams {
            this_update: now,
            next_update: rcgen::date_time_ymd(2999, 1, 1),
            crl_number: SerialNumber::from(1u64),
            issuing_distribution_point: None,
            revoked_certs: revoked
                .iter()
                .map(|c| RevokedCertParams {
                    serial_number: SerialNumber::from_slice(&c.serial),
                    revocation_time: now,
                    reason_code: Some(RevocationReason::KeyCompromise),
                    invalidity_date: None,
                })
                .collect(),
            key_identifier_method: KeyIdMethod::Sha256,
        };
        let crl = params.signed_by(&self.cert, &self.key).expect("sign CRL");
        let p = self.dir.join(format!("{}-{file}.crl.pem", self.name));
        std::fs::write(&p, crl.pem().expect("CRL pem")).expect("write CRL");
        p
    }
}

impl Issued {
    /// `cert = ".."` and `key = ".."` lines for a config.
    pub fn toml(&self) -> String {
        format!(
            "cert = {}\nkey = {}",
            toml_path(&self.cert_pem),
            toml_path(&self.key_pem)
        )
    }

    pub fn sha256(&self) -> Vec<u8> {
        sha256(&self.der)
    }

    pub fn sha256_hex(&self) -> String {
        hex(&self.sha256())
    }

    /// SHA-256 of the certificate's SubjectPublicKeyInfo DER, lowercase hex.
    pub fn spki_sha256_hex(&self) -> String {
        hex(&sha256(spki_der(&self.der)))
    }

    /// The same digest in base64 (44 characters).
    pub fn spki_sha256_base64(&self) -> String {
        use base64::Engine as _;
        base64::engine::general_purpose::STANDARD.encode(sha256(spki_der(&self.der)))
    }

    fn key(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.key_der.clone()))
    }
}

pub fn sha256(data: &[u8]) -> Vec<u8> {
    ::aws_lc_rs::digest::digest(&::aws_lc_rs::digest::SHA256, data)
        .as_ref()
        .to_vec()
}

/// One DER element at the start of `der`: (header length, total length).
fn der_element(der: &[u8]) -> (usize, usize) {
    let first = der[1];
    let (header, len) = if first & 0x80 == 0 {
        (2, first as usize)
    } else {
        let n = (first & 0x7f) as usize;
        let len = der[2..2 + n]
            .iter()
            .fold(0usize, |acc, b| (acc << 8) | *b as usize);
        (2 + n, len)
    };
    (header, header + len)
}

/// The SubjectPublicKeyInfo element (tag and length included) of an X.509 certificate: the
/// seventh field of tbsCertificate when the explicit version is present (RFC 5280 4.1).
pub fn spki_der(cert: &[u8]) -> &[u8] {
    let (h, _) = der_element(cert); // Certificate SEQUENCE
    let tbs = &cert[h..];
    let (h, end) = der_element(tbs); // tbsCertificate SEQUENCE
    let mut rest = &tbs[h..end];
    if rest[0] == 0xa0 {
        rest = &rest[der_element(rest).1..]; // [0] version
    }
    // serialNumber, signature, issuer, validity, subject
    for _ in 0..5 {
        rest = &rest[der_element(rest).1..];
    }
    assert_eq!(rest[0], 0x30, "SubjectPublicKeyInfo is a SEQUENCE");
    &rest[..der_element(rest).1]
}

// ---------------------------------------------------------------------------------------------
// Clients
// ---------------------------------------------------------------------------------------------

/// A rustls client trusting `trust`, offering what `opts` says, presenting `identity` if given.
pub fn client_config(
    trust: &[&Ca],
    opts: &ClientOpts,
    identity: Option<&Issued>,
) -> Arc<ClientConfig> {
    let mut roots = RootCertStore::empty();
    for ca in trust {
        roots.add(ca.der.clone()).expect("add CA");
    }
    let versions = if opts.versions.is_empty() {
        vec![&rustls::version::TLS13, &rustls::version::TLS12]
    } else {
        opts.versions.clone()
    };
    let builder = ClientConfig::builder_with_provider(opts.provider())
        .with_protocol_versions(&versions)
        .expect("client protocol versions")
        .with_root_certificates(roots);
    let mut cfg = match identity {
        Some(id) => builder
            .with_client_auth_cert(vec![id.der.clone()], id.key())
            .expect("client cert"),
        None => builder.with_no_client_auth(),
    };
    cfg.alpn_protocols = opts.alpn.clone();
    Arc::new(cfg)
}

impl Ca {
    /// Client trusting only this CA, rustls defaults, presenting `identity` if given.
    pub fn tls_client(&self, identity: Option<&Issued>) -> Arc<ClientConfig> {
        client_config(&[self], &ClientOpts::default(), identity)
    }
}

/// The same client without the SNI extension.
pub fn without_sni(cfg: &Arc<ClientConfig>) -> Arc<ClientConfig> {
    let mut c = (**cfg).clone();
    c.enable_sni = false;
    Arc::new(c)
}

/// The DER of the certificate the server presented.
pub fn server_cert(tls: &TlsStream) -> CertificateDer<'static> {
    tls.conn
        .peer_certificates()
        .and_then(|c| c.first())
        .expect("server certificate")
        .clone()
        .into_owned()
}

/// The bytes of the first flight (the ClientHello record) `cfg` sends for `sni`.
pub fn client_hello_bytes(cfg: &Arc<ClientConfig>, sni: &str) -> Vec<u8> {
    let name = ServerName::try_from(sni.to_string()).expect("server name");
    let mut conn = ClientConnection::new(cfg.clone(), name).expect("client");
    let mut out = Vec::new();
    while conn.wants_write() {
        conn.write_tls(&mut out).expect("write_tls to Vec");
    }
    out
}

/// Connects with `sni` and waits (bounded) for the server to refuse: `Ok` with the TLS error
/// the client saw (usually `AlertReceived(..)`), during the handshake or just after it (a
/// TLS 1.3 server judges the client certificate after the client finished). `Err` says how it
/// ended otherwise: served data, a plain close, a reset, or nothing within the time.
pub fn refusal(addr: SocketAddr, cfg: &Arc<ClientConfig>, sni: &str) -> Refusal {
    let mut sock = tcp_connect(addr).expect("connect");
    let local = sock.local_addr().unwrap();
    Refusal {
        result: refusal_on(&mut sock, cfg, sni),
        local,
    }
}

/// How a [`refusal`] attempt ended, and the client's address (the proxy's `peer=`).
#[derive(Debug)]
pub struct Refusal {
    pub result: Result<rustls::Error, String>,
    pub local: SocketAddr,
}

impl Refusal {
    /// Asserts that the connection was refused with the fatal alert `alert`.
    pub fn assert_alert(&self, alert: rustls::AlertDescription, what: &str) {
        assert!(
            matches!(&self.result, Ok(rustls::Error::AlertReceived(a)) if *a == alert),
            "{what}: expected the alert {alert:?}, got {:?}",
            self.result
        );
    }

    /// Asserts that the client saw a TLS error (any alert or local verification failure).
    pub fn assert_tls_error(&self, what: &str) {
        assert!(
            self.result.is_ok(),
            "{what}: not refused: {:?}",
            self.result
        );
    }
}

fn refusal_on(
    sock: &mut TcpStream,
    cfg: &Arc<ClientConfig>,
    sni: &str,
) -> Result<rustls::Error, String> {
    let deadline = Instant::now() + Duration::from_secs(10);
    let name = ServerName::try_from(sni.to_string()).expect("server name");
    let mut conn = ClientConnection::new(cfg.clone(), name).expect("client");
    let mut plain = Vec::new();
    loop {
        while conn.wants_write() {
            if conn.write_tls(sock).is_err() {
                break; // refused already: the alert may still be readable
            }
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(format!(
                "not refused within 10 s (handshaking={}, {} plaintext bytes: {:?})",
                conn.is_handshaking(),
                plain.len(),
                String::from_utf8_lossy(&plain)
            ));
        }
        sock.set_read_timeout(Some(left)).unwrap();
        match conn.read_tls(sock) {
            Ok(0) => {
                return Err(format!(
                    "closed without an alert (handshaking={}, plaintext {:?})",
                    conn.is_handshaking(),
                    String::from_utf8_lossy(&plain)
                ))
            }
            Ok(_) => {
                if let Err(e) = conn.process_new_packets() {
                    return Ok(e);
                }
                let mut buf = [0u8; 4096];
                while let Ok(n) = conn.reader().read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    plain.extend_from_slice(&buf[..n]);
                }
                if !plain.is_empty() {
                    return Err(format!("served: got {:?}", String::from_utf8_lossy(&plain)));
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::Interrupted
                        | io::ErrorKind::WouldBlock
                        | io::ErrorKind::TimedOut
                ) => {}
            Err(e) => return Err(format!("read error {e} (no alert)")),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Backends that say who they are
// ---------------------------------------------------------------------------------------------

/// Every named backend first sends its name padded to this many bytes (with a newline).
pub const GREETING_LEN: usize = 16;

pub fn greeting(name: &str) -> Vec<u8> {
    assert!(name.len() < GREETING_LEN, "backend name too long: {name}");
    format!("{name:<width$}\n", width = GREETING_LEN - 1).into_bytes()
}

/// A plain TCP backend that greets with its name, then echoes.
pub fn named_backend(name: &str) -> Backend {
    let hello = greeting(name);
    Backend::start(move |mut s, stats| {
        if s.write_all(&hello).is_ok() {
            echo_conn(s, stats);
        }
    })
}

/// Reads the greeting of the backend this connection reached and returns its name.
pub fn backend_name(tls: &mut TlsStream) -> String {
    let out = read_plain(tls, GREETING_LEN, Duration::from_secs(10));
    assert_eq!(
        out.received.len(),
        GREETING_LEN,
        "no backend greeting: {}",
        out.summary()
    );
    String::from_utf8_lossy(&out.received).trim().to_string()
}

/// Connects with `sni`, checks the server's certificate is `cert`, reads which backend
/// answered and checks the echo through it.
pub fn reached(addr: SocketAddr, cfg: &Arc<ClientConfig>, sni: &str, cert: &Issued) -> String {
    let mut tls = tls_connect_sni(addr, cfg, sni)
        .unwrap_or_else(|e| panic!("{sni}: TLS connect to {addr} failed: {e}"));
    assert!(
        server_cert(&tls) == cert.der,
        "{sni}: the server presented another certificate"
    );
    let name = backend_name(&mut tls);
    assert_echo(&mut tls, format!("hello {sni}\n").as_bytes(), sni);
    name
}

pub type StreamHook = Arc<dyn Fn(&mut TcpStream) + Send + Sync>;

/// How a [`tls_backend`] behaves besides greeting and echoing.
#[derive(Clone, Default)]
pub struct TlsBackendOpts {
    pub alpn: Vec<Vec<u8>>,
    /// Runs on the raw socket before the TLS handshake (e.g. reads a PROXY header).
    pub before_tls: Option<StreamHook>,
    /// Runs on the raw socket once the first plaintext arrived (e.g. an identity query).
    pub after_first_read: Option<StreamHook>,
}

/// A real TLS server (rustls) with its own certificate: greets with `name` after the
/// handshake, then echoes until close_notify, which it answers in kind.
pub fn tls_backend(name: &str, cert: &Issued, opts: TlsBackendOpts) -> Backend {
    let mut cfg = ServerConfig::builder_with_provider(Arc::new(provider::default_provider()))
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_no_client_auth()
        .with_single_cert(vec![cert.der.clone()], cert.key())
        .expect("backend cert");
    cfg.alpn_protocols = opts.alpn.clone();
    let cfg = Arc::new(cfg);
    let hello = greeting(name);
    Backend::start(move |mut sock, stats| {
        if let Some(hook) = &opts.before_tls {
            hook(&mut sock);
        }
        let conn = ServerConnection::new(cfg.clone()).expect("server conn");
        let mut tls = rustls::StreamOwned::new(conn, sock);
        if tls.write_all(&hello).and_then(|_| tls.flush()).is_err() {
            return;
        }
        let mut buf = vec![0u8; 64 * KIB];
        let mut first = true;
        loop {
            match tls.read(&mut buf) {
                Ok(0) => {
                    tls.conn.send_close_notify();
                    let _ = tls.flush();
                    let _ = tls.sock.shutdown(Shutdown::Write);
                    return;
                }
                Ok(n) => {
                    stats
                        .bytes_received
                        .fetch_add(n as u64, std::sync::atomic::Ordering::SeqCst);
                    if first {
                        first = false;
                        if let Some(hook) = &opts.after_first_read {
                            hook(&mut tls.sock);
                        }
                    }
                    if tls.write_all(&buf[..n]).and_then(|_| tls.flush()).is_err() {
                        return;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return,
            }
        }
    })
}

// ---------------------------------------------------------------------------------------------
// Hand-written configs
// ---------------------------------------------------------------------------------------------

/// The `[global]` table every routing test starts with: one unpinned worker plus `extra`.
pub fn global_toml(extra: &[&str]) -> String {
    let mut t = String::from("[global]\nworkers = 1\npin = false\ndrain_timeout = \"5s\"\n");
    for l in extra {
        t.push_str(l);
        t.push('\n');
    }
    t
}

/// Writes `toml` and starts `tlsfront serve` on it.
pub fn serve(env: &TestEnv, toml: &str) -> Proxy {
    let path = env.write_config(toml);
    Proxy::start(["serve".as_ref(), "--config".as_ref(), path.as_os_str()])
}

/// `backend = ".."` for one address.
pub fn backend_toml(addr: SocketAddr) -> String {
    format!("backend = \"{addr}\"")
}

/// Writes `toml`; both `tlsfront check` and `tlsfront serve` must exit 2 with an error naming
/// the file, `line N` for the first line containing `at`, and `field` (a dotted path such as
/// `service[0].route[1].sni`).
pub fn expect_config_error(env: &TestEnv, toml: &str, at: &str, field: &str) {
    expect_config_error_at(env, toml, line_of(toml, at), field);
}

/// [`expect_config_error`] with the expected (1-based) line number given.
pub fn expect_config_error_at(env: &TestEnv, toml: &str, line: usize, field: &str) {
    let path = env.write_config(toml);
    for mode in ["check", "serve"] {
        let out = run_tlsfront(
            [mode.as_ref(), "--config".as_ref(), path.as_os_str()],
            Duration::from_secs(15),
        );
        assert_eq!(out.code(), Some(2), "`{mode}`: {out:?}");
        assert!(
            out.stderr.contains(path.to_str().unwrap()),
            "`{mode}` must name the file: {out:?}"
        );
        let lines = line_numbers(&out.stderr);
        assert!(
            lines.contains(&line),
            "`{mode}` must say `line {line}`, found {lines:?}: {out:?}"
        );
        assert!(
            out.stderr.contains(field),
            "`{mode}` must name the field {field}: {out:?}"
        );
        assert!(!out.stderr.contains("ready workers="), "{out:?}");
    }
}

/// The `closed` log line of the connection from `peer` (waits up to 10 s for it).
pub fn closed_line(proxy: &Proxy, peer: SocketAddr) -> String {
    let peer = peer.to_string();
    let find = || {
        proxy
            .log_lines("closed")
            .into_iter()
            .find(|l| field(l, "peer") == Some(peer.as_str()) && field(l, "reason").is_some())
    };
    assert!(
        wait_until(Duration::from_secs(10), || find().is_some()),
        "no `closed` line for peer={peer}:\n{}",
        proxy.log()
    );
    find().unwrap()
}

/// `reason=` of the connection from `peer`.
pub fn close_reason(proxy: &Proxy, peer: SocketAddr) -> String {
    field(&closed_line(proxy, peer), "reason")
        .unwrap()
        .to_string()
}

/// A TOML string array.
pub fn toml_list(items: &[&str]) -> String {
    let v: Vec<String> = items.iter().map(toml_str).collect();
    format!("[{}]", v.join(", "))
}

/// A `[[service]]` table named `name` on 127.0.0.1:0 with `cert` as its default certificate,
/// `backend` as its default route's backend (if any), plus `extra` lines.
pub fn service_toml(
    name: &str,
    backend: Option<SocketAddr>,
    cert: &Issued,
    extra: &[&str],
) -> String {
    let mut t = format!(
        "\n[[service]]\nname = {}\nlisten = \"127.0.0.1:0\"\n{}\n",
        toml_str(name),
        cert.toml()
    );
    if let Some(b) = backend {
        t.push_str(&backend_toml(b));
        t.push('\n');
    }
    for l in extra {
        t.push_str(l);
        t.push('\n');
    }
    t
}

/// A `[[service.route]]` table (belongs to the service written last).
pub fn route_toml(
    name: &str,
    sni: &[&str],
    backend: SocketAddr,
    cert: Option<&Issued>,
    extra: &[&str],
) -> String {
    let mut t = format!(
        "\n[[service.route]]\nname = {}\nsni = {}\n{}\n",
        toml_str(name),
        toml_list(sni),
        backend_toml(backend)
    );
    if let Some(c) = cert {
        t.push_str(&c.toml());
        t.push('\n');
    }
    for l in extra {
        t.push_str(l);
        t.push('\n');
    }
    t
}
