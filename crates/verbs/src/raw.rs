//! The only place where queue pairs and completion queues touch raw
//! libibverbs (through `rdma-mummy-sys`, the `-sys` crate under `sideway`).
//!
//! sideway's own `QueuePair` and `CompletionQueue` assert in `Drop` and
//! allocate on every post; here a QP owns reusable work-request and
//! scatter-gather arrays, posts a whole chain with one `ibv_post_send` (one
//! doorbell), and `Drop` logs the errno instead of panicking.
//!
//! Everything in this module is `unsafe` FFI fenced behind a small safe API:
//! callers pass plain numbers (addresses, keys, lengths); the memory those
//! numbers name is guaranteed by the memory-region owners in `client/memory.rs` and
//! `server.rs` (a registered region stays alive as long as a read may target it).
#![allow(unsafe_code)]

use std::io;
use std::ptr::{self, NonNull};
use std::sync::Arc;

use rdma_mummy_sys as sys;
use sideway::ibverbs::device_context::DeviceContext;
use sideway::ibverbs::protection_domain::ProtectionDomain;

/// One RDMA READ work request, described by plain numbers.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ReadWr {
    /// Returned in the work completion when `signaled`.
    pub wr_id: u64,
    /// Whether this WR generates a completion on success.
    pub signaled: bool,
    /// Local destination address (inside a registered local-write MR).
    pub local_addr: u64,
    /// The destination MR's local key.
    pub lkey: u32,
    /// Bytes to read.
    pub len: u32,
    /// Remote source address (inside a remote-read MR of the peer).
    pub remote_addr: u64,
    /// The peer MR's remote key.
    pub rkey: u32,
}

/// One work completion, copied out of the CQ.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Completion {
    pub wr_id: u64,
    pub status: u32,
    pub vendor_err: u32,
    pub qp_num: u32,
}

impl Completion {
    pub fn ok(&self) -> bool {
        self.status == sys::ibv_wc_status::IBV_WC_SUCCESS
    }
}

/// Human-readable name of a work-completion status (`ibv_wc_status_str`).
pub(crate) fn wc_status_str(status: u32) -> String {
    // SAFETY: ibv_wc_status_str accepts any value and returns a pointer to a
    // static string (or NULL when libibverbs is not loaded, handled below).
    let p = unsafe { sys::ibv_wc_status_str(status) };
    if p.is_null() {
        return format!("status {status}");
    }
    // SAFETY: non-null pointer to a NUL-terminated static string owned by libibverbs.
    let s = unsafe { std::ffi::CStr::from_ptr(p) };
    format!("{} ({status})", s.to_string_lossy())
}

/// Scratch space for [`Cq::poll`], owned by whoever polls.
pub(crate) struct WcBuf(Vec<sys::ibv_wc>);

impl WcBuf {
    pub fn new() -> WcBuf {
        // SAFETY: ibv_wc is plain old data (integers and a union of integers); all-zero is valid.
        let zero: sys::ibv_wc = unsafe { std::mem::zeroed() };
        WcBuf(vec![zero; 64])
    }
}

// SAFETY: ibv_wc holds only integers (no pointers); moving it across threads is fine.
unsafe impl Send for WcBuf {}

/// A completion channel (`ibv_comp_channel`): a file descriptor that becomes
/// readable when a CQ attached to it and armed with [`Cq::arm`] gets its next
/// completion. The descriptor is non-blocking, so [`CompChannel::drain`]
/// never sleeps; [`wait_readable`] is where a poller sleeps. Keeps its
/// device context alive.
pub(crate) struct CompChannel {
    ch: NonNull<sys::ibv_comp_channel>,
    _ctx: Arc<DeviceContext>,
}

// SAFETY: a completion channel is a file descriptor plus a refcount that
// libibverbs only changes under its own locks; it may be used from any thread.
unsafe impl Send for CompChannel {}
// SAFETY: see above.
unsafe impl Sync for CompChannel {}

impl CompChannel {
    pub fn new(ctx: &Arc<DeviceContext>) -> io::Result<CompChannel> {
        // SAFETY: the context pointer is valid while `ctx` lives (we keep an Arc).
        let ch = unsafe { sys::ibv_create_comp_channel(ctx.context().as_ptr()) };
        let ch = NonNull::new(ch).ok_or_else(io::Error::last_os_error)?;
        let chan = CompChannel {
            ch,
            _ctx: Arc::clone(ctx),
        };
        let fd = chan.fd();
        // SAFETY: fcntl on a descriptor we own; F_GETFL/F_SETFL take and return ints.
        let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
        // SAFETY: as above.
        if flags < 0 || unsafe { libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) } < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(chan)
    }

    /// The channel's file descriptor (owned by libibverbs).
    pub fn fd(&self) -> i32 {
        // SAFETY: the channel is alive; `fd` is a plain integer field.
        unsafe { self.ch.as_ref().fd }
    }

    /// Takes every event queued on the channel without sleeping and
    /// acknowledges each at once; returns how many there were.
    pub fn drain(&self) -> io::Result<u32> {
        let mut n = 0u32;
        loop {
            let mut cq: *mut sys::ibv_cq = ptr::null_mut();
            let mut cq_ctx: *mut std::ffi::c_void = ptr::null_mut();
            // SAFETY: the channel is alive and its fd non-blocking, so this
            // returns at once; both out-pointers point to locals.
            let rc = unsafe { sys::ibv_get_cq_event(self.ch.as_ptr(), &mut cq, &mut cq_ctx) };
            if rc != 0 {
                let e = io::Error::last_os_error();
                return match e.kind() {
                    io::ErrorKind::WouldBlock => Ok(n),
                    io::ErrorKind::Interrupted => continue,
                    _ => Err(e),
                };
            }
            // SAFETY: `cq` is a CQ of ours attached to this channel: every such
            // CQ holds an Arc of the channel, and it is only destroyed after
            // its events are acknowledged, which happens here, right away.
            unsafe { sys::ibv_ack_cq_events(cq, 1) };
            n += 1;
        }
    }
}

impl Drop for CompChannel {
    fn drop(&mut self) {
        // SAFETY: created by ibv_create_comp_channel, destroyed exactly once;
        // the CQs attached to it hold an Arc of it and are therefore gone.
        let rc = unsafe { sys::ibv_destroy_comp_channel(self.ch.as_ptr()) };
        if rc != 0 {
            tracing::error!(
                errno = rc,
                "ibv_destroy_comp_channel failed: {}",
                io::Error::from_raw_os_error(rc)
            );
        }
    }
}

/// Sleeps until one of `fds` is readable or `timeout` passes; returns
/// whether one became readable. An interrupted sleep returns `false` (the
/// caller polls its CQs and comes back).
pub(crate) fn wait_readable(fds: &[i32], timeout: std::time::Duration) -> io::Result<bool> {
    let mut pfds: Vec<libc::pollfd> = fds
        .iter()
        .map(|&fd| libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    let ms = i32::try_from(timeout.as_millis().max(1)).unwrap_or(i32::MAX);
    // SAFETY: `pfds` is a valid array of `pfds.len()` pollfd entries for the call's duration.
    let rc = unsafe { libc::poll(pfds.as_mut_ptr(), pfds.len() as libc::nfds_t, ms) };
    if rc < 0 {
        let e = io::Error::last_os_error();
        if e.kind() == io::ErrorKind::Interrupted {
            return Ok(false);
        }
        return Err(e);
    }
    Ok(rc > 0)
}

/// A completion queue. Keeps its device context (and its completion
/// channel, if any) alive.
pub(crate) struct Cq {
    cq: NonNull<sys::ibv_cq>,
    _channel: Option<Arc<CompChannel>>,
    _ctx: Arc<DeviceContext>,
}

// SAFETY: libibverbs objects may be used from any thread, and providers lock
// their CQs internally, so polling through `&self` from several threads is sound.
unsafe impl Send for Cq {}
// SAFETY: see above.
unsafe impl Sync for Cq {}

impl Cq {
    /// A CQ of `entries` on `ctx`, attached to `channel` when given (which
    /// must belong to the same device context).
    pub fn new(
        ctx: &Arc<DeviceContext>,
        entries: u32,
        channel: Option<&Arc<CompChannel>>,
    ) -> io::Result<Cq> {
        let entries = i32::try_from(entries).unwrap_or(i32::MAX);
        let ch = channel.map_or(ptr::null_mut(), |c| c.ch.as_ptr());
        // SAFETY: the context pointer is valid while `ctx` lives (we keep an
        // Arc), so is the channel (we keep an Arc of it too); no user context.
        let cq =
            unsafe { sys::ibv_create_cq(ctx.context().as_ptr(), entries, ptr::null_mut(), ch, 0) };
        let cq = NonNull::new(cq).ok_or_else(io::Error::last_os_error)?;
        Ok(Cq {
            cq,
            _channel: channel.cloned(),
            _ctx: Arc::clone(ctx),
        })
    }

    /// Asks for an event on the CQ's channel at its next completion
    /// (`ibv_req_notify_cq`, any completion). Poll once more after arming:
    /// completions that arrived before it raise no event.
    pub fn arm(&self) -> io::Result<()> {
        // SAFETY: the CQ is alive; req_notify_cq is the provider's op for it.
        let rc = unsafe { sys::ibv_req_notify_cq(self.cq.as_ptr(), 0) };
        if rc != 0 {
            return Err(io::Error::from_raw_os_error(rc));
        }
        Ok(())
    }

    /// Polls up to 64 completions, appending them to `out`; returns how many.
    pub fn poll(&self, buf: &mut WcBuf, out: &mut Vec<Completion>) -> io::Result<usize> {
        let n = buf.0.len() as i32;
        // SAFETY: the CQ is alive; `buf` has room for `n` entries.
        let got = unsafe { sys::ibv_poll_cq(self.cq.as_ptr(), n, buf.0.as_mut_ptr()) };
        if got < 0 {
            return Err(io::Error::other(format!("ibv_poll_cq returned {got}")));
        }
        let got = got as usize;
        for wc in &buf.0[..got] {
            out.push(Completion {
                wr_id: wc.wr_id,
                status: wc.status,
                vendor_err: wc.vendor_err,
                qp_num: wc.qp_num,
            });
        }
        Ok(got)
    }

    fn as_ptr(&self) -> *mut sys::ibv_cq {
        self.cq.as_ptr()
    }
}

impl Drop for Cq {
    fn drop(&mut self) {
        // SAFETY: the CQ was created by ibv_create_cq and is destroyed exactly once;
        // every QP using it holds an Arc<Cq> and is therefore already gone.
        let rc = unsafe { sys::ibv_destroy_cq(self.cq.as_ptr()) };
        if rc != 0 {
            tracing::error!(
                errno = rc,
                "ibv_destroy_cq failed: {}",
                io::Error::from_raw_os_error(rc)
            );
        }
    }
}

/// Parameters to bring an RC QP from RESET to RTS.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Connect {
    pub port: u8,
    pub sgid_index: u8,
    pub remote_qpn: u32,
    pub remote_psn: u32,
    pub local_psn: u32,
    pub remote_gid: [u8; 16],
    pub remote_lid: u16,
    /// `ibv_mtu` value (1 = 256 ... 5 = 4096).
    pub path_mtu: u32,
    /// Outstanding RDMA READs this QP may issue (initiator depth).
    pub max_rd_atomic: u8,
    /// Incoming RDMA READs this QP accepts (responder resources).
    pub max_dest_rd_atomic: u8,
    /// Access flags for remote peers (`IBV_ACCESS_REMOTE_READ` on the node).
    pub access: u32,
    /// GRH traffic class (DSCP << 2 | ECN).
    pub traffic_class: u8,
    /// Service level.
    pub sl: u8,
    /// Partition key index.
    pub pkey_index: u16,
    /// Local ACK timeout exponent (4.096 us * 2^timeout per try).
    pub timeout: u8,
    /// Transport retries before a work request fails.
    pub retry_cnt: u8,
}

/// Zeroed QP attributes.
pub(crate) fn zero_attr() -> sys::ibv_qp_attr {
    // SAFETY: ibv_qp_attr is plain old data (integers, arrays and a union of
    // integers); zero is the neutral value for every field.
    unsafe { std::mem::zeroed() }
}

/// RESET -> INIT attributes of `c` and their mask.
pub(crate) fn init_attr(c: &Connect) -> (sys::ibv_qp_attr, sys::ibv_qp_attr_mask) {
    use sys::ibv_qp_attr_mask as M;
    let mut a = zero_attr();
    a.qp_state = sys::ibv_qp_state::IBV_QPS_INIT;
    a.pkey_index = c.pkey_index;
    a.port_num = c.port;
    a.qp_access_flags = c.access;
    (
        a,
        M::IBV_QP_STATE | M::IBV_QP_PKEY_INDEX | M::IBV_QP_PORT | M::IBV_QP_ACCESS_FLAGS,
    )
}

/// INIT -> RTR attributes of `c` (path to the peer) and their mask.
pub(crate) fn rtr_attr(c: &Connect) -> (sys::ibv_qp_attr, sys::ibv_qp_attr_mask) {
    use sys::ibv_qp_attr_mask as M;
    let mut a = zero_attr();
    a.qp_state = sys::ibv_qp_state::IBV_QPS_RTR;
    a.path_mtu = c.path_mtu;
    a.dest_qp_num = c.remote_qpn;
    a.rq_psn = c.remote_psn;
    a.max_dest_rd_atomic = c.max_dest_rd_atomic;
    a.min_rnr_timer = 12;
    a.ah_attr.is_global = 1;
    a.ah_attr.dlid = c.remote_lid;
    a.ah_attr.sl = c.sl;
    a.ah_attr.src_path_bits = 0;
    a.ah_attr.port_num = c.port;
    a.ah_attr.grh.dgid = sys::ibv_gid { raw: c.remote_gid };
    a.ah_attr.grh.sgid_index = c.sgid_index;
    a.ah_attr.grh.hop_limit = 64;
    a.ah_attr.grh.traffic_class = c.traffic_class;
    a.ah_attr.grh.flow_label = 0;
    (
        a,
        M::IBV_QP_STATE
            | M::IBV_QP_AV
            | M::IBV_QP_PATH_MTU
            | M::IBV_QP_DEST_QPN
            | M::IBV_QP_RQ_PSN
            | M::IBV_QP_MAX_DEST_RD_ATOMIC
            | M::IBV_QP_MIN_RNR_TIMER,
    )
}

/// RTR -> RTS attributes of `c` (send PSN, ACK timeout, retries, read
/// depth) and their mask.
pub(crate) fn rts_attr(c: &Connect) -> (sys::ibv_qp_attr, sys::ibv_qp_attr_mask) {
    use sys::ibv_qp_attr_mask as M;
    let mut a = zero_attr();
    a.qp_state = sys::ibv_qp_state::IBV_QPS_RTS;
    a.sq_psn = c.local_psn;
    a.timeout = c.timeout;
    a.retry_cnt = c.retry_cnt;
    a.rnr_retry = 7; // no receives are ever posted; RNR never happens
    a.max_rd_atomic = c.max_rd_atomic;
    (
        a,
        M::IBV_QP_STATE
            | M::IBV_QP_SQ_PSN
            | M::IBV_QP_TIMEOUT
            | M::IBV_QP_RETRY_CNT
            | M::IBV_QP_RNR_RETRY
            | M::IBV_QP_MAX_QP_RD_ATOMIC,
    )
}

/// Access flag constants re-exported for callers.
pub(crate) const ACCESS_REMOTE_READ: u32 = sys::ibv_access_flags::IBV_ACCESS_REMOTE_READ.0;

/// An RC queue pair used for RDMA READs.
pub(crate) struct Qp {
    qp: NonNull<sys::ibv_qp>,
    _pd: Arc<ProtectionDomain>,
    _cq: Arc<Cq>,
    wrs: Vec<sys::ibv_send_wr>,
    sges: Vec<sys::ibv_sge>,
    max_chain: usize,
    /// Dropped after the QP is destroyed: what must live as long as it
    /// (its rdma_cm connection, see `cm`).
    keep: Option<Box<dyn Send>>,
}

// SAFETY: libibverbs QPs may be used from any thread; a Qp is posted through `&mut self` only.
unsafe impl Send for Qp {}

impl Qp {
    /// Creates an RC QP in RESET with room for `depth` send WRs.
    pub fn new(
        pd: &Arc<ProtectionDomain>,
        cq: &Arc<Cq>,
        depth: u32,
        max_chain: usize,
    ) -> io::Result<Qp> {
        let mut init = sys::ibv_qp_init_attr {
            qp_context: ptr::null_mut(),
            send_cq: cq.as_ptr(),
            recv_cq: cq.as_ptr(),
            srq: ptr::null_mut(),
            cap: sys::ibv_qp_cap {
                max_send_wr: depth.max(1),
                max_recv_wr: 1,
                max_send_sge: 1,
                max_recv_sge: 1,
                max_inline_data: 0,
            },
            qp_type: sys::ibv_qp_type::IBV_QPT_RC,
            sq_sig_all: 0,
        };
        // SAFETY: pd and cq are alive (we keep Arcs to both in the Qp); `init` is a valid init attr.
        let qp = unsafe { sys::ibv_create_qp(pd.pd().as_ptr(), &mut init) };
        let qp = NonNull::new(qp).ok_or_else(io::Error::last_os_error)?;
        let max_chain = max_chain.max(1);
        // SAFETY: ibv_send_wr / ibv_sge are plain C structs of integers, pointers and
        // unions thereof; all-zero is a valid (empty) value.
        let wrs = (0..max_chain)
            .map(|_| unsafe { std::mem::zeroed::<sys::ibv_send_wr>() })
            .collect();
        // SAFETY: as above.
        let sge0: sys::ibv_sge = unsafe { std::mem::zeroed() };
        Ok(Qp {
            qp,
            _pd: Arc::clone(pd),
            _cq: Arc::clone(cq),
            wrs,
            sges: vec![sge0; max_chain],
            max_chain,
            keep: None,
        })
    }

    /// Keeps `x` alive as long as this QP (dropped right after it).
    pub fn keep_alive(&mut self, x: Box<dyn Send>) {
        self.keep = Some(x);
    }

    pub fn qp_num(&self) -> u32 {
        // SAFETY: the QP is alive; qp_num is set at creation and never changes.
        unsafe { self.qp.as_ref().qp_num }
    }

    fn modify(
        &mut self,
        attr: &mut sys::ibv_qp_attr,
        mask: sys::ibv_qp_attr_mask,
        step: &str,
    ) -> io::Result<()> {
        // SAFETY: the QP is alive and `attr` is a fully initialised attribute struct.
        let rc = unsafe { sys::ibv_modify_qp(self.qp.as_ptr(), attr, mask.0 as i32) };
        if rc == 0 {
            Ok(())
        } else {
            let e = io::Error::from_raw_os_error(rc);
            Err(io::Error::new(
                e.kind(),
                format!("ibv_modify_qp to {step}: {e}"),
            ))
        }
    }

    /// Applies attributes another component computed (rdma_cm's
    /// `rdma_init_qp_attr`) with their raw mask.
    pub fn modify_raw(
        &mut self,
        attr: &mut sys::ibv_qp_attr,
        mask: i32,
        step: &str,
    ) -> io::Result<()> {
        // The mask is the C int rdma_init_qp_attr filled; ibv_qp_attr_mask wraps its bits.
        self.modify(attr, sys::ibv_qp_attr_mask(mask as u32), step)
    }

    /// RESET -> INIT -> RTR -> RTS.
    pub fn connect(&mut self, c: &Connect) -> io::Result<()> {
        let (mut a, mask) = init_attr(c);
        self.modify(&mut a, mask, "INIT")?;
        let (mut a, mask) = rtr_attr(c);
        self.modify(&mut a, mask, "RTR")?;
        let (mut a, mask) = rts_attr(c);
        self.modify(&mut a, mask, "RTS")
    }

    /// Moves the QP to the error state (flushes outstanding work requests).
    pub fn set_error(&mut self) -> io::Result<()> {
        // SAFETY: plain old data, see `connect`.
        let mut a: sys::ibv_qp_attr = unsafe { std::mem::zeroed() };
        a.qp_state = sys::ibv_qp_state::IBV_QPS_ERR;
        self.modify(&mut a, sys::ibv_qp_attr_mask::IBV_QP_STATE, "ERR")
    }

    /// Posts `reads` (at most `max_chain`) as one linked list: one `ibv_post_send`, one doorbell.
    pub fn post_reads(&mut self, reads: &[ReadWr]) -> io::Result<()> {
        if reads.is_empty() {
            return Ok(());
        }
        if reads.len() > self.max_chain {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "chain of {} work requests exceeds {}",
                    reads.len(),
                    self.max_chain
                ),
            ));
        }
        let n = reads.len();
        let sge_base = self.sges.as_mut_ptr();
        let wr_base = self.wrs.as_mut_ptr();
        for (i, r) in reads.iter().enumerate() {
            self.sges[i] = sys::ibv_sge {
                addr: r.local_addr,
                length: r.len,
                lkey: r.lkey,
            };
            let wr = &mut self.wrs[i];
            wr.wr_id = r.wr_id;
            // SAFETY: i < n <= max_chain == sges.len() == wrs.len(); pointers stay in bounds
            // and the vectors are never reallocated (fixed length since creation).
            wr.sg_list = unsafe { sge_base.add(i) };
            wr.num_sge = 1;
            wr.opcode = sys::ibv_wr_opcode::IBV_WR_RDMA_READ;
            wr.send_flags = if r.signaled {
                sys::ibv_send_flags::IBV_SEND_SIGNALED.0
            } else {
                0
            };
            wr.wr.rdma = sys::rdma_t {
                remote_addr: r.remote_addr,
                rkey: r.rkey,
            };
            // SAFETY: as above, i + 1 <= max_chain; the last entry's `next` is overwritten below.
            wr.next = unsafe { wr_base.add(i + 1) };
        }
        self.wrs[n - 1].next = ptr::null_mut();
        let mut bad: *mut sys::ibv_send_wr = ptr::null_mut();
        // SAFETY: the QP is alive; `wrs[..n]` is a valid NULL-terminated list whose
        // sg_list pointers point into `sges`; libibverbs copies the WRs before returning.
        // The addresses inside the SGEs/WRs are covered by live MRs (caller's invariant).
        let rc = unsafe { sys::ibv_post_send(self.qp.as_ptr(), wr_base, &mut bad) };
        if rc == 0 {
            Ok(())
        } else {
            let e = io::Error::from_raw_os_error(rc);
            Err(io::Error::new(
                e.kind(),
                format!("ibv_post_send of {n} reads: {e}"),
            ))
        }
    }
}

impl Drop for Qp {
    fn drop(&mut self) {
        // SAFETY: the QP was created by ibv_create_qp and is destroyed exactly once,
        // before the Arcs to its PD and CQ are released (fields drop after this body).
        let rc = unsafe { sys::ibv_destroy_qp(self.qp.as_ptr()) };
        if rc != 0 {
            tracing::error!(
                errno = rc,
                qp_num = self.qp_num(),
                "ibv_destroy_qp failed: {}",
                io::Error::from_raw_os_error(rc)
            );
        }
    }
}

/// Whether `libibverbs.so.1` can be loaded in this process, with the loader's
/// message when it cannot.
pub(crate) fn libibverbs_loadable() -> Result<(), String> {
    let name = c"libibverbs.so.1";
    // SAFETY: dlopen with a valid NUL-terminated name; the handle is closed right away
    // (the library stays loaded if rdma-mummy-sys's constructor opened it already).
    let h = unsafe { libc::dlopen(name.as_ptr(), libc::RTLD_LAZY | libc::RTLD_LOCAL) };
    if h.is_null() {
        // SAFETY: dlerror returns NULL or a pointer to a thread-local NUL-terminated string.
        let e = unsafe { libc::dlerror() };
        let msg = if e.is_null() {
            "unknown dlopen error".to_string()
        } else {
            // SAFETY: non-null C string from dlerror, copied immediately.
            unsafe { std::ffi::CStr::from_ptr(e) }
                .to_string_lossy()
                .into_owned()
        };
        return Err(msg);
    }
    // SAFETY: `h` is a handle returned by dlopen above, closed once.
    unsafe { libc::dlclose(h) };
    Ok(())
}

/// A memory-registration error as an `io::Error`, with its source (the
/// provider's errno) appended to the message.
fn mr_error(e: impl std::error::Error) -> io::Error {
    match e.source() {
        Some(s) => io::Error::other(format!("{e}: {s}")),
        None => io::Error::other(e.to_string()),
    }
}

/// Registers `len` bytes at `addr`, kept alive by `owner`, for remote read
/// only (the node's sequence files); with on-demand paging when
/// `on_demand` (nothing pinned: the device faults pages in as reads arrive).
pub(crate) fn reg_remote_read(
    pd: &Arc<ProtectionDomain>,
    owner: &Arc<dyn AsRef<[u8]> + Send + Sync>,
    on_demand: bool,
) -> Result<Arc<sideway::ibverbs::memory_region::MemoryRegion>, io::Error> {
    let bytes: &[u8] = (**owner).as_ref();
    let access = if on_demand {
        sideway::ibverbs::AccessFlags::RemoteRead | sideway::ibverbs::AccessFlags::OnDemand
    } else {
        sideway::ibverbs::AccessFlags::RemoteRead
    };
    // SAFETY: the range is the memory of `owner`, which the caller keeps alive for
    // longer than the returned MR (the server stores both); remote-read-only access
    // means the device never writes it. With on-demand paging the device
    // resolves pages through the process's page tables on access instead of
    // pinning them; the mapping stays alive just the same.
    let mr = unsafe { pd.reg_mr(bytes.as_ptr() as usize, bytes.len(), access) };
    mr.map_err(mr_error)
}

/// Registers a client destination range for local write.
///
/// The range is a buffer the caller borrows mutably right now (a buffer
/// announced through `register_buffer`, or one batch's destination);
/// registration itself writes nothing.
pub(crate) fn reg_local_write(
    pd: &Arc<ProtectionDomain>,
    addr: usize,
    len: usize,
) -> Result<Arc<sideway::ibverbs::memory_region::MemoryRegion>, io::Error> {
    // SAFETY: ibv_reg_mr only pins and maps the pages of `addr..addr+len` (it fails
    // with EFAULT when part of it is unmapped); it writes nothing. The device writes
    // through this MR only for reads posted by `read_batch`, whose destinations always
    // lie inside the `&mut [u8]` borrowed for that batch. Pages pinned by an MR stay
    // owned by it until deregistration, so even after the memory is freed the device
    // never writes memory that Rust has handed to anyone else.
    let mr = unsafe { pd.reg_mr(addr, len, sideway::ibverbs::AccessFlags::LocalWrite) };
    mr.map_err(mr_error)
}

/// Registers device memory by its address for local write (GPUDirect RDMA
/// through a peer-memory client such as `nvidia_peermem`). On a provider
/// without one, the kernel refuses an address that is not host memory, and
/// pins host memory it is given.
///
/// # Safety
///
/// `addr..addr+len` must be memory the device may write (CUDA device memory,
/// which the caller has checked with [`crate::cudaptr`], or, for the
/// self-test's explicit hook, host memory no Rust reference points at) and
/// stay allocated until the returned MR is dropped; the `DeviceRegion::new`
/// contract of the region it came from.
pub(crate) unsafe fn reg_device_local_write(
    pd: &Arc<ProtectionDomain>,
    addr: u64,
    len: usize,
) -> Result<Arc<sideway::ibverbs::memory_region::MemoryRegion>, io::Error> {
    let addr = usize::try_from(addr)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "address beyond usize"))?;
    // SAFETY: ibv_reg_mr only resolves and pins the pages (or the peer-memory
    // client's device pages) of `addr..addr+len`, failing cleanly when they are
    // not mapped; it writes nothing. The device writes through this MR only for
    // reads posted by `read_batch_device` into this region, which this
    // function's caller guarantees stays allocated, writable by the device and
    // unreferenced by Rust until the MR is dropped.
    let mr = unsafe { pd.reg_mr(addr, len, sideway::ibverbs::AccessFlags::LocalWrite) };
    mr.map_err(mr_error)
}

/// Registers `len` bytes at `offset` of the dmabuf `fd` for local write, with
/// `iova` (the device address of the first byte) as the MR's address, so work
/// requests use device addresses. Providers without dmabuf support (rxe, or a
/// libibverbs older than rdma-core 34) refuse with an error.
pub(crate) fn reg_dmabuf_local_write(
    pd: &Arc<ProtectionDomain>,
    fd: i32,
    offset: u64,
    len: usize,
    iova: u64,
) -> Result<Arc<sideway::ibverbs::memory_region::MemoryRegion>, io::Error> {
    if fd < 0 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("dmabuf fd {fd} is not a file descriptor"),
        ));
    }
    // SAFETY: the kernel validates that `fd` is a dmabuf and that
    // `offset..offset+len` lies inside it (EINVAL/EBADF/EOPNOTSUPP otherwise);
    // registration writes nothing. The exporter keeps the dmabuf and its memory
    // alive until the region is unregistered (the `DeviceRegion` contract), and
    // the device writes only for reads posted by `read_batch_device` into it.
    let mr = unsafe {
        pd.reg_dmabuf_mr(
            offset,
            len,
            iova,
            fd,
            sideway::ibverbs::AccessFlags::LocalWrite,
        )
    };
    mr.map_err(mr_error)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The fabric settings reach the QP attributes of INIT and RTR.
    #[test]
    fn fabric_settings_reach_the_qp_attributes() {
        let c = Connect {
            port: 2,
            sgid_index: 5,
            remote_qpn: 0x11,
            remote_psn: 0x22,
            local_psn: 0x33,
            remote_gid: [9; 16],
            remote_lid: 7,
            path_mtu: 5,
            max_rd_atomic: 16,
            max_dest_rd_atomic: 8,
            access: ACCESS_REMOTE_READ,
            traffic_class: 104,
            sl: 3,
            pkey_index: 2,
            timeout: 21,
            retry_cnt: 5,
        };
        let (a, m) = init_attr(&c);
        assert_eq!(
            (a.pkey_index, a.port_num, a.qp_access_flags),
            (2, 2, ACCESS_REMOTE_READ)
        );
        assert_ne!(m.0 & sys::ibv_qp_attr_mask::IBV_QP_PKEY_INDEX.0, 0);
        let (a, m) = rtr_attr(&c);
        assert_eq!(a.ah_attr.grh.traffic_class, 104);
        assert_eq!(a.ah_attr.grh.sgid_index, 5);
        assert_eq!(
            (a.ah_attr.sl, a.ah_attr.port_num, a.ah_attr.is_global),
            (3, 2, 1)
        );
        assert_eq!((a.dest_qp_num, a.rq_psn, a.path_mtu), (0x11, 0x22, 5));
        assert_eq!(a.max_dest_rd_atomic, 8);
        assert_ne!(m.0 & sys::ibv_qp_attr_mask::IBV_QP_AV.0, 0);
        let (a, m) = rts_attr(&c);
        assert_eq!((a.timeout, a.retry_cnt, a.sq_psn), (21, 5, 0x33));
        assert_eq!(a.max_rd_atomic, 16);
        use sys::ibv_qp_attr_mask as M;
        assert_eq!(
            m.0 & (M::IBV_QP_TIMEOUT.0 | M::IBV_QP_RETRY_CNT.0),
            M::IBV_QP_TIMEOUT.0 | M::IBV_QP_RETRY_CNT.0
        );
    }
}
