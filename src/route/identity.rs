//! "Who is the client behind tlsfront's connection from source port P?" — for backends that
//! cannot parse a PROXY header (identd's question, RFC 1413, asked over a local Unix socket).
//!
//! Each worker keeps a [`Registry`] of its live backend connections, keyed by the source
//! port tlsfront connected from, filled only when `identity_socket` is configured. The lookup
//! thread ([`spawn_server`]) asks every worker and answers the first record found.
//!
//! Protocol: the backend writes one query per line, `P` or `P,Q` (Q: the backend's own port,
//! to tell apart connections to different backends that share a source port), and reads
//! one JSON line per query: the [`Record`], or `{"error": "..."}`.

use std::cell::RefCell;
use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::SocketAddr;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::rc::Rc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;

use crate::tls::client_auth::Identity;

/// What the lookup tells a backend about one connection.
#[derive(Debug, Clone, Serialize)]
pub struct Record {
    /// The client as tlsfront sees it (the one a load balancer's PROXY header named).
    pub client: SocketAddr,
    pub service: String,
    pub route: String,
    pub sni: Option<String>,
    /// `None` on a pass-through route (the TLS is not terminated here).
    pub tls_version: Option<String>,
    pub cipher: Option<String>,
    pub client_cert: Option<CertRecord>,
}

/// The client certificate of a terminated connection (verified by the handshake).
#[derive(Debug, Clone, Serialize)]
pub struct CertRecord {
    pub verified: bool,
    pub cn: Option<String>,
    pub dns: Vec<String>,
    pub uri: Vec<String>,
    pub sha256: String,
    pub spki_sha256: String,
}

impl From<&Identity> for CertRecord {
    fn from(id: &Identity) -> Self {
        CertRecord {
            verified: true,
            cn: id.cn.clone(),
            dns: id.dns.clone(),
            uri: id.uri.clone(),
            sha256: id.sha256_hex(),
            spki_sha256: id.spki_sha256_hex(),
        }
    }
}

/// One query: tlsfront's source port, and optionally the backend's port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Query {
    pub source_port: u16,
    pub backend_port: Option<u16>,
}

impl Query {
    pub fn parse(line: &str) -> Result<Query, String> {
        let port = |t: &str| {
            t.trim()
                .parse::<u16>()
                .ok()
                .filter(|p| *p != 0)
                .ok_or_else(|| {
                    format!(
                        "bad query {:?}: expected \"PORT\" or \"PORT,PORT\"",
                        line.trim()
                    )
                })
        };
        match line.split_once(',') {
            Some((p, q)) => Ok(Query {
                source_port: port(p)?,
                backend_port: Some(port(q)?),
            }),
            None => Ok(Query {
                source_port: port(line)?,
                backend_port: None,
            }),
        }
    }
}

/// The connections from one source port: (backend address, record).
type SamePort = Vec<(SocketAddr, Rc<Record>)>;

/// A worker's live backend connections by source port (single thread: no locks).
#[derive(Default)]
pub struct Registry {
    by_port: RefCell<HashMap<u16, SamePort>>,
}

/// Removes its connection from the registry when the connection ends.
pub struct Registered<'a> {
    registry: &'a Registry,
    source_port: u16,
    record: Rc<Record>,
}

impl Registry {
    /// Records a backend connection from `source_port` to `backend` until the guard drops.
    pub fn register(
        &self,
        source_port: u16,
        backend: SocketAddr,
        record: Record,
    ) -> Registered<'_> {
        let record = Rc::new(record);
        self.by_port
            .borrow_mut()
            .entry(source_port)
            .or_default()
            .push((backend, record.clone()));
        Registered {
            registry: self,
            source_port,
            record,
        }
    }

    /// The record for a query, as its JSON line (without the newline).
    pub fn answer(&self, q: Query) -> Option<String> {
        let map = self.by_port.borrow();
        let (_, record) = map
            .get(&q.source_port)?
            .iter()
            .find(|(backend, _)| q.backend_port.map_or(true, |p| backend.port() == p))?;
        serde_json::to_string(&**record).ok()
    }

    pub fn len(&self) -> usize {
        self.by_port.borrow().values().map(Vec::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Drop for Registered<'_> {
    fn drop(&mut self) {
        let mut map = self.registry.by_port.borrow_mut();
        if let Some(list) = map.get_mut(&self.source_port) {
            list.retain(|(_, r)| !Rc::ptr_eq(r, &self.record));
            if list.is_empty() {
                map.remove(&self.source_port);
            }
        }
    }
}

/// Most lookup clients served at once; more are refused with an error line.
const MAX_CLIENTS: usize = 64;
/// A lookup client that sends nothing for this long is disconnected.
const CLIENT_IDLE: Duration = Duration::from_secs(60);

/// Binds the lookup socket (a stale socket file from an earlier run is replaced).
pub fn bind(path: &Path) -> std::io::Result<UnixListener> {
    match std::fs::symlink_metadata(path) {
        Ok(meta) if std::os::unix::fs::FileTypeExt::is_socket(&meta.file_type()) => {
            std::fs::remove_file(path)?;
        }
        Ok(_) => {
            return Err(std::io::Error::new(
                std::io::ErrorKind::AlreadyExists,
                "exists and is not a socket",
            ))
        }
        Err(_) => {}
    }
    UnixListener::bind(path)
}

/// Serves lookups on `listener` from a thread, a thread per client (at most
/// [`MAX_CLIENTS`]). `ask` answers one query (it asks the workers).
pub fn spawn_server<F>(listener: UnixListener, ask: F) -> std::io::Result<()>
where
    F: Fn(Query) -> Option<String> + Send + Sync + 'static,
{
    let ask = Arc::new(ask);
    let clients = Arc::new(AtomicUsize::new(0));
    std::thread::Builder::new()
        .name("tlsfront-ident".into())
        .spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                if clients.fetch_add(1, Ordering::Relaxed) >= MAX_CLIENTS {
                    clients.fetch_sub(1, Ordering::Relaxed);
                    let _ = stream.write_all(b"{\"error\":\"too many lookup clients\"}\n");
                    continue;
                }
                let (ask, count) = (ask.clone(), clients.clone());
                let spawned = std::thread::Builder::new()
                    .name("tlsfront-ident-c".into())
                    .spawn(move || {
                        let _ = serve_client(stream, &*ask);
                        count.fetch_sub(1, Ordering::Relaxed);
                    });
                if spawned.is_err() {
                    clients.fetch_sub(1, Ordering::Relaxed);
                }
            }
        })
        .map(|_| ())
}

fn serve_client(stream: UnixStream, ask: &dyn Fn(Query) -> Option<String>) -> std::io::Result<()> {
    stream.set_read_timeout(Some(CLIENT_IDLE))?;
    let mut out = stream.try_clone()?;
    let mut reader = BufReader::new(stream).take(1 << 20);
    let mut line = String::new();
    loop {
        line.clear();
        if reader.read_line(&mut line)? == 0 {
            return Ok(());
        }
        if line.len() > 64 {
            out.write_all(b"{\"error\":\"query too long\"}\n")?;
            return Ok(());
        }
        let reply = match Query::parse(&line) {
            Ok(q) => ask(q).unwrap_or_else(|| {
                error_line(&format!("no connection from port {}", q.source_port))
            }),
            Err(e) => error_line(&e),
        };
        out.write_all(reply.as_bytes())?;
        out.write_all(b"\n")?;
    }
}

fn error_line(message: &str) -> String {
    serde_json::json!({ "error": message }).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(client: &str) -> Record {
        Record {
            client: client.parse().unwrap(),
            service: "edge".into(),
            route: "db".into(),
            sni: Some("db.example.com".into()),
            tls_version: Some("TLSv1.3".into()),
            cipher: None,
            client_cert: None,
        }
    }

    #[test]
    fn queries() {
        assert_eq!(
            Query::parse("4000\r\n"),
            Ok(Query {
                source_port: 4000,
                backend_port: None
            })
        );
        assert_eq!(
            Query::parse(" 4000 , 5432\n"),
            Ok(Query {
                source_port: 4000,
                backend_port: Some(5432)
            })
        );
        for bad in ["", "x", "0", "70000", "1,", "1,2,3"] {
            assert!(Query::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn entries_live_as_long_as_their_guard_and_ports_disambiguate() {
        let reg = Registry::default();
        let a = reg.register(
            4000,
            "127.0.0.1:5432".parse().unwrap(),
            record("192.0.2.1:1"),
        );
        let b = reg.register(
            4000,
            "127.0.0.1:6379".parse().unwrap(),
            record("192.0.2.2:2"),
        );
        let q = |backend_port| Query {
            source_port: 4000,
            backend_port,
        };
        assert!(reg.answer(q(Some(6379))).unwrap().contains("192.0.2.2:2"));
        assert!(reg.answer(q(Some(5432))).unwrap().contains("192.0.2.1:1"));
        assert!(reg.answer(q(None)).unwrap().contains("192.0.2.1:1"));
        assert_eq!(reg.answer(q(Some(1))), None);
        drop(a);
        assert!(reg.answer(q(None)).unwrap().contains("192.0.2.2:2"));
        drop(b);
        assert_eq!(reg.answer(q(None)), None);
        assert!(reg.is_empty());
    }
}
