//! Stage 1: the TOML file's syntax, as serde types. Nothing here touches the file system or
//! the network; values are only parsed (durations, sizes), never validated against the world.

use std::fmt;
use std::time::Duration;

use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;

/// The whole file: `[global]` and any number of `[[service]]` tables.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    #[serde(default)]
    pub global: GlobalSection,
    #[serde(default)]
    pub service: Vec<ServiceSection>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GlobalSection {
    pub workers: Option<Workers>,
    pub pin: Option<bool>,
    pub cpus: Option<Vec<usize>>,
    pub drain_timeout: Option<DurationValue>,
    pub log_level: Option<String>,
    pub identity_socket: Option<String>,
    pub identity_socket_mode: Option<String>,
    pub admin: Option<String>,
    pub shutdown_delay: Option<DurationValue>,
    pub user: Option<String>,
    pub group: Option<String>,
    pub allow_root: Option<bool>,
    pub log_format: Option<String>,
}

/// `workers = N | "auto"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Workers {
    Auto,
    Count(usize),
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceSection {
    pub name: Option<String>,
    pub access_log: Option<String>,
    pub mode: Option<String>,
    pub server_name: Option<String>,
    pub ca: Option<String>,
    pub starttls: Option<String>,
    pub starttls_timeout: Option<DurationValue>,
    pub chat: Option<Vec<ChatStepValue>>,
    pub listen: Option<String>,
    pub backend: Option<BackendValue>,
    pub backend_tls: Option<bool>,
    pub backend_server_name: Option<String>,
    pub backend_ca: Option<String>,
    pub backend_pin: Option<Vec<String>>,
    pub balance: Option<String>,
    pub health_fail_after: Option<u32>,
    pub health_retry: Option<DurationValue>,
    pub health_check: Option<DurationValue>,
    pub cert: Option<String>,
    pub key: Option<String>,
    pub min_version: Option<String>,
    pub max_version: Option<String>,
    pub ciphers: Option<Vec<String>>,
    pub cipher_preference: Option<String>,
    pub proxy_protocol: Option<String>,
    pub accept_proxy: Option<bool>,
    pub proxy_sources: Option<Vec<String>>,
    pub groups: Option<Vec<String>>,
    pub alpn: Option<Vec<String>>,
    pub buffer_size: Option<SizeValue>,
    pub nodelay: Option<bool>,
    pub keepalive: Option<KeepaliveValue>,
    pub rcvbuf: Option<SizeValue>,
    pub sndbuf: Option<SizeValue>,
    pub backlog: Option<u32>,
    pub max_connections: Option<u32>,
    pub handshake_timeout: Option<DurationValue>,
    pub connect_timeout: Option<DurationValue>,
    pub idle_timeout: Option<DurationValue>,
    pub ktls: Option<String>,
    pub tickets: Option<bool>,
    pub ticket_lifetime: Option<DurationValue>,
    pub ticket_rotation: Option<DurationValue>,
    pub ticket_keys_file: Option<String>,
    pub ticket_secret_file: Option<String>,
    pub session_cache_size: Option<usize>,
    pub unknown_sni: Option<String>,
    pub client_auth: Option<String>,
    pub client_ca: Option<String>,
    pub client_crl: Option<Vec<String>>,
    pub allow_cn: Option<Vec<String>>,
    pub allow_dns: Option<Vec<String>>,
    pub allow_uri: Option<Vec<String>>,
    pub allow_spki: Option<Vec<String>>,
    #[serde(default)]
    pub route: Vec<RouteSection>,
    #[serde(default)]
    pub by_identity: Vec<IdentitySection>,
}

/// `[[service.route]]`: names (SNI) served by their own certificate and backend pool, or
/// passed through untouched. Unset keys are inherited from the service.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteSection {
    pub name: Option<String>,
    pub sni: Option<OneOrMany>,
    pub alpn_match: Option<Vec<String>>,
    pub passthrough: Option<bool>,
    pub backend: Option<BackendValue>,
    pub backend_tls: Option<bool>,
    pub backend_server_name: Option<String>,
    pub backend_ca: Option<String>,
    pub backend_pin: Option<Vec<String>>,
    pub balance: Option<String>,
    pub health_fail_after: Option<u32>,
    pub health_retry: Option<DurationValue>,
    pub health_check: Option<DurationValue>,
    pub proxy_protocol: Option<String>,
    pub cert: Option<String>,
    pub key: Option<String>,
    pub min_version: Option<String>,
    pub max_version: Option<String>,
    pub ciphers: Option<Vec<String>>,
    pub cipher_preference: Option<String>,
    pub groups: Option<Vec<String>>,
    pub alpn: Option<Vec<String>>,
    pub client_auth: Option<String>,
    pub client_ca: Option<String>,
    pub client_crl: Option<Vec<String>>,
    pub allow_cn: Option<Vec<String>>,
    pub allow_dns: Option<Vec<String>>,
    pub allow_uri: Option<Vec<String>>,
    pub allow_spki: Option<Vec<String>>,
    #[serde(default)]
    pub by_identity: Vec<IdentitySection>,
}

/// `[[service.by_identity]]` / `[[service.route.by_identity]]`: clients whose certificate
/// matches go to this backend pool instead of the route's own.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IdentitySection {
    pub allow_cn: Option<Vec<String>>,
    pub allow_dns: Option<Vec<String>>,
    pub allow_uri: Option<Vec<String>>,
    pub allow_spki: Option<Vec<String>>,
    pub backend: Option<BackendValue>,
    pub balance: Option<String>,
    pub health_fail_after: Option<u32>,
    pub health_retry: Option<DurationValue>,
    pub health_check: Option<DurationValue>,
}

/// One `chat = [{ expect = ".." }, { send = "..\\r\\n" }]` step.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChatStepValue {
    pub expect: Option<String>,
    pub send: Option<String>,
}

/// A string or a list of strings (`sni = "a.example"` or `sni = ["a.example", "*.b.example"]`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    pub fn to_vec(&self) -> Vec<String> {
        match self {
            OneOrMany::One(s) => vec![s.clone()],
            OneOrMany::Many(v) => v.clone(),
        }
    }
}

/// `backend = "ADDR:PORT"` or a pool: `backend = ["ADDR:PORT", ...]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum BackendValue {
    One(String),
    Pool(Vec<String>),
}

/// `keepalive = false` or `keepalive = { idle = "60s", interval = "10s", count = 5 }`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeepaliveValue {
    Off,
    On(KeepaliveTable),
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeepaliveTable {
    pub idle: Option<DurationValue>,
    pub interval: Option<DurationValue>,
    pub count: Option<u32>,
}

/// A duration written as `"500ms"`, `"10s"`, `"5m"`, `"1h"` or an integer number of seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DurationValue(pub Duration);

/// A byte size written as an integer or `"64KiB"` / `"1MiB"` (also `K`, `KB`, `M`, `MB`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SizeValue(pub usize);

/// Parses `"500ms"`, `"10s"`, `"5m"`, `"1h"`, `"2d"`; a bare number means seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (digits, unit) = text.split_at(split);
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("bad duration {text:?}: expected e.g. \"500ms\", \"10s\", \"5m\""))?;
    let per_unit_ms = match unit.trim() {
        "ms" => 1,
        "" | "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        other => {
            return Err(format!(
                "bad duration unit {other:?} in {text:?}: use ms, s, m, h or d"
            ))
        }
    };
    n.checked_mul(per_unit_ms)
        .map(Duration::from_millis)
        .ok_or_else(|| format!("duration {text:?} is too large"))
}

/// Parses `"64KiB"`, `"1MiB"`, `"512"`; K/KB/KiB all mean 1024.
pub fn parse_size(text: &str) -> Result<usize, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (digits, unit) = text.split_at(split);
    let n: usize = digits
        .parse()
        .map_err(|_| format!("bad size {text:?}: expected e.g. 16384 or \"64KiB\""))?;
    let mult = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        other => {
            return Err(format!(
                "bad size unit {other:?} in {text:?}: use KiB, MiB or GiB"
            ))
        }
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("size {text:?} is too large"))
}

impl<'de> Deserialize<'de> for Workers {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Workers;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a positive integer or \"auto\"")
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Workers, E> {
                match usize::try_from(v) {
                    Ok(n) if n > 0 => Ok(Workers::Count(n)),
                    _ => Err(E::custom(format!("workers must be at least 1, got {v}"))),
                }
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Workers, E> {
                match v {
                    "auto" => Ok(Workers::Auto),
                    _ => Err(E::custom(format!(
                        "workers must be an integer or \"auto\", got {v:?}"
                    ))),
                }
            }
        }
        d.deserialize_any(V)
    }
}

impl<'de> Deserialize<'de> for DurationValue {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = DurationValue;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a duration such as \"10s\" or \"500ms\", or a number of seconds")
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<DurationValue, E> {
                u64::try_from(v)
                    .map(|s| DurationValue(Duration::from_secs(s)))
                    .map_err(|_| E::custom(format!("duration must not be negative, got {v}")))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<DurationValue, E> {
                parse_duration(v).map(DurationValue).map_err(E::custom)
            }
        }
        d.deserialize_any(V)
    }
}

impl<'de> Deserialize<'de> for SizeValue {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = SizeValue;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a size in bytes such as 16384 or \"64KiB\"")
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<SizeValue, E> {
                usize::try_from(v)
                    .map(SizeValue)
                    .map_err(|_| E::custom(format!("size must not be negative, got {v}")))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<SizeValue, E> {
                parse_size(v).map(SizeValue).map_err(E::custom)
            }
        }
        d.deserialize_any(V)
    }
}

impl<'de> Deserialize<'de> for KeepaliveValue {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = KeepaliveValue;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("false, true, or a table { idle, interval, count }")
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<KeepaliveValue, E> {
                Ok(if v {
                    KeepaliveValue::On(KeepaliveTable::default())
                } else {
                    KeepaliveValue::Off
                })
            }
            fn visit_map<A: de::MapAccess<'de>>(self, map: A) -> Result<KeepaliveValue, A::Error> {
                KeepaliveTable::deserialize(de::value::MapAccessDeserializer::new(map))
                    .map(KeepaliveValue::On)
            }
        }
        d.deserialize_any(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("7"), Ok(Duration::from_secs(7)));
        assert!(parse_duration("ten").is_err());
        assert!(parse_duration("10 parsecs").is_err());
        assert!(parse_duration("").is_err());
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("16384"), Ok(16384));
        assert_eq!(parse_size("64KiB"), Ok(65536));
        assert_eq!(parse_size("1MiB"), Ok(1 << 20));
        assert!(parse_size("lots").is_err());
        assert!(parse_size("3 furlongs").is_err());
    }

    #[test]
    fn whole_file_shapes() {
        let cfg: FileConfig = toml::from_str(
            r#"
            [global]
            workers = "auto"
            [[service]]
            listen = "127.0.0.1:1"
            keepalive = { idle = "30s", count = 3 }
            buffer_size = "32KiB"
            [[service]]
            listen = "127.0.0.1:2"
            keepalive = false
            "#,
        )
        .unwrap();
        assert_eq!(cfg.global.workers, Some(Workers::Auto));
        assert_eq!(cfg.service.len(), 2);
        assert_eq!(cfg.service[0].buffer_size, Some(SizeValue(32 << 10)));
        assert_eq!(
            cfg.service[0].keepalive,
            Some(KeepaliveValue::On(KeepaliveTable {
                idle: Some(DurationValue(Duration::from_secs(30))),
                interval: None,
                count: Some(3)
            }))
        );
        assert_eq!(cfg.service[1].keepalive, Some(KeepaliveValue::Off));
        assert!(toml::from_str::<FileConfig>("[[service]]\nlisten2 = \"x\"").is_err());
        assert!(toml::from_str::<FileConfig>("[global]\nworkers = 0").is_err());
    }
}
