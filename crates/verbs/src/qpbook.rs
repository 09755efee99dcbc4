//! The node's book of accepted queue pairs (device-free, generic over what
//! a QP is, so it is unit-tested without RDMA): QPs held per control
//! connection by the node's QP number, a quota per connection, a node-wide
//! cap that refuses new QPs rather than evicting anyone's, and replacement
//! (a rebuilt client QP names the node QP it replaces, destroyed at once).

use std::collections::{BTreeMap, HashMap};

/// Limits on the queue pairs a node holds for its clients.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QpLimits {
    /// Most QPs one control connection may hold at once (its quota). A
    /// client holds one per lane (rails x QPs per rail); rebuilt lanes
    /// replace theirs, so a well-behaved client never grows.
    pub per_connection: usize,
    /// Most QPs the node holds for all connections together. A request
    /// beyond it is refused; no QP of another connection is evicted.
    pub node: usize,
}

impl QpLimits {
    /// 128 QPs per connection (twice the most one request may ask for,
    /// [`MAX_QPS_PER_CONNECT`](crate::server::MAX_QPS_PER_CONNECT)), 16,384
    /// per node.
    pub const DEFAULT: QpLimits = QpLimits {
        per_connection: 128,
        node: 16384,
    };
}

impl Default for QpLimits {
    fn default() -> Self {
        QpLimits::DEFAULT
    }
}

#[derive(Debug)]
struct Conn<T> {
    /// Node QP number -> the QP.
    qps: BTreeMap<u32, T>,
    /// QPs being created for a request that passed the checks.
    reserved: usize,
}

/// Accepted QPs (`T`) by control connection and node QP number.
#[derive(Debug)]
pub struct QpBook<T> {
    /// QPs held plus reserved, over every connection.
    total: usize,
    conns: HashMap<u64, Conn<T>>,
}

impl<T> Default for QpBook<T> {
    fn default() -> Self {
        QpBook {
            total: 0,
            conns: HashMap::new(),
        }
    }
}

impl<T> QpBook<T> {
    /// An empty book.
    pub fn new() -> Self {
        QpBook::default()
    }

    /// QPs held (and reserved) over every connection.
    pub fn total(&self) -> usize {
        self.total
    }

    /// QPs connection `conn` holds (and has reserved).
    pub fn held(&self, conn: u64) -> usize {
        self.conns
            .get(&conn)
            .map(|c| c.qps.len() + c.reserved)
            .unwrap_or(0)
    }

    /// Starts a request of connection `conn` for `n` QPs replacing the node
    /// QPs numbered in `replaces`: takes the replaced QPs out (only this
    /// connection's; unknown numbers are ignored) and returns them for the
    /// caller to destroy outside any lock, whatever the outcome; then
    /// reserves room for `n` QPs, or refuses with a message naming the
    /// quota or the node-wide cap. A reservation ends with
    /// [`QpBook::commit`] or [`QpBook::cancel`].
    pub fn begin(
        &mut self,
        conn: u64,
        replaces: &[u32],
        n: usize,
        limits: &QpLimits,
    ) -> (Vec<T>, Result<(), String>) {
        let c = self.conns.entry(conn).or_insert_with(|| Conn {
            qps: BTreeMap::new(),
            reserved: 0,
        });
        let mut gone = Vec::new();
        for q in replaces {
            if let Some(qp) = c.qps.remove(q) {
                gone.push(qp);
            }
        }
        self.total -= gone.len();
        let replaced = gone.len();
        let held = c.qps.len() + c.reserved;
        if held + n > limits.per_connection {
            return (
                gone,
                Err(format!(
                    "connection holds {held} QPs and asks for {n} more: over its quota of {} QPs per \
                     connection (replaced {} of the {} QPs named as replaced)",
                    limits.per_connection,
                    replaced,
                    replaces.len()
                )),
            );
        }
        if self.total + n > limits.node {
            return (
                gone,
                Err(format!(
                    "node holds {} QPs for all connections; {n} more would pass its cap of {} \
                     (no other connection's QPs are evicted)",
                    self.total, limits.node
                )),
            );
        }
        c.reserved += n;
        self.total += n;
        (gone, Ok(()))
    }

    /// Ends a reservation of `reserved` QPs of `conn` with the QPs made
    /// (node QP number, QP); fewer than reserved frees the rest.
    pub fn commit(&mut self, conn: u64, reserved: usize, qps: Vec<(u32, T)>) {
        let c = self.conns.entry(conn).or_insert_with(|| Conn {
            qps: BTreeMap::new(),
            reserved: 0,
        });
        let r = reserved.min(c.reserved);
        c.reserved -= r;
        self.total -= r;
        for (num, qp) in qps {
            if c.qps.insert(num, qp).is_none() {
                self.total += 1;
            }
        }
    }

    /// Ends a reservation of `reserved` QPs of `conn` that made none.
    pub fn cancel(&mut self, conn: u64, reserved: usize) {
        self.commit(conn, reserved, Vec::new());
    }

    /// Takes every QP of connection `conn` out (for the caller to destroy
    /// outside any lock).
    pub fn remove_conn(&mut self, conn: u64) -> Vec<T> {
        match self.conns.remove(&conn) {
            Some(c) => {
                self.total -= c.qps.len() + c.reserved;
                c.qps.into_values().collect()
            }
            None => Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
    use std::sync::Arc;

    use super::*;

    /// Counts its drops (a destroyed QP).
    struct Qp(Arc<AtomicUsize>);

    impl Drop for Qp {
        fn drop(&mut self) {
            self.0.fetch_add(1, SeqCst);
        }
    }

    fn make(dropped: &Arc<AtomicUsize>, nums: std::ops::Range<u32>) -> Vec<(u32, Qp)> {
        nums.map(|n| (n, Qp(Arc::clone(dropped)))).collect()
    }

    const LIMITS: QpLimits = QpLimits {
        per_connection: 4,
        node: 10,
    };

    #[test]
    fn replacement_destroys_the_old_qp_at_once() {
        let dropped = Arc::new(AtomicUsize::new(0));
        let mut b = QpBook::new();
        let (gone, ok) = b.begin(1, &[], 2, &LIMITS);
        assert!(gone.is_empty() && ok.is_ok());
        b.commit(1, 2, make(&dropped, 100..102));
        // 1,000 rebuilds of QP 100's lane: each names the QP it replaces.
        let mut current = 100;
        for i in 0..1000u32 {
            let (gone, ok) = b.begin(1, &[current], 1, &LIMITS);
            assert_eq!(gone.len(), 1, "rebuild {i}");
            ok.unwrap();
            drop(gone);
            current = 1000 + i;
            b.commit(1, 1, make(&dropped, current..current + 1));
            assert_eq!((b.held(1), b.total()), (2, 2));
        }
        assert_eq!(dropped.load(SeqCst), 1000);
        // Another connection cannot name (and destroy) connection 1's QPs.
        let (gone, ok) = b.begin(2, &[101, current], 1, &LIMITS);
        assert!(gone.is_empty());
        ok.unwrap();
        b.cancel(2, 1);
        assert_eq!((b.held(1), b.held(2), b.total()), (2, 0, 2));
        assert_eq!(b.remove_conn(1).len(), 2);
        assert_eq!(b.total(), 0);
    }

    #[test]
    fn quota_and_cap_refuse_and_never_evict() {
        let dropped = Arc::new(AtomicUsize::new(0));
        let mut b = QpBook::new();
        // Connection 1 fills its quota of 4; a fifth is refused by name.
        b.begin(1, &[], 4, &LIMITS).1.unwrap();
        b.commit(1, 4, make(&dropped, 0..4));
        let (gone, err) = b.begin(1, &[], 1, &LIMITS);
        assert!(gone.is_empty());
        let err = err.unwrap_err();
        assert!(
            err.contains("holds 4 QPs") && err.contains("quota of 4 QPs per connection"),
            "{err}"
        );
        // Replacing one within the quota is fine.
        let (gone, ok) = b.begin(1, &[3], 1, &LIMITS);
        assert_eq!(gone.len(), 1);
        drop(gone);
        ok.unwrap();
        b.commit(1, 1, make(&dropped, 4..5));
        // Connections 2 and 3 take 4 each: 12 > 10 is refused for 3, and
        // nobody's QPs are evicted.
        b.begin(2, &[], 4, &LIMITS).1.unwrap();
        b.commit(2, 4, make(&dropped, 10..14));
        let (_, err) = b.begin(3, &[], 4, &LIMITS);
        let err = err.unwrap_err();
        assert!(
            err.contains("cap of 10") && err.contains("holds 8 QPs"),
            "{err}"
        );
        assert_eq!((b.held(1), b.held(2), b.held(3)), (4, 4, 0));
        assert_eq!(
            dropped.load(SeqCst),
            1,
            "only the replaced QP was destroyed"
        );
        // Two fit.
        b.begin(3, &[], 2, &LIMITS).1.unwrap();
        assert_eq!(b.total(), 10);
        // A failed creation gives its reservation back.
        b.cancel(3, 2);
        assert_eq!((b.held(3), b.total()), (0, 8));
        // Closing a connection frees its QPs and its room.
        drop(b.remove_conn(1));
        assert_eq!(dropped.load(SeqCst), 5);
        assert!(b.begin(3, &[], 4, &LIMITS).1.is_ok());
        assert_eq!(b.remove_conn(7).len(), 0);
    }
}
