//! A service's backends as one worker sees them: which to try next (round-robin or least
//! connections), and passive health — a backend whose connects fail `fail_after` times in a
//! row is down for `retry`, then tried again. Pure and per worker: no state is shared
//! between workers, time is passed in.

use std::cell::Cell;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Balance {
    #[default]
    RoundRobin,
    LeastConnections,
}

impl Balance {
    pub fn parse(text: &str) -> Option<Self> {
        match text.trim().to_ascii_lowercase().replace('-', "_").as_str() {
            "round_robin" | "roundrobin" => Some(Self::RoundRobin),
            "least_connections" | "leastconn" => Some(Self::LeastConnections),
            _ => None,
        }
    }
}

/// How a pool picks and judges its backends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolPolicy {
    pub balance: Balance,
    /// Consecutive connect failures that mark a backend down.
    pub fail_after: u32,
    /// How long a down backend is skipped before it is tried again.
    pub retry: Duration,
    /// Active checks: a TCP connect to every backend this often (per worker).
    pub check: Option<Duration>,
}

impl Default for PoolPolicy {
    fn default() -> Self {
        PoolPolicy {
            balance: Balance::RoundRobin,
            fail_after: 3,
            retry: Duration::from_secs(10),
            check: None,
        }
    }
}

/// Which backends a connection has tried: a bitmask (pools hold at most [`MAX_BACKENDS`]).
#[derive(Clone, Copy)]
struct Tried(u64);

/// Most backends one pool may have.
pub const MAX_BACKENDS: usize = 64;

impl Tried {
    fn contains(self, i: usize) -> bool {
        self.0 & (1 << i) != 0
    }
    fn insert(&mut self, i: usize) {
        self.0 |= 1 << i;
    }
}

#[derive(Debug, Default)]
struct State {
    active: Cell<u32>,
    fails: Cell<u32>,
    down_until: Cell<Option<Instant>>,
}

/// One worker's view of a service's backends (by index into the configured list).
#[derive(Debug)]
pub struct Pool {
    policy: PoolPolicy,
    states: Vec<State>,
    next: Cell<usize>,
}

/// What a connect attempt's outcome changed.
#[derive(Debug, PartialEq, Eq)]
pub enum HealthChange {
    None,
    /// The backend just went down (after `fail_after` failures in a row).
    Down,
    /// A down backend connected again.
    Up,
}

impl Pool {
    /// `backends` is at most [`MAX_BACKENDS`] (the config checks it).
    pub fn new(backends: usize, policy: PoolPolicy) -> Self {
        assert!(
            backends <= MAX_BACKENDS,
            "a pool holds at most {MAX_BACKENDS} backends"
        );
        Pool {
            policy,
            states: (0..backends).map(|_| State::default()).collect(),
            next: Cell::new(0),
        }
    }

    fn is_up(&self, i: usize, now: Instant) -> bool {
        !matches!(self.states[i].down_until.get(), Some(t) if now < t)
    }

    /// The order to try the backends in for one connection: the healthy ones by the
    /// balancing rule, then those that are down (a last resort, soonest retry first), so a
    /// connection is refused only when every backend fails. Lazy and allocation-free: each
    /// step picks the best backend not tried yet.
    pub fn order(&self, now: Instant) -> impl Iterator<Item = usize> + '_ {
        let n = self.states.len();
        let start = self.next.get() % n.max(1);
        self.next.set(start + 1);
        let mut tried = Tried(0);
        std::iter::from_fn(move || {
            // Rank: up before down; then fewest open connections (least-connections) or
            // soonest retry (down); then the round-robin rotation from `start`.
            let best = (0..n)
                .map(|k| (start + k) % n)
                .filter(|&i| !tried.contains(i))
                .min_by_key(|&i| {
                    let s = &self.states[i];
                    let up = self.is_up(i, now);
                    let load = if up && self.policy.balance == Balance::LeastConnections {
                        s.active.get()
                    } else {
                        0
                    };
                    (!up, load, if up { None } else { s.down_until.get() })
                })?;
            tried.insert(best);
            Some(best)
        })
    }

    pub fn connected(&self, i: usize) -> HealthChange {
        let s = &self.states[i];
        s.fails.set(0);
        s.active.set(s.active.get() + 1);
        if s.down_until.take().is_some() {
            HealthChange::Up
        } else {
            HealthChange::None
        }
    }

    /// An active check connected: the failure count starts over and a down backend is up.
    pub fn check_ok(&self, i: usize) -> HealthChange {
        let s = &self.states[i];
        s.fails.set(0);
        if s.down_until.take().is_some() {
            HealthChange::Up
        } else {
            HealthChange::None
        }
    }

    pub fn closed(&self, i: usize) {
        let s = &self.states[i];
        s.active.set(s.active.get().saturating_sub(1));
    }

    pub fn failed(&self, i: usize, now: Instant) -> HealthChange {
        let s = &self.states[i];
        let fails = s.fails.get() + 1;
        s.fails.set(fails);
        if fails >= self.policy.fail_after {
            let was_up = s.down_until.get().is_none();
            s.down_until.set(Some(now + self.policy.retry));
            if was_up {
                return HealthChange::Down;
            }
        }
        HealthChange::None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(n: usize, balance: Balance) -> Pool {
        Pool::new(
            n,
            PoolPolicy {
                balance,
                fail_after: 2,
                retry: Duration::from_secs(10),
                check: None,
            },
        )
    }

    #[test]
    fn round_robin_rotates_the_first_choice() {
        let p = pool(3, Balance::RoundRobin);
        let now = Instant::now();
        let firsts: Vec<usize> = (0..6).map(|_| p.order(now).next().unwrap()).collect();
        assert_eq!(firsts, [0, 1, 2, 0, 1, 2]);
        assert_eq!(p.order(now).collect::<Vec<_>>(), [0, 1, 2]);
        assert_eq!(p.order(now).collect::<Vec<_>>(), [1, 2, 0]);
    }

    #[test]
    fn least_connections_prefers_the_idle_backend() {
        let p = pool(2, Balance::LeastConnections);
        let now = Instant::now();
        p.connected(0);
        p.connected(0);
        p.connected(1);
        assert_eq!(p.order(now).collect::<Vec<_>>(), [1, 0]);
        p.closed(0);
        p.closed(0);
        assert_eq!(p.order(now).next(), Some(0));
    }

    #[test]
    fn down_backends_come_last_soonest_retry_first_and_each_is_offered_once() {
        let p = pool(4, Balance::LeastConnections);
        let t0 = Instant::now();
        for _ in 0..2 {
            p.failed(1, t0 + Duration::from_secs(5)); // retry at 15 s
            p.failed(3, t0); // retry at 10 s
        }
        p.connected(0);
        let order: Vec<usize> = p.order(t0).collect();
        assert_eq!(order, [2, 0, 3, 1]);
    }

    #[test]
    fn a_failing_backend_goes_down_then_is_retried_after_the_back_off() {
        let p = pool(2, Balance::RoundRobin);
        let t0 = Instant::now();
        assert_eq!(p.failed(0, t0), HealthChange::None);
        assert_eq!(p.failed(0, t0), HealthChange::Down);
        // Down: tried last, whatever the rotation says.
        for _ in 0..4 {
            assert_eq!(
                p.order(t0 + Duration::from_secs(1)).collect::<Vec<_>>(),
                [1, 0]
            );
        }
        // After the back-off it is back in the rotation, and a success clears it.
        let later = t0 + Duration::from_secs(11);
        let firsts: Vec<usize> = (0..2).map(|_| p.order(later).next().unwrap()).collect();
        assert!(firsts.contains(&0), "{firsts:?}");
        assert_eq!(p.connected(0), HealthChange::Up);
        assert_eq!(
            p.failed(0, later),
            HealthChange::None,
            "the count starts over"
        );
    }
}
