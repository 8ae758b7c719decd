//! "Who is the client behind tlsfront's connection from source port P?" — for backends that
//! cannot parse a PROXY header (identd's question, RFC 1413, asked over a local Unix socket).
//!
//! Each worker keeps a [`Registry`] of its live backend connections, keyed by the source
//! port tlsfront connected from, filled only when `identity_socket` is configured. The lookup
//! thread ([`spawn_server`]) asks every worker and answers when exactly one connection
//! matches.
//!
//! Protocol: the backend writes one query per line, `P`, `P,Q` or `P,ADDR:Q` (Q: the
//! backend's own port, ADDR its address; they tell apart connections to different backends
//! that share a source port, which Linux allows), and reads one JSON line per query: the
//! [`Record`], or `{"error": "..."}` — also when the query matches several connections.

use std::cell::RefCell;
use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{IpAddr, SocketAddr};
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

/// One query: tlsfront's source port, and optionally the backend's port and address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Query {
    pub source_port: u16,
    pub backend_port: Option<u16>,
    pub backend_ip: Option<IpAddr>,
}

impl Query {
    pub fn parse(line: &str) -> Result<Query, String> {
        let bad = || {
            format!(
                "bad query {:?}: expected \"PORT\", \"PORT,PORT\" or \"PORT,ADDR:PORT\"",
                line.trim()
            )
        };
        let port = |t: &str| t.trim().parse::<u16>().ok().filter(|p| *p != 0);
        let (source, backend) = match line.split_once(',') {
            Some((p, q)) => (p, Some(q.trim())),
            None => (line, None),
        };
        let source_port = port(source).ok_or_else(bad)?;
        let (backend_port, backend_ip) = match backend {
            None => (None, None),
            Some(q) => match q.parse::<SocketAddr>() {
                Ok(addr) if addr.port() != 0 => (Some(addr.port()), Some(addr.ip())),
                Ok(_) => return Err(bad()),
                Err(_) => (Some(port(q).ok_or_else(bad)?), None),
            },
        };
        Ok(Query {
            source_port,
            backend_port,
            backend_ip,
        })
    }

    fn matches(&self, backend: SocketAddr) -> bool {
        self.backend_port.map_or(true, |p| backend.port() == p)
            && self
                .backend_ip
                .map_or(true, |ip| canonical(ip) == canonical(backend.ip()))
    }
}

/// IPv4 and its IPv4-mapped IPv6 form are the same address.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// What one worker knows about a query.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Answer {
    /// Connections that match.
    pub matches: usize,
    /// The first match's record, as its JSON line (without the newline).
    pub record: Option<String>,
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

    /// What this registry knows about a query.
    pub fn answer(&self, q: Query) -> Answer {
        let map = self.by_port.borrow();
        let mut found = map
            .get(&q.source_port)
            .into_iter()
            .flatten()
            .filter(|(backend, _)| q.matches(*backend));
        let Some((_, first)) = found.next() else {
            return Answer::default();
        };
        Answer {
            matches: 1 + found.count(),
            record: serde_json::to_string(&**first).ok(),
        }
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

/// Combines the workers' answers: the record when exactly one connection matches.
pub fn combine(query: Query, answers: impl IntoIterator<Item = Answer>) -> Result<String, String> {
    let mut matches = 0;
    let mut record = None;
    for a in answers {
        matches += a.matches;
        record = record.or(a.record);
    }
    match (matches, record) {
        (1, Some(r)) => Ok(r),
        (0, _) | (_, None) => Err(format!("no connection from port {}", query.source_port)),
        (n, _) => Err(format!(
            "{n} connections from port {} match: ask with \"{},ADDR:PORT\" (your address and port)",
            query.source_port, query.source_port
        )),
    }
}

/// Most lookup clients served at once; more are refused with an error line. (Who may
/// connect at all is the socket file's mode: `identity_socket_mode`.)
const MAX_CLIENTS: usize = 256;
/// A lookup client that sends nothing for this long is disconnected.
const CLIENT_IDLE: Duration = Duration::from_secs(30);
/// A lookup client that does not read its answers for this long is disconnected.
const CLIENT_WRITE: Duration = Duration::from_secs(5);
/// Longest query line accepted (`65535,[ffff:…]:65535` fits).
const MAX_LINE: usize = 64;

/// Binds the lookup socket with file mode `mode`. A stale socket file from an earlier run
/// is replaced; one that a running process still answers on is not.
pub fn bind(path: &Path, mode: u32) -> std::io::Result<UnixListener> {
    match std::fs::symlink_metadata(path) {
        Ok(meta) if std::os::unix::fs::FileTypeExt::is_socket(&meta.file_type()) => {
            if UnixStream::connect(path).is_ok() {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::AddrInUse,
                    "another process is serving this socket",
                ));
            }
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
    let listener = UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(mode))?;
    Ok(listener)
}

/// Serves lookups on `listener` from a thread, a thread per client (at most
/// [`MAX_CLIENTS`]). `ask` answers one query (it asks the workers).
pub fn spawn_server<F>(listener: UnixListener, ask: F) -> std::io::Result<()>
where
    F: Fn(Query) -> Result<String, String> + Send + Sync + 'static,
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
                    let _ = stream.set_write_timeout(Some(CLIENT_WRITE));
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

fn serve_client(
    stream: UnixStream,
    ask: &dyn Fn(Query) -> Result<String, String>,
) -> std::io::Result<()> {
    stream.set_read_timeout(Some(CLIENT_IDLE))?;
    stream.set_write_timeout(Some(CLIENT_WRITE))?;
    let mut out = stream.try_clone()?;
    let mut reader = BufReader::new(stream);
    let mut line = Vec::with_capacity(MAX_LINE + 1);
    loop {
        line.clear();
        // At most one byte past the limit, per line: a longer line is an error, and a last
        // line without its newline (the client went away mid-query) is not answered.
        (&mut reader)
            .take(MAX_LINE as u64 + 1)
            .read_until(b'\n', &mut line)?;
        if line.last() != Some(&b'\n') {
            if line.len() > MAX_LINE {
                out.write_all(b"{\"error\":\"query too long\"}\n")?;
            }
            return Ok(());
        }
        let reply = match std::str::from_utf8(&line)
            .map_err(|_| "query is not text".to_owned())
            .and_then(Query::parse)
        {
            Ok(q) => ask(q).unwrap_or_else(|e| error_line(&e)),
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

    fn query(source_port: u16, backend_port: Option<u16>, ip: Option<&str>) -> Query {
        Query {
            source_port,
            backend_port,
            backend_ip: ip.map(|ip| ip.parse().unwrap()),
        }
    }

    #[test]
    fn queries() {
        assert_eq!(Query::parse("4000\r\n"), Ok(query(4000, None, None)));
        assert_eq!(
            Query::parse(" 4000 , 5432\n"),
            Ok(query(4000, Some(5432), None))
        );
        assert_eq!(
            Query::parse("4000,[::1]:5432\n"),
            Ok(query(4000, Some(5432), Some("::1")))
        );
        assert_eq!(
            Query::parse("4000,10.0.0.9:5432"),
            Ok(query(4000, Some(5432), Some("10.0.0.9")))
        );
        for bad in [
            "",
            "x",
            "0",
            "70000",
            "1,",
            "1,2,3",
            "1,10.0.0.1:0",
            "1,10.0.0.1",
        ] {
            assert!(Query::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn entries_live_as_long_as_their_guard_and_addresses_disambiguate() {
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
        let c = reg.register(
            4000,
            "10.0.0.9:5432".parse().unwrap(),
            record("192.0.2.3:3"),
        );
        let one = |q: Query| combine(q, [reg.answer(q)]);
        assert!(one(query(4000, Some(6379), None))
            .unwrap()
            .contains("192.0.2.2:2"));
        assert!(one(query(4000, Some(5432), Some("127.0.0.1")))
            .unwrap()
            .contains("192.0.2.1:1"));
        assert!(one(query(4000, Some(5432), Some("::ffff:10.0.0.9")))
            .unwrap()
            .contains("192.0.2.3:3"));
        let ambiguous = one(query(4000, Some(5432), None)).unwrap_err();
        assert!(ambiguous.contains("2 connections"), "{ambiguous}");
        assert_eq!(reg.answer(query(4000, None, None)).matches, 3);
        assert_eq!(reg.answer(query(4000, Some(1), None)), Answer::default());
        drop((a, c));
        assert!(one(query(4000, None, None))
            .unwrap()
            .contains("192.0.2.2:2"));
        drop(b);
        let gone = one(query(4000, None, None)).unwrap_err();
        assert!(gone.contains("no connection from port 4000"), "{gone}");
        assert!(reg.is_empty());
    }

    #[test]
    fn answers_from_several_workers_are_combined() {
        let q = query(4000, None, None);
        let hit = Answer {
            matches: 1,
            record: Some("{}".into()),
        };
        assert_eq!(
            combine(q, [Answer::default(), hit.clone()]),
            Ok("{}".into())
        );
        assert!(combine(q, [hit.clone(), hit]).is_err());
        assert!(combine(q, []).is_err());
    }

    #[test]
    fn clients_get_one_answer_per_whole_line_and_long_lines_end_the_session() {
        let (client, server) = UnixStream::pair().unwrap();
        let handle = std::thread::spawn(move || {
            serve_client(server, &|q: Query| Ok(format!("port {}", q.source_port)))
        });
        let mut client = client;
        client.write_all(b"80\n443\n").unwrap();
        client.write_all(&[b'9'; 100]).unwrap();
        client.write_all(b"\n").unwrap();
        let mut text = String::new();
        client.read_to_string(&mut text).unwrap();
        assert_eq!(text, "port 80\nport 443\n{\"error\":\"query too long\"}\n");
        handle.join().unwrap().unwrap();

        // A last line cut off by the client's close is not answered.
        let (client, server) = UnixStream::pair().unwrap();
        let handle = std::thread::spawn(move || {
            serve_client(server, &|q: Query| Ok(format!("port {}", q.source_port)))
        });
        let mut client = client;
        client.write_all(b"80\n4").unwrap();
        client.shutdown(std::net::Shutdown::Write).unwrap();
        let mut text = String::new();
        client.read_to_string(&mut text).unwrap();
        assert_eq!(text, "port 80\n");
        handle.join().unwrap().unwrap();
    }
}
