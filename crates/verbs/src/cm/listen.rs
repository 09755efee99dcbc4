//! rdma_cm, node side: QPs granted through the control service
//! ([`CmSlot`]) and the listener thread that matches each connect request
//! to its grant, brings the QP to RTS and accepts.

use super::*;

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
    qp_timeout: u8,
    qp_retry_count: u8,
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
            qp_timeout: info.qp_timeout,
            qp_retry_count: info.qp_retry_count,
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
            let (timeout, retry) = (slot.qp_timeout, slot.qp_retry_count);
            apply(&mut qp, &id, sys::ibv_qp_state::IBV_QPS_RTS, |a, m| {
                override_rts(a, m, timeout, retry)
            })?;
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
