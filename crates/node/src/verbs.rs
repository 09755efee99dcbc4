//! RDMA verbs for the node: a [`VerbsFactory`] that registers the node's
//! mapped files on its RDMA devices (remote read only) and answers
//! `VerbsConnect` with [`seqfeed_verbs::WireAcceptor`], which destroys a
//! connection's queue pairs when the node reports it closed, and a
//! replaced QP as soon as its replacement is asked for.

use std::sync::Arc;

use seqfeed_verbs::{FabricSettings, WireAcceptor};
use seqfeed_wire::{VerbsAccept, VerbsConnect};

use crate::{ClientId, QpLimits, VerbsAcceptor, VerbsFactory};

impl VerbsAcceptor for WireAcceptor {
    fn accept(
        &self,
        id: ClientId,
        client: &str,
        req: &VerbsConnect,
        limits: &QpLimits,
    ) -> Result<VerbsAccept, String> {
        WireAcceptor::accept(self, id.0, client, req, limits)
    }

    fn disconnected(&self, id: ClientId) {
        WireAcceptor::disconnected(self, id.0);
    }

    fn open_qps(&self) -> Option<usize> {
        Some(self.kept_qps())
    }
}

/// The RDMA devices this host could serve verbs on (each with an ACTIVE
/// port and a usable GID), or why there are none (libibverbs missing, no
/// device, no ACTIVE port). Never fails hard: callers fall back to tcp.
pub fn verbs_devices() -> Result<Vec<String>, String> {
    match seqfeed_verbs::probe() {
        seqfeed_verbs::Selection::Verbs { devices } => Ok(devices),
        seqfeed_verbs::Selection::Tcp { reason } => Err(reason),
    }
}

/// A factory enabling verbs on the named RDMA devices (`None`: every device
/// with an ACTIVE port). Starting the node fails with the reason when no
/// device is usable (libibverbs missing, no device, no ACTIVE port), or,
/// before anything is registered, when the served files cannot be pinned
/// (`RLIMIT_MEMLOCK` or `MemAvailable` too small: the message gives the
/// numbers and the fix; see [`seqfeed_verbs::pinning`]). Devices offering
/// on-demand paging for RC reads register without pinning.
///
/// The fabric settings (GID index, traffic class / DSCP, service level,
/// pkey index, port) come from the `SEQFEED_*` environment variables
/// ([`FabricSettings::from_env`]) when the node starts; see
/// [`verbs_factory_with`] to give them.
pub fn verbs_factory(devices: Option<Vec<String>>) -> VerbsFactory {
    Arc::new(move |table| {
        let fabric = FabricSettings::from_env()?;
        let acceptor = WireAcceptor::from_table_with(table, devices.as_deref(), &fabric)
            .map_err(|e| e.to_string())?;
        Ok(Arc::new(acceptor) as Arc<dyn VerbsAcceptor>)
    })
}

/// [`verbs_factory`] with the given fabric settings for every QP the node
/// accepts (the environment is not read).
pub fn verbs_factory_with(devices: Option<Vec<String>>, fabric: FabricSettings) -> VerbsFactory {
    verbs_factory_cm(devices, Some(fabric), None)
}

/// [`verbs_factory_with`] (`fabric` `None`: from the environment when the
/// node starts, as [`verbs_factory`]), plus an rdma_cm listener on `cm_listen` (e.g.
/// `0.0.0.0:7472`) when given: clients that connect their queue pairs
/// with rdma_cm (`SEQFEED_VERBS_CONNECT=cm`) get, through the control
/// service as before, their regions and rkeys, their QP quota and a grant
/// for each QP, then connect it with librdmacm (see
/// [`seqfeed_verbs::cm`]). Control-service clients are served as before.
pub fn verbs_factory_cm(
    devices: Option<Vec<String>>,
    fabric: Option<FabricSettings>,
    cm_listen: Option<std::net::SocketAddr>,
) -> VerbsFactory {
    Arc::new(move |table| {
        let fabric = match fabric {
            Some(f) => f,
            None => FabricSettings::from_env()?,
        };
        let mut acceptor = WireAcceptor::from_table_with(table, devices.as_deref(), &fabric)
            .map_err(|e| e.to_string())?;
        if let Some(addr) = cm_listen {
            let port = acceptor
                .listen_cm(addr)
                .map_err(|e| format!("rdma_cm listener on {addr}: {e}"))?;
            tracing::info!(%addr, port, "verbs: queue pairs may also connect with rdma_cm");
        }
        Ok(Arc::new(acceptor) as Arc<dyn VerbsAcceptor>)
    })
}

/// Whether verbs clients of this process connect their queue pairs with
/// rdma_cm (`SEQFEED_VERBS_CONNECT=cm`): in-process nodes (`seqfeed demo`)
/// then listen for it.
pub fn clients_use_cm() -> bool {
    matches!(
        seqfeed_verbs::ConnectMode::from_env(),
        Ok(seqfeed_verbs::ConnectMode::Cm)
    )
}
