//! rdma_cm, client side: connecting one of our QPs to a granted node QP
//! (resolve address and route, connect with the grant's token, move the QP
//! through INIT/RTR/RTS with rdma_cm's attributes), and the error-path probe.

use super::*;

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
    let (timeout, retry) = (info.qp_timeout, info.qp_retry_count);
    apply(qp, &id, sys::ibv_qp_state::IBV_QPS_RTS, |a, m| {
        override_rts(a, m, timeout, retry);
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
        crate::raw::Cq::new(&nic.ctx, 16, None).map_err(|e| VerbsError::Device {
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
