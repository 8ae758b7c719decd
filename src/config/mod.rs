//! Configuration in two stages.
//!
//! Stage 1 ([`file`]) parses TOML and CLI flags into plain syntax types. Stage 2 (this module's
//! [`load`]) does the I/O — reads certificates and keys, resolves addresses, picks CPUs,
//! builds rustls configs — and validates everything before anything is bound. Every error is
//! a [`ConfigError`] naming the file, line and field (or the CLI flag) it came from.

pub mod file;
pub mod locate;

use std::fmt;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use file::{BackendValue, FileConfig, KeepaliveValue, ServiceSection, Workers};
use locate::{Locator, Section};

use crate::io::ktls::{self, KernelSupport};
use crate::route::pool::{Balance, PoolPolicy, MAX_BACKENDS};
use crate::route::proxy_header::ProxyVersion;
use crate::tls::{self, CertSource, TlsPolicy};

/// A configuration error: where it is (file + line, or a flag) and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub file: Option<PathBuf>,
    pub line: Option<usize>,
    /// Dotted field name (`service[0].cert`) or a CLI flag (`--cert`).
    pub field: Option<String>,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut sep = "";
        if let Some(file) = &self.file {
            write!(f, "{}", file.display())?;
            sep = " ";
        }
        if let Some(line) = self.line {
            write!(f, "{sep}line {line}")?;
            sep = ": ";
        } else if !sep.is_empty() {
            sep = ": ";
        }
        if let Some(field) = &self.field {
            write!(f, "{sep}{field}")?;
            sep = ": ";
        }
        write!(f, "{sep}{}", self.message)
    }
}

impl std::error::Error for ConfigError {}

/// Settings given on the command line; they override the first `[[service]]` of the file.
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    pub listen: Option<String>,
    pub backend: Option<String>,
    pub cert: Option<String>,
    pub key: Option<String>,
    pub workers: Option<usize>,
}

/// The validated runtime configuration.
#[derive(Debug)]
pub struct Config {
    pub global: Global,
    pub services: Vec<Service>,
    /// What the kernel offers for TLS offload; probed only when a service may use it.
    pub kernel_tls: Option<KernelSupport>,
}

#[derive(Debug, Clone)]
pub struct Global {
    pub workers: usize,
    /// CPU for each worker (index = worker id); empty when pinning is off.
    pub worker_cpus: Vec<usize>,
    pub drain_timeout: Duration,
    pub log_level: Option<String>,
}

/// Where a service sends decrypted traffic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Backend {
    Addr(SocketAddr),
    /// Several backends, balanced per `balance`, with failover.
    Pool(Vec<SocketAddr>),
    /// No backend configured (quick-start mode): a loopback echo server the process starts.
    BuiltinEcho,
}

impl Backend {
    /// The addresses to connect to (none for the built-in echo before it is resolved).
    pub fn addrs(&self) -> &[SocketAddr] {
        match self {
            Backend::Addr(a) => std::slice::from_ref(a),
            Backend::Pool(list) => list,
            Backend::BuiltinEcho => &[],
        }
    }
}

#[derive(Debug)]
pub struct Service {
    pub name: String,
    pub listen: SocketAddr,
    /// Where `listen` was set (`file line N: service[i].listen` or `--listen`), for bind errors.
    pub listen_origin: String,
    pub backend: Backend,
    pub tls: Arc<rustls::ServerConfig>,
    /// `cipher_preference = "auto"` where AES-GCM is accelerated: the same config with
    /// ChaCha20 first, for clients that list ChaCha20 before AES-GCM.
    pub tls_chacha_first: Option<Arc<rustls::ServerConfig>>,
    /// The served chain and key; workers build their own config copies from it.
    pub certified: Arc<rustls::sign::CertifiedKey>,
    /// SHA-256 of the leaf certificate, hex.
    pub cert_sha256: String,
    /// True when no cert/key was configured and a self-signed one was generated.
    pub ephemeral_cert: bool,
    pub tunables: Tunables,
    pub ktls: KtlsMode,
    /// Send a PROXY protocol header (this version) to the backend first.
    pub proxy_protocol: Option<ProxyVersion>,
    /// How a pool of backends is balanced and judged (one backend: only its health).
    pub pool: PoolPolicy,
    /// `accept_proxy`: the networks whose connections start with a PROXY header (required
    /// from them, refused from anyone else).
    pub accept_proxy: Option<Vec<ipnet::IpNet>>,
    /// Session-cache entries per worker (TLS 1.2 session IDs; TLS 1.3 when tickets are off).
    pub session_cache_size: usize,
    /// Where the ticket keys come from; a reload keeps in-process random keys when this is
    /// unchanged, so outstanding tickets stay valid.
    pub ticket_keys: TicketKeys,
}

/// The ticket key source of a service, as configured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TicketKeys {
    Off,
    Random {
        rotation: Duration,
        lifetime: Duration,
    },
    File(PathBuf),
    Secret(PathBuf),
}

/// `ktls = "auto" | "on" | "off"`: whether records are handed to kernel TLS after the
/// handshake. auto uses it where the kernel offers it; on refuses to start where it does
/// not; off never uses it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum KtlsMode {
    #[default]
    Auto,
    On,
    Off,
}

impl KtlsMode {
    pub fn as_str(self) -> &'static str {
        match self {
            KtlsMode::Auto => "auto",
            KtlsMode::On => "on",
            KtlsMode::Off => "off",
        }
    }
}

/// Per-service socket and timing knobs. Defaults are in [`Tunables::default`] and the README.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tunables {
    pub buffer_size: usize,
    pub nodelay: bool,
    pub keepalive: Option<Keepalive>,
    pub rcvbuf: Option<usize>,
    pub sndbuf: Option<usize>,
    pub backlog: u32,
    pub max_connections: u32,
    pub handshake_timeout: Duration,
    pub connect_timeout: Duration,
    pub idle_timeout: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Keepalive {
    pub idle: Duration,
    pub interval: Duration,
    pub count: u32,
}

impl Default for Keepalive {
    fn default() -> Self {
        Keepalive {
            idle: Duration::from_secs(60),
            interval: Duration::from_secs(10),
            count: 5,
        }
    }
}

impl Default for Tunables {
    fn default() -> Self {
        Tunables {
            buffer_size: 16 * 1024,
            nodelay: true,
            keepalive: Some(Keepalive::default()),
            rcvbuf: None,
            sndbuf: None,
            backlog: 1024,
            max_connections: 10_000,
            handshake_timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(300),
        }
    }
}

/// Smallest and largest accepted `buffer_size`.
pub const MIN_BUFFER: usize = 1024;
pub const MAX_BUFFER: usize = 16 << 20;
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8443";
pub const DEFAULT_DRAIN: Duration = Duration::from_secs(30);
pub const DEFAULT_SESSION_CACHE: usize = 1024;
pub const DEFAULT_TICKET_LIFETIME: Duration = Duration::from_secs(6 * 3600);
pub const DEFAULT_TICKET_ROTATION: Duration = Duration::from_secs(12 * 3600);
pub const MAX_TICKET_LIFETIME: Duration = Duration::from_secs(7 * 24 * 3600);

/// Loads and validates: the file (if any), then the flags on top.
pub fn load(path: Option<&Path>, overrides: &Overrides) -> Result<Config, ConfigError> {
    let (file_cfg, locator) = match path {
        Some(path) => {
            let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
                file: Some(path.to_owned()),
                line: None,
                field: None,
                message: format!("cannot read config file: {e}"),
            })?;
            let locator = Locator::new(&text);
            let parsed = toml::from_str::<FileConfig>(&text).map_err(|e| {
                let span = e.span();
                ConfigError {
                    file: Some(path.to_owned()),
                    line: span.as_ref().map(|s| locator.line_of_offset(s.start)),
                    field: span.and_then(|s| locator.field_at(s.start)),
                    message: e.message().trim().to_owned(),
                }
            })?;
            (parsed, Some(locator))
        }
        None => (FileConfig::default(), None),
    };
    Builder {
        path,
        locator: locator.as_ref(),
        overrides,
    }
    .build(file_cfg)
}

/// Stage 2: turns syntax into a runtime config, attributing each error to its source.
struct Builder<'a> {
    path: Option<&'a Path>,
    locator: Option<&'a Locator>,
    overrides: &'a Overrides,
}

impl Builder<'_> {
    fn err(&self, section: Section, key: &str, message: impl Into<String>) -> ConfigError {
        ConfigError {
            file: self.path.map(Path::to_owned),
            line: self.locator.and_then(|l| l.line_of(section, key)),
            field: Some(section.field(key)),
            message: message.into(),
        }
    }

    fn flag_err(&self, flag: &str, message: impl Into<String>) -> ConfigError {
        ConfigError {
            file: None,
            line: None,
            field: Some(flag.to_owned()),
            message: message.into(),
        }
    }

    fn build(&self, mut file_cfg: FileConfig) -> Result<Config, ConfigError> {
        let ov = self.overrides;
        let any_override = ov.listen.is_some() || ov.backend.is_some() || ov.cert.is_some();
        if file_cfg.service.is_empty() && (self.path.is_none() || any_override) {
            file_cfg.service.push(ServiceSection::default());
        }
        if file_cfg.service.is_empty() {
            return Err(ConfigError {
                file: self.path.map(Path::to_owned),
                line: None,
                field: Some("service".into()),
                message: "no [[service]] defined".into(),
            });
        }
        let global = self.global(&file_cfg)?;
        let mut services = Vec::with_capacity(file_cfg.service.len());
        for (i, raw) in file_cfg.service.iter().enumerate() {
            let service = self.service(i, raw)?;
            if services.iter().any(|s: &Service| s.name == service.name) {
                return Err(self.err(
                    Section::Service(i),
                    "name",
                    format!("duplicate service name {:?}", service.name),
                ));
            }
            if services
                .iter()
                .any(|s: &Service| s.listen == service.listen && s.listen.port() != 0)
            {
                return Err(self.err(
                    Section::Service(i),
                    "listen",
                    format!("address {} is used by another service", service.listen),
                ));
            }
            services.push(service);
        }
        let kernel_tls = services
            .iter()
            .any(|s| s.ktls != KtlsMode::Off)
            .then(ktls::probe);
        if let Some(support) = &kernel_tls {
            for (i, svc) in services.iter().enumerate() {
                self.check_ktls_on(i, svc, support)?;
            }
        }
        Ok(Config {
            global,
            services,
            kernel_tls,
        })
    }

    /// `ktls = "on"` promises offload for every connection: the kernel must have the TLS ULP
    /// and every cipher suite the service allows.
    fn check_ktls_on(
        &self,
        i: usize,
        svc: &Service,
        support: &KernelSupport,
    ) -> Result<(), ConfigError> {
        if svc.ktls != KtlsMode::On {
            return Ok(());
        }
        if let Some(errno) = support.ulp_errno {
            return Err(self.err(
                Section::Service(i),
                "ktls",
                format!(
                    "\"on\" but this kernel has no kernel TLS (setsockopt TCP_ULP \"tls\": {}); \
                     use \"auto\" to fall back to userspace encryption",
                    std::io::Error::from_raw_os_error(errno)
                ),
            ));
        }
        let missing: Vec<&str> = svc
            .tls
            .crypto_provider()
            .cipher_suites
            .iter()
            .filter(|suite| {
                !ktls::kernel_cipher(**suite).is_some_and(|(v, c)| support.supports(v, c))
            })
            .map(|suite| tls::suite_name(*suite))
            .collect();
        if !missing.is_empty() {
            return Err(self.err(
                Section::Service(i),
                "ktls",
                format!(
                    "\"on\" but the kernel cannot offload {}; restrict `ciphers` or use \"auto\"",
                    missing.join(", ")
                ),
            ));
        }
        Ok(())
    }

    fn global(&self, file_cfg: &FileConfig) -> Result<Global, ConfigError> {
        let g = &file_cfg.global;
        let online = std::thread::available_parallelism().map_or(1, |n| n.get());
        let workers = match (self.overrides.workers, g.workers) {
            (Some(0), _) => return Err(self.flag_err("--workers", "must be at least 1")),
            (Some(n), _) => n,
            (None, Some(Workers::Count(n))) => n,
            (None, Some(Workers::Auto) | None) => online,
        };
        let pin = g.pin.unwrap_or(true);
        let worker_cpus = if pin {
            let available: Vec<usize> = core_affinity::get_core_ids()
                .unwrap_or_default()
                .into_iter()
                .map(|c| c.id)
                .collect();
            let chosen = match &g.cpus {
                Some(cpus) if cpus.is_empty() => {
                    return Err(self.err(Section::Global, "cpus", "must list at least one CPU"))
                }
                Some(cpus) => {
                    if let Some(bad) = cpus.iter().find(|c| !available.contains(c)) {
                        return Err(self.err(
                            Section::Global,
                            "cpus",
                            format!(
                                "CPU {bad} is not available to this process (have {available:?})"
                            ),
                        ));
                    }
                    cpus.clone()
                }
                None => available,
            };
            if chosen.is_empty() {
                Vec::new()
            } else {
                (0..workers).map(|w| chosen[w % chosen.len()]).collect()
            }
        } else {
            Vec::new()
        };
        Ok(Global {
            workers,
            worker_cpus,
            drain_timeout: g.drain_timeout.map_or(DEFAULT_DRAIN, |d| d.0),
            log_level: g.log_level.clone(),
        })
    }

    fn service(&self, i: usize, raw: &ServiceSection) -> Result<Service, ConfigError> {
        let sec = Section::Service(i);
        let ov = self.overrides;
        let first = i == 0;
        let name = raw.name.clone().unwrap_or_else(|| {
            if i == 0 {
                "default".to_owned()
            } else {
                format!("service{i}")
            }
        });

        let listen_flag = first.then_some(ov.listen.as_ref()).flatten();
        let listen_origin = if listen_flag.is_some() || self.path.is_none() {
            "--listen".to_owned()
        } else {
            let e = self.err(sec, "listen", "");
            e.to_string().trim_end_matches(": ").to_owned()
        };
        let listen = match (listen_flag, &raw.listen) {
            (Some(flag), _) => resolve(flag).map_err(|e| self.flag_err("--listen", e))?,
            (None, Some(text)) => resolve(text).map_err(|e| self.err(sec, "listen", e))?,
            (None, None) if self.path.is_none() => resolve(DEFAULT_LISTEN).expect("valid default"),
            (None, None) => {
                return Err(self.err(sec, "listen", "missing: set listen = \"ADDR:PORT\""))
            }
        };
        let backend = match (first.then_some(ov.backend.as_ref()).flatten(), &raw.backend) {
            (Some(flag), _) => {
                Backend::Addr(resolve(flag).map_err(|e| self.flag_err("--backend", e))?)
            }
            (None, Some(BackendValue::One(text))) => {
                Backend::Addr(resolve(text).map_err(|e| self.err(sec, "backend", e))?)
            }
            (None, Some(BackendValue::Pool(list))) => {
                if list.is_empty() {
                    return Err(self.err(
                        sec,
                        "backend",
                        "an empty list: name at least one backend",
                    ));
                }
                if list.len() > MAX_BACKENDS {
                    return Err(self.err(
                        sec,
                        "backend",
                        format!("at most {MAX_BACKENDS} backends per pool"),
                    ));
                }
                let addrs = list
                    .iter()
                    .map(|t| resolve(t).map_err(|e| self.err(sec, "backend", e)))
                    .collect::<Result<Vec<_>, _>>()?;
                Backend::Pool(addrs)
            }
            (None, None) if self.path.is_none() => Backend::BuiltinEcho,
            (None, None) => {
                return Err(self.err(sec, "backend", "missing: set backend = \"ADDR:PORT\""))
            }
        };

        let ktls = match raw.ktls.as_deref() {
            None | Some("auto") => KtlsMode::Auto,
            Some("on") => KtlsMode::On,
            Some("off") => KtlsMode::Off,
            Some(other) => {
                return Err(self.err(
                    sec,
                    "ktls",
                    format!("must be \"auto\", \"on\" or \"off\", got {other:?}"),
                ))
            }
        };
        let balance = match raw.balance.as_deref() {
            None => Balance::default(),
            Some(text) => Balance::parse(text).ok_or_else(|| {
                self.err(
                    sec,
                    "balance",
                    format!("must be \"round_robin\" or \"least_connections\", got {text:?}"),
                )
            })?,
        };
        let defaults = PoolPolicy::default();
        let pool = PoolPolicy {
            balance,
            fail_after: match raw.health_fail_after {
                Some(0) => return Err(self.err(sec, "health_fail_after", "must be at least 1")),
                Some(n) => n,
                None => defaults.fail_after,
            },
            retry: raw.health_retry.map_or(defaults.retry, |d| d.0),
            check: match raw.health_check {
                Some(d) if d.0 < Duration::from_millis(100) => {
                    return Err(self.err(sec, "health_check", "must be 100ms or more"))
                }
                Some(d) => Some(d.0),
                None => None,
            },
        };
        let proxy_protocol = match raw.proxy_protocol.as_deref() {
            None | Some("off") => None,
            Some(text) => Some(ProxyVersion::parse(text).ok_or_else(|| {
                self.err(
                    sec,
                    "proxy_protocol",
                    format!("must be \"v1\", \"v2\" or \"off\", got {text:?}"),
                )
            })?),
        };
        let accept_proxy = match (raw.accept_proxy, &raw.proxy_sources) {
            (None | Some(false), None) => None,
            (None | Some(false), Some(_)) => {
                return Err(self.err(sec, "proxy_sources", "only used with accept_proxy = true"))
            }
            (Some(true), None) => {
                return Err(self.err(
                    sec,
                    "accept_proxy",
                    "needs proxy_sources: the networks of the load balancers allowed to send \
                     PROXY headers, e.g. [\"10.0.0.0/8\"]",
                ))
            }
            (Some(true), Some(list)) => {
                let mut nets = Vec::with_capacity(list.len());
                for text in list {
                    let net = text
                        .parse::<ipnet::IpNet>()
                        .or_else(|_| text.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
                        .map_err(|_| {
                            self.err(
                                sec,
                                "proxy_sources",
                                format!("{text:?} is not an address or network (CIDR)"),
                            )
                        })?;
                    nets.push(net);
                }
                if nets.is_empty() {
                    return Err(self.err(sec, "proxy_sources", "must list at least one network"));
                }
                Some(nets)
            }
        };
        let policy = self.tls_policy(sec, raw)?;
        let (ticketer, ticket_keys) = self.ticketer(sec, raw)?;
        let session_cache_size = raw.session_cache_size.unwrap_or(DEFAULT_SESSION_CACHE);
        let tunables = self.tunables(sec, raw)?;

        let cert_flag = first.then_some(ov.cert.as_ref()).flatten();
        let key_flag = first.then_some(ov.key.as_ref()).flatten();
        let cert = cert_flag
            .map(|c| (c, "--cert"))
            .or(raw.cert.as_ref().map(|c| (c, "cert")));
        let key = key_flag
            .map(|k| (k, "--key"))
            .or(raw.key.as_ref().map(|k| (k, "key")));
        let located = |field: &str, msg: String| {
            if field.starts_with("--") {
                self.flag_err(field, msg)
            } else {
                self.err(sec, field, msg)
            }
        };
        let source = match (cert, key) {
            (Some((c, _)), Some((k, _))) => CertSource::Files {
                cert: self.relative(c),
                key: self.relative(k),
            },
            (None, None) => CertSource::Ephemeral,
            (Some((_, field)), None) => {
                return Err(located(
                    field,
                    "a certificate needs a key: set key as well".into(),
                ))
            }
            (None, Some((_, field))) => {
                return Err(located(
                    field,
                    "a key needs a certificate: set cert as well".into(),
                ))
            }
        };
        let mut built = tls::build_server_config(&policy, &source).map_err(|e| {
            let field = match e.field {
                tls::PolicyField::Cert => cert.map_or("cert", |c| c.1),
                tls::PolicyField::Key => key.map_or("key", |k| k.1),
                tls::PolicyField::Ciphers => "ciphers",
                tls::PolicyField::Groups => "groups",
                tls::PolicyField::Versions => "min_version",
                tls::PolicyField::Alpn => "alpn",
            };
            located(field, e.message)
        })?;

        if let Some(t) = ticketer {
            if let Some(c) = &mut built.chacha_first {
                c.ticketer = t.clone();
            }
            built.config.ticketer = t;
        }
        Ok(Service {
            name,
            listen,
            listen_origin,
            backend,
            tls: Arc::new(built.config),
            tls_chacha_first: built.chacha_first.map(Arc::new),
            certified: built.certified,
            cert_sha256: built.cert_sha256,
            ephemeral_cert: matches!(source, CertSource::Ephemeral),
            tunables,
            ktls,
            proxy_protocol,
            accept_proxy,
            pool,
            session_cache_size,
            ticket_keys,
        })
    }

    /// Paths in the file are relative to the file's directory; flags to the working directory.
    fn relative(&self, p: &str) -> PathBuf {
        let p = Path::new(p);
        match self.path.and_then(Path::parent) {
            Some(dir) if p.is_relative() && !dir.as_os_str().is_empty() => dir.join(p),
            _ => p.to_owned(),
        }
    }

    /// The service's ticketer; `None` when `tickets = false` (stateful resumption only).
    fn ticketer(
        &self,
        sec: Section,
        raw: &ServiceSection,
    ) -> Result<(Option<Arc<dyn rustls::server::ProducesTickets>>, TicketKeys), ConfigError> {
        use crate::tls::tickets::{self, KeySource, Ticketer};
        if raw.tickets == Some(false) {
            for key in ["ticket_keys_file", "ticket_secret_file"] {
                let set = match key {
                    "ticket_keys_file" => raw.ticket_keys_file.is_some(),
                    _ => raw.ticket_secret_file.is_some(),
                };
                if set {
                    return Err(self.err(sec, key, "set, but tickets = false"));
                }
            }
            return Ok((None, TicketKeys::Off));
        }
        let lifetime = raw.ticket_lifetime.map_or(DEFAULT_TICKET_LIFETIME, |d| d.0);
        if lifetime.is_zero() || lifetime > MAX_TICKET_LIFETIME {
            return Err(self.err(
                sec,
                "ticket_lifetime",
                "must be between 1s and 7 days (RFC 8446)",
            ));
        }
        let rotation = raw.ticket_rotation.map_or(DEFAULT_TICKET_ROTATION, |d| d.0);
        if rotation < Duration::from_secs(60) {
            return Err(self.err(sec, "ticket_rotation", "must be at least 1m"));
        }
        let kind = match (&raw.ticket_keys_file, &raw.ticket_secret_file) {
            (Some(file), _) => TicketKeys::File(self.relative(file)),
            (None, Some(file)) => TicketKeys::Secret(self.relative(file)),
            (None, None) => TicketKeys::Random { rotation, lifetime },
        };
        let source = match (&raw.ticket_keys_file, &raw.ticket_secret_file) {
            (Some(_), Some(_)) => {
                return Err(self.err(
                    sec,
                    "ticket_secret_file",
                    "use either ticket_keys_file or ticket_secret_file",
                ))
            }
            (Some(file), None) => KeySource::Fixed(
                tickets::parse_keys_file(&self.relative(file))
                    .map_err(|e| self.err(sec, "ticket_keys_file", e))?,
            ),
            (None, Some(file)) => KeySource::Derived {
                secret: tickets::read_secret_file(&self.relative(file))
                    .map_err(|e| self.err(sec, "ticket_secret_file", e))?,
                rotation,
            },
            (None, None) => KeySource::Random { rotation },
        };
        let ticketer = Ticketer::new(source, lifetime).ok_or_else(|| {
            self.err(
                sec,
                "tickets",
                "cannot create ticket keys (random number generator)",
            )
        })?;
        Ok((Some(Arc::new(ticketer)), kind))
    }

    fn tls_policy(&self, sec: Section, raw: &ServiceSection) -> Result<TlsPolicy, ConfigError> {
        let version = |key: &str, v: &Option<String>, default: tls::Version| match v.as_deref() {
            None => Ok(default),
            Some(text) => tls::Version::parse(text).ok_or_else(|| {
                self.err(
                    sec,
                    key,
                    format!("unknown TLS version {text:?}: use \"1.2\" or \"1.3\""),
                )
            }),
        };
        let min = version("min_version", &raw.min_version, tls::Version::Tls12)?;
        let max = version("max_version", &raw.max_version, tls::Version::Tls13)?;
        if min > max {
            return Err(self.err(sec, "max_version", "max_version is below min_version"));
        }
        let preference = match raw.cipher_preference.as_deref() {
            None => tls::CipherPreference::default(),
            Some(text) => tls::CipherPreference::parse(text).ok_or_else(|| {
                self.err(
                    sec,
                    "cipher_preference",
                    format!("must be \"auto\", \"server\" or \"client\", got {text:?}"),
                )
            })?,
        };
        Ok(TlsPolicy {
            min_version: min,
            max_version: max,
            ciphers: raw.ciphers.clone(),
            preference,
            groups: raw.groups.clone(),
            alpn: raw.alpn.clone().unwrap_or_default(),
        })
    }

    fn tunables(&self, sec: Section, raw: &ServiceSection) -> Result<Tunables, ConfigError> {
        let d = Tunables::default();
        let buffer_size = raw.buffer_size.map_or(d.buffer_size, |s| s.0);
        if !(MIN_BUFFER..=MAX_BUFFER).contains(&buffer_size) {
            return Err(self.err(
                sec,
                "buffer_size",
                format!("must be between {MIN_BUFFER} and {MAX_BUFFER} bytes, got {buffer_size}"),
            ));
        }
        let keepalive = match &raw.keepalive {
            None => d.keepalive,
            Some(KeepaliveValue::Off) => None,
            Some(KeepaliveValue::On(t)) => {
                let k = Keepalive::default();
                let ka = Keepalive {
                    idle: t.idle.map_or(k.idle, |v| v.0),
                    interval: t.interval.map_or(k.interval, |v| v.0),
                    count: t.count.unwrap_or(k.count),
                };
                if ka.idle < Duration::from_secs(1)
                    || ka.interval < Duration::from_secs(1)
                    || ka.count == 0
                {
                    return Err(self.err(
                        sec,
                        "keepalive",
                        "idle and interval must be at least 1s and count at least 1",
                    ));
                }
                Some(ka)
            }
        };
        let positive = |key: &str, v: Option<Duration>, default: Duration| {
            let v = v.unwrap_or(default);
            if v.is_zero() {
                Err(self.err(sec, key, "must be greater than zero"))
            } else {
                Ok(v)
            }
        };
        let max_connections = raw.max_connections.unwrap_or(d.max_connections);
        if max_connections == 0 {
            return Err(self.err(sec, "max_connections", "must be at least 1"));
        }
        Ok(Tunables {
            buffer_size,
            nodelay: raw.nodelay.unwrap_or(d.nodelay),
            keepalive,
            rcvbuf: raw.rcvbuf.map(|s| s.0),
            sndbuf: raw.sndbuf.map(|s| s.0),
            backlog: raw.backlog.unwrap_or(d.backlog),
            max_connections,
            handshake_timeout: positive(
                "handshake_timeout",
                raw.handshake_timeout.map(|v| v.0),
                d.handshake_timeout,
            )?,
            connect_timeout: positive(
                "connect_timeout",
                raw.connect_timeout.map(|v| v.0),
                d.connect_timeout,
            )?,
            idle_timeout: positive(
                "idle_timeout",
                raw.idle_timeout.map(|v| v.0),
                d.idle_timeout,
            )?,
        })
    }
}

/// Resolves `host:port` (IP literals without a lookup) to the first address.
fn resolve(text: &str) -> Result<SocketAddr, String> {
    if let Ok(addr) = text.parse::<SocketAddr>() {
        return Ok(addr);
    }
    text.to_socket_addrs()
        .map_err(|e| format!("cannot resolve {text:?}: {e} (expected ADDR:PORT)"))?
        .next()
        .ok_or_else(|| format!("{text:?} resolves to no address"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    #[test]
    fn no_file_means_a_demo_service() {
        let cfg = load(None, &Overrides::default()).unwrap();
        assert_eq!(cfg.services.len(), 1);
        let svc = &cfg.services[0];
        assert_eq!(svc.name, "default");
        assert_eq!(svc.listen, DEFAULT_LISTEN.parse().unwrap());
        assert_eq!(svc.backend, Backend::BuiltinEcho);
        assert!(svc.ephemeral_cert);
        assert_eq!(svc.tunables, Tunables::default());
    }

    #[test]
    fn flags_override_the_first_service_and_paths_follow_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let generated = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        write(dir.path(), "c.pem", &generated.cert.pem());
        write(dir.path(), "k.pem", &generated.key_pair.serialize_pem());
        let file = write(
            dir.path(),
            "t.toml",
            "[global]\nworkers = 3\npin = false\n[[service]]\nlisten = \"127.0.0.1:1\"\nbackend = \"127.0.0.1:2\"\ncert = \"c.pem\"\nkey = \"k.pem\"\nidle_timeout = \"2m\"\nkeepalive = false\n",
        );
        let overrides = Overrides {
            backend: Some("127.0.0.1:9".into()),
            workers: Some(1),
            ..Overrides::default()
        };
        let cfg = load(Some(&file), &overrides).unwrap();
        assert_eq!(cfg.global.workers, 1);
        assert!(cfg.global.worker_cpus.is_empty());
        let svc = &cfg.services[0];
        assert_eq!(svc.backend, Backend::Addr("127.0.0.1:9".parse().unwrap()));
        assert!(
            !svc.ephemeral_cert,
            "cert.pem relative to the file was loaded"
        );
        assert_eq!(svc.tunables.idle_timeout, Duration::from_secs(120));
        assert_eq!(svc.tunables.keepalive, None);
        assert!(
            svc.listen_origin.ends_with("line 5: service[0].listen"),
            "{}",
            svc.listen_origin
        );
    }

    #[test]
    fn validation_errors_name_line_and_field() {
        let dir = tempfile::tempdir().unwrap();
        let file = write(
            dir.path(),
            "t.toml",
            "[[service]]\nlisten = \"127.0.0.1:1\"\nbackend = \"127.0.0.1:2\"\n\nbuffer_size = 10\n",
        );
        let err = load(Some(&file), &Overrides::default()).unwrap_err();
        assert_eq!(err.line, Some(5));
        assert_eq!(err.field.as_deref(), Some("service[0].buffer_size"));
        assert!(
            err.to_string()
                .contains("t.toml line 5: service[0].buffer_size: must be between"),
            "{err}"
        );

        let file = write(
            dir.path(),
            "u.toml",
            "[[service]]\nlisten = \"127.0.0.1:1\"\n",
        );
        let err = load(Some(&file), &Overrides::default()).unwrap_err();
        assert_eq!(err.field.as_deref(), Some("service[0].backend"));
        assert_eq!(err.line, Some(1), "absent key: the table header");
    }
}
