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

use file::{
    BackendValue, FileConfig, IdentitySection, KeepaliveValue, RouteSection, ServiceSection,
    Workers,
};
use locate::{Locator, Section};

use crate::conn::starttls::{unescape, ChatStep, Protocol};
use crate::conn::starttls_offer::Offer;
use crate::io::ktls::{self, KernelSupport};
use crate::route::pool::{Balance, PoolPolicy, MAX_BACKENDS};
use crate::route::proxy_header::ProxyVersion;
use crate::route::sni::{self, SniPattern};
use crate::tls::client_auth::{self, Allow, ClientAuthMode, Identity};
use crate::tls::tickets::{RouteTickets, CONTEXT_LEN};
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
    /// `--allow-root` (as `[global] allow_root = true`).
    pub allow_root: bool,
    /// `--log-format` (as `[global] log_format`).
    pub log_format: Option<crate::obs::LogFormat>,
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
    /// Where backends ask who the client behind a connection is (see `route::identity`).
    pub identity_socket: Option<PathBuf>,
    /// The socket file's permission bits: who may ask.
    pub identity_socket_mode: u32,
    /// The admin endpoint (`/metrics`, `/ready`, `/live`); off when `None`.
    pub admin: Option<crate::obs::admin::AdminAddr>,
    /// On SIGTERM: how long `/ready` reports draining while the listeners still accept,
    /// before the drain starts (time for load balancers to stop sending connections).
    pub shutdown_delay: Duration,
    /// `user` / `group`: the account to drop to once listeners are bound and keys read.
    pub run_as: Option<crate::io::privilege::RunAs>,
    /// Serving as root (no `user` to drop to) was asked for explicitly.
    pub allow_root: bool,
    /// `log_format = "text" | "json"` (`--log-format` overrides it).
    pub log_format: crate::obs::LogFormat,
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
    /// The `[[service.route]]` entries in file order, then the default route (the service's
    /// own settings) unless `unknown_sni = "reject"`.
    pub routes: Vec<Route>,
    /// Index of the route for clients whose SNI matches no route; `None`: they are rejected.
    pub default_route: Option<usize>,
    pub tunables: Tunables,
    pub ktls: KtlsMode,
    /// `accept_proxy`: the networks whose connections start with a PROXY header (required
    /// from them, refused from anyone else).
    pub accept_proxy: Option<Vec<ipnet::IpNet>>,
    /// Session-cache entries per worker (TLS 1.2 session IDs; TLS 1.3 when tickets are off).
    pub session_cache_size: usize,
    /// Where the ticket keys come from; a reload keeps in-process random keys when this is
    /// unchanged, so outstanding tickets stay valid.
    pub ticket_keys: TicketKeys,
    /// The service's ticketer (`None`: tickets off); each route uses it bound to its own
    /// context (`tls::tickets::RouteTickets`).
    pub ticketer: Option<Arc<crate::tls::tickets::Ticketer>>,
    /// `mode = "client"`: plaintext in, TLS toward the backend (its only route's pool).
    pub client: Option<ClientSide>,
    /// Server mode `starttls`: the plaintext part tlsfront speaks with clients before TLS.
    pub starttls_offer: Option<Offer>,
    /// `access_log`: a file that gets one line per closed connection.
    pub access_log: Option<PathBuf>,
}

/// A client-mode service's TLS toward its remote server.
#[derive(Debug)]
pub struct ClientSide {
    /// The shared template; each worker uses its own copy (own session store).
    pub config: Arc<rustls::ClientConfig>,
    /// SNI and the name the server's certificate must carry.
    pub server_name: rustls::pki_types::ServerName<'static>,
    /// `starttls`: the plaintext opening before the handshake, and its per-step timeout.
    pub starttls: Option<(Protocol, Duration)>,
}

impl Service {
    /// The route for a ClientHello's SNI and ALPN offer (the default route when none
    /// matches; `None` when there is none and the client is to be rejected).
    pub fn route_for<'a>(
        &self,
        sni: Option<&str>,
        alpn: impl Iterator<Item = &'a [u8]> + Clone,
    ) -> Option<usize> {
        if self.routes.len() == usize::from(self.default_route.is_some()) {
            return self.default_route; // no named routes: nothing to compare
        }
        let matchers = self.routes.iter().map(|r| sni::Matcher {
            sni: &r.sni,
            alpn: &r.alpn_match,
        });
        sni::choose(matchers, sni, alpn).or(self.default_route)
    }

    /// Every terminating route's TLS settings.
    pub fn route_tls(&self) -> impl Iterator<Item = &RouteTls> {
        self.routes.iter().filter_map(|r| r.tls.as_ref())
    }
}

/// One way through a service: the names it answers, how its TLS is handled and where its
/// connections go.
#[derive(Debug)]
pub struct Route {
    /// For logs: the route's `name`, its first SNI name, or the service's name (default).
    pub name: String,
    /// Empty for the default route.
    pub sni: Vec<SniPattern>,
    /// The route applies only to clients offering one of these ALPN protocols (empty: all).
    pub alpn_match: Vec<Vec<u8>>,
    /// How TLS is terminated; `None` for a pass-through route (raw bytes to the backend).
    pub tls: Option<RouteTls>,
    /// `[0]` is the route's own backend pool; the rest are its `by_identity` entries, in
    /// file order (the first whose matcher accepts the client certificate wins).
    pub upstreams: Vec<Upstream>,
    /// Send a PROXY protocol header (this version) to the backend first.
    pub proxy_protocol: Option<ProxyVersion>,
    /// `backend_tls`: the backend speaks TLS too (re-encryption).
    pub backend_tls: Option<ClientSide>,
}

impl Route {
    /// The upstream for a client with this certificate identity (the route's own without one).
    pub fn upstream_for(&self, identity: Option<&Identity>) -> usize {
        identity
            .and_then(|id| {
                self.upstreams
                    .iter()
                    .skip(1)
                    .position(|u| u.identity.permits(id))
            })
            .map_or(0, |i| i + 1)
    }
}

/// A terminating route's TLS: its rustls configs, certificate and client authentication.
#[derive(Debug)]
pub struct RouteTls {
    pub config: Arc<rustls::ServerConfig>,
    /// `cipher_preference = "auto"` where AES-GCM is accelerated: the same config with
    /// ChaCha20 first, for clients that list ChaCha20 before AES-GCM.
    pub chacha_first: Option<Arc<rustls::ServerConfig>>,
    /// The served chain and key; workers build their own config copies from it.
    pub certified: Arc<rustls::sign::CertifiedKey>,
    /// SHA-256 of the leaf certificate, hex.
    pub cert_sha256: String,
    /// True when no cert/key was configured and a self-signed one was generated.
    pub ephemeral_cert: bool,
    pub client_auth: ClientAuthMode,
    /// What this route's tickets are bound to: its names and its client authentication.
    pub ticket_context: [u8; CONTEXT_LEN],
    /// The private key's file (none for an ephemeral certificate).
    pub key_file: Option<PathBuf>,
}

impl RouteTls {
    /// Makes the route's configs issue and accept tickets of `service_ticketer`, bound to
    /// the route's context.
    pub fn bind_tickets(&mut self, service_ticketer: &Arc<crate::tls::tickets::Ticketer>) {
        let bound: Arc<dyn rustls::server::ProducesTickets> = Arc::new(RouteTickets::new(
            service_ticketer.clone(),
            self.ticket_context,
        ));
        let mut config = (*self.config).clone();
        config.ticketer = bound.clone();
        self.config = Arc::new(config);
        if let Some(chacha) = &mut self.chacha_first {
            let mut config = (**chacha).clone();
            config.ticketer = bound;
            *chacha = Arc::new(config);
        }
    }
}

/// A backend pool of a route and, for `by_identity` entries, the clients it is for.
#[derive(Debug)]
pub struct Upstream {
    pub backend: Backend,
    /// How the pool is balanced and judged (one backend: only its health).
    pub pool: PoolPolicy,
    /// Empty for the route's own pool.
    pub identity: Allow,
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
            // Borrowed per transfer from the worker's pool (an idle connection holds none):
            // 64 KiB moves bulk data in a quarter of the syscalls 16 KiB needs.
            buffer_size: 64 * 1024,
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
/// How long each step of a STARTTLS opening may take.
pub const DEFAULT_STARTTLS_TIMEOUT: Duration = Duration::from_secs(10);
/// Owner and group may ask the identity socket; others may not.
pub const DEFAULT_IDENTITY_SOCKET_MODE: u32 = 0o660;
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
    /// An error about `key` as `section` sees it: where a route inherits the key from its
    /// service, the error points at the service's line.
    fn err(&self, section: Section, key: &str, message: impl Into<String>) -> ConfigError {
        let owner = self.locator.map_or(section, |l| l.owner(section, key));
        self.err_here(owner, key, message)
    }

    /// An error about `key` in `section`'s own table (a key it must set itself).
    fn err_here(&self, section: Section, key: &str, message: impl Into<String>) -> ConfigError {
        ConfigError {
            file: self.path.map(Path::to_owned),
            line: self.locator.and_then(|l| l.line_of(section, key)),
            field: Some(section.field(key)),
            message: message.into(),
        }
    }

    /// Refuses the first of `keys` that is set (`true`), with `message`: settings that do
    /// not apply in this combination.
    fn refuse_set(
        &self,
        section: Section,
        keys: &[(&str, bool)],
        message: &str,
    ) -> Result<(), ConfigError> {
        match keys.iter().find(|(_, set)| *set) {
            Some((key, _)) => Err(self.err(section, key, message)),
            None => Ok(()),
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
        let client_suites = svc
            .client
            .iter()
            .flat_map(|c| c.config.crypto_provider().cipher_suites.iter());
        let mut missing: Vec<&str> = svc
            .route_tls()
            .flat_map(|t| t.config.crypto_provider().cipher_suites.iter())
            .chain(client_suites)
            .filter(|suite| {
                !ktls::kernel_cipher(**suite).is_some_and(|(v, c)| support.supports(v, c))
            })
            .map(|suite| tls::suite_name(*suite))
            .collect();
        missing.sort_unstable();
        missing.dedup();
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
            identity_socket: match g.identity_socket.as_deref() {
                Some("") => {
                    return Err(self.err(Section::Global, "identity_socket", "must be a path"))
                }
                other => other.map(|p| self.relative(p)),
            },
            admin: match g.admin.as_deref() {
                None => None,
                Some("") => {
                    return Err(self.err(
                        Section::Global,
                        "admin",
                        "must be ADDR:PORT or the path of a Unix socket",
                    ))
                }
                Some(text) if text.contains('/') => {
                    Some(crate::obs::admin::AdminAddr::Unix(self.relative(text)))
                }
                Some(text) => Some(crate::obs::admin::AdminAddr::Tcp(resolve(text).map_err(
                    |e| {
                        self.err(
                            Section::Global,
                            "admin",
                            format!("{e}, or the path of a Unix socket (containing a /)"),
                        )
                    },
                )?)),
            },
            shutdown_delay: g.shutdown_delay.map_or(Duration::ZERO, |d| d.0),
            allow_root: g.allow_root.unwrap_or(false) || self.overrides.allow_root,
            log_format: match g.log_format.as_deref() {
                _ if self.overrides.log_format.is_some() => {
                    self.overrides.log_format.unwrap_or_default()
                }
                None | Some("text") => crate::obs::LogFormat::Text,
                Some("json") => crate::obs::LogFormat::Json,
                Some(other) => {
                    return Err(self.err(
                        Section::Global,
                        "log_format",
                        format!("must be \"text\" or \"json\", got {other:?}"),
                    ))
                }
            },
            run_as: match (g.user.as_deref(), g.group.as_deref()) {
                (None, None) => None,
                (None, Some(_)) => {
                    return Err(self.err(
                        Section::Global,
                        "group",
                        "a group needs a user to drop to: set user as well",
                    ))
                }
                (Some(user), group) => {
                    Some(crate::io::privilege::resolve(user, group).map_err(|e| {
                        let field = if e.contains("group") { "group" } else { "user" };
                        self.err(Section::Global, field, e)
                    })?)
                }
            },
            identity_socket_mode: match g.identity_socket_mode.as_deref() {
                None => DEFAULT_IDENTITY_SOCKET_MODE,
                Some(text) => u32::from_str_radix(text.trim_start_matches("0o"), 8)
                    .ok()
                    .filter(|m| *m <= 0o777)
                    .ok_or_else(|| {
                        self.err(
                            Section::Global,
                            "identity_socket_mode",
                            format!("must be octal permission bits such as \"0660\", got {text:?}"),
                        )
                    })?,
            },
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
        let client_mode = match raw.mode.as_deref() {
            None | Some("server") => false,
            Some("client") => true,
            Some(other) => {
                return Err(self.err(
                    sec,
                    "mode",
                    format!("must be \"server\" or \"client\", got {other:?}"),
                ))
            }
        };
        if client_mode {
            return self.client_service(i, raw, name, listen, listen_origin, ktls);
        }
        self.refuse_set(
            sec,
            &[
                ("server_name", raw.server_name.is_some()),
                ("ca", raw.ca.is_some()),
                ("starttls_timeout", raw.starttls_timeout.is_some()),
                ("chat", raw.chat.is_some()),
            ],
            "only used with mode = \"client\" (the CA of a server mode's clients is client_ca)",
        )?;
        let starttls_offer = match raw.starttls.as_deref() {
            None => None,
            Some(name) => Some(Offer::parse(name).ok_or_else(|| {
                self.err(
                    sec,
                    "starttls",
                    format!(
                        "in server mode tlsfront offers STARTTLS for {}; got {name:?}",
                        Offer::NAMES.join(", ")
                    ),
                )
            })?),
        };
        let accept_proxy = self.accept_proxy(sec, raw)?;
        let (ticketer, ticket_keys) = self.ticketer(sec, raw)?;
        let session_cache_size = raw.session_cache_size.unwrap_or(DEFAULT_SESSION_CACHE);
        let tunables = self.tunables(sec, raw)?;
        let reject_unknown = match raw.unknown_sni.as_deref() {
            None | Some("default") => false,
            Some("reject") => true,
            Some(other) => {
                return Err(self.err(
                    sec,
                    "unknown_sni",
                    format!("must be \"default\" or \"reject\", got {other:?}"),
                ))
            }
        };
        if reject_unknown && raw.route.is_empty() {
            return Err(self.err(
                sec,
                "unknown_sni",
                "\"reject\" refuses every client of a service without [[service.route]] tables",
            ));
        }

        let mut routes = Vec::with_capacity(raw.route.len() + 1);
        for (j, r) in raw.route.iter().enumerate() {
            routes.push(self.named_route(i, j, raw, r, ticketer.as_ref())?);
        }
        let default_route = if reject_unknown {
            None
        } else {
            routes.push(self.default_route(i, raw, &name, ticketer.as_ref())?);
            Some(routes.len() - 1)
        };
        Ok(Service {
            name,
            listen,
            listen_origin,
            routes,
            default_route,
            tunables,
            ktls,
            accept_proxy,
            session_cache_size,
            ticket_keys,
            ticketer,
            client: None,
            starttls_offer,
            access_log: self.access_log(sec, raw)?,
        })
    }

    /// `access_log = PATH`: checked by opening it for appending (created if missing).
    fn access_log(
        &self,
        sec: Section,
        raw: &ServiceSection,
    ) -> Result<Option<PathBuf>, ConfigError> {
        let Some(text) = raw.access_log.as_deref() else {
            return Ok(None);
        };
        let path = self.relative(text);
        crate::obs::access::open(&path).map_err(|e| {
            self.err(
                sec,
                "access_log",
                format!("cannot open {} for appending: {e}", path.display()),
            )
        })?;
        Ok(Some(path))
    }

    /// `mode = "client"`: a plaintext listener whose connections go out as TLS to `backend`.
    fn client_service(
        &self,
        i: usize,
        raw: &ServiceSection,
        name: String,
        listen: SocketAddr,
        listen_origin: String,
        ktls: KtlsMode,
    ) -> Result<Service, ConfigError> {
        let sec = Section::Service(i);
        let server_only = [
            ("route", !raw.route.is_empty()),
            ("by_identity", !raw.by_identity.is_empty()),
            ("unknown_sni", raw.unknown_sni.is_some()),
            ("client_auth", raw.client_auth.is_some()),
            ("client_ca", raw.client_ca.is_some()),
            ("client_crl", raw.client_crl.is_some()),
            ("allow_cn", raw.allow_cn.is_some()),
            ("allow_dns", raw.allow_dns.is_some()),
            ("allow_uri", raw.allow_uri.is_some()),
            ("allow_spki", raw.allow_spki.is_some()),
            ("cipher_preference", raw.cipher_preference.is_some()),
            ("proxy_protocol", raw.proxy_protocol.is_some()),
            ("accept_proxy", raw.accept_proxy.is_some()),
            ("proxy_sources", raw.proxy_sources.is_some()),
            ("ticket_keys_file", raw.ticket_keys_file.is_some()),
            ("ticket_secret_file", raw.ticket_secret_file.is_some()),
            ("ticket_rotation", raw.ticket_rotation.is_some()),
            ("ticket_lifetime", raw.ticket_lifetime.is_some()),
            ("backend_tls", raw.backend_tls.is_some()),
            ("backend_server_name", raw.backend_server_name.is_some()),
            ("backend_ca", raw.backend_ca.is_some()),
            ("backend_pin", raw.backend_pin.is_some()),
        ];
        self.refuse_set(
            sec,
            &server_only,
            "a server-mode setting: mode = \"client\" accepts plaintext and speaks TLS to the \
             backend",
        )?;
        let Some(value) = &raw.backend else {
            return Err(self.err(
                sec,
                "backend",
                "missing: the TLS server to connect to, e.g. backend = \"mail.example.com:465\"",
            ));
        };
        let backend = self.backend(sec, value)?;
        let first = first_backend(Some(value));
        let server_name = match &raw.server_name {
            Some(n) => rustls::pki_types::ServerName::try_from(n.trim().to_owned())
                .map_err(|e| self.err(sec, "server_name", format!("{n:?}: {e}")))?,
            None => host_of(first)
                .and_then(|h| rustls::pki_types::ServerName::try_from(h.to_owned()).ok())
                .ok_or_else(|| {
                    self.err(
                        sec,
                        "server_name",
                        "missing: the name the server's certificate must carry (cannot be \
                         taken from the backend address)",
                    )
                })?,
        };
        let roots = match raw.ca.as_deref() {
            None | Some("system") => tls::Roots::System,
            Some(path) => tls::Roots::File(self.relative(path)),
        };
        let store = tls::load_roots(&roots).map_err(|e| self.err(sec, "ca", e))?;
        let policy = self.tls_policy(sec, raw)?;
        let identity = match (&raw.cert, &raw.key) {
            (Some(c), Some(k)) => Some((self.relative(c), self.relative(k))),
            (None, None) => None,
            (Some(_), None) => {
                return Err(self.err(sec, "cert", "a client certificate needs a key: set key"))
            }
            (None, Some(_)) => {
                return Err(self.err(sec, "key", "a key needs a certificate: set cert"))
            }
        };
        let config = tls::build_client_config(
            &policy,
            tls::ServerTrust::Roots(store),
            identity.as_ref().map(|(c, k)| (c.as_path(), k.as_path())),
        )
        .map_err(|e| {
            let field = match e.field {
                tls::PolicyField::Cert => "cert",
                tls::PolicyField::Key => "key",
                tls::PolicyField::Ciphers => "ciphers",
                tls::PolicyField::Groups => "groups",
                tls::PolicyField::Versions => "min_version",
                tls::PolicyField::Alpn => "alpn",
            };
            self.err(sec, field, e.message)
        })?;
        let session_cache_size = match raw.tickets {
            Some(false) => 0,
            _ => raw.session_cache_size.unwrap_or(DEFAULT_SESSION_CACHE),
        };
        let starttls = self.starttls(sec, raw)?;
        Ok(Service {
            name: name.clone(),
            listen,
            listen_origin,
            routes: vec![Route {
                name,
                sni: Vec::new(),
                alpn_match: Vec::new(),
                tls: None,
                upstreams: vec![Upstream {
                    backend,
                    pool: self.pool_policy(sec, raw)?,
                    identity: Allow::default(),
                }],
                proxy_protocol: None,
                backend_tls: None,
            }],
            default_route: Some(0),
            tunables: self.tunables(sec, raw)?,
            ktls,
            accept_proxy: None,
            session_cache_size,
            ticket_keys: TicketKeys::Off,
            ticketer: None,
            client: Some(ClientSide {
                config: Arc::new(config),
                server_name,
                starttls,
            }),
            starttls_offer: None,
            access_log: self.access_log(sec, raw)?,
        })
    }

    /// The service's own settings as a route: for clients whose SNI matches no route.
    /// The command-line flags apply to it (on the first service).
    fn default_route(
        &self,
        i: usize,
        raw: &ServiceSection,
        name: &str,
        ticketer: Option<&Arc<crate::tls::tickets::Ticketer>>,
    ) -> Result<Route, ConfigError> {
        let sec = Section::Service(i);
        let ov = self.overrides;
        let first = i == 0;
        let backend = match (first.then_some(ov.backend.as_ref()).flatten(), &raw.backend) {
            (Some(flag), _) => {
                Backend::Addr(resolve(flag).map_err(|e| self.flag_err("--backend", e))?)
            }
            (None, Some(value)) => self.backend(sec, value)?,
            (None, None) if self.path.is_none() => Backend::BuiltinEcho,
            (None, None) => {
                return Err(self.err(sec, "backend", "missing: set backend = \"ADDR:PORT\""))
            }
        };
        let cert_flag = first.then_some(ov.cert.as_ref()).flatten();
        let key_flag = first.then_some(ov.key.as_ref()).flatten();
        let cert = cert_flag
            .map(|c| (c, "--cert"))
            .or(raw.cert.as_ref().map(|c| (c, "cert")));
        let key = key_flag
            .map(|k| (k, "--key"))
            .or(raw.key.as_ref().map(|k| (k, "key")));
        let tls = self.route_tls(sec, raw, cert, key, ticketer, b"default")?;
        let upstreams = self.upstreams(sec, raw, backend, &raw.by_identity, &tls)?;
        Ok(Route {
            name: name.to_owned(),
            sni: Vec::new(),
            alpn_match: Vec::new(),
            tls: Some(tls),
            backend_tls: self.backend_tls(sec, raw, first_backend(raw.backend.as_ref()))?,
            upstreams,
            proxy_protocol: self.proxy_protocol(sec, raw)?,
        })
    }

    /// A `[[service.route]]` table: its own keys over the service's.
    fn named_route(
        &self,
        i: usize,
        j: usize,
        raw: &ServiceSection,
        r: &RouteSection,
        ticketer: Option<&Arc<crate::tls::tickets::Ticketer>>,
    ) -> Result<Route, ConfigError> {
        let sec = Section::Route(i, j);
        let names = match &r.sni {
            None => {
                return Err(self.err_here(
                    sec,
                    "sni",
                    "missing: set sni = \"name\" or a list (\"*.example.com\" for a wildcard)",
                ))
            }
            Some(v) => v.to_vec(),
        };
        if names.is_empty() {
            return Err(self.err_here(sec, "sni", "must list at least one name"));
        }
        let sni = names
            .iter()
            .map(|n| SniPattern::parse(n).map_err(|e| self.err_here(sec, "sni", e)))
            .collect::<Result<Vec<_>, _>>()?;
        let mut alpn_match = Vec::new();
        for proto in r.alpn_match.iter().flatten() {
            if proto.is_empty() || proto.len() > 255 {
                return Err(self.err_here(
                    sec,
                    "alpn_match",
                    format!("ALPN protocol {proto:?} must be 1 to 255 bytes"),
                ));
            }
            alpn_match.push(proto.as_bytes().to_vec());
        }
        let name = r.name.clone().unwrap_or_else(|| names[0].clone());
        let Some(backend_value) = &r.backend else {
            return Err(self.err_here(
                sec,
                "backend",
                "missing: every route needs its own backend = \"ADDR:PORT\" (or a list)",
            ));
        };
        let eff = overlay(raw, r);
        let backend = self.backend(sec, backend_value)?;
        let proxy_protocol = self.proxy_protocol(sec, &eff)?;
        if r.passthrough == Some(true) {
            const TLS_KEYS: &[&str] = &[
                "cert",
                "key",
                "min_version",
                "max_version",
                "ciphers",
                "cipher_preference",
                "groups",
                "alpn",
                "client_auth",
                "client_ca",
                "client_crl",
                "allow_cn",
                "allow_dns",
                "allow_uri",
                "allow_spki",
                "by_identity",
                "backend_tls",
                "backend_server_name",
                "backend_ca",
                "backend_pin",
            ];
            if let Some(key) = TLS_KEYS
                .iter()
                .find(|k| self.locator.is_some_and(|l| l.has_key(sec, k)))
            {
                return Err(self.err_here(
                    sec,
                    key,
                    "a passthrough route does not terminate TLS: the backend's own TLS \
                     settings apply",
                ));
            }
            return Ok(Route {
                name,
                sni,
                alpn_match,
                tls: None,
                upstreams: vec![Upstream {
                    backend,
                    pool: self.pool_policy(sec, &eff)?,
                    identity: Allow::default(),
                }],
                proxy_protocol,
                backend_tls: None,
            });
        }
        let cert = eff.cert.as_ref().map(|c| (c, "cert"));
        let key = eff.key.as_ref().map(|k| (k, "key"));
        let mut route_key = b"route".to_vec();
        for part in sni
            .iter()
            .map(|p| p.to_string().into_bytes())
            .chain(alpn_match.iter().cloned())
        {
            route_key.push(0);
            route_key.extend_from_slice(&part);
        }
        let tls = self.route_tls(sec, &eff, cert, key, ticketer, &route_key)?;
        let upstreams = self.upstreams(sec, &eff, backend, &r.by_identity, &tls)?;
        Ok(Route {
            name,
            sni,
            alpn_match,
            tls: Some(tls),
            backend_tls: self.backend_tls(sec, &eff, first_backend(Some(backend_value)))?,
            upstreams,
            proxy_protocol,
        })
    }

    /// A route's own pool and its `by_identity` pools (which need client certificates).
    fn upstreams(
        &self,
        sec: Section,
        eff: &ServiceSection,
        backend: Backend,
        by_identity: &[IdentitySection],
        tls: &RouteTls,
    ) -> Result<Vec<Upstream>, ConfigError> {
        let mut upstreams = vec![Upstream {
            backend,
            pool: self.pool_policy(sec, eff)?,
            identity: Allow::default(),
        }];
        if !by_identity.is_empty() && tls.client_auth == ClientAuthMode::None {
            return Err(self.err(
                sec,
                "by_identity",
                "routing by client identity needs client_auth = \"optional\" or \"required\"",
            ));
        }
        let (i, route) = match sec {
            Section::Route(i, j) => (i, Some(j)),
            Section::Service(i) => (i, None),
            _ => (0, None),
        };
        for (k, id) in by_identity.iter().enumerate() {
            let isec = Section::Identity(i, route, k);
            let identity = self.allow(
                isec,
                &id.allow_cn,
                &id.allow_dns,
                &id.allow_uri,
                &id.allow_spki,
            )?;
            if identity.is_empty() {
                return Err(self.err_here(
                    isec,
                    "allow_uri",
                    "a by_identity entry needs a matcher: allow_cn, allow_dns, allow_uri or \
                     allow_spki",
                ));
            }
            let Some(value) = &id.backend else {
                return Err(self.err_here(isec, "backend", "missing: set backend = \"ADDR:PORT\""));
            };
            let mut pool_keys = eff.clone();
            pool_keys.balance = id.balance.clone().or(pool_keys.balance);
            pool_keys.health_fail_after = id.health_fail_after.or(pool_keys.health_fail_after);
            pool_keys.health_retry = id.health_retry.or(pool_keys.health_retry);
            pool_keys.health_check = id.health_check.or(pool_keys.health_check);
            upstreams.push(Upstream {
                backend: self.backend(isec, value)?,
                pool: self.pool_policy(isec, &pool_keys)?,
                identity,
            });
        }
        Ok(upstreams)
    }

    /// The rustls configs of a terminating route.
    fn route_tls(
        &self,
        sec: Section,
        eff: &ServiceSection,
        cert: Option<(&String, &str)>,
        key: Option<(&String, &str)>,
        ticketer: Option<&Arc<crate::tls::tickets::Ticketer>>,
        route_key: &[u8],
    ) -> Result<RouteTls, ConfigError> {
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
        let policy = self.tls_policy(sec, eff)?;
        let (client_auth, verifier) = self.client_auth(sec, eff)?;
        let built = tls::build_server_config(&policy, &source, verifier).map_err(|e| {
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
        let mut tls = RouteTls {
            config: Arc::new(built.config),
            chacha_first: built.chacha_first.map(Arc::new),
            certified: built.certified,
            cert_sha256: built.cert_sha256,
            ephemeral_cert: matches!(source, CertSource::Ephemeral),
            client_auth,
            ticket_context: self.ticket_context(route_key, eff, client_auth),
            key_file: match &source {
                CertSource::Files { key, .. } => Some(key.clone()),
                CertSource::Ephemeral => None,
            },
        };
        if let Some(t) = ticketer {
            tls.bind_tickets(t);
        }
        Ok(tls)
    }

    /// A digest of what a route's resumed sessions must not outlive: its names and ALPN
    /// match (`route_key`) and its client authentication (mode, CA bundle, CRLs, allowlist).
    /// Only configuration goes in, so instances with the same config agree.
    fn ticket_context(
        &self,
        route_key: &[u8],
        eff: &ServiceSection,
        mode: ClientAuthMode,
    ) -> [u8; CONTEXT_LEN] {
        let mut h = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
        let mut field = |bytes: &[u8]| {
            h.update(&(bytes.len() as u64).to_be_bytes());
            h.update(bytes);
        };
        field(b"tlsfront ticket context v1");
        field(route_key);
        field(mode.as_str().as_bytes());
        if mode != ClientAuthMode::None {
            let files = eff.client_ca.iter().chain(eff.client_crl.iter().flatten());
            for path in files {
                field(&std::fs::read(self.relative(path)).unwrap_or_default());
            }
            let lists = [
                &eff.allow_cn,
                &eff.allow_dns,
                &eff.allow_uri,
                &eff.allow_spki,
            ];
            for (i, list) in lists.into_iter().enumerate() {
                field(&[i as u8]);
                for entry in list.iter().flatten() {
                    field(entry.as_bytes());
                }
            }
        }
        let digest = h.finish();
        let mut context = [0; CONTEXT_LEN];
        context.copy_from_slice(&digest.as_ref()[..CONTEXT_LEN]);
        context
    }

    /// `starttls`, `chat` and `starttls_timeout` (client mode).
    fn starttls(
        &self,
        sec: Section,
        raw: &ServiceSection,
    ) -> Result<Option<(Protocol, Duration)>, ConfigError> {
        let timeout = raw
            .starttls_timeout
            .map_or(DEFAULT_STARTTLS_TIMEOUT, |d| d.0);
        if timeout.is_zero() {
            return Err(self.err(sec, "starttls_timeout", "must be greater than zero"));
        }
        let protocol = match raw.starttls.as_deref() {
            None => {
                self.refuse_set(
                    sec,
                    &[
                        ("chat", raw.chat.is_some()),
                        ("starttls_timeout", raw.starttls_timeout.is_some()),
                    ],
                    "only used with starttls",
                )?;
                return Ok(None);
            }
            Some("chat") => {
                let Some(steps) = raw.chat.as_ref().filter(|s| !s.is_empty()) else {
                    return Err(self.err(
                        sec,
                        "chat",
                        "starttls = \"chat\" needs its steps: chat = [{ expect = \"220\" }, \
                         { send = \"STARTTLS\\r\\n\" }, ...]",
                    ));
                };
                let mut script = Vec::with_capacity(steps.len());
                for (n, step) in steps.iter().enumerate() {
                    let parsed = match (&step.expect, &step.send) {
                        (Some(e), None) => unescape(e).map(ChatStep::Expect),
                        (None, Some(s)) => unescape(s).map(ChatStep::Send),
                        _ => Err("each step has exactly one of expect or send".to_owned()),
                    };
                    script.push(
                        parsed
                            .map_err(|e| self.err(sec, "chat", format!("step {}: {e}", n + 1)))?,
                    );
                }
                Protocol::Chat(script)
            }
            Some(name) => {
                if raw.chat.is_some() {
                    return Err(self.err(sec, "chat", "only used with starttls = \"chat\""));
                }
                Protocol::parse(name).ok_or_else(|| {
                    self.err(
                        sec,
                        "starttls",
                        format!(
                            "unknown protocol {name:?}; known: {}",
                            Protocol::NAMES.join(", ")
                        ),
                    )
                })?
            }
        };
        Ok(Some((protocol, timeout)))
    }

    /// `backend_tls` and its keys: how the backend's TLS is verified (re-encryption).
    fn backend_tls(
        &self,
        sec: Section,
        eff: &ServiceSection,
        first_backend: &str,
    ) -> Result<Option<ClientSide>, ConfigError> {
        if eff.backend_tls != Some(true) {
            self.refuse_set(
                sec,
                &[
                    ("backend_server_name", eff.backend_server_name.is_some()),
                    ("backend_ca", eff.backend_ca.is_some()),
                    ("backend_pin", eff.backend_pin.is_some()),
                ],
                "only used with backend_tls = true",
            )?;
            return Ok(None);
        }
        let server_name = match &eff.backend_server_name {
            Some(n) => rustls::pki_types::ServerName::try_from(n.trim().to_owned())
                .map_err(|e| self.err(sec, "backend_server_name", format!("{n:?}: {e}")))?,
            None => host_of(first_backend)
                .and_then(|h| rustls::pki_types::ServerName::try_from(h.to_owned()).ok())
                .ok_or_else(|| {
                    self.err(
                        sec,
                        "backend_server_name",
                        "missing: the name the backend's certificate must carry",
                    )
                })?,
        };
        let trust = match &eff.backend_pin {
            Some(pins) => {
                if eff.backend_ca.is_some() {
                    return Err(self.err(
                        sec,
                        "backend_pin",
                        "use either backend_pin (the key is the identity) or backend_ca",
                    ));
                }
                let pins = pins
                    .iter()
                    .map(|p| Allow::parse_spki_pin(p).map_err(|e| self.err(sec, "backend_pin", e)))
                    .collect::<Result<Vec<_>, _>>()?;
                if pins.is_empty() {
                    return Err(self.err(sec, "backend_pin", "must list at least one pin"));
                }
                tls::ServerTrust::Pins(pins)
            }
            None => {
                let roots = match eff.backend_ca.as_deref() {
                    None | Some("system") => tls::Roots::System,
                    Some(path) => tls::Roots::File(self.relative(path)),
                };
                tls::ServerTrust::Roots(
                    tls::load_roots(&roots).map_err(|e| self.err(sec, "backend_ca", e))?,
                )
            }
        };
        let config = tls::build_client_config(&TlsPolicy::default(), trust, None)
            .map_err(|e| self.err(sec, "backend_tls", e.message))?;
        Ok(Some(ClientSide {
            config: Arc::new(config),
            server_name,
            starttls: None,
        }))
    }

    /// `client_auth`, `client_ca`, `client_crl` and the `allow_*` lists.
    fn client_auth(
        &self,
        sec: Section,
        eff: &ServiceSection,
    ) -> Result<
        (
            ClientAuthMode,
            Option<Arc<dyn rustls::server::danger::ClientCertVerifier>>,
        ),
        ConfigError,
    > {
        let mode = match eff.client_auth.as_deref() {
            None => ClientAuthMode::None,
            Some(text) => ClientAuthMode::parse(text).ok_or_else(|| {
                self.err(
                    sec,
                    "client_auth",
                    format!("must be \"none\", \"optional\" or \"required\", got {text:?}"),
                )
            })?,
        };
        let allow = self.allow(
            sec,
            &eff.allow_cn,
            &eff.allow_dns,
            &eff.allow_uri,
            &eff.allow_spki,
        )?;
        if mode == ClientAuthMode::None {
            self.refuse_set(
                sec,
                &[
                    ("client_ca", eff.client_ca.is_some()),
                    ("client_crl", eff.client_crl.is_some()),
                    ("allow_cn", eff.allow_cn.is_some()),
                    ("allow_dns", eff.allow_dns.is_some()),
                    ("allow_uri", eff.allow_uri.is_some()),
                    ("allow_spki", eff.allow_spki.is_some()),
                ],
                "set, but client_auth is \"none\": set client_auth = \"required\" or \"optional\"",
            )?;
            return Ok((mode, None));
        }
        let Some(ca) = &eff.client_ca else {
            return Err(self.err(
                sec,
                "client_ca",
                "missing: client certificates need the CA bundle that issues them",
            ));
        };
        let crls: Vec<PathBuf> = eff
            .client_crl
            .iter()
            .flatten()
            .map(|p| self.relative(p))
            .collect();
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let verifier =
            client_auth::build_verifier(mode, &self.relative(ca), &crls, allow, provider).map_err(
                |e| {
                    let key = if e.contains("CRL") || e.contains("revocation") {
                        "client_crl"
                    } else {
                        "client_ca"
                    };
                    self.err(sec, key, e)
                },
            )?;
        Ok((mode, Some(verifier)))
    }

    fn allow(
        &self,
        sec: Section,
        cn: &Option<Vec<String>>,
        dns: &Option<Vec<String>>,
        uri: &Option<Vec<String>>,
        spki: &Option<Vec<String>>,
    ) -> Result<Allow, ConfigError> {
        let list = |key: &str, v: &Option<Vec<String>>| -> Result<Vec<String>, ConfigError> {
            let v = v.clone().unwrap_or_default();
            if v.iter().any(|e| e.trim().is_empty()) {
                return Err(self.err(sec, key, "entries must not be empty"));
            }
            Ok(v)
        };
        let spki_sha256 = spki
            .iter()
            .flatten()
            .map(|pin| Allow::parse_spki_pin(pin).map_err(|e| self.err(sec, "allow_spki", e)))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Allow {
            cn: list("allow_cn", cn)?,
            dns: list("allow_dns", dns)?,
            uri_prefix: list("allow_uri", uri)?,
            spki_sha256,
        })
    }

    fn backend(&self, sec: Section, value: &BackendValue) -> Result<Backend, ConfigError> {
        match value {
            BackendValue::One(text) => Ok(Backend::Addr(
                resolve(text).map_err(|e| self.err(sec, "backend", e))?,
            )),
            BackendValue::Pool(list) => {
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
                Ok(Backend::Pool(addrs))
            }
        }
    }

    fn pool_policy(&self, sec: Section, raw: &ServiceSection) -> Result<PoolPolicy, ConfigError> {
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
        Ok(PoolPolicy {
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
        })
    }

    fn proxy_protocol(
        &self,
        sec: Section,
        raw: &ServiceSection,
    ) -> Result<Option<ProxyVersion>, ConfigError> {
        match raw.proxy_protocol.as_deref() {
            None | Some("off") => Ok(None),
            Some(text) => ProxyVersion::parse(text).map(Some).ok_or_else(|| {
                self.err(
                    sec,
                    "proxy_protocol",
                    format!("must be \"v1\", \"v2\" or \"off\", got {text:?}"),
                )
            }),
        }
    }

    fn accept_proxy(
        &self,
        sec: Section,
        raw: &ServiceSection,
    ) -> Result<Option<Vec<ipnet::IpNet>>, ConfigError> {
        match (raw.accept_proxy, &raw.proxy_sources) {
            (None | Some(false), None) => Ok(None),
            (None | Some(false), Some(_)) => {
                Err(self.err(sec, "proxy_sources", "only used with accept_proxy = true"))
            }
            (Some(true), None) => Err(self.err(
                sec,
                "accept_proxy",
                "needs proxy_sources: the networks of the load balancers allowed to send \
                 PROXY headers, e.g. [\"10.0.0.0/8\"]",
            )),
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
                Ok(Some(nets))
            }
        }
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
    ) -> Result<(Option<Arc<crate::tls::tickets::Ticketer>>, TicketKeys), ConfigError> {
        use crate::tls::tickets::{self, KeySource, Ticketer};
        if raw.tickets == Some(false) {
            self.refuse_set(
                sec,
                &[
                    ("ticket_keys_file", raw.ticket_keys_file.is_some()),
                    ("ticket_secret_file", raw.ticket_secret_file.is_some()),
                ],
                "set, but tickets = false",
            )?;
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

/// A route's effective settings: its own keys over its service's.
fn overlay(service: &ServiceSection, r: &RouteSection) -> ServiceSection {
    fn pick<T: Clone>(own: &Option<T>, inherited: &Option<T>) -> Option<T> {
        own.clone().or_else(|| inherited.clone())
    }
    let s = service;
    let own_cert = r.cert.is_some() || r.key.is_some();
    let own_allow = r.allow_cn.is_some()
        || r.allow_dns.is_some()
        || r.allow_uri.is_some()
        || r.allow_spki.is_some();
    // A route that turns client authentication off inherits none of its settings.
    let auth_off = r.client_auth.as_deref() == Some("none");
    let auth_from = if auth_off {
        &ServiceSection::default()
    } else {
        s
    };
    let allow_from = if own_allow || auth_off {
        (&r.allow_cn, &r.allow_dns, &r.allow_uri, &r.allow_spki)
    } else {
        (&s.allow_cn, &s.allow_dns, &s.allow_uri, &s.allow_spki)
    };
    ServiceSection {
        backend: r.backend.clone(),
        balance: pick(&r.balance, &s.balance),
        health_fail_after: pick(&r.health_fail_after, &s.health_fail_after),
        health_retry: pick(&r.health_retry, &s.health_retry),
        health_check: pick(&r.health_check, &s.health_check),
        proxy_protocol: pick(&r.proxy_protocol, &s.proxy_protocol),
        backend_tls: pick(&r.backend_tls, &s.backend_tls),
        backend_server_name: pick(&r.backend_server_name, &s.backend_server_name),
        backend_ca: pick(&r.backend_ca, &s.backend_ca),
        backend_pin: pick(&r.backend_pin, &s.backend_pin),
        // A certificate and its key come as a pair, and so do the allow lists.
        cert: if own_cert {
            r.cert.clone()
        } else {
            s.cert.clone()
        },
        key: if own_cert {
            r.key.clone()
        } else {
            s.key.clone()
        },
        min_version: pick(&r.min_version, &s.min_version),
        max_version: pick(&r.max_version, &s.max_version),
        ciphers: pick(&r.ciphers, &s.ciphers),
        cipher_preference: pick(&r.cipher_preference, &s.cipher_preference),
        groups: pick(&r.groups, &s.groups),
        alpn: pick(&r.alpn, &s.alpn),
        client_auth: pick(&r.client_auth, &s.client_auth),
        client_ca: pick(&r.client_ca, &auth_from.client_ca),
        client_crl: pick(&r.client_crl, &auth_from.client_crl),
        allow_cn: allow_from.0.clone(),
        allow_dns: allow_from.1.clone(),
        allow_uri: allow_from.2.clone(),
        allow_spki: allow_from.3.clone(),
        route: Vec::new(),
        by_identity: Vec::new(),
        ..service.clone()
    }
}

/// The text of the first backend address (for a default TLS server name).
fn first_backend(value: Option<&BackendValue>) -> &str {
    match value {
        Some(BackendValue::One(t)) => t.as_str(),
        Some(BackendValue::Pool(list)) => list.first().map_or("", String::as_str),
        None => "",
    }
}

/// The host part of `host:port` / `[v6]:port` (a name or an IP literal).
fn host_of(addr: &str) -> Option<&str> {
    let addr = addr.trim();
    if let Some(rest) = addr.strip_prefix('[') {
        return rest.split_once(']').map(|(h, _)| h);
    }
    addr.rsplit_once(':')
        .map(|(h, _)| h)
        .filter(|h| !h.is_empty())
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
        let default = &svc.routes[svc.default_route.unwrap()];
        assert_eq!(default.upstreams[0].backend, Backend::BuiltinEcho);
        assert!(default.tls.as_ref().unwrap().ephemeral_cert);
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
        let default = &svc.routes[svc.default_route.unwrap()];
        assert_eq!(
            default.upstreams[0].backend,
            Backend::Addr("127.0.0.1:9".parse().unwrap())
        );
        assert!(
            !default.tls.as_ref().unwrap().ephemeral_cert,
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

    #[test]
    fn routes_are_validated_where_they_are_written() {
        let dir = tempfile::tempdir().unwrap();
        let service = "[[service]]\nlisten = \"127.0.0.1:1\"\nbackend = \"127.0.0.1:2\"\n";
        let check = |name: &str, routes: &str, field: &str, line: usize, says: &str| {
            let file = write(dir.path(), name, &format!("{service}{routes}"));
            let err = load(Some(&file), &Overrides::default()).unwrap_err();
            assert_eq!(err.field.as_deref(), Some(field), "{err}");
            assert_eq!(err.line, Some(line), "{err}");
            assert!(err.message.contains(says), "{err}");
        };
        check(
            "a.toml",
            "[[service.route]]\nbackend = \"127.0.0.1:3\"\n",
            "service[0].route[0].sni",
            4,
            "missing",
        );
        check(
            "b.toml",
            "[[service.route]]\nsni = \"a.test\"\nbackend = \"127.0.0.1:3\"\n[[service.route]]\nsni = [\"b.*.test\"]\nbackend = \"127.0.0.1:4\"\n",
            "service[0].route[1].sni",
            8,
            "wildcard",
        );
        check(
            "c.toml",
            "[[service.route]]\nsni = \"a.test\"\n",
            "service[0].route[0].backend",
            4,
            "own backend",
        );
        check(
            "d.toml",
            "[[service.route]]\nsni = \"a.test\"\nbackend = \"127.0.0.1:3\"\npassthrough = true\nmin_version = \"1.3\"\n",
            "service[0].route[0].min_version",
            8,
            "passthrough",
        );
        check(
            "e.toml",
            "[[service.route]]\nsni = \"a.test\"\nbackend = \"127.0.0.1:3\"\n[[service.route.by_identity]]\nallow_cn = [\"x\"]\nbackend = \"127.0.0.1:5\"\n",
            "service[0].route[0].by_identity",
            7,
            "client_auth",
        );
        // An inherited setting is reported where it is written: the service.
        let file = write(
            dir.path(),
            "f.toml",
            "[[service]]\nlisten = \"127.0.0.1:1\"\nbackend = \"127.0.0.1:2\"\nbalance = \"random\"\n",
        );
        let err = load(Some(&file), &Overrides::default()).unwrap_err();
        assert_eq!(err.field.as_deref(), Some("service[0].balance"));
        check(
            "g.toml",
            "[[service.route]]\nsni = \"a.test\"\nbackend = \"127.0.0.1:3\"\nhealth_check = \"10ms\"\n",
            "service[0].route[0].health_check",
            7,
            "100ms",
        );
    }

    #[test]
    fn routes_inherit_and_the_default_route_comes_last() {
        let dir = tempfile::tempdir().unwrap();
        let file = write(
            dir.path(),
            "t.toml",
            "[[service]]\nlisten = \"127.0.0.1:1\"\nbackend = \"127.0.0.1:2\"\nmin_version = \"1.3\"\nproxy_protocol = \"v2\"\n[[service.route]]\nsni = [\"A.test\", \"*.w.test\"]\nbackend = [\"127.0.0.1:3\", \"127.0.0.1:4\"]\n[[service.route]]\nname = \"pt\"\nsni = \"p.test\"\npassthrough = true\nbackend = \"127.0.0.1:5\"\nproxy_protocol = \"v1\"\n",
        );
        let cfg = load(Some(&file), &Overrides::default()).unwrap();
        let svc = &cfg.services[0];
        assert_eq!(svc.routes.len(), 3);
        assert_eq!(svc.default_route, Some(2));
        let names: Vec<&str> = svc.routes.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(names, ["A.test", "pt", "default"]);
        let a = &svc.routes[0];
        assert_eq!(a.proxy_protocol, Some(ProxyVersion::V2), "inherited");
        assert_eq!(a.upstreams[0].backend.addrs().len(), 2);
        let suites = &a
            .tls
            .as_ref()
            .unwrap()
            .config
            .crypto_provider()
            .cipher_suites;
        assert!(
            suites
                .iter()
                .all(|s| matches!(s, rustls::SupportedCipherSuite::Tls13(_))),
            "min_version inherited"
        );
        assert!(svc.routes[1].tls.is_none());
        assert_eq!(svc.routes[1].proxy_protocol, Some(ProxyVersion::V1));
        let none = std::iter::empty();
        assert_eq!(svc.route_for(Some("a.TEST"), none.clone()), Some(0));
        assert_eq!(svc.route_for(Some("x.w.test"), none.clone()), Some(0));
        assert_eq!(svc.route_for(Some("p.test"), none.clone()), Some(1));
        assert_eq!(svc.route_for(Some("other"), none.clone()), Some(2));
        assert_eq!(svc.route_for(None, none), Some(2));
    }

    #[test]
    fn a_route_can_turn_client_authentication_off() {
        let dir = tempfile::tempdir().unwrap();
        let ca = rcgen::generate_simple_self_signed(vec!["ca".into()]).unwrap();
        write(dir.path(), "ca.pem", &ca.cert.pem());
        let file = write(
            dir.path(),
            "t.toml",
            "[[service]]\nlisten = \"127.0.0.1:1\"\nbackend = \"127.0.0.1:2\"\nclient_auth = \"required\"\nclient_ca = \"ca.pem\"\nallow_cn = [\"x\"]\n[[service.route]]\nsni = \"open.test\"\nbackend = \"127.0.0.1:3\"\nclient_auth = \"none\"\n[[service.route]]\nsni = \"inherits.test\"\nbackend = \"127.0.0.1:4\"\n",
        );
        let cfg = load(Some(&file), &Overrides::default()).unwrap();
        let modes: Vec<ClientAuthMode> = cfg.services[0]
            .routes
            .iter()
            .map(|r| r.tls.as_ref().unwrap().client_auth)
            .collect();
        assert_eq!(
            modes,
            [
                ClientAuthMode::None,
                ClientAuthMode::Required,
                ClientAuthMode::Required
            ]
        );
        let contexts: Vec<_> = cfg.services[0]
            .routes
            .iter()
            .map(|r| r.tls.as_ref().unwrap().ticket_context)
            .collect();
        assert!(contexts[0] != contexts[1] && contexts[1] != contexts[2]);
    }
}
