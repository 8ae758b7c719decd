//! `tlsfront doctor`: is this host ready to run tlsfront as configured?
//!
//! Two steps, so the judging can be tested without the host: [`Host::inspect`] reads the
//! facts (kernel TLS probe, io_uring ring and opcodes, rlimits, sysctls, CPUs, CPU crypto
//! features), and [`evaluate`] turns facts plus what a configuration needs ([`Needs`]) into
//! one [`Check`] per question. A fact that cannot be read becomes a WARN saying so; nothing
//! here panics on a strange host.

use std::fmt;
use std::path::Path;

use serde::Serialize;

use crate::config::{Config, KtlsMode, Tunables};
use crate::io::ktls::{self, KernelSupport};
use crate::tls::cpu::{self, CpuCrypto};

/// Where the sysctl profile lives in the repository (and in packages, next to the docs).
pub const SYSCTL_PROFILE: &str = "tuning/sysctl.conf";

/// Descriptors one connection holds in the userspace relay: the client and backend sockets.
pub const FDS_USERSPACE: u64 = 2;
/// With kTLS (and pass-through) the relay splices through a pipe: two sockets, two pipe ends.
pub const FDS_SPLICE: u64 = 4;
/// Descriptors beyond connections and listeners: per worker its ring and eventfds; once the
/// config, certificate and log files, the admin and identity sockets, stdio.
const FDS_PER_WORKER: u64 = 4;
const FDS_FIXED: u64 = 64;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Status {
    Ok,
    Warn,
    Fail,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Ok => "OK",
            Status::Warn => "WARN",
            Status::Fail => "FAIL",
        }
    }
}

/// One answer: what was found and, unless it is OK, how to fix it.
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    pub name: &'static str,
    pub status: Status,
    pub found: String,
    /// Empty for OK.
    pub fix: String,
}

impl Check {
    fn ok(name: &'static str, found: impl Into<String>) -> Check {
        Check {
            name,
            status: Status::Ok,
            found: found.into(),
            fix: String::new(),
        }
    }
    fn warn(name: &'static str, found: impl Into<String>, fix: impl Into<String>) -> Check {
        Check {
            name,
            status: Status::Warn,
            found: found.into(),
            fix: fix.into(),
        }
    }
    fn fail(name: &'static str, found: impl Into<String>, fix: impl Into<String>) -> Check {
        Check {
            name,
            status: Status::Fail,
            found: found.into(),
            fix: fix.into(),
        }
    }
    /// A fact that could not be read: the check is not done, which is worth a look.
    fn unknown(name: &'static str, why: &str) -> Check {
        Check::warn(
            name,
            format!("cannot check: {why}"),
            "run doctor on the host (not in a restricted container) or check by hand",
        )
    }
}

impl fmt::Display for Check {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:<4} {:<20} {}",
            self.status.as_str(),
            self.name,
            self.found
        )?;
        if !self.fix.is_empty() {
            write!(f, " — fix: {}", self.fix)?;
        }
        Ok(())
    }
}

/// What one service asks of the host.
#[derive(Debug, Clone)]
pub struct ServiceNeeds {
    pub name: String,
    pub max_connections: u32,
    pub backlog: u32,
    pub ktls: KtlsMode,
    /// A pass-through route splices even without kTLS.
    pub passthrough: bool,
}

/// What a configuration asks of the host.
#[derive(Debug, Clone)]
pub struct Needs {
    /// The config file, or `None`: the built-in defaults.
    pub source: Option<String>,
    pub workers: usize,
    pub services: Vec<ServiceNeeds>,
}

impl Needs {
    pub fn from_config(cfg: &Config, path: &Path) -> Needs {
        Needs {
            source: Some(path.display().to_string()),
            workers: cfg.global.workers,
            services: cfg
                .services
                .iter()
                .map(|s| ServiceNeeds {
                    name: s.name.clone(),
                    max_connections: s.tunables.max_connections,
                    backlog: s.tunables.backlog,
                    ktls: s.ktls,
                    passthrough: s.routes.iter().any(|r| r.tls.is_none()),
                })
                .collect(),
        }
    }

    /// One service with the default tunables and one worker per available CPU, as
    /// `tlsfront serve` without a config runs.
    pub fn defaults(cpus: Option<usize>) -> Needs {
        let t = Tunables::default();
        Needs {
            source: None,
            workers: cpus.unwrap_or(1),
            services: vec![ServiceNeeds {
                name: "default".into(),
                max_connections: t.max_connections,
                backlog: t.backlog,
                ktls: KtlsMode::default(),
                passthrough: false,
            }],
        }
    }

    /// Appended to findings that depend on the config.
    fn origin(&self) -> &'static str {
        match &self.source {
            Some(_) => "(from the config)",
            None => "(defaults, no --config)",
        }
    }

    /// One line on what the checks compare against.
    pub fn describe(&self) -> String {
        let what = match &self.source {
            Some(path) => format!("config {path}"),
            None => "built-in defaults (no --config)".into(),
        };
        format!(
            "checking against {what}: {} service(s), {} worker(s), max_connections {} in \
             total, listen backlog {}",
            self.services.len(),
            self.workers,
            self.total_connections(),
            self.max_backlog()
        )
    }

    pub fn total_connections(&self) -> u64 {
        self.services
            .iter()
            .map(|s| u64::from(s.max_connections))
            .sum()
    }

    pub fn max_backlog(&self) -> u32 {
        self.services.iter().map(|s| s.backlog).max().unwrap_or(0)
    }
}

/// Descriptors the process may hold at once: each service's `max_connections` times the
/// descriptors a connection holds (more when it may splice), one listener per service and
/// worker, and fixed slack.
pub fn descriptors_needed(needs: &Needs, ktls_available: bool) -> u64 {
    let workers = needs.workers.max(1) as u64;
    let connections: u64 = needs
        .services
        .iter()
        .map(|s| {
            let splices = s.passthrough || (s.ktls != KtlsMode::Off && ktls_available);
            let per = if splices { FDS_SPLICE } else { FDS_USERSPACE };
            u64::from(s.max_connections) * per
        })
        .sum();
    connections + needs.services.len() as u64 * workers + workers * FDS_PER_WORKER + FDS_FIXED
}

/// The io_uring opcodes tlsfront submits: tokio-uring's accept, read, write, close and
/// cancel, and `io/`'s connect, poll and splice.
pub const URING_OPCODES: [(&str, u8); 8] = [
    ("Accept", io_uring::opcode::Accept::CODE),
    ("Read", io_uring::opcode::Read::CODE),
    ("Write", io_uring::opcode::Write::CODE),
    ("Connect", io_uring::opcode::Connect::CODE),
    ("PollAdd", io_uring::opcode::PollAdd::CODE),
    ("Splice", io_uring::opcode::Splice::CODE),
    ("Close", io_uring::opcode::Close::CODE),
    ("AsyncCancel", io_uring::opcode::AsyncCancel::CODE),
];

#[derive(Debug, Clone)]
pub struct UringFacts {
    /// `kernel.io_uring_disabled` (0 allowed, 1 only for `io_uring_group`, 2 off); `None`
    /// when the kernel has no such sysctl (older than 6.6: always allowed).
    pub disabled: Option<u64>,
    /// Creating a ring the way the workers do: the opcodes and whether the kernel has each,
    /// or the errno.
    pub ring: Result<Vec<(&'static str, bool)>, i32>,
}

/// Everything [`evaluate`] looks at, read from the host by [`Host::inspect`].
#[derive(Debug, Clone)]
pub struct Host {
    pub ktls: KernelSupport,
    pub tls_stat_exists: bool,
    pub uring: UringFacts,
    /// RLIMIT_NOFILE (soft, hard); `None` in either is unlimited.
    pub nofile: (Option<u64>, Option<u64>),
    pub somaxconn: Result<u64, String>,
    pub syn_backlog: Result<u64, String>,
    pub syncookies: Result<u64, String>,
    /// CPUs this process may run on (affinity and cgroup quota); `None` when unknown.
    pub cpus: Option<usize>,
    pub cpu: CpuCrypto,
    pub file_max: Result<u64, String>,
    pub nr_open: Result<u64, String>,
    pub port_range: Result<(u16, u16), String>,
}

impl Host {
    /// Reads the facts. `ktls` is the probe a config load already made, if any.
    pub fn inspect(ktls: Option<KernelSupport>) -> Host {
        let nofile = rustix::process::getrlimit(rustix::process::Resource::Nofile);
        Host {
            ktls: ktls.unwrap_or_else(ktls::probe),
            tls_stat_exists: Path::new("/proc/net/tls_stat").exists(),
            uring: inspect_uring(),
            nofile: (nofile.current, nofile.maximum),
            somaxconn: sysctl_u64("net.core.somaxconn"),
            syn_backlog: sysctl_u64("net.ipv4.tcp_max_syn_backlog"),
            syncookies: sysctl_u64("net.ipv4.tcp_syncookies"),
            cpus: std::thread::available_parallelism().ok().map(|n| n.get()),
            cpu: cpu::detect(),
            file_max: sysctl_u64("fs.file-max"),
            nr_open: sysctl_u64("fs.nr_open"),
            port_range: sysctl("net.ipv4.ip_local_port_range").and_then(|t| {
                parse_port_range(&t)
                    .ok_or_else(|| format!("net.ipv4.ip_local_port_range: cannot parse {t:?}"))
            }),
        }
    }
}

fn inspect_uring() -> UringFacts {
    let disabled = sysctl_u64("kernel.io_uring_disabled").ok();
    // The same set-up flags as the workers (worker::run): a kernel without COOP_TASKRUN
    // refuses them, and so would refuse tlsfront.
    let ring = io_uring::IoUring::<io_uring::squeue::Entry>::builder()
        .setup_coop_taskrun()
        .setup_taskrun_flag()
        .build(8)
        .and_then(|ring| {
            let mut probe = io_uring::Probe::new();
            ring.submitter().register_probe(&mut probe)?;
            Ok(URING_OPCODES
                .iter()
                .map(|(name, code)| (*name, probe.is_supported(*code)))
                .collect())
        })
        .map_err(|e| e.raw_os_error().unwrap_or(libc::EINVAL));
    UringFacts { disabled, ring }
}

fn sysctl(name: &str) -> Result<String, String> {
    let path = format!("/proc/sys/{}", name.replace('.', "/"));
    std::fs::read_to_string(&path)
        .map(|t| t.trim().to_string())
        .map_err(|e| format!("cannot read {path}: {e}"))
}

fn sysctl_u64(name: &str) -> Result<u64, String> {
    let text = sysctl(name)?;
    text.parse()
        .map_err(|_| format!("{name}: not a number: {text:?}"))
}

/// `net.ipv4.ip_local_port_range` as the kernel prints it: `low<TAB>high`.
pub fn parse_port_range(text: &str) -> Option<(u16, u16)> {
    let mut parts = text.split_whitespace();
    let low = parts.next()?.parse().ok()?;
    let high = parts.next()?.parse().ok()?;
    (parts.next().is_none() && low <= high).then_some((low, high))
}

/// The errno's symbolic name, for the few a probe here can meet.
pub fn errno_name(errno: i32) -> Option<&'static str> {
    Some(match errno {
        libc::ENOENT => "ENOENT",
        libc::EPERM => "EPERM",
        libc::EACCES => "EACCES",
        libc::EINVAL => "EINVAL",
        libc::ENOMEM => "ENOMEM",
        libc::ENOSYS => "ENOSYS",
        libc::EMFILE => "EMFILE",
        libc::ENFILE => "ENFILE",
        libc::ENOPROTOOPT => "ENOPROTOOPT",
        libc::EOPNOTSUPP => "EOPNOTSUPP",
        libc::EEXIST => "EEXIST",
        libc::EBUSY => "EBUSY",
        _ => return None,
    })
}

fn errno_text(errno: i32) -> String {
    match errno_name(errno) {
        Some(name) => name.to_string(),
        None => std::io::Error::from_raw_os_error(errno).to_string(),
    }
}

fn limit_text(limit: Option<u64>) -> String {
    limit.map_or("unlimited".into(), |n| n.to_string())
}

/// All checks, in a fixed order.
pub fn evaluate(host: &Host, needs: &Needs) -> Vec<Check> {
    let fds = descriptors_needed(needs, host.ktls.available());
    vec![
        check_ktls(host, needs),
        check_uring(&host.uring),
        check_nofile(host.nofile, fds, needs),
        check_somaxconn(&host.somaxconn, needs),
        check_syn_backlog(&host.syn_backlog, &host.syncookies, needs),
        check_cpus(host.cpus, needs),
        check_cpu_crypto(&host.cpu),
        check_file_max(&host.file_max, fds, needs),
        check_nr_open(&host.nr_open, fds, needs),
        check_port_range(&host.port_range, needs),
    ]
}

fn check_ktls(host: &Host, needs: &Needs) -> Check {
    const NAME: &str = "kernel_tls";
    let k = &host.ktls;
    let all_off = needs.services.iter().all(|s| s.ktls == KtlsMode::Off);
    if let Some(errno) = k.ulp_errno {
        let reason = match errno {
            libc::ENOENT => {
                "kernel built without CONFIG_TLS or the tls module cannot be loaded".to_string()
            }
            libc::ENOPROTOOPT | libc::EOPNOTSUPP => {
                "this kernel has no TCP upper-layer protocols (older than 4.13)".into()
            }
            libc::EPERM | libc::EACCES => "not permitted here (seccomp or LSM policy)".into(),
            _ => "unexpected error".into(),
        };
        let stat = if host.tls_stat_exists {
            ""
        } else {
            "; /proc/net/tls_stat absent"
        };
        let effect = if all_off {
            "the config turns kTLS off anyway"
        } else {
            "tlsfront falls back to userspace rustls for record encryption"
        };
        return Check::warn(
            NAME,
            format!(
                "kTLS missing: TCP_ULP tls: {} — {reason}{stat}; {effect}",
                errno_text(errno)
            ),
            "modprobe tls (at boot: echo tls > /etc/modules-load.d/tls.conf); if the module \
             is not found, run a kernel built with CONFIG_TLS=m or =y",
        );
    }
    let mut ciphers: Vec<String> = k
        .ciphers
        .iter()
        .map(|(v, c)| {
            let v = match v {
                ktls::TlsVersion::Tls12 => "1.2",
                ktls::TlsVersion::Tls13 => "1.3",
            };
            format!("TLS{v} {}", c.name())
        })
        .collect();
    ciphers.sort();
    if ciphers.is_empty() {
        return Check::warn(
            NAME,
            "TLS ULP attaches but the kernel accepted no cipher for TLS_TX/TLS_RX; tlsfront \
             uses userspace rustls",
            "load the kernel's AES-GCM / ChaCha20 crypto modules (modprobe gcm aes_generic \
             chacha20poly1305) or use a kernel with CONFIG_CRYPTO_GCM",
        );
    }
    let missing: Vec<&str> = ktls::Cipher::ALL
        .iter()
        .filter(|c| !k.supports(ktls::TlsVersion::Tls13, **c))
        .map(|c| c.name())
        .collect();
    let found = format!("available; kernel accepts {}", ciphers.join(", "));
    // kTLS works; a suite the kernel cannot run just stays in userspace for its connections
    // (`ktls = "on"` with such a suite is refused when the config loads).
    if missing.is_empty() {
        Check::ok(NAME, found)
    } else {
        Check::ok(
            NAME,
            format!("{found}; TLS1.3 {} stays in userspace", missing.join(", ")),
        )
    }
}

fn check_uring(u: &UringFacts) -> Check {
    const NAME: &str = "io_uring";
    let sysctl_fix = "sysctl -w kernel.io_uring_disabled=0 (or add tlsfront's user to the \
                      group in kernel.io_uring_group when it is 1)";
    if u.disabled == Some(2) {
        return Check::fail(
            NAME,
            "kernel.io_uring_disabled = 2: io_uring is off for every process",
            sysctl_fix,
        );
    }
    let opcodes = match &u.ring {
        Err(errno) => {
            let why = match *errno {
                libc::EPERM if u.disabled == Some(1) => {
                    "kernel.io_uring_disabled = 1 and this user is not in io_uring_group"
                }
                libc::EPERM => "not permitted (seccomp profile or container runtime)",
                libc::ENOSYS => "kernel without io_uring (CONFIG_IO_URING off or before 5.1)",
                libc::EINVAL => {
                    "kernel refuses the ring flags tlsfront uses (COOP_TASKRUN needs 5.19)"
                }
                libc::ENOMEM => "RLIMIT_MEMLOCK too small for the ring (kernels before 5.12)",
                _ => "unexpected error",
            };
            let fix = match *errno {
                libc::EPERM if u.disabled == Some(1) => sysctl_fix,
                libc::EPERM => {
                    "allow io_uring_setup/io_uring_enter/io_uring_register in the seccomp \
                     profile (docker: --security-opt seccomp=… with them allowed)"
                }
                libc::ENOMEM => "raise LimitMEMLOCK= (systemd) or ulimit -l",
                _ => "run a kernel ≥ 5.19 with CONFIG_IO_URING=y",
            };
            return Check::fail(
                NAME,
                format!("cannot create a ring: {} — {why}", errno_text(*errno)),
                fix,
            );
        }
        Ok(opcodes) => opcodes,
    };
    let missing: Vec<&str> = opcodes
        .iter()
        .filter(|(_, ok)| !ok)
        .map(|(n, _)| *n)
        .collect();
    let listed: Vec<&str> = opcodes.iter().map(|(n, _)| *n).collect();
    if missing.is_empty() {
        Check::ok(
            NAME,
            format!(
                "ring created (COOP_TASKRUN); opcodes supported: {}",
                listed.join(", ")
            ),
        )
    } else {
        Check::fail(
            NAME,
            format!("ring created but the kernel lacks {}", missing.join(", ")),
            "run a kernel ≥ 5.19",
        )
    }
}

fn check_nofile(nofile: (Option<u64>, Option<u64>), needed: u64, needs: &Needs) -> Check {
    const NAME: &str = "rlimit_nofile";
    let (soft, hard) = nofile;
    let found = format!(
        "soft {} / hard {}; need {needed} descriptors for {} connections {}",
        limit_text(soft),
        limit_text(hard),
        needs.total_connections(),
        needs.origin()
    );
    let enough = match soft {
        None => true,
        Some(s) => s >= needed,
    };
    if enough {
        return Check::ok(NAME, found);
    }
    let want = needed.next_multiple_of(1024);
    let fix = format!(
        "LimitNOFILE={want} in the systemd unit; or ulimit -n {want} before starting; \
         or `<user> - nofile {want}` in /etc/security/limits.conf{}",
        if hard.is_some_and(|h| h < want) {
            format!(
                " (the hard limit {} must rise too; fs.nr_open caps it, see {SYSCTL_PROFILE})",
                limit_text(hard)
            )
        } else {
            String::new()
        }
    );
    let workers = needs.workers.max(1) as u64;
    if soft.is_some_and(|s| s < needs.services.len() as u64 * workers + FDS_FIXED) {
        return Check::fail(NAME, format!("{found}: too few to start the workers"), fix);
    }
    Check::warn(
        NAME,
        format!("{found}: accepts fail with EMFILE before max_connections is reached"),
        fix,
    )
}

fn sysctl_fix(name: &str, value: u64) -> String {
    format!("sysctl -w {name}={value} (persist: {SYSCTL_PROFILE} in /etc/sysctl.d/)")
}

fn check_somaxconn(somaxconn: &Result<u64, String>, needs: &Needs) -> Check {
    const NAME: &str = "somaxconn";
    let backlog = u64::from(needs.max_backlog());
    match somaxconn {
        Err(e) => Check::unknown(NAME, e),
        Ok(n) if *n >= backlog => Check::ok(
            NAME,
            format!(
                "net.core.somaxconn = {n} ≥ listen backlog {backlog} {}",
                needs.origin()
            ),
        ),
        Ok(n) => Check::warn(
            NAME,
            format!(
                "net.core.somaxconn = {n} < listen backlog {backlog} {}: the kernel cuts the \
                 accept queue to {n}",
                needs.origin()
            ),
            sysctl_fix("net.core.somaxconn", backlog.max(4096)),
        ),
    }
}

fn check_syn_backlog(
    syn: &Result<u64, String>,
    cookies: &Result<u64, String>,
    needs: &Needs,
) -> Check {
    const NAME: &str = "tcp_max_syn_backlog";
    let backlog = u64::from(needs.max_backlog());
    let n = match syn {
        Err(e) => return Check::unknown(NAME, e),
        Ok(n) => *n,
    };
    let cookies = match cookies {
        Ok(0) => "syncookies off",
        Ok(_) => "syncookies on",
        Err(_) => "syncookies unknown",
    };
    let found = format!("net.ipv4.tcp_max_syn_backlog = {n}, listen backlog {backlog}, {cookies}");
    if n >= backlog {
        Check::ok(NAME, found)
    } else {
        Check::warn(
            NAME,
            format!("{found}: SYN bursts beyond {n} are dropped or answered with cookies"),
            sysctl_fix("net.ipv4.tcp_max_syn_backlog", backlog.max(8192)),
        )
    }
}

fn check_cpus(cpus: Option<usize>, needs: &Needs) -> Check {
    const NAME: &str = "cpus";
    let Some(cpus) = cpus else {
        return Check::unknown(NAME, "available_parallelism failed");
    };
    let found = format!(
        "{cpus} CPU(s) available to this process (affinity and cgroup quota), {} worker(s) {}",
        needs.workers,
        needs.origin()
    );
    if needs.workers <= cpus {
        Check::ok(NAME, found)
    } else {
        Check::warn(
            NAME,
            format!("{found}: workers share CPUs and pinned ones contend"),
            format!(
                "workers = \"auto\" (or ≤ {cpus}) in [global]; or give the process more CPUs \
                 (CPUAffinity=/CPUQuota= in systemd, docker --cpus)"
            ),
        )
    }
}

fn check_cpu_crypto(cpu: &CpuCrypto) -> Check {
    const NAME: &str = "cpu_crypto";
    let flags: Vec<String> = cpu
        .features
        .iter()
        .map(|(n, on)| format!("{n}={}", if *on { "yes" } else { "no" }))
        .collect();
    let found = format!("{}: {}", cpu.arch, flags.join(" "));
    if cpu.aes_gcm_accelerated {
        Check::ok(NAME, format!("{found}; AES-GCM accelerated"))
    } else {
        Check::warn(
            NAME,
            format!("{found}; AES-GCM NOT accelerated"),
            "put ChaCha20-Poly1305 first: cipher_preference = \"auto\" (the default) does it \
             on this CPU; with \"server\" list TLS13_CHACHA20_POLY1305_SHA256 first in \
             `ciphers` (tlsfront ciphers measures both)",
        )
    }
}

fn check_file_max(file_max: &Result<u64, String>, needed: u64, needs: &Needs) -> Check {
    const NAME: &str = "file_max";
    match file_max {
        Err(e) => Check::unknown(NAME, e),
        Ok(n) if *n >= needed => Check::ok(
            NAME,
            format!(
                "fs.file-max = {n} ≥ {needed} descriptors needed {}",
                needs.origin()
            ),
        ),
        Ok(n) => Check::warn(
            NAME,
            format!(
                "fs.file-max = {n} < {needed} descriptors needed {}: the whole system runs \
                 out (ENFILE)",
                needs.origin()
            ),
            sysctl_fix("fs.file-max", needed.saturating_mul(2)),
        ),
    }
}

fn check_nr_open(nr_open: &Result<u64, String>, needed: u64, needs: &Needs) -> Check {
    const NAME: &str = "nr_open";
    match nr_open {
        Err(e) => Check::unknown(NAME, e),
        Ok(n) if *n >= needed => Check::ok(
            NAME,
            format!(
                "fs.nr_open = {n} ≥ {needed} descriptors needed {}",
                needs.origin()
            ),
        ),
        Ok(n) => Check::warn(
            NAME,
            format!(
                "fs.nr_open = {n} < {needed} descriptors needed {}: RLIMIT_NOFILE cannot be \
                 raised that far",
                needs.origin()
            ),
            sysctl_fix("fs.nr_open", needed.next_power_of_two()),
        ),
    }
}

fn check_port_range(range: &Result<(u16, u16), String>, needs: &Needs) -> Check {
    const NAME: &str = "local_port_range";
    let (low, high) = match range {
        Err(e) => return Check::unknown(NAME, e),
        Ok(r) => *r,
    };
    let width = u64::from(high) - u64::from(low) + 1;
    let conns = needs.total_connections();
    let found = format!(
        "net.ipv4.ip_local_port_range = {low}-{high} ({width} ports); up to {conns} backend \
         connections {}",
        needs.origin()
    );
    if width >= conns {
        Check::ok(NAME, found)
    } else {
        Check::warn(
            NAME,
            format!(
                "{found}: connections to one backend address run out of ephemeral ports \
                 (EADDRNOTAVAIL)"
            ),
            format!(
                "sysctl -w net.ipv4.ip_local_port_range=\"10240 65535\" (persist: \
                 {SYSCTL_PROFILE}); or spread load over several backend addresses"
            ),
        )
    }
}

/// Counts per status and the exit code (0: no FAIL, 1: at least one).
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub ok: usize,
    pub warn: usize,
    pub fail: usize,
    pub exit_code: u8,
    /// The config file checked against, or `null` for the defaults.
    pub config: Option<String>,
}

pub fn summarize(checks: &[Check], needs: &Needs) -> Summary {
    let count = |s: Status| checks.iter().filter(|c| c.status == s).count();
    let fail = count(Status::Fail);
    Summary {
        ok: count(Status::Ok),
        warn: count(Status::Warn),
        fail,
        exit_code: u8::from(fail > 0),
        config: needs.source.clone(),
    }
}

/// The `--json` document: `{"checks": [...], "summary": {...}}`.
pub fn to_json(checks: &[Check], summary: &Summary) -> serde_json::Value {
    serde_json::json!({ "checks": checks, "summary": summary })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn needs(conns: &[(u32, KtlsMode)], workers: usize) -> Needs {
        Needs {
            source: Some("t.toml".into()),
            workers,
            services: conns
                .iter()
                .enumerate()
                .map(|(i, (max, ktls))| ServiceNeeds {
                    name: format!("s{i}"),
                    max_connections: *max,
                    backlog: 1024,
                    ktls: *ktls,
                    passthrough: false,
                })
                .collect(),
        }
    }

    fn host() -> Host {
        Host {
            ktls: KernelSupport {
                ulp_errno: Some(libc::ENOENT),
                ciphers: Vec::new(),
            },
            tls_stat_exists: false,
            uring: UringFacts {
                disabled: Some(0),
                ring: Ok(URING_OPCODES.iter().map(|(n, _)| (*n, true)).collect()),
            },
            nofile: (Some(1024), Some(4096)),
            somaxconn: Ok(4096),
            syn_backlog: Ok(512),
            syncookies: Ok(1),
            cpus: Some(2),
            cpu: CpuCrypto {
                arch: "x86_64",
                features: vec![("aes", true), ("pclmulqdq", true)],
                aes_gcm_accelerated: true,
            },
            file_max: Ok(1 << 20),
            nr_open: Ok(1 << 20),
            port_range: Ok((32768, 60999)),
        }
    }

    fn find<'a>(checks: &'a [Check], name: &str) -> &'a Check {
        checks.iter().find(|c| c.name == name).expect(name)
    }

    #[test]
    fn descriptors_count_two_per_connection_without_ktls_four_with() {
        let n = needs(&[(1000, KtlsMode::Auto), (500, KtlsMode::Off)], 2);
        let slack = 2 * 2 + 2 * FDS_PER_WORKER + FDS_FIXED;
        assert_eq!(descriptors_needed(&n, false), 1500 * 2 + slack);
        // kTLS present: only the service that may use it splices.
        assert_eq!(descriptors_needed(&n, true), 1000 * 4 + 500 * 2 + slack);
    }

    #[test]
    fn passthrough_splices_without_ktls() {
        let mut n = needs(&[(100, KtlsMode::Off)], 1);
        let base = descriptors_needed(&n, false);
        n.services[0].passthrough = true;
        assert_eq!(descriptors_needed(&n, false), base + 100 * 2);
    }

    #[test]
    fn port_ranges_parse_as_the_kernel_prints_them() {
        assert_eq!(parse_port_range("32768\t60999\n"), Some((32768, 60999)));
        assert_eq!(parse_port_range("1024 65535"), Some((1024, 65535)));
        assert_eq!(parse_port_range("60999 32768"), None);
        assert_eq!(parse_port_range("1024"), None);
        assert_eq!(parse_port_range("1 2 3"), None);
        assert_eq!(parse_port_range("1024 70000"), None);
    }

    #[test]
    fn missing_ktls_names_the_errno_and_the_fallback() {
        let checks = evaluate(&host(), &needs(&[(10, KtlsMode::Auto)], 1));
        let c = find(&checks, "kernel_tls");
        assert_eq!(c.status, Status::Warn);
        assert!(
            c.found.contains("ENOENT") && c.found.contains("CONFIG_TLS"),
            "{c}"
        );
        assert!(c.found.contains("userspace rustls"), "{c}");
        assert!(c.fix.contains("modprobe tls"), "{c}");
    }

    #[test]
    fn present_ktls_lists_the_kernel_ciphers() {
        let mut h = host();
        h.ktls = KernelSupport {
            ulp_errno: None,
            ciphers: ktls::Cipher::ALL
                .iter()
                .map(|c| (ktls::TlsVersion::Tls13, *c))
                .collect(),
        };
        let c = evaluate(&h, &needs(&[(10, KtlsMode::Auto)], 1)).remove(0);
        assert_eq!(c.status, Status::Ok, "{c}");
        assert!(c.found.contains("TLS1.3 CHACHA20-POLY1305"), "{c}");
        h.ktls.ciphers.pop();
        let c = evaluate(&h, &needs(&[(10, KtlsMode::Auto)], 1)).remove(0);
        assert_eq!(c.status, Status::Ok, "{c}");
        assert!(
            c.found.contains("CHACHA20-POLY1305 stays in userspace"),
            "{c}"
        );
    }

    #[test]
    fn rlimit_below_need_warns_with_both_numbers() {
        let n = needs(&[(100, KtlsMode::Off)], 1);
        let need = descriptors_needed(&n, false);
        let mut h = host();
        h.nofile = (Some(need), Some(need));
        assert_eq!(find(&evaluate(&h, &n), "rlimit_nofile").status, Status::Ok);
        h.nofile = (Some(need - 1), Some(need * 2));
        let checks = evaluate(&h, &n);
        let c = find(&checks, "rlimit_nofile");
        assert_eq!(c.status, Status::Warn, "{c}");
        assert!(c.found.contains(&(need - 1).to_string()), "{c}");
        assert!(c.found.contains(&need.to_string()), "{c}");
        assert!(
            c.fix.contains("LimitNOFILE=") && c.fix.contains("ulimit -n"),
            "{c}"
        );
        h.nofile = (Some(10), Some(10));
        let checks = evaluate(&h, &n);
        assert_eq!(find(&checks, "rlimit_nofile").status, Status::Fail);
        h.nofile = (None, None);
        assert_eq!(find(&evaluate(&h, &n), "rlimit_nofile").status, Status::Ok);
    }

    #[test]
    fn io_uring_failures_are_fail_with_the_reason() {
        let mut h = host();
        let n = needs(&[(10, KtlsMode::Auto)], 1);
        assert_eq!(find(&evaluate(&h, &n), "io_uring").status, Status::Ok);
        h.uring.disabled = Some(2);
        let checks = evaluate(&h, &n);
        let c = find(&checks, "io_uring");
        assert_eq!(c.status, Status::Fail);
        assert!(c.fix.contains("io_uring_disabled=0"), "{c}");
        h.uring = UringFacts {
            disabled: None,
            ring: Ok(vec![("Accept", true), ("Splice", false)]),
        };
        let checks = evaluate(&h, &n);
        let c = find(&checks, "io_uring");
        assert_eq!(c.status, Status::Fail);
        assert!(c.found.contains("lacks Splice"), "{c}");
        h.uring.ring = Err(libc::EINVAL);
        let checks = evaluate(&h, &n);
        assert!(find(&checks, "io_uring").found.contains("COOP_TASKRUN"));
    }

    #[test]
    fn sysctls_compare_against_the_config() {
        let mut n = needs(&[(100_000, KtlsMode::Off)], 4);
        let mut h = host();
        let checks = evaluate(&h, &n);
        // 512 < backlog 1024; 28232 ports < 100000 connections; 4 workers on 2 CPUs.
        assert_eq!(find(&checks, "tcp_max_syn_backlog").status, Status::Warn);
        assert_eq!(find(&checks, "local_port_range").status, Status::Warn);
        assert_eq!(find(&checks, "cpus").status, Status::Warn);
        assert_eq!(find(&checks, "somaxconn").status, Status::Ok);
        n.services[0].backlog = 8192;
        let checks = evaluate(&h, &n);
        let c = find(&checks, "somaxconn");
        assert_eq!(c.status, Status::Warn);
        assert!(c.fix.contains(SYSCTL_PROFILE), "{c}");
        h.somaxconn = Err("cannot read /proc/sys/net/core/somaxconn".into());
        let checks = evaluate(&h, &n);
        let c = find(&checks, "somaxconn");
        assert_eq!(c.status, Status::Warn);
        assert!(c.found.starts_with("cannot check"), "{c}");
    }

    #[test]
    fn exit_code_is_one_only_with_a_fail() {
        let n = needs(&[(10, KtlsMode::Auto)], 1);
        let mut h = host();
        let s = summarize(&evaluate(&h, &n), &n);
        assert_eq!((s.fail, s.exit_code), (0, 0));
        assert!(s.warn >= 1);
        h.uring.ring = Err(libc::ENOSYS);
        let s = summarize(&evaluate(&h, &n), &n);
        assert_eq!((s.fail, s.exit_code), (1, 1));
    }

    #[test]
    fn no_aes_hardware_suggests_chacha() {
        let mut h = host();
        h.cpu.aes_gcm_accelerated = false;
        let checks = evaluate(&h, &needs(&[(10, KtlsMode::Auto)], 1));
        let c = find(&checks, "cpu_crypto");
        assert_eq!(c.status, Status::Warn);
        assert!(c.fix.contains("ChaCha20"), "{c}");
    }
}
