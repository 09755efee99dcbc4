//! What the node writes to its log about its peers: peer-provided strings
//! escaped ([`safe`]), and per-connection warnings rate-limited and
//! aggregated ([`WarnLimiter`], sans-IO: time is passed in).

use std::collections::HashSet;
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// Longest peer-provided string written to the log, in characters.
const MAX_LOGGED_CHARS: usize = 256;
/// Most distinct peers remembered per window (the count saturates there).
const MAX_PEERS: usize = 4096;

/// A peer-provided string made safe for a log line: control characters
/// (newlines, ESC of ANSI sequences, ...) are escaped as `\n`, `\u{1b}`, so
/// a client cannot forge or recolour log lines; over-long strings are cut
/// with a `...` marker.
pub(crate) fn safe(s: &str) -> String {
    let mut out = String::with_capacity(s.len().min(MAX_LOGGED_CHARS + 8));
    for (i, c) in s.chars().enumerate() {
        if i == MAX_LOGGED_CHARS {
            out.push_str("...");
            break;
        }
        push_escaped(&mut out, c);
    }
    out
}

/// Like [`safe`], but bounds the escaped result: at most `max` characters
/// after escaping (plus a `...` marker when cut), so the result is at most
/// `4 * max + 3` bytes whatever the input.
pub(crate) fn safe_bounded(s: &str, max: usize) -> String {
    let mut out = String::new();
    let mut chars = 0;
    let mut one = String::new();
    for c in s.chars() {
        one.clear();
        push_escaped(&mut one, c);
        let n = one.chars().count();
        if chars + n > max {
            out.push_str("...");
            break;
        }
        chars += n;
        out.push_str(&one);
    }
    out
}

fn push_escaped(out: &mut String, c: char) {
    if c.is_control() || matches!(c, '\u{2028}' | '\u{2029}' | '\u{85}') {
        out.extend(c.escape_default());
    } else {
        out.push(c);
    }
}

/// How many per-connection warnings of one kind are logged per interval;
/// the rest are counted and summarised once per interval.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WarnLimit {
    /// WARN lines of one kind logged per interval (0 logs none, only summaries).
    pub burst: u32,
    /// The interval.
    pub interval: Duration,
}

impl WarnLimit {
    /// The default: 10 warnings of each kind per 10 s.
    pub const DEFAULT: WarnLimit = WarnLimit {
        burst: 10,
        interval: Duration::from_secs(10),
    };
}

impl Default for WarnLimit {
    fn default() -> Self {
        WarnLimit::DEFAULT
    }
}

/// Kinds of per-connection warnings, limited separately.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum WarnKind {
    /// A handshake refused (wrong secret, fingerprint, version).
    Refused,
    /// A connection closed on a protocol or I/O error.
    ConnectionError,
    /// `accept` failed (EMFILE and friends).
    Accept,
    /// A peer blocked for failing too many shared-secret proofs.
    AuthBlocked,
}

impl WarnKind {
    const ALL: [WarnKind; 4] = [
        WarnKind::Refused,
        WarnKind::ConnectionError,
        WarnKind::Accept,
        WarnKind::AuthBlocked,
    ];

    fn index(self) -> usize {
        self as usize
    }

    pub(crate) fn describe(self) -> &'static str {
        match self {
            WarnKind::Refused => "refused handshakes",
            WarnKind::ConnectionError => "connection errors",
            WarnKind::Accept => "accept failures",
            WarnKind::AuthBlocked => "peers blocked for failed handshake proofs",
        }
    }
}

/// Warnings left out of the log in one window.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Suppressed {
    pub kind: WarnKind,
    pub count: u64,
    pub peers: usize,
    pub over: Duration,
}

impl std::fmt::Display for Suppressed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "suppressed {} similar warnings ({}) from {} peer{} in the last {:.0} s",
            self.count,
            self.kind.describe(),
            self.peers,
            if self.peers == 1 { "" } else { "s" },
            self.over.as_secs_f64().max(1.0)
        )
    }
}

#[derive(Default)]
struct Window {
    start: Option<Instant>,
    logged: u32,
    suppressed: u64,
    peers: HashSet<IpAddr>,
}

impl Window {
    /// Ends the window, returning what it suppressed (if anything).
    fn close(&mut self, kind: WarnKind, now: Instant) -> Option<Suppressed> {
        let start = self.start.take()?;
        let s = (self.suppressed > 0).then(|| Suppressed {
            kind,
            count: self.suppressed,
            peers: self.peers.len(),
            over: now.saturating_duration_since(start),
        });
        self.logged = 0;
        self.suppressed = 0;
        self.peers.clear();
        s
    }
}

/// Rate limiter of per-connection warnings: at most `burst` per kind per
/// interval are logged, the rest counted with their peers and reported in
/// one summary line when the interval ends.
pub(crate) struct WarnLimiter {
    limit: WarnLimit,
    windows: [Window; 4],
}

impl WarnLimiter {
    pub(crate) fn new(limit: WarnLimit) -> Self {
        WarnLimiter {
            limit,
            windows: Default::default(),
        }
    }

    /// Whether a warning of `kind` from `peer` at `now` is logged (`true`)
    /// or suppressed; also the summary of a window that just ended.
    pub(crate) fn admit(
        &mut self,
        now: Instant,
        kind: WarnKind,
        peer: IpAddr,
    ) -> (bool, Option<Suppressed>) {
        let interval = self.limit.interval;
        // Accept failures come in storms (EMFILE on every retry): one line
        // per interval is enough, the rest goes into the summary.
        let burst = match kind {
            WarnKind::Accept => self.limit.burst.min(1),
            _ => self.limit.burst,
        };
        let w = &mut self.windows[kind.index()];
        let summary = match w.start {
            Some(start) if now.saturating_duration_since(start) >= interval => w.close(kind, now),
            _ => None,
        };
        w.start.get_or_insert(now);
        if w.logged < burst {
            w.logged += 1;
            return (true, summary);
        }
        w.suppressed += 1;
        if w.peers.len() < MAX_PEERS {
            w.peers.insert(peer);
        }
        (false, summary)
    }

    /// Summaries of the windows that ended by `now` (all of them when
    /// `all`, e.g. at shutdown).
    pub(crate) fn flush(&mut self, now: Instant, all: bool) -> Vec<Suppressed> {
        let interval = self.limit.interval;
        let mut out = Vec::new();
        for kind in WarnKind::ALL {
            let w = &mut self.windows[kind.index()];
            let ended = w
                .start
                .is_some_and(|s| all || now.saturating_duration_since(s) >= interval);
            if ended {
                out.extend(w.close(kind, now));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_are_escaped() {
        assert_eq!(safe("rank3@host"), "rank3@host");
        let s = safe("evil\nFAKE WARN\x1b[31mred\r\u{7f}");
        assert_eq!(s, "evil\\nFAKE WARN\\u{1b}[31mred\\r\\u{7f}");
        assert!(!s.chars().any(char::is_control));
        let long = "x".repeat(1000);
        assert_eq!(safe(&long).len(), MAX_LOGGED_CHARS + 3);
    }

    #[test]
    fn bounded_escaping_bounds_the_escaped_length() {
        assert_eq!(safe_bounded("rank3", 8), "rank3");
        assert_eq!(safe_bounded("a\nb", 8), "a\\nb");
        let evil: String = "\u{1b}".repeat(1000);
        let s = safe_bounded(&evil, 128);
        assert!(s.chars().count() <= 128 + 3, "{s}");
        assert!(!s.chars().any(char::is_control));
        assert!(safe_bounded(&"é".repeat(4096), 128).len() <= 4 * 128 + 3);
    }

    #[test]
    fn accept_failures_log_once_per_interval() {
        let t0 = Instant::now();
        let mut l = WarnLimiter::new(WarnLimit::DEFAULT);
        let any = IpAddr::from([0, 0, 0, 0]);
        let logged = (0..1000)
            .filter(|_| l.admit(t0, WarnKind::Accept, any).0)
            .count();
        assert_eq!(logged, 1);
        let (log, summary) = l.admit(t0 + Duration::from_secs(11), WarnKind::Accept, any);
        assert!(log);
        assert_eq!(summary.unwrap().count, 999);
    }

    #[test]
    fn warnings_are_limited_per_kind_and_summarised() {
        let t0 = Instant::now();
        let limit = WarnLimit {
            burst: 3,
            interval: Duration::from_secs(10),
        };
        let mut l = WarnLimiter::new(limit);
        let ip = |i: u8| IpAddr::from([10, 0, 0, i]);
        let logged: Vec<bool> = (0..100)
            .map(|i| {
                let (log, summary) = l.admit(t0, WarnKind::ConnectionError, ip(i % 7));
                assert_eq!(summary, None);
                log
            })
            .collect();
        assert_eq!(logged.iter().filter(|&&b| b).count(), 3);
        // Another kind has its own budget.
        assert!(l.admit(t0, WarnKind::Refused, ip(1)).0);
        assert!(l.flush(t0 + Duration::from_secs(5), false).is_empty());
        // The next warning after the interval logs again and carries the summary.
        let (log, summary) = l.admit(
            t0 + Duration::from_secs(11),
            WarnKind::ConnectionError,
            ip(1),
        );
        assert!(log);
        let s = summary.unwrap();
        assert_eq!((s.count, s.peers), (97, 7));
        assert_eq!(
            s.to_string(),
            "suppressed 97 similar warnings (connection errors) from 7 peers in the last 11 s"
        );
        // Quiet windows end without a summary; a flush reports what is pending.
        for _ in 0..5 {
            l.admit(
                t0 + Duration::from_secs(12),
                WarnKind::ConnectionError,
                ip(2),
            );
        }
        let out = l.flush(t0 + Duration::from_secs(30), false);
        assert_eq!(out.len(), 1, "{out:?}");
        assert_eq!((out[0].count, out[0].peers), (3, 1));
        assert!(l.flush(t0 + Duration::from_secs(60), true).is_empty());
    }
}
