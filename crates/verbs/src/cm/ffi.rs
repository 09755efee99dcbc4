//! The only place where rdma_cm is called: librdmacm through
//! `rdma-mummy-sys` (which dlopens `librdmacm.so.1`), fenced behind a small
//! safe API of an event channel ([`Channel`]) and an id ([`Id`]).
//!
//! Why not `sideway::rdmacm`: its `ConnectionParameter` cannot carry private
//! data nor the read depths, its `Event` does not expose the peer's private
//! data, and its event decoding panics on event types it does not know
//! (`rdma_get_cm_event` on a newer librdmacm). The QP itself is never
//! handed to librdmacm: it is created on this process's own protection
//! domain (one per device, `device.rs`) and moved through its states with
//! the attributes `rdma_init_qp_attr` computes (see `cm/mod.rs`).
#![allow(unsafe_code)]

use std::ffi::CStr;
use std::io;
use std::net::SocketAddr;
use std::os::fd::RawFd;
use std::ptr::{self, NonNull};
use std::sync::Arc;
use std::time::Duration;

use rdma_mummy_sys as sys;

/// Whether `librdmacm.so.1` can be loaded in this process, with the loader's
/// message when it cannot (rdma-mummy-sys's stubs then fail every call with
/// -1 and no errno).
pub(crate) fn librdmacm_loadable() -> Result<(), String> {
    let name = c"librdmacm.so.1";
    // SAFETY: dlopen with a valid NUL-terminated name; the handle is closed at once
    // (the library stays loaded when rdma-mummy-sys's constructor opened it already).
    let h = unsafe { libc::dlopen(name.as_ptr(), libc::RTLD_LAZY | libc::RTLD_LOCAL) };
    if h.is_null() {
        // SAFETY: dlerror returns NULL or a pointer to a thread-local NUL-terminated string.
        let e = unsafe { libc::dlerror() };
        let msg = if e.is_null() {
            "unknown dlopen error".to_string()
        } else {
            // SAFETY: non-null C string from dlerror, copied immediately.
            unsafe { CStr::from_ptr(e) }.to_string_lossy().into_owned()
        };
        return Err(format!("librdmacm.so.1 cannot be loaded: {msg}"));
    }
    // SAFETY: `h` came from dlopen above and is closed once.
    unsafe { libc::dlclose(h) };
    Ok(())
}

/// The last OS error, or a plain message when the call failed without one
/// (rdma-mummy-sys's stub when librdmacm is missing).
fn last_err(what: &str) -> io::Error {
    let e = io::Error::last_os_error();
    match e.raw_os_error() {
        Some(0) | None => io::Error::other(format!("{what} failed (librdmacm missing?)")),
        _ => io::Error::new(e.kind(), format!("{what}: {e}")),
    }
}

/// Name of an rdma_cm event type (`rdma_event_str`).
pub(crate) fn event_str(kind: u32) -> String {
    // SAFETY: rdma_event_str accepts any value and returns a static string
    // (or NULL from the stub when librdmacm is not loaded, handled below).
    let p = unsafe { sys::rdma_event_str(kind) };
    if p.is_null() {
        return format!("event {kind}");
    }
    // SAFETY: non-null pointer to a static NUL-terminated string of librdmacm.
    unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned()
}

/// A socket address as the `sockaddr` librdmacm reads.
struct RawAddr(libc::sockaddr_storage);

impl RawAddr {
    fn new(a: SocketAddr) -> RawAddr {
        // SAFETY: sockaddr_storage is plain old data; all-zero is valid.
        let mut s: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
        match a {
            SocketAddr::V4(v4) => {
                let sin = libc::sockaddr_in {
                    sin_family: libc::AF_INET as libc::sa_family_t,
                    sin_port: v4.port().to_be(),
                    sin_addr: libc::in_addr {
                        s_addr: u32::from_ne_bytes(v4.ip().octets()),
                    },
                    sin_zero: [0; 8],
                };
                // SAFETY: sockaddr_storage is larger than and aligned for sockaddr_in.
                unsafe { ptr::write(ptr::addr_of_mut!(s).cast::<libc::sockaddr_in>(), sin) };
            }
            SocketAddr::V6(v6) => {
                let sin6 = libc::sockaddr_in6 {
                    sin6_family: libc::AF_INET6 as libc::sa_family_t,
                    sin6_port: v6.port().to_be(),
                    sin6_flowinfo: v6.flowinfo(),
                    sin6_addr: libc::in6_addr {
                        s6_addr: v6.ip().octets(),
                    },
                    sin6_scope_id: v6.scope_id(),
                };
                // SAFETY: sockaddr_storage is larger than and aligned for sockaddr_in6.
                unsafe { ptr::write(ptr::addr_of_mut!(s).cast::<libc::sockaddr_in6>(), sin6) };
            }
        }
        RawAddr(s)
    }

    fn as_mut_ptr(&mut self) -> *mut libc::sockaddr {
        ptr::addr_of_mut!(self.0).cast()
    }
}

/// An rdma_cm event channel (a file descriptor librdmacm delivers events on).
pub(crate) struct Channel {
    ch: NonNull<sys::rdma_event_channel>,
}

// SAFETY: an event channel is a file descriptor; librdmacm's calls on it are
// thread-safe, and events are read by one owner at a time (`next` takes `&self`
// but every caller in this crate reads a channel from one thread only).
unsafe impl Send for Channel {}
// SAFETY: see above.
unsafe impl Sync for Channel {}

/// One event, copied out of librdmacm and already acknowledged.
pub(crate) struct Event {
    /// `rdma_cm_event_type`.
    pub kind: u32,
    /// The event's status (negative errno, or the reject reason for REJECTED).
    pub status: i32,
    /// For CONNECT_REQUEST: the new id of the incoming connection, owned.
    pub request: Option<Id>,
    /// The peer's private data (connect, accept and reject carry some).
    pub private: Vec<u8>,
    /// Connection parameters of the peer (requests and responses).
    pub responder_resources: u8,
    /// See `responder_resources`.
    pub initiator_depth: u8,
}

impl Channel {
    pub fn new() -> io::Result<Arc<Channel>> {
        librdmacm_loadable().map_err(io::Error::other)?;
        // SAFETY: no arguments; returns NULL with errno set on failure.
        let ch = unsafe { sys::rdma_create_event_channel() };
        let ch = NonNull::new(ch).ok_or_else(|| last_err("rdma_create_event_channel"))?;
        Ok(Arc::new(Channel { ch }))
    }

    fn fd(&self) -> RawFd {
        // SAFETY: the channel is alive while `self` is.
        unsafe { self.ch.as_ref().fd }
    }

    /// Waits up to `timeout` for the next event; `Ok(None)` when none came.
    /// The event is copied and acknowledged before it is returned, so no id
    /// waits on it when it is destroyed.
    pub fn next(self: &Arc<Self>, timeout: Duration) -> io::Result<Option<Event>> {
        let mut pfd = libc::pollfd {
            fd: self.fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let ms = i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX);
        // SAFETY: one valid pollfd.
        let rc = unsafe { libc::poll(&mut pfd, 1, ms) };
        if rc < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                return Ok(None);
            }
            return Err(e);
        }
        if rc == 0 {
            return Ok(None);
        }
        let mut ev: *mut sys::rdma_cm_event = ptr::null_mut();
        // SAFETY: the channel is alive; `ev` receives an event owned by librdmacm
        // until rdma_ack_cm_event below. The fd is readable, so this does not block long.
        let rc = unsafe { sys::rdma_get_cm_event(self.ch.as_ptr(), &mut ev) };
        if rc != 0 {
            return Err(last_err("rdma_get_cm_event"));
        }
        let Some(evp) = NonNull::new(ev) else {
            return Err(io::Error::other("rdma_get_cm_event returned no event"));
        };
        // SAFETY: `evp` is a valid event until acknowledged; every field read here is
        // plain data, and the private data (when present) is `private_data_len` bytes
        // owned by the event. For connection events the `conn` member of the union is
        // the active one (librdmacm fills it for RC ids, the only kind this crate makes).
        let out = unsafe {
            let e = evp.as_ref();
            let conn = e.param.conn;
            let private = if conn.private_data.is_null() || conn.private_data_len == 0 {
                Vec::new()
            } else {
                std::slice::from_raw_parts(
                    conn.private_data.cast::<u8>(),
                    usize::from(conn.private_data_len),
                )
                .to_vec()
            };
            let request = if e.event == sys::rdma_cm_event_type::RDMA_CM_EVENT_CONNECT_REQUEST {
                NonNull::new(e.id).map(|id| Id {
                    id,
                    _ch: Arc::clone(self),
                    connected: false,
                })
            } else {
                None
            };
            Event {
                kind: e.event,
                status: e.status,
                request,
                private,
                responder_resources: conn.responder_resources,
                initiator_depth: conn.initiator_depth,
            }
        };
        // SAFETY: acknowledges (frees) the event obtained above, exactly once; nothing
        // borrowed from it is used afterwards (the private data was copied).
        let rc = unsafe { sys::rdma_ack_cm_event(evp.as_ptr()) };
        if rc != 0 {
            tracing::warn!(
                "rdma_ack_cm_event failed: {}",
                last_err("rdma_ack_cm_event")
            );
        }
        Ok(Some(out))
    }
}

impl Drop for Channel {
    fn drop(&mut self) {
        // SAFETY: every Id holds an Arc to its channel, so none is left; destroyed once.
        unsafe { sys::rdma_destroy_event_channel(self.ch.as_ptr()) };
    }
}

/// An rdma_cm id of the TCP port space (reliable connected QPs).
pub(crate) struct Id {
    id: NonNull<sys::rdma_cm_id>,
    _ch: Arc<Channel>,
    connected: bool,
}

// SAFETY: librdmacm ids may be used from any thread; this crate calls an id's
// functions through `&mut self` or from the one thread owning it.
unsafe impl Send for Id {}
// SAFETY: the `&self` calls (rdma_init_qp_attr, reads of the bound device)
// do not mutate the id in user space.
unsafe impl Sync for Id {}

fn check(rc: i32, what: &str) -> io::Result<()> {
    if rc == 0 {
        Ok(())
    } else {
        Err(last_err(what))
    }
}

impl Id {
    pub fn new(ch: &Arc<Channel>) -> io::Result<Id> {
        let mut id: *mut sys::rdma_cm_id = ptr::null_mut();
        // SAFETY: the channel is alive (the Id keeps an Arc); `id` receives the new id.
        let rc = unsafe {
            sys::rdma_create_id(
                ch.ch.as_ptr(),
                &mut id,
                ptr::null_mut(),
                sys::rdma_port_space::RDMA_PS_TCP,
            )
        };
        check(rc, "rdma_create_id")?;
        let id = NonNull::new(id).ok_or_else(|| io::Error::other("rdma_create_id gave NULL"))?;
        Ok(Id {
            id,
            _ch: Arc::clone(ch),
            connected: false,
        })
    }

    pub fn bind(&self, addr: SocketAddr) -> io::Result<()> {
        let mut a = RawAddr::new(addr);
        // SAFETY: the id is alive; `a` is a valid sockaddr for the call's duration.
        let rc = unsafe { sys::rdma_bind_addr(self.id.as_ptr(), a.as_mut_ptr()) };
        check(rc, "rdma_bind_addr")
    }

    pub fn listen(&self, backlog: i32) -> io::Result<()> {
        // SAFETY: the id is alive and bound.
        let rc = unsafe { sys::rdma_listen(self.id.as_ptr(), backlog) };
        check(rc, "rdma_listen")
    }

    /// The port the id is bound to (host order).
    pub fn src_port(&self) -> u16 {
        // SAFETY: the id is alive; after rdma_bind_addr librdmacm keeps the bound
        // address (queried back from the kernel, port included) in route.addr; the
        // port sits at the same place in sockaddr_in and sockaddr_in6, and the
        // union member is plain old data.
        u16::from_be(unsafe { self.id.as_ref().route.addr.src_addr_union.src_sin.sin_port })
    }

    pub fn resolve_addr(
        &self,
        src: Option<SocketAddr>,
        dst: SocketAddr,
        timeout: Duration,
    ) -> io::Result<()> {
        let mut s = src.map(RawAddr::new);
        let mut d = RawAddr::new(dst);
        let ms = i32::try_from(timeout.as_millis())
            .unwrap_or(i32::MAX)
            .max(1);
        // SAFETY: the id is alive; both addresses are valid sockaddrs (or NULL) for
        // the call's duration (librdmacm copies them).
        let rc = unsafe {
            sys::rdma_resolve_addr(
                self.id.as_ptr(),
                s.as_mut().map_or(ptr::null_mut(), RawAddr::as_mut_ptr),
                d.as_mut_ptr(),
                ms,
            )
        };
        check(rc, "rdma_resolve_addr")
    }

    pub fn resolve_route(&self, timeout: Duration) -> io::Result<()> {
        let ms = i32::try_from(timeout.as_millis())
            .unwrap_or(i32::MAX)
            .max(1);
        // SAFETY: the id is alive and its address resolved.
        let rc = unsafe { sys::rdma_resolve_route(self.id.as_ptr(), ms) };
        check(rc, "rdma_resolve_route")
    }

    /// Name of the RDMA device the id is bound to (after address
    /// resolution, or for a connect request), and its port.
    pub fn device(&self) -> Option<(String, u8)> {
        // SAFETY: the id is alive; `verbs` is NULL or librdmacm's open context of
        // the bound device, whose `device` names it with a static NUL-terminated string.
        unsafe {
            let id = self.id.as_ref();
            let ctx = NonNull::new(id.verbs)?;
            let dev = NonNull::new(ctx.as_ref().device)?;
            let name = sys::ibv_get_device_name(dev.as_ptr());
            if name.is_null() {
                return None;
            }
            Some((
                CStr::from_ptr(name).to_string_lossy().into_owned(),
                id.port_num,
            ))
        }
    }

    /// The QP attributes rdma_cm computed for moving a QP of this
    /// connection to `state` (`IBV_QPS_INIT`, `_RTR`, `_RTS`), and their mask.
    pub fn qp_attr(&self, state: u32) -> io::Result<(sys::ibv_qp_attr, i32)> {
        // SAFETY: ibv_qp_attr is plain old data; zero is valid.
        let mut a: sys::ibv_qp_attr = unsafe { std::mem::zeroed() };
        a.qp_state = state;
        let mut mask = 0i32;
        // SAFETY: the id is alive; `a` and `mask` are valid out-parameters.
        let rc = unsafe { sys::rdma_init_qp_attr(self.id.as_ptr(), &mut a, &mut mask) };
        check(rc, "rdma_init_qp_attr")?;
        Ok((a, mask))
    }

    fn param(
        qp_num: u32,
        private: &[u8],
        responder_resources: u8,
        initiator_depth: u8,
    ) -> sys::rdma_conn_param {
        sys::rdma_conn_param {
            private_data: private.as_ptr().cast(),
            private_data_len: u8::try_from(private.len()).unwrap_or(u8::MAX),
            responder_resources,
            initiator_depth,
            flow_control: 0,
            retry_count: 7,
            rnr_retry_count: 7,
            srq: 0,
            qp_num,
        }
    }

    /// Sends the connect request for the (caller's own) QP `qp_num`.
    pub fn connect(
        &mut self,
        qp_num: u32,
        private: &[u8],
        responder_resources: u8,
        initiator_depth: u8,
    ) -> io::Result<()> {
        let private = &private[..private.len().min(56)];
        let mut p = Id::param(qp_num, private, responder_resources, initiator_depth);
        // SAFETY: the id is alive with its route resolved; `p` and the private data
        // it points at live for the call (librdmacm copies them).
        let rc = unsafe { sys::rdma_connect(self.id.as_ptr(), &mut p) };
        check(rc, "rdma_connect")?;
        self.connected = true;
        Ok(())
    }

    /// Accepts a connect request with the (caller's own, already RTS) QP `qp_num`.
    pub fn accept(
        &mut self,
        qp_num: u32,
        responder_resources: u8,
        initiator_depth: u8,
    ) -> io::Result<()> {
        let mut p = Id::param(qp_num, &[], responder_resources, initiator_depth);
        // SAFETY: the id is a connect request's id, alive; `p` lives for the call.
        let rc = unsafe { sys::rdma_accept(self.id.as_ptr(), &mut p) };
        check(rc, "rdma_accept")?;
        self.connected = true;
        Ok(())
    }

    /// Rejects a connect request, telling the peer `why` (truncated to what
    /// a reject carries).
    pub fn reject(&self, why: &str) -> io::Result<()> {
        let b = why.as_bytes();
        let b = &b[..b.len().min(140)];
        // SAFETY: the id is a connect request's id, alive; `b` lives for the call.
        let rc = unsafe { sys::rdma_reject(self.id.as_ptr(), b.as_ptr().cast(), b.len() as u8) };
        check(rc, "rdma_reject")
    }

    /// Completes an active connection after the QP reached RTS.
    pub fn establish(&self) -> io::Result<()> {
        // SAFETY: the id is alive and got its CONNECT_RESPONSE.
        let rc = unsafe { sys::rdma_establish(self.id.as_ptr()) };
        check(rc, "rdma_establish")
    }
}

impl Drop for Id {
    fn drop(&mut self) {
        if self.connected {
            // SAFETY: the id is alive; disconnecting a connection the peer already
            // closed only returns an error, which is of no interest here.
            let _ = unsafe { sys::rdma_disconnect(self.id.as_ptr()) };
        }
        // SAFETY: destroyed exactly once. Every event of this id was acknowledged
        // in `Channel::next` before anyone saw it, so this does not wait forever.
        let rc = unsafe { sys::rdma_destroy_id(self.id.as_ptr()) };
        if rc != 0 {
            tracing::warn!("rdma_destroy_id failed: {}", last_err("rdma_destroy_id"));
        }
    }
}
