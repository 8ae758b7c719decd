//! Session tickets whose keys a fleet can share: a rustls [`ProducesTickets`] with named keys.
//!
//! A ticket is `key name (16) ‖ nonce (12) ‖ AES-256-GCM(state) ‖ tag (16)`, the key name also
//! authenticated as AAD. The current key encrypts; the current and previous keys decrypt.
//! Keys come from one of three sources:
//! - a keys file (newest first, like HAProxy's tls-ticket-keys), see [`parse_keys_file`];
//! - a shared secret and a rotation period: every instance derives the key of epoch
//!   `floor(now / rotation)` with HKDF-SHA256 and also accepts the epochs either side, so a
//!   fleet rotates in step with no coordinator and tolerates clock skew of up to one period;
//! - random keys held in the process, rotated every period.
//!
//! One `Ticketer` serves all workers of a service. Its hot path is a lock-free `ArcSwap`
//! load; the mutex is taken only to rotate. Decrypt failures are counted per thread, so
//! each worker reads its own counters without shared writes.

use std::cell::RefCell;
use std::fmt;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use aws_lc_rs::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use aws_lc_rs::hkdf;
use base64::Engine as _;
use rustls::server::ProducesTickets;
use zeroize::Zeroize;

use crate::obs::{Counter, WorkerStats};

pub const NAME_LEN: usize = 16;
pub const KEY_LEN: usize = 32;
/// Bytes of one key in the keys file: name then AES-256 key.
pub const ENTRY_LEN: usize = NAME_LEN + KEY_LEN;
const TAG_LEN: usize = 16;
const HKDF_SALT: &[u8] = b"tlsfront session ticket keys v1";

thread_local! {
    /// The counters of the worker running on this thread (rustls decrypts tickets deep
    /// inside the handshake, where the worker's context is not at hand).
    static COUNTERS: RefCell<Option<Arc<WorkerStats>>> = const { RefCell::new(None) };
}

/// Ticket decrypt failures on this thread go to `stats` (`ticket_decrypt_unknown_key`,
/// `ticket_decrypt_corrupt`).
pub fn count_decrypt_failures_in(stats: Arc<WorkerStats>) {
    COUNTERS.with(|c| *c.borrow_mut() = Some(stats));
}

fn bump(counter: fn(&WorkerStats) -> &Counter) {
    COUNTERS.with(|c| {
        if let Some(stats) = &*c.borrow() {
            counter(stats).add(1);
        }
    });
}

/// One named ticket key.
pub struct TicketKey {
    name: [u8; NAME_LEN],
    key: LessSafeKey,
}

impl fmt::Debug for TicketKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The name is public (it travels in every ticket); the key never prints.
        write!(f, "TicketKey({:02x?})", &self.name[..4])
    }
}

impl TicketKey {
    pub fn from_bytes(entry: &[u8; ENTRY_LEN]) -> TicketKey {
        let mut name = [0u8; NAME_LEN];
        name.copy_from_slice(&entry[..NAME_LEN]);
        let key = UnboundKey::new(&AES_256_GCM, &entry[NAME_LEN..]).expect("32-byte AES-256 key");
        TicketKey {
            name,
            key: LessSafeKey::new(key),
        }
    }

    fn random() -> Option<TicketKey> {
        let mut entry = [0u8; ENTRY_LEN];
        aws_lc_rs::rand::fill(&mut entry).ok()?;
        let key = TicketKey::from_bytes(&entry);
        entry.zeroize();
        Some(key)
    }

    /// The key of `epoch` derived from a fleet's shared secret.
    fn derive(secret: &[u8], epoch: u64) -> TicketKey {
        let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, HKDF_SALT).extract(secret);
        let info = epoch.to_be_bytes();
        let info = [&info[..]];
        let okm = prk
            .expand(&info, EntryLen)
            .expect("HKDF output length is valid");
        let mut entry = [0u8; ENTRY_LEN];
        okm.fill(&mut entry).expect("HKDF fill of ENTRY_LEN bytes");
        let key = TicketKey::from_bytes(&entry);
        entry.zeroize();
        key
    }

    pub fn name(&self) -> &[u8; NAME_LEN] {
        &self.name
    }
}

struct EntryLen;

impl hkdf::KeyType for EntryLen {
    fn len(&self) -> usize {
        ENTRY_LEN
    }
}

/// The keys in force: `keys[0]` encrypts, all decrypt.
struct KeySet {
    /// Epoch these keys belong to (0 for a keys file, which never rotates by itself).
    epoch: u64,
    keys: Vec<Arc<TicketKey>>,
}

/// Where a service's ticket keys come from.
pub enum KeySource {
    /// From a keys file: the newest two entries (current, previous).
    Fixed(Vec<Arc<TicketKey>>),
    /// Derived from a shared secret per `rotation` epoch.
    Derived { secret: Vec<u8>, rotation: Duration },
    /// Random, held in this process, rotated every `rotation`.
    Random { rotation: Duration },
}

impl fmt::Debug for KeySource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeySource::Fixed(keys) => write!(f, "Fixed({} keys)", keys.len()),
            KeySource::Derived { rotation, .. } => write!(f, "Derived(rotation {rotation:?})"),
            KeySource::Random { rotation } => write!(f, "Random(rotation {rotation:?})"),
        }
    }
}

impl Drop for KeySource {
    fn drop(&mut self) {
        if let KeySource::Derived { secret, .. } = self {
            secret.zeroize();
        }
    }
}

/// The fleet-aware ticketer (see the module docs).
pub struct Ticketer {
    source: KeySource,
    lifetime: u32,
    keys: ArcSwap<KeySet>,
    rotating: Mutex<()>,
    /// Clock, replaceable in tests.
    now: fn() -> SystemTime,
}

impl fmt::Debug for Ticketer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ticketer")
            .field("source", &self.source)
            .field("lifetime", &self.lifetime)
            .finish_non_exhaustive()
    }
}

fn epoch_of(now: SystemTime, rotation: Duration) -> u64 {
    let secs = now.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
    secs / rotation.as_secs().max(1)
}

impl Ticketer {
    pub fn new(source: KeySource, lifetime: Duration) -> Option<Ticketer> {
        Self::with_clock(source, lifetime, SystemTime::now)
    }

    fn with_clock(
        source: KeySource,
        lifetime: Duration,
        now: fn() -> SystemTime,
    ) -> Option<Ticketer> {
        let lifetime = u32::try_from(lifetime.as_secs()).unwrap_or(u32::MAX);
        let initial = match &source {
            KeySource::Fixed(_) => KeySet {
                epoch: 0,
                keys: vec![],
            },
            KeySource::Derived { .. } | KeySource::Random { .. } => KeySet {
                epoch: u64::MAX,
                keys: vec![],
            },
        };
        let t = Ticketer {
            source,
            lifetime,
            keys: ArcSwap::from_pointee(initial),
            rotating: Mutex::new(()),
            now,
        };
        t.rotate_if_due()?;
        Some(t)
    }

    /// For the metrics: where the keys come from, how many are held (the first encrypts),
    /// and how old the encrypting one is when that is known (rotated keys; a keys file's
    /// age is its own business).
    pub fn state(&self) -> (&'static str, usize, Option<u64>) {
        let held = self.current().map_or(0, |set| set.keys.len());
        let now = (self.now)()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        match &self.source {
            KeySource::Fixed(_) => ("file", held, None),
            KeySource::Derived { rotation, .. } => {
                ("secret", held, Some(now % rotation.as_secs().max(1)))
            }
            KeySource::Random { rotation } => {
                ("random", held, Some(now % rotation.as_secs().max(1)))
            }
        }
    }

    /// The keys for now, rotating first if a new epoch has begun.
    fn current(&self) -> Option<arc_swap::Guard<Arc<KeySet>>> {
        let set = self.keys.load();
        if self.due(&set) {
            drop(set);
            self.rotate_if_due()?;
            return Some(self.keys.load());
        }
        Some(set)
    }

    fn due(&self, set: &KeySet) -> bool {
        match &self.source {
            KeySource::Fixed(_) => set.keys.is_empty(),
            KeySource::Derived { rotation, .. } | KeySource::Random { rotation } => {
                epoch_of((self.now)(), *rotation) != set.epoch
            }
        }
    }

    fn rotate_if_due(&self) -> Option<()> {
        let _guard = self.rotating.lock().unwrap_or_else(|e| e.into_inner());
        let old = self.keys.load_full();
        if !self.due(&old) {
            return Some(()); // another thread rotated meanwhile
        }
        let next = match &self.source {
            KeySource::Fixed(keys) => KeySet {
                epoch: 0,
                keys: keys.iter().take(2).cloned().collect(),
            },
            KeySource::Derived { secret, rotation } => {
                let epoch = epoch_of((self.now)(), *rotation);
                // Encrypt with this epoch; accept the previous one and, for clock skew
                // between instances, the next one.
                let mut keys = vec![Arc::new(TicketKey::derive(secret, epoch))];
                if let Some(prev) = epoch.checked_sub(1) {
                    keys.push(Arc::new(TicketKey::derive(secret, prev)));
                }
                keys.push(Arc::new(TicketKey::derive(secret, epoch + 1)));
                KeySet { epoch, keys }
            }
            KeySource::Random { rotation } => {
                let epoch = epoch_of((self.now)(), *rotation);
                let mut keys = vec![Arc::new(TicketKey::random()?)];
                // The previous key survives one rotation; one from further back is dropped.
                if old.epoch != u64::MAX && old.epoch + 1 == epoch {
                    keys.extend(old.keys.first().cloned());
                }
                KeySet { epoch, keys }
            }
        };
        self.keys.store(Arc::new(next));
        Some(())
    }
}

impl ProducesTickets for Ticketer {
    fn enabled(&self) -> bool {
        true
    }

    fn lifetime(&self) -> u32 {
        self.lifetime
    }

    fn encrypt(&self, plain: &[u8]) -> Option<Vec<u8>> {
        let set = self.current()?;
        let key = set.keys.first()?;
        let mut nonce = [0u8; NONCE_LEN];
        aws_lc_rs::rand::fill(&mut nonce).ok()?;
        let mut out = Vec::with_capacity(NAME_LEN + NONCE_LEN + plain.len() + TAG_LEN);
        out.extend_from_slice(&key.name);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(plain);
        let mut body = out.split_off(NAME_LEN + NONCE_LEN);
        key.key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(&key.name),
                &mut body,
            )
            .ok()?;
        out.extend_from_slice(&body);
        Some(out)
    }

    fn decrypt(&self, ticket: &[u8]) -> Option<Vec<u8>> {
        if ticket.len() < NAME_LEN + NONCE_LEN + TAG_LEN {
            bump(|s| &s.ticket_decrypt_corrupt);
            return None;
        }
        let (name, rest) = ticket.split_at(NAME_LEN);
        let (nonce, sealed) = rest.split_at(NONCE_LEN);
        let set = self.current()?;
        let Some(key) = set.keys.iter().find(|k| k.name[..] == *name) else {
            bump(|s| &s.ticket_decrypt_unknown_key);
            return None;
        };
        let nonce = Nonce::try_assume_unique_for_key(nonce).ok()?;
        let mut body = sealed.to_vec();
        match key
            .key
            .open_in_place(nonce, Aad::from(&key.name), &mut body)
        {
            Ok(plain) => {
                let n = plain.len();
                body.truncate(n);
                Some(body)
            }
            Err(_) => {
                bump(|s| &s.ticket_decrypt_corrupt);
                None
            }
        }
    }
}

/// Length of a route's ticket context (a truncated SHA-256).
pub const CONTEXT_LEN: usize = 16;

/// A service's ticketer as one route uses it: every ticket carries the route's context (what
/// it serves and how it authenticates clients) inside the encryption, and a ticket with
/// another context does not decrypt. rustls neither re-verifies the client certificate nor
/// looks at `client_auth` when it resumes, so without this a ticket from a route without
/// client authentication (or from before a reload that tightened it) could resume on a route
/// that requires a certificate. The context is derived from the configuration only, so a
/// fleet with the same config and ticket keys still resumes across instances.
#[derive(Debug)]
pub struct RouteTickets {
    inner: Arc<dyn ProducesTickets>,
    context: [u8; CONTEXT_LEN],
}

impl RouteTickets {
    pub fn new(inner: Arc<dyn ProducesTickets>, context: [u8; CONTEXT_LEN]) -> RouteTickets {
        RouteTickets { inner, context }
    }
}

impl ProducesTickets for RouteTickets {
    fn enabled(&self) -> bool {
        self.inner.enabled()
    }

    fn lifetime(&self) -> u32 {
        self.inner.lifetime()
    }

    fn encrypt(&self, plain: &[u8]) -> Option<Vec<u8>> {
        let mut bound = Vec::with_capacity(CONTEXT_LEN + plain.len());
        bound.extend_from_slice(&self.context);
        bound.extend_from_slice(plain);
        let ticket = self.inner.encrypt(&bound);
        bound.zeroize();
        ticket
    }

    fn decrypt(&self, ticket: &[u8]) -> Option<Vec<u8>> {
        let mut plain = self.inner.decrypt(ticket)?;
        if plain.get(..CONTEXT_LEN) != Some(&self.context[..]) {
            plain.zeroize();
            return None;
        }
        plain.drain(..CONTEXT_LEN);
        Some(plain)
    }
}

/// Reads a keys file: one base64 entry of 48 bytes (16-byte name, 32-byte AES-256 key) per
/// line, newest first; `#` comments and blank lines ignored. Errors name the line.
pub fn parse_keys_file(path: &Path) -> Result<Vec<Arc<TicketKey>>, String> {
    let mut text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let mut keys = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let mut bytes = base64::engine::general_purpose::STANDARD
            .decode(line)
            .map_err(|e| format!("{} line {}: not base64: {e}", path.display(), i + 1))?;
        let Ok(entry) = <&[u8; ENTRY_LEN]>::try_from(&bytes[..]) else {
            let n = bytes.len();
            bytes.zeroize();
            return Err(format!(
                "{} line {}: a key is {ENTRY_LEN} bytes (16 name + 32 key), this one is {n}",
                path.display(),
                i + 1
            ));
        };
        keys.push(Arc::new(TicketKey::from_bytes(entry)));
        bytes.zeroize();
    }
    text.zeroize();
    if keys.is_empty() {
        return Err(format!("{}: no keys", path.display()));
    }
    Ok(keys)
}

/// A new keys file's text: `count` random keys, newest first, with a header comment.
pub fn generate_keys_file(count: usize) -> Result<String, String> {
    let mut out = String::from(
        "# tlsfront session ticket keys: newest first; the first encrypts, the first two decrypt.\n\
         # Each line: base64 of 48 bytes = 16-byte key name + 32-byte AES-256-GCM key.\n\
         # Rotate: add a new line at the top on every instance, then reload them (SIGHUP).\n",
    );
    for _ in 0..count.max(1) {
        let mut entry = [0u8; ENTRY_LEN];
        aws_lc_rs::rand::fill(&mut entry)
            .map_err(|_| "random number generator failed".to_string())?;
        out.push_str(&base64::engine::general_purpose::STANDARD.encode(entry));
        out.push('\n');
        entry.zeroize();
    }
    Ok(out)
}

/// Reads a shared secret file (at least 32 bytes of content; surrounding whitespace ignored).
pub fn read_secret_file(path: &Path) -> Result<Vec<u8>, String> {
    let mut raw =
        std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let trimmed = raw.trim_ascii().to_vec();
    raw.zeroize();
    if trimmed.len() < 32 {
        return Err(format!(
            "{}: the secret must be at least 32 bytes (e.g. `openssl rand -base64 48`)",
            path.display()
        ));
    }
    Ok(trimmed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixed(entries: &[[u8; ENTRY_LEN]]) -> Ticketer {
        let keys = entries
            .iter()
            .map(|e| Arc::new(TicketKey::from_bytes(e)))
            .collect();
        Ticketer::new(KeySource::Fixed(keys), Duration::from_secs(3600)).unwrap()
    }

    fn entry(b: u8) -> [u8; ENTRY_LEN] {
        [b; ENTRY_LEN]
    }

    #[test]
    fn round_trip_and_key_order() {
        let t = fixed(&[entry(1), entry(2)]);
        let ticket = t.encrypt(b"session state").unwrap();
        assert_eq!(
            &ticket[..NAME_LEN],
            &[1u8; NAME_LEN],
            "the newest key encrypts"
        );
        assert_eq!(t.decrypt(&ticket).unwrap(), b"session state");
        // The previous key still decrypts what it issued; two keys back does not.
        let older = fixed(&[entry(2)]).encrypt(b"old").unwrap();
        assert_eq!(t.decrypt(&older).unwrap(), b"old");
        let oldest = fixed(&[entry(3)]).encrypt(b"oldest").unwrap();
        let stats = Arc::new(WorkerStats::default());
        count_decrypt_failures_in(stats.clone());
        assert!(fixed(&[entry(1), entry(2), entry(3)])
            .decrypt(&oldest)
            .is_none());
        assert_eq!(stats.ticket_decrypt_unknown_key.get(), 1);
    }

    #[test]
    fn a_route_only_resumes_its_own_tickets() {
        let service: Arc<dyn ProducesTickets> = Arc::new(
            Ticketer::new(
                KeySource::Random {
                    rotation: Duration::from_secs(3600),
                },
                Duration::from_secs(60),
            )
            .unwrap(),
        );
        let a = RouteTickets::new(service.clone(), [1; CONTEXT_LEN]);
        let a_again = RouteTickets::new(service.clone(), [1; CONTEXT_LEN]);
        let b = RouteTickets::new(service.clone(), [2; CONTEXT_LEN]);
        let ticket = a.encrypt(b"session state").unwrap();
        assert_eq!(
            a_again.decrypt(&ticket).as_deref(),
            Some(&b"session state"[..])
        );
        assert_eq!(b.decrypt(&ticket), None, "another route's context");
        assert_eq!(
            service.decrypt(&ticket).map(|p| p.len()),
            Some(CONTEXT_LEN + 13)
        );
        assert_eq!(b.decrypt(&service.encrypt(b"").unwrap()), None, "too short");
        assert_eq!(a.lifetime(), 60);
    }

    #[test]
    fn corrupt_tickets_are_refused_and_counted() {
        let stats = Arc::new(WorkerStats::default());
        count_decrypt_failures_in(stats.clone());
        let t = fixed(&[entry(9)]);
        let mut ticket = t.encrypt(b"state").unwrap();
        let last = ticket.len() - 1;
        ticket[last] ^= 1;
        assert!(t.decrypt(&ticket).is_none());
        assert!(t.decrypt(&ticket[..10]).is_none());
        assert_eq!(stats.ticket_decrypt_corrupt.get(), 2);
        assert_eq!(stats.ticket_decrypt_unknown_key.get(), 0);
    }

    #[test]
    fn derived_keys_agree_across_instances_and_epochs() {
        fn at(secs: u64) -> SystemTime {
            UNIX_EPOCH + Duration::from_secs(secs)
        }
        let secret = b"a secret shared by the whole fleet, 32+ bytes".to_vec();
        let rotation = Duration::from_secs(3600);
        let mk = |clock: fn() -> SystemTime| {
            Ticketer::with_clock(
                KeySource::Derived {
                    secret: secret.clone(),
                    rotation,
                },
                rotation,
                clock,
            )
            .unwrap()
        };
        let a = mk(|| at(100 * 3600 + 10));
        let b_same_epoch = mk(|| at(100 * 3600 + 3000));
        let b_next_epoch = mk(|| at(101 * 3600 + 5));
        let b_two_later = mk(|| at(102 * 3600 + 5));
        let b_slightly_behind = mk(|| at(100 * 3600 - 5)); // clock skew across the boundary
        let ticket = a.encrypt(b"s").unwrap();
        assert_eq!(b_same_epoch.decrypt(&ticket).unwrap(), b"s");
        assert_eq!(
            b_next_epoch.decrypt(&ticket).unwrap(),
            b"s",
            "previous epoch accepted"
        );
        assert_eq!(
            b_slightly_behind.decrypt(&ticket).unwrap(),
            b"s",
            "next epoch accepted"
        );
        assert!(
            b_two_later.decrypt(&ticket).is_none(),
            "two epochs back is refused"
        );
        let other_fleet = Ticketer::with_clock(
            KeySource::Derived {
                secret: b"another fleet entirely, also 32+ bytes long".to_vec(),
                rotation,
            },
            rotation,
            || at(100 * 3600 + 10),
        )
        .unwrap();
        assert!(other_fleet.decrypt(&ticket).is_none());
    }

    #[test]
    fn random_keys_rotate_and_keep_one_previous_key() {
        use std::sync::atomic::{AtomicU64, Ordering};
        static NOW: AtomicU64 = AtomicU64::new(0);
        fn clock() -> SystemTime {
            UNIX_EPOCH + Duration::from_secs(NOW.load(Ordering::Relaxed))
        }
        let rotation = Duration::from_secs(600);
        NOW.store(10 * 600, Ordering::Relaxed);
        let t = Ticketer::with_clock(KeySource::Random { rotation }, rotation, clock).unwrap();
        let first = t.encrypt(b"one").unwrap();
        NOW.store(11 * 600 + 1, Ordering::Relaxed); // next epoch: new key, first one kept
        let second = t.encrypt(b"two").unwrap();
        assert_ne!(&first[..NAME_LEN], &second[..NAME_LEN], "rotated");
        assert_eq!(t.decrypt(&first).unwrap(), b"one");
        NOW.store(12 * 600 + 1, Ordering::Relaxed); // two rotations after `first`
        assert!(t.decrypt(&first).is_none());
        assert_eq!(t.decrypt(&second).unwrap(), b"two");
    }

    #[test]
    fn keys_files_parse_and_generate() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys");
        std::fs::write(&path, generate_keys_file(3).unwrap()).unwrap();
        assert_eq!(parse_keys_file(&path).unwrap().len(), 3);
        std::fs::write(&path, "# c\n\nAAAA\n").unwrap();
        let err = parse_keys_file(&path).unwrap_err();
        assert!(err.contains("line 3") && err.contains("48 bytes"), "{err}");
        std::fs::write(&path, "not base64!\n").unwrap();
        assert!(parse_keys_file(&path).unwrap_err().contains("line 1"));
    }
}
