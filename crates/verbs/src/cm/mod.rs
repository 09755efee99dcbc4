//! rdma_cm connection set-up: an opt-in alternative to exchanging QP
//! numbers and GIDs through the node's control service
//! ([`ConnectMode::Cm`], `SEQFEED_VERBS_CONNECT=cm`).
//!
//! With rdma_cm, the client resolves the node's IP address and a route to it
//! (`rdma_resolve_addr`, `rdma_resolve_route`): the kernel picks the source
//! GID and the L2 path from its route and neighbour tables (RoCE v2 across
//! routers, VLANs) or asks the subnet administrator for the path (InfiniBand),
//! and the IB CM handshake (REQ/REP/RTU) carries QP numbers, PSNs, MTU and
//! read depths. Everything else stays on the authenticated control
//! connection: the client still sends `VerbsConnect` there, and the node
//! answers with its region table and rkeys, applies the connection's QP
//! quota, creates the QPs (in RESET) and destroys them when the control
//! connection closes or a `replaces` names them. Only the wire connection of
//! each QP is made by rdma_cm:
//!
//! 1. Client -> node, `VerbsConnect`: one endpoint per QP marked as a cm
//!    request (`mtu` 0, no `ibv_mtu`; see [`request_endpoint`]).
//! 2. Node -> client, `VerbsAccept`: per QP a [`CmGrant`]: the node's QP
//!    number, a random single-use token, the address and port its rdma_cm
//!    listener answers on for that rail, and its read depth.
//! 3. The client connects its QP with rdma_cm to that address, with the
//!    token and the node's QP number as private data ([`Hello`]). The
//!    node's listener finds the granted QP by them (a wrong or spent token,
//!    or a request arriving on another device, is rejected with a reason),
//!    brings it to RTS with the attributes rdma_cm computed, and accepts.
//!
//! Both QPs live on this process's own protection domain (one per device,
//! `device.rs`): rdma_cm never creates them, it only computes their
//! attributes (`rdma_init_qp_attr`), which are applied to our QPs. The
//! access flags stay ours (remote read on the node, none on the client).
//!
//! Errors name the node address, the step (`resolve addr`, `resolve route`,
//! `connect`, `rejected`) and the reason; every wait is bounded.

use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use rdma_mummy_sys as sys;

use crate::device::DeviceInfo;
use crate::endpoint::QpEndpoint;
use crate::error::VerbsError;
use crate::raw::Qp;

mod connect;
mod ffi;
mod listen;

pub use connect::probe_connect;
pub(crate) use connect::{connect_qp, src_for, CmTarget};
pub use listen::CmListener;
pub(crate) use listen::CmSlot;

/// Environment variable choosing how a client brings up its QPs:
/// `control` (default) or `cm`.
pub const CONNECT_ENV: &str = "SEQFEED_VERBS_CONNECT";

/// How a client's queue pairs are connected to the node's.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum ConnectMode {
    /// QP numbers, PSNs and GIDs exchanged in `VerbsConnect` over the
    /// node's control service; GID and port from discovery or
    /// `SEQFEED_GID_INDEX` (the default; works everywhere, rxe included).
    #[default]
    Control,
    /// rdma_cm (librdmacm): address and route resolution by the kernel (or
    /// the SA on InfiniBand), CM handshake; the node must listen
    /// (`seqfeed serve --verbs-cm-port`).
    Cm,
}

impl ConnectMode {
    /// Parses `control` or `cm` (case-insensitive, trimmed).
    pub fn parse(s: &str) -> Result<ConnectMode, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "control" | "" => Ok(ConnectMode::Control),
            "cm" | "rdma_cm" | "rdmacm" => Ok(ConnectMode::Cm),
            other => Err(format!("{CONNECT_ENV}={other:?}: expected control or cm")),
        }
    }

    /// From [`CONNECT_ENV`] (unset: [`ConnectMode::Control`]).
    pub fn from_env() -> Result<ConnectMode, String> {
        match std::env::var(CONNECT_ENV) {
            Ok(v) => ConnectMode::parse(&v),
            Err(_) => Ok(ConnectMode::Control),
        }
    }
}

/// `mtu` value marking a cm endpoint: 0 is no `ibv_mtu`, and a node that
/// does not know the cm set-up refuses it as a bad endpoint.
pub const CM_MTU: u8 = 0;

/// The endpoint a client sends in `VerbsConnect` to ask for a QP connected
/// with rdma_cm: its QP number (for logs), its read depth, `mtu` [`CM_MTU`].
pub fn request_endpoint(qp_num: u32, rd_atom: u8) -> QpEndpoint {
    QpEndpoint {
        qp_num,
        psn: 0,
        gid: [0; 16],
        lid: 0,
        mtu: CM_MTU,
        rd_atom,
    }
}

/// Whether an endpoint is a cm request or grant.
pub fn is_cm(e: &QpEndpoint) -> bool {
    e.mtu == CM_MTU
}

/// The node's answer for one cm QP, carried in a `VerbsAccept` endpoint:
/// `qp_num` = the node's QP, `psn` = the token, `gid` = the address (zero:
/// none, IPv4 as IPv4-mapped), `lid` = the listener's port, `mtu` =
/// [`CM_MTU`], `rd_atom` = the node's read depth.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CmGrant {
    /// The node's QP (RESET until the cm connect; what `replaces` names).
    pub node_qpn: u32,
    /// Random single-use token the connect request must carry.
    pub token: u32,
    /// Where the node's listener answers for this rail; `None`: the node
    /// does not know (the client uses the control address's host).
    pub addr: Option<IpAddr>,
    /// The listener's port.
    pub port: u16,
    /// The node's responder depth cap.
    pub rd_atom: u8,
}

impl CmGrant {
    /// As a `VerbsAccept` endpoint.
    pub fn to_endpoint(&self) -> QpEndpoint {
        let gid = match self.addr {
            None => [0; 16],
            Some(IpAddr::V4(a)) => a.to_ipv6_mapped().octets(),
            Some(IpAddr::V6(a)) => a.octets(),
        };
        QpEndpoint {
            qp_num: self.node_qpn,
            psn: self.token,
            gid,
            lid: self.port,
            mtu: CM_MTU,
            rd_atom: self.rd_atom,
        }
    }

    /// From a `VerbsAccept` endpoint; `None` when it is not a cm grant
    /// (another `mtu`, or no port).
    pub fn from_endpoint(e: &QpEndpoint) -> Option<CmGrant> {
        if e.mtu != CM_MTU || e.lid == 0 {
            return None;
        }
        let v6 = Ipv6Addr::from(e.gid);
        let addr = if e.gid == [0; 16] {
            None
        } else if let Some(v4) = v6.to_ipv4_mapped() {
            Some(IpAddr::V4(v4))
        } else {
            Some(IpAddr::V6(v6))
        };
        Some(CmGrant {
            node_qpn: e.qp_num,
            token: e.psn,
            addr,
            port: e.lid,
            rd_atom: e.rd_atom,
        })
    }
}

/// Private data of a cm connect request: which granted QP it is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hello {
    /// The grant's token.
    pub token: u32,
    /// The granted node QP.
    pub node_qpn: u32,
}

const HELLO_MAGIC: [u8; 4] = *b"SQF1";

impl Hello {
    /// Encoded size.
    pub const LEN: usize = 12;

    /// `SQF1`, token and QP number (little-endian).
    pub fn encode(&self) -> [u8; Hello::LEN] {
        let mut b = [0u8; Hello::LEN];
        b[..4].copy_from_slice(&HELLO_MAGIC);
        b[4..8].copy_from_slice(&self.token.to_le_bytes());
        b[8..12].copy_from_slice(&self.node_qpn.to_le_bytes());
        b
    }

    /// Decodes private data (which the transport may pad with zeros).
    pub fn decode(b: &[u8]) -> Result<Hello, String> {
        if b.len() < Hello::LEN {
            return Err(format!(
                "private data of {} bytes, a seqfeed request has {}",
                b.len(),
                Hello::LEN
            ));
        }
        if b[..4] != HELLO_MAGIC {
            return Err("private data is not a seqfeed connect request".into());
        }
        let u = |i: usize| u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
        Ok(Hello {
            token: u(4),
            node_qpn: u(8),
        })
    }
}

/// The address a rail's device answers on, from its GID: the IPv4 address
/// of an IPv4-mapped GID, or a RoCE v2 IPv6 GID that is not link-local.
/// `None` on InfiniBand (GIDs are not IP addresses there) and without GID.
pub fn rail_addr(info: &DeviceInfo) -> Option<IpAddr> {
    if info.gid == [0; 16] || info.link_layer != "Ethernet" {
        return None;
    }
    let g = Ipv6Addr::from(info.gid);
    if let Some(v4) = g.to_ipv4_mapped() {
        return Some(IpAddr::V4(v4));
    }
    let link_local = g.segments()[0] & 0xffc0 == 0xfe80;
    (info.gid_type == "RoCEv2" && !link_local).then_some(IpAddr::V6(g))
}

/// Text for a REJECTED event: the node's reason when it gave one, else the
/// CM reject code (`8`: nothing listens on that port).
fn reject_reason(status: i32, private: &[u8]) -> String {
    let text: String = String::from_utf8_lossy(private)
        .trim_end_matches('\0')
        .to_string();
    if let Some(t) = text.strip_prefix("seqfeed: ") {
        return format!("node refused: {t}");
    }
    match status {
        8 => "reject code 8 (invalid service ID: nothing listens on that port)".into(),
        28 => "reject code 28 (consumer defined: the node refused)".into(),
        s => format!("reject code {s}"),
    }
}

fn errno_text(status: i32) -> String {
    if status < 0 {
        format!("{}", std::io::Error::from_raw_os_error(-status))
    } else {
        format!("status {status}")
    }
}

/// The name of a QP state, for errors.
fn qps(state: u32) -> &'static str {
    match state {
        sys::ibv_qp_state::IBV_QPS_INIT => "INIT",
        sys::ibv_qp_state::IBV_QPS_RTR => "RTR",
        _ => "RTS",
    }
}

/// The fabric settings, when given (non-zero), override the path's traffic
/// class and service level that rdma_cm chose.
fn override_path(a: &mut sys::ibv_qp_attr, tc: u8, sl: u8) {
    if tc != 0 {
        a.ah_attr.grh.traffic_class = tc;
    }
    if sl != 0 {
        a.ah_attr.sl = sl;
    }
}

/// The fabric settings' ACK timeout and retry count replace what
/// `rdma_init_qp_attr` chose for RTS (rdma_cm derives the timeout from the
/// path's packet lifetime and the retry count from the connect parameters),
/// so a QP behaves the same whichever way it was connected.
fn override_rts(a: &mut sys::ibv_qp_attr, m: &mut i32, timeout: u8, retry_count: u8) {
    use sys::ibv_qp_attr_mask as M;
    a.timeout = timeout;
    a.retry_cnt = retry_count;
    *m |= (M::IBV_QP_TIMEOUT.0 | M::IBV_QP_RETRY_CNT.0) as i32;
}

/// Moves `qp` to `state` with rdma_cm's attributes for `id`, adjusted by `tweak`.
fn apply(
    qp: &mut Qp,
    id: &ffi::Id,
    state: u32,
    tweak: impl FnOnce(&mut sys::ibv_qp_attr, &mut i32),
) -> Result<(), String> {
    let (mut a, mut m) = id
        .qp_attr(state)
        .map_err(|e| format!("rdma_init_qp_attr({}): {e}", qps(state)))?;
    tweak(&mut a, &mut m);
    qp.modify_raw(&mut a, m, qps(state))
        .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// rdma_cm's RTS attributes get the fabric settings' timeout and retry
    /// count, with their mask bits, and keep everything else.
    #[test]
    fn rts_override_sets_timeout_and_retry() {
        use sys::ibv_qp_attr_mask as M;
        let mut a = crate::raw::zero_attr();
        a.timeout = 14;
        a.retry_cnt = 1;
        a.max_rd_atomic = 9;
        let mut m = M::IBV_QP_STATE.0 as i32;
        override_rts(&mut a, &mut m, 22, 6);
        assert_eq!((a.timeout, a.retry_cnt, a.max_rd_atomic), (22, 6, 9));
        assert_ne!(m & M::IBV_QP_TIMEOUT.0 as i32, 0);
        assert_ne!(m & M::IBV_QP_RETRY_CNT.0 as i32, 0);
        assert_ne!(m & M::IBV_QP_STATE.0 as i32, 0);
    }

    #[test]
    fn modes_parse() {
        assert_eq!(ConnectMode::parse("cm").unwrap(), ConnectMode::Cm);
        assert_eq!(ConnectMode::parse(" CM ").unwrap(), ConnectMode::Cm);
        assert_eq!(ConnectMode::parse("control").unwrap(), ConnectMode::Control);
        assert_eq!(ConnectMode::parse("").unwrap(), ConnectMode::Control);
        let e = ConnectMode::parse("ucx").unwrap_err();
        assert!(e.contains(CONNECT_ENV) && e.contains("ucx"), "{e}");
        assert_eq!(ConnectMode::default(), ConnectMode::Control);
    }

    #[test]
    fn grants_roundtrip_through_endpoints() {
        for addr in [
            None,
            Some("192.0.2.1".parse().unwrap()),
            Some("2001:db8::7".parse().unwrap()),
        ] {
            let g = CmGrant {
                node_qpn: 0x1234,
                token: 0xdead_beef,
                addr,
                port: 7472,
                rd_atom: 16,
            };
            let e = g.to_endpoint();
            assert!(is_cm(&e));
            assert_eq!(CmGrant::from_endpoint(&e), Some(g));
            // Through the endpoint's byte encoding too (what the wire carries).
            let mut b = Vec::new();
            e.encode(&mut b);
            assert_eq!(
                CmGrant::from_endpoint(&QpEndpoint::decode(&b).unwrap()),
                Some(g)
            );
        }
        // A control-service endpoint is no grant, nor is a grant without port.
        let mut e = request_endpoint(5, 8);
        assert!(is_cm(&e));
        assert_eq!(CmGrant::from_endpoint(&e), None);
        e.lid = 1;
        e.mtu = 5;
        assert!(!is_cm(&e));
        assert_eq!(CmGrant::from_endpoint(&e), None);
    }

    #[test]
    fn hello_roundtrip_and_garbage() {
        let h = Hello {
            token: 7,
            node_qpn: 0xabcdef,
        };
        let mut padded = h.encode().to_vec();
        padded.resize(56, 0); // the CM pads private data
        assert_eq!(Hello::decode(&padded), Ok(h));
        assert!(Hello::decode(&padded[..11])
            .unwrap_err()
            .contains("11 bytes"));
        let mut bad = padded.clone();
        bad[0] = b'X';
        assert!(Hello::decode(&bad).unwrap_err().contains("not a seqfeed"));
        assert!(Hello::decode(&[]).is_err());
    }

    #[test]
    fn reject_reasons_are_readable() {
        let mut p = b"seqfeed: no QP 5 granted".to_vec();
        p.resize(148, 0);
        assert_eq!(reject_reason(28, &p), "node refused: no QP 5 granted");
        assert!(reject_reason(8, &[0; 148]).contains("nothing listens"));
        assert!(reject_reason(3, &[]).contains("code 3"));
        assert!(errno_text(-110).to_lowercase().contains("timed out"));
    }

    fn info(gid: &str, ll: &'static str, t: &'static str) -> DeviceInfo {
        DeviceInfo {
            name: "d".into(),
            port: 1,
            active: true,
            link_layer: ll,
            gid_index: 1,
            gid: gid.parse::<Ipv6Addr>().unwrap().octets(),
            gid_type: t,
            gids: vec![],
            lid: 0,
            mtu: 5,
            max_qp_rd_atom: 16,
            max_qp_init_rd_atom: 16,
            max_qp_wr: 1024,
            max_cqe: 4096,
            odp_rc_read: false,
            traffic_class: 0,
            service_level: 0,
            pkey_index: 0,
            qp_timeout: 20,
            qp_retry_count: 7,
        }
    }

    #[test]
    fn rail_addresses_come_from_roce_gids_only() {
        let v4 = info("::ffff:192.0.2.1", "Ethernet", "RoCEv2");
        assert_eq!(rail_addr(&v4), Some("192.0.2.1".parse().unwrap()));
        assert_eq!(
            rail_addr(&info("2001:db8::1", "Ethernet", "RoCEv2")),
            Some("2001:db8::1".parse().unwrap())
        );
        assert_eq!(rail_addr(&info("fe80::1", "Ethernet", "RoCEv2")), None);
        assert_eq!(rail_addr(&info("fe80::1", "InfiniBand", "IB")), None);
        assert_eq!(rail_addr(&info("::", "Ethernet", "RoCEv2")), None);
        let dst4: IpAddr = "192.0.2.9".parse().unwrap();
        assert_eq!(src_for(&v4, dst4), Some("192.0.2.1".parse().unwrap()));
        assert_eq!(src_for(&v4, "2001:db8::9".parse().unwrap()), None);
    }
}
