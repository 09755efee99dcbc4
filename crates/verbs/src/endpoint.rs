//! What two peers exchange to connect RC queue pairs, and the trait through
//! which the client asks a node to accept them.

use seqfeed_transport::{RegionInfo, TransportError};

/// One side of an RC queue pair connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QpEndpoint {
    /// Queue pair number.
    pub qp_num: u32,
    /// Initial packet sequence number (24 bits).
    pub psn: u32,
    /// GID (RoCE v2: IPv4-mapped IPv6 address of the netdev).
    pub gid: [u8; 16],
    /// LID (InfiniBand; 0 on RoCE).
    pub lid: u16,
    /// Active MTU as an `ibv_mtu` value (1 = 256 ... 5 = 4096); both sides use the smaller.
    pub mtu: u8,
    /// RDMA READ depth: on the client, how many reads each QP keeps
    /// outstanding (initiator depth); on the node, how many it accepts
    /// (responder resources). The client uses the smaller. 0 = unknown.
    pub rd_atom: u8,
}

impl QpEndpoint {
    /// Encoded size in bytes.
    pub const ENCODED_LEN: usize = 4 + 4 + 16 + 2 + 1 + 1;

    /// Little-endian encoding (for control protocols that carry raw bytes).
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.qp_num.to_le_bytes());
        out.extend_from_slice(&self.psn.to_le_bytes());
        out.extend_from_slice(&self.gid);
        out.extend_from_slice(&self.lid.to_le_bytes());
        out.push(self.mtu);
        out.push(self.rd_atom);
    }

    /// Decodes one endpoint from the start of `b`.
    pub fn decode(b: &[u8]) -> Option<QpEndpoint> {
        if b.len() < Self::ENCODED_LEN {
            return None;
        }
        let u32_at = |i: usize| u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
        let mut gid = [0u8; 16];
        gid.copy_from_slice(&b[8..24]);
        Some(QpEndpoint {
            qp_num: u32_at(0),
            psn: u32_at(4),
            gid,
            lid: u16::from_le_bytes([b[24], b[25]]),
            mtu: b[26],
            rd_atom: b[27],
        })
    }
}

/// The RDMA READ depth a QP is brought up with: the smaller of this side's
/// `local` limit and the peer's advertised `remote` depth (0: the peer did
/// not say, so `local` alone), clamped to 1..=255. The client uses it as
/// its initiator depth (`max_rd_atomic`), the node as its responder
/// resources (`max_dest_rd_atomic`), so both agree on the same number.
pub(crate) fn read_depth(local: u32, remote: u8) -> u8 {
    let mut d = local.min(255);
    if remote != 0 {
        d = d.min(u32::from(remote));
    }
    d.max(1) as u8
}

/// The node's answer to a connect request: its QP endpoints (one per client
/// QP, same order) and its region table with the addresses and rkeys valid
/// for the requested rail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Accepted {
    /// The node's endpoints.
    pub qps: Vec<QpEndpoint>,
    /// Region table with `addr`/`rkey` for this rail's device.
    pub regions: Vec<RegionInfo>,
}

/// How a [`VerbsTransport`](crate::VerbsTransport) reaches the node's control
/// service to connect queue pairs: the node helper's `VerbsConnect` frame over
/// its control client, or the small TCP exchange in [`standalone`](crate::standalone).
pub trait QpExchange: Send {
    /// Asks the node to create one QP per entry of `qps` on its device of
    /// rail `rail` (the node's rail index, after the client's rail map) for
    /// our device `device`, connect them to ours, and return its endpoints
    /// and region table. `replaces` names node QPs (from earlier answers)
    /// that the new ones replace: the node destroys them first.
    fn connect(
        &mut self,
        rail: u32,
        device: &str,
        qps: &[QpEndpoint],
        replaces: &[u32],
    ) -> Result<Accepted, TransportError>;

    /// Called when reads make no progress for a while: an error when the
    /// node is known to be gone (its control connection closed or reset), so
    /// the batch fails fast as a node failure. The default knows nothing.
    fn check_alive(&mut self) -> Result<(), TransportError> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn read_depth_is_the_smaller_side() {
        assert_eq!(read_depth(128, 16), 16);
        assert_eq!(read_depth(16, 128), 16);
        assert_eq!(read_depth(16, 0), 16); // peer unknown: local limit
        assert_eq!(read_depth(1000, 0), 255);
        assert_eq!(read_depth(1000, 200), 200);
        assert_eq!(read_depth(0, 0), 1);
        assert_eq!(read_depth(0, 9), 1);
    }

    #[test]
    fn endpoint_roundtrip() {
        let e = QpEndpoint {
            qp_num: 0x11,
            psn: 0xabcdef,
            gid: [7; 16],
            lid: 3,
            mtu: 5,
            rd_atom: 128,
        };
        let mut v = Vec::new();
        e.encode(&mut v);
        assert_eq!(v.len(), QpEndpoint::ENCODED_LEN);
        assert_eq!(QpEndpoint::decode(&v), Some(e));
        assert_eq!(QpEndpoint::decode(&v[..v.len() - 1]), None);
    }
}
