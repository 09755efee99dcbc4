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

mod ffi;

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

/// A client's rdma_cm connection; keep it as long as its QP (dropping it
/// disconnects).
pub(crate) struct CmConn {
    _id: ffi::Id,
}

/// What the client connects to.
pub(crate) struct CmTarget<'a> {
    /// The node as the caller names it (errors).
    pub node: &'a str,
    /// The node's listener.
    pub dst: SocketAddr,
    /// Our rail's address (binds the resolution to our device), if known.
    pub src: Option<IpAddr>,
    /// Bound on the whole set-up.
    pub timeout: Duration,
}

fn qps(state: u32) -> &'static str {
    match state {
        sys::ibv_qp_state::IBV_QPS_INIT => "INIT",
        sys::ibv_qp_state::IBV_QPS_RTR => "RTR",
        _ => "RTS",
    }
}

/// Connects our RESET `qp` on `info`'s device to the granted node QP with
/// rdma_cm; returns the connection and the negotiated read depth (at most
/// `depth`, at most what the node accepted).
pub(crate) fn connect_qp(
    qp: &mut Qp,
    info: &DeviceInfo,
    grant: &CmGrant,
    t: &CmTarget<'_>,
    depth: u8,
) -> Result<(CmConn, u8), VerbsError> {
    let deadline = Instant::now() + t.timeout;
    let fail = |step: &str, detail: String| VerbsError::Node {
        node: t.node.to_string(),
        step: format!("rdma_cm {step}"),
        detail: format!(
            "node address {} (our device {}, node QP {}): {detail}",
            t.dst, info.name, grant.node_qpn
        ),
    };
    let left = || deadline.saturating_duration_since(Instant::now());
    let ch = ffi::Channel::new().map_err(|e| fail("create event channel", e.to_string()))?;
    let mut id = ffi::Id::new(&ch).map_err(|e| fail("create id", e.to_string()))?;
    // Wait for one event of `id`: Ok(event) of an expected kind, else the error.
    let wait = |step: &str, want: u32| -> Result<ffi::Event, VerbsError> {
        loop {
            let remaining = left();
            if remaining.is_zero() {
                return Err(fail(
                    step,
                    format!("no answer within {:?} (timed out)", t.timeout),
                ));
            }
            let ev = ch.next(remaining).map_err(|e| fail(step, e.to_string()))?;
            let Some(ev) = ev else { continue };
            if ev.kind == want {
                return Ok(ev);
            }
            use sys::rdma_cm_event_type as E;
            let detail = match ev.kind {
                E::RDMA_CM_EVENT_REJECTED => {
                    return Err(fail("rejected", reject_reason(ev.status, &ev.private)))
                }
                E::RDMA_CM_EVENT_ADDR_ERROR
                | E::RDMA_CM_EVENT_ROUTE_ERROR
                | E::RDMA_CM_EVENT_UNREACHABLE
                | E::RDMA_CM_EVENT_CONNECT_ERROR => {
                    format!("{}: {}", ffi::event_str(ev.kind), errno_text(ev.status))
                }
                k => format!("unexpected {} (status {})", ffi::event_str(k), ev.status),
            };
            return Err(fail(step, detail));
        }
    };
    let src = t.src.map(|ip| SocketAddr::new(ip, 0));
    id.resolve_addr(src, t.dst, left())
        .map_err(|e| fail("resolve addr", e.to_string()))?;
    wait(
        "resolve addr",
        sys::rdma_cm_event_type::RDMA_CM_EVENT_ADDR_RESOLVED,
    )?;
    match id.device() {
        Some((dev, _)) if dev == info.name => {}
        Some((dev, port)) => {
            return Err(fail(
                "resolve addr",
                format!(
                    "the route leaves through device {dev} port {port}, but this QP lives on {}: \
                     the node's address for this rail must be reachable through {}",
                    info.name, info.name
                ),
            ))
        }
        None => return Err(fail("resolve addr", "no RDMA device bound".into())),
    }
    id.resolve_route(left())
        .map_err(|e| fail("resolve route", e.to_string()))?;
    wait(
        "resolve route",
        sys::rdma_cm_event_type::RDMA_CM_EVENT_ROUTE_RESOLVED,
    )?;
    apply(qp, &id, sys::ibv_qp_state::IBV_QPS_INIT, |a, m| {
        a.qp_access_flags = 0; // the node never reads or writes our memory
        *m |= sys::ibv_qp_attr_mask::IBV_QP_ACCESS_FLAGS.0 as i32;
    })
    .map_err(|e| fail("QP INIT", e))?;
    let hello = Hello {
        token: grant.token,
        node_qpn: grant.node_qpn,
    };
    id.connect(qp.qp_num(), &hello.encode(), 0, depth)
        .map_err(|e| fail("connect", e.to_string()))?;
    let resp = wait(
        "connect",
        sys::rdma_cm_event_type::RDMA_CM_EVENT_CONNECT_RESPONSE,
    )?;
    // The node's responder resources bound our initiator depth.
    let mut negotiated = depth.max(1);
    if resp.initiator_depth != 0 {
        // On the active side the kernel reports the peer's responder
        // resources as our initiator depth.
        negotiated = negotiated.min(resp.initiator_depth);
    }
    let (tc, sl) = (info.traffic_class, info.service_level);
    apply(qp, &id, sys::ibv_qp_state::IBV_QPS_RTR, |a, _| {
        override_path(a, tc, sl)
    })
    .map_err(|e| fail("QP RTR", e))?;
    apply(qp, &id, sys::ibv_qp_state::IBV_QPS_RTS, |a, m| {
        if *m & sys::ibv_qp_attr_mask::IBV_QP_MAX_QP_RD_ATOMIC.0 as i32 != 0 && a.max_rd_atomic != 0
        {
            negotiated = negotiated.min(a.max_rd_atomic);
        }
        a.max_rd_atomic = negotiated;
        *m |= sys::ibv_qp_attr_mask::IBV_QP_MAX_QP_RD_ATOMIC.0 as i32;
    })
    .map_err(|e| fail("QP RTS", e))?;
    id.establish()
        .map_err(|e| fail("establish", e.to_string()))?;
    tracing::debug!(node = t.node, dst = %t.dst, device = %info.name, qp = qp.qp_num(), node_qp = grant.node_qpn, depth = negotiated, "verbs: QP connected with rdma_cm");
    Ok((CmConn { _id: id }, negotiated))
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

/// A node QP granted to a client for an rdma_cm connect. Dropping it (the
/// control connection closed, or a `replaces` named it) disconnects the
/// cm connection and destroys the QP.
pub(crate) struct CmSlot {
    // Field order is drop order: the cm id goes (disconnects) before the QP.
    id: Mutex<Option<ffi::Id>>,
    qp: Mutex<Qp>,
    qpn: u32,
    token: u32,
    device: String,
    responder_cap: u8,
    traffic_class: u8,
    service_level: u8,
    taken: AtomicBool,
}

impl CmSlot {
    pub(crate) fn qp_num(&self) -> u32 {
        self.qpn
    }
}

type Slots = Arc<Mutex<Vec<Weak<CmSlot>>>>;

/// The node's rdma_cm listener: one thread waiting for connect requests on
/// every RDMA device (or the one of the bound address), matching each to a
/// QP granted through the control service.
pub struct CmListener {
    addr: SocketAddr,
    port: u16,
    slots: Slots,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl std::fmt::Debug for CmListener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CmListener")
            .field("addr", &self.addr)
            .field("port", &self.port)
            .finish()
    }
}

impl CmListener {
    /// Binds `addr` (e.g. `0.0.0.0:7472`; port 0 picks one) and listens.
    pub fn start(addr: SocketAddr) -> Result<CmListener, VerbsError> {
        let err = |step: &'static str, e: std::io::Error| VerbsError::Device {
            device: format!("rdma_cm {addr}"),
            step,
            detail: e.to_string(),
        };
        let ch = ffi::Channel::new().map_err(|e| err("rdma_create_event_channel", e))?;
        let listen = ffi::Id::new(&ch).map_err(|e| err("rdma_create_id", e))?;
        listen.bind(addr).map_err(|e| err("rdma_bind_addr", e))?;
        listen.listen(128).map_err(|e| err("rdma_listen", e))?;
        let port = listen.src_port();
        let slots: Slots = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (s, st) = (Arc::clone(&slots), Arc::clone(&stop));
        let thread = std::thread::Builder::new()
            .name("seqfeed-rdma-cm".into())
            .spawn(move || listen_loop(ch, listen, s, st))
            .map_err(|e| err("spawn listener thread", e))?;
        tracing::info!(%addr, port, "verbs: rdma_cm listener up");
        Ok(CmListener {
            addr,
            port,
            slots,
            stop,
            thread: Some(thread),
        })
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Offers `qp` (RESET, on `info`'s device) for one cm connect; returns
    /// the slot to keep (its owner decides the QP's lifetime) and its token.
    pub(crate) fn offer(&self, qp: Qp, info: &DeviceInfo, responder_cap: u8) -> Arc<CmSlot> {
        let slot = Arc::new(CmSlot {
            id: Mutex::new(None),
            qpn: qp.qp_num(),
            qp: Mutex::new(qp),
            token: rand::random::<u32>(),
            device: info.name.clone(),
            responder_cap: responder_cap.max(1),
            traffic_class: info.traffic_class,
            service_level: info.service_level,
            taken: AtomicBool::new(false),
        });
        let mut s = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        s.retain(|w| w.strong_count() > 0);
        s.push(Arc::downgrade(&slot));
        slot
    }

    /// The grant telling a client how to connect to `slot`.
    pub(crate) fn grant(&self, slot: &CmSlot, addr: Option<IpAddr>) -> CmGrant {
        CmGrant {
            node_qpn: slot.qpn,
            token: slot.token,
            addr,
            port: self.port,
            rd_atom: slot.responder_cap,
        }
    }
}

impl Drop for CmListener {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            if t.join().is_err() {
                tracing::error!("verbs: rdma_cm listener thread panicked");
            }
        }
    }
}

fn listen_loop(ch: Arc<ffi::Channel>, listen: ffi::Id, slots: Slots, stop: Arc<AtomicBool>) {
    while !stop.load(Ordering::Relaxed) {
        let ev = match ch.next(Duration::from_millis(200)) {
            Ok(Some(ev)) => ev,
            Ok(None) => continue,
            Err(e) => {
                tracing::warn!("verbs: rdma_cm listener: {e}");
                std::thread::sleep(Duration::from_millis(200));
                continue;
            }
        };
        use sys::rdma_cm_event_type as E;
        match ev.kind {
            E::RDMA_CM_EVENT_CONNECT_REQUEST => {
                let Some(id) = ev.request else { continue };
                admit(id, &ev.private, ev.responder_resources, &slots);
            }
            k => tracing::debug!(
                event = %ffi::event_str(k),
                status = ev.status,
                "verbs: rdma_cm listener event"
            ),
        }
    }
    drop(listen);
}

/// Handles one connect request: the granted QP it names goes to RTS and is
/// accepted, or the request is rejected with the reason.
fn admit(mut id: ffi::Id, private: &[u8], their_depth: u8, slots: &Slots) {
    let dev = id.device();
    let r = (|| -> Result<Arc<CmSlot>, String> {
        let hello = Hello::decode(private)?;
        let slot = {
            let s = slots.lock().unwrap_or_else(|p| p.into_inner());
            s.iter()
                .filter_map(Weak::upgrade)
                .find(|x| x.qpn == hello.node_qpn && x.token == hello.token)
        };
        let Some(slot) = slot else {
            return Err(format!(
                "no QP {} granted with that token (unknown, released, or a wrong token)",
                hello.node_qpn
            ));
        };
        match &dev {
            Some((d, _)) if *d == slot.device => {}
            other => {
                return Err(format!(
                    "the request arrived on device {}, QP {} was granted on {}",
                    other.as_ref().map_or("?", |(d, _)| d.as_str()),
                    slot.qpn,
                    slot.device
                ))
            }
        }
        // Single use: a second request for the same grant is refused.
        if slot.taken.swap(true, Ordering::AcqRel) {
            return Err(format!("QP {} is already connected", slot.qpn));
        }
        let responder = their_depth.clamp(1, slot.responder_cap);
        {
            let mut qp = slot.qp.lock().unwrap_or_else(|p| p.into_inner());
            apply(&mut qp, &id, sys::ibv_qp_state::IBV_QPS_INIT, |a, m| {
                a.qp_access_flags = crate::raw::ACCESS_REMOTE_READ;
                *m |= sys::ibv_qp_attr_mask::IBV_QP_ACCESS_FLAGS.0 as i32;
            })?;
            let (tc, sl) = (slot.traffic_class, slot.service_level);
            apply(&mut qp, &id, sys::ibv_qp_state::IBV_QPS_RTR, |a, m| {
                override_path(a, tc, sl);
                a.max_dest_rd_atomic = responder;
                *m |= sys::ibv_qp_attr_mask::IBV_QP_MAX_DEST_RD_ATOMIC.0 as i32;
            })?;
            apply(&mut qp, &id, sys::ibv_qp_state::IBV_QPS_RTS, |_, _| {})?;
        }
        id.accept(slot.qpn, responder, 0)
            .map_err(|e| e.to_string())?;
        Ok(slot)
    })();
    match r {
        Ok(slot) => {
            tracing::debug!(qp = slot.qpn, device = %slot.device, "verbs: rdma_cm connect accepted");
            *slot.id.lock().unwrap_or_else(|p| p.into_inner()) = Some(id);
        }
        Err(why) => {
            tracing::warn!(device = ?dev.map(|d| d.0), "verbs: rdma_cm connect request refused: {why}");
            if let Err(e) = id.reject(&format!("seqfeed: {why}")) {
                tracing::warn!("verbs: rdma_reject: {e}");
            }
        }
    }
}

/// Tries an rdma_cm connect from `device` to `dst` with a token no node
/// granted: for checks of the error paths (an address nobody holds:
/// `resolve addr` when ARP fails, else `connect` timing out; a wrong port:
/// `rejected`, nothing listens; the right listener: `rejected`, the node
/// refuses the token). Always an error; `Ok` would mean a node accepted an
/// ungranted QP.
pub fn probe_connect(
    device: &str,
    src: Option<IpAddr>,
    dst: SocketAddr,
    timeout: Duration,
) -> Result<(), VerbsError> {
    let devs = vec![device.to_string()];
    let nics = crate::device::open_devices(Some(&devs))?;
    let Some(nic) = nics.first() else {
        return Err(VerbsError::Device {
            device: device.into(),
            step: "find device",
            detail: "no such device".into(),
        });
    };
    let cq = Arc::new(
        crate::raw::Cq::new(&nic.ctx, 16).map_err(|e| VerbsError::Device {
            device: device.into(),
            step: "ibv_create_cq",
            detail: e.to_string(),
        })?,
    );
    let mut qp = Qp::new(&nic.pd, &cq, 4, 1).map_err(|e| VerbsError::Device {
        device: device.into(),
        step: "ibv_create_qp",
        detail: e.to_string(),
    })?;
    let grant = CmGrant {
        node_qpn: 0xff_ffff,
        token: rand::random::<u32>(),
        addr: Some(dst.ip()),
        port: dst.port(),
        rd_atom: 1,
    };
    let t = CmTarget {
        node: &dst.to_string(),
        dst,
        src,
        timeout,
    };
    connect_qp(&mut qp, &nic.info, &grant, &t, 1).map(|_| ())
}

/// Our rail address, unspecified-free (for binding address resolution).
pub(crate) fn src_for(info: &DeviceInfo, dst: IpAddr) -> Option<IpAddr> {
    let a = rail_addr(info)?;
    // Only bind when the families agree (an IPv4 node from an IPv6 rail cannot).
    (a.is_ipv4() == dst.is_ipv4()).then_some(a)
}

#[cfg(test)]
mod tests {
    use super::*;

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
