//! Rate limit of failed shared-secret proofs per peer ([`AuthLimiter`],
//! sans-IO: time is passed in).
//!
//! A peer that sends `failures` wrong proofs within `window` is blocked:
//! its handshakes are refused without a challenge for `backoff`, doubled
//! for each further block (up to `max_backoff`) while it keeps failing.
//! Peers are IPv4 addresses and IPv6 /64 prefixes (one host usually holds
//! a whole /64). The table holds at most `max_peers` entries.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How a node limits failed handshake proofs per peer address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AuthLimit {
    /// Wrong proofs from one peer within `window` that block it (default
    /// 5; 0 never blocks).
    pub failures: u32,
    /// The window the failures are counted in (default 60 s).
    pub window: Duration,
    /// How long the first block lasts (default 1 s); each further block of
    /// the same peer lasts twice as long as the one before.
    pub backoff: Duration,
    /// The longest block (default 5 min). A peer quiet for this long starts
    /// over at `backoff`.
    pub max_backoff: Duration,
    /// Most peers remembered (default 4096); when full, the entries that
    /// block nothing go first, then the least recently failed.
    pub max_peers: usize,
}

impl AuthLimit {
    /// The defaults: 5 failures per 60 s block for 1 s, 2 s, 4 s, ... up to
    /// 5 min; 4096 peers.
    pub const DEFAULT: AuthLimit = AuthLimit {
        failures: 5,
        window: Duration::from_secs(60),
        backoff: Duration::from_secs(1),
        max_backoff: Duration::from_secs(300),
        max_peers: 4096,
    };
}

impl Default for AuthLimit {
    fn default() -> Self {
        AuthLimit::DEFAULT
    }
}

/// A block that a failure just started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Block {
    /// How long the peer is refused.
    pub duration: Duration,
    /// The peer's block count (1 for the first).
    pub strike: u32,
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    failures: u32,
    window_start: Instant,
    last_failure: Instant,
    blocked_until: Option<Instant>,
    strikes: u32,
}

/// Failed proofs per peer, bounded in memory.
#[derive(Debug)]
pub(crate) struct AuthLimiter {
    limit: AuthLimit,
    peers: HashMap<IpAddr, Entry>,
}

/// The table key of `ip`: IPv4 as is (IPv4-mapped IPv6 too), IPv6 cut to
/// its /64 prefix.
fn key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let mut s = v6.segments();
                s[4..].fill(0);
                IpAddr::V6(s.into())
            }
        },
    }
}

impl AuthLimiter {
    pub(crate) fn new(limit: AuthLimit) -> Self {
        AuthLimiter {
            limit,
            peers: HashMap::new(),
        }
    }

    /// Peers remembered now.
    pub(crate) fn len(&self) -> usize {
        self.peers.len()
    }

    /// How much longer `ip` is blocked at `now`, `None` when it is not.
    pub(crate) fn blocked(&self, now: Instant, ip: IpAddr) -> Option<Duration> {
        let until = self.peers.get(&key(ip))?.blocked_until?;
        (until > now).then(|| until - now)
    }

    /// Records a wrong proof from `ip` at `now`; returns the block it
    /// starts, if it starts one.
    pub(crate) fn failure(&mut self, now: Instant, ip: IpAddr) -> Option<Block> {
        if self.limit.failures == 0 {
            return None;
        }
        let k = key(ip);
        if !self.peers.contains_key(&k) && self.peers.len() >= self.limit.max_peers.max(1) {
            self.make_room(now);
        }
        let lim = self.limit;
        let e = self.peers.entry(k).or_insert(Entry {
            failures: 0,
            window_start: now,
            last_failure: now,
            blocked_until: None,
            strikes: 0,
        });
        if now.saturating_duration_since(e.last_failure) >= lim.max_backoff {
            e.strikes = 0;
        }
        if now.saturating_duration_since(e.window_start) >= lim.window {
            e.failures = 0;
            e.window_start = now;
        }
        e.last_failure = now;
        e.failures += 1;
        if e.failures < lim.failures {
            return None;
        }
        e.strikes = e.strikes.saturating_add(1);
        let doubled = lim
            .backoff
            .saturating_mul(1u32 << (e.strikes - 1).min(20))
            .min(lim.max_backoff.max(lim.backoff));
        e.blocked_until = Some(now + doubled);
        e.failures = 0;
        e.window_start = now;
        Some(Block {
            duration: doubled,
            strike: e.strikes,
        })
    }

    /// Frees at least one slot: drops every entry that neither blocks nor
    /// counts anything any more, else the least recently failed one that
    /// blocks nothing, else the least recently failed one.
    fn make_room(&mut self, now: Instant) {
        let lim = self.limit;
        let blocking = |e: &Entry| e.blocked_until.is_some_and(|u| u > now);
        self.peers.retain(|_, e| {
            blocking(e)
                || now.saturating_duration_since(e.window_start) < lim.window
                || now.saturating_duration_since(e.last_failure) < lim.max_backoff
        });
        if self.peers.len() < lim.max_peers.max(1) {
            return;
        }
        let victim = self
            .peers
            .iter()
            .min_by_key(|(_, e)| (blocking(e), e.last_failure))
            .map(|(k, _)| *k);
        if let Some(k) = victim {
            self.peers.remove(&k);
        }
    }
}

/// The node's shared [`AuthLimiter`] with its counters.
#[derive(Debug)]
pub(crate) struct AuthGuard {
    limiter: Mutex<AuthLimiter>,
    /// Wrong proofs received.
    pub failures: AtomicU64,
    /// Handshakes refused because their peer was blocked.
    pub refused_blocked: AtomicU64,
}

impl AuthGuard {
    pub(crate) fn new(limit: AuthLimit) -> Self {
        AuthGuard {
            limiter: Mutex::new(AuthLimiter::new(limit)),
            failures: AtomicU64::new(0),
            refused_blocked: AtomicU64::new(0),
        }
    }

    /// The refusal for `ip` when it is blocked now (what the client reads).
    pub(crate) fn check(&self, node: &str, ip: IpAddr) -> Option<String> {
        let left = self.limiter.lock().ok()?.blocked(Instant::now(), ip)?;
        Some(format!(
            "node {node}: too many failed handshakes from {ip}; its handshakes are refused \
             for another {:.1} s",
            left.as_secs_f64()
        ))
    }

    /// Records a wrong proof from `ip`; the block it starts, if any.
    pub(crate) fn failed(&self, ip: IpAddr) -> Option<Block> {
        self.failures.fetch_add(1, Relaxed);
        self.limiter.lock().ok()?.failure(Instant::now(), ip)
    }

    /// Peers remembered now.
    pub(crate) fn peers(&self) -> usize {
        self.limiter.lock().map(|l| l.len()).unwrap_or(0)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn lim() -> AuthLimit {
        AuthLimit {
            failures: 3,
            window: Duration::from_secs(10),
            backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(4),
            max_peers: 8,
        }
    }

    #[test]
    fn blocks_after_n_failures_with_growing_backoff() {
        let t0 = Instant::now();
        let ip: IpAddr = IpAddr::from([10, 0, 0, 1]);
        let other = IpAddr::from([10, 0, 0, 2]);
        let mut l = AuthLimiter::new(lim());
        assert_eq!(l.failure(t0, ip), None);
        assert_eq!(l.failure(t0, ip), None);
        let b = l.failure(t0, ip);
        assert_eq!(b.map(|b| b.duration), Some(Duration::from_secs(1)));
        assert!(l.blocked(t0, ip).is_some());
        assert!(l.blocked(t0, other).is_none());
        let t1 = t0 + Duration::from_millis(1500);
        assert!(l.blocked(t1, ip).is_none());
        // The next blocks last 2 s, 4 s, then stay at the 4 s cap.
        for want in [2, 4, 4] {
            let mut b = None;
            for _ in 0..3 {
                b = l.failure(t1, ip);
            }
            assert_eq!(b.map(|b| b.duration), Some(Duration::from_secs(want)));
        }
        // Quiet for max_backoff: back to 1 s.
        let t2 = t1 + Duration::from_secs(20);
        let mut b = None;
        for _ in 0..3 {
            b = l.failure(t2, ip);
        }
        assert_eq!(
            b.map(|b| (b.duration, b.strike)),
            Some((Duration::from_secs(1), 1))
        );
        // Failures spread wider than the window never block.
        let slow = IpAddr::from([10, 0, 0, 9]);
        for i in 0..10u64 {
            assert_eq!(l.failure(t2 + Duration::from_secs(6 * i), slow), None);
        }
    }

    #[test]
    fn the_table_stays_bounded_and_keeps_blocked_peers() {
        let t0 = Instant::now();
        let mut l = AuthLimiter::new(lim());
        let bad = IpAddr::from([10, 9, 9, 9]);
        for _ in 0..3 {
            l.failure(t0, bad);
        }
        for i in 0..10_000u32 {
            l.failure(t0, IpAddr::from(i.to_be_bytes()));
            assert!(l.len() <= 8);
        }
        assert!(l.blocked(t0, bad).is_some());
    }

    #[test]
    fn ipv6_peers_are_counted_per_64_prefix() {
        let t0 = Instant::now();
        let mut l = AuthLimiter::new(lim());
        let a: IpAddr = "2001:db8:1:2::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:ffff::7".parse().unwrap();
        let c: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        l.failure(t0, a);
        l.failure(t0, b);
        assert!(l.failure(t0, a).is_some());
        assert!(l.blocked(t0, b).is_some());
        assert!(l.blocked(t0, c).is_none());
        let mapped = IpAddr::V6(std::net::Ipv4Addr::new(10, 0, 0, 1).to_ipv6_mapped());
        assert_eq!(key(mapped), IpAddr::from([10, 0, 0, 1]));
    }
}
