//! `seqfeed-verbs-check cm DEV0[,DEV1]` (issue 10 item 4): QPs connected
//! with rdma_cm instead of the control-service exchange.
//! - A node listening for rdma_cm (port picked by the kernel) serves
//!   synthetic files; a client with `ConnectMode::Cm` on the same devices
//!   reads them byte-exact, over both rails when two devices are given
//!   (every rail must carry reads), then again after a QP was broken and
//!   rebuilt (its replacement connected with rdma_cm too).
//! - A node that does not listen for rdma_cm: the connect fails saying so.
//! - Error paths, each bounded by the timeout: an address nobody holds
//!   (the guest's dummy netdevs resolve any neighbour without ARP, so this
//!   fails at `connect` when the timeout runs out; with ARP it fails at
//!   `resolve addr`), a port nothing listens on (`rejected`, CM reject code
//!   8), and the node's listener with a token it never granted (`rejected`,
//!   with the node's reason).

use std::net::{IpAddr, SocketAddr, TcpListener};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use seqfeed_verbs::cm::{probe_connect, rail_addr};
use seqfeed_verbs::standalone::{serve, TcpExchange};
use seqfeed_verbs::{ClientOptions, ConnectMode, VerbsServer, VerbsTransport};

use super::{regions, run_batches, Checks};

/// A node on `devs` (rdma_cm listener when `cm`), serving over the
/// standalone exchange: (exchange address, cm port, stop flag).
fn node(devs: &[String], cm: bool) -> Result<(String, Option<u16>, Arc<AtomicBool>), String> {
    let mut server =
        VerbsServer::open(Some(devs), regions(4, 1 << 20)).map_err(|e| format!("node: {e}"))?;
    let port = if cm {
        Some(
            server
                .listen_cm("0.0.0.0:0".parse().map_err(|e| format!("{e}"))?)
                .map_err(|e| format!("node: {e}"))?,
        )
    } else {
        None
    };
    let listener = TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    let addr = listener
        .local_addr()
        .map_err(|e| e.to_string())?
        .to_string();
    let stop = Arc::new(AtomicBool::new(false));
    let st = Arc::clone(&stop);
    std::thread::spawn(move || serve(Arc::new(server), listener, st));
    Ok((addr, port, stop))
}

fn client(addr: &str, devs: &[String], timeout: Duration) -> Result<VerbsTransport, String> {
    let ex = TcpExchange::connect(addr).map_err(|e| e.to_string())?;
    let opts = ClientOptions {
        devices: Some(devs.to_vec()),
        qps_per_rail: 2,
        max_rebuilds: 2,
        timeout: Duration::from_secs(30),
        connect: Some(ConnectMode::Cm),
        cm_timeout: timeout,
        ..Default::default()
    };
    VerbsTransport::connect(addr, Box::new(ex), opts).map_err(|e| e.to_string())
}

fn read_cm(devs: &[String]) -> Result<String, String> {
    let (addr, port, stop) = node(devs, true)?;
    let r = (|| {
        let mut t = client(&addr, devs, Duration::from_secs(10))?;
        if t.connect_mode() != ConnectMode::Cm {
            return Err(format!("transport says {:?}", t.connect_mode()));
        }
        let (reads, bytes) = run_batches(&mut t, 51, 4, 512, 256)?;
        let per_rail = t.rail_reads();
        if per_rail.contains(&0) {
            return Err(format!("a rail carried no reads: {per_rail:?}"));
        }
        // Break a QP: its replacement is connected with rdma_cm as well.
        if !t.inject_qp_error(0) {
            return Err("no lane 0 to break".into());
        }
        let (reads2, _) = run_batches(&mut t, 52, 2, 512, 256)?;
        let rebuilds = t.counters().rebuilds;
        if rebuilds == 0 {
            return Err("the broken QP was not rebuilt".into());
        }
        Ok(format!(
            "node listens on rdma_cm port {}; {} QPs over {:?} connected with rdma_cm: {reads} reads \
             ({bytes} bytes) byte-exact, reads per rail {per_rail:?}; after {rebuilds} QP rebuild(s) \
             through rdma_cm {reads2} more reads byte-exact",
            port.unwrap_or(0),
            t.qp_count(),
            t.devices()
        ))
    })();
    stop.store(true, Ordering::Relaxed);
    r
}

fn node_without_cm(dev: &str) -> Result<String, String> {
    let devs = vec![dev.to_string()];
    let (addr, _, stop) = node(&devs, false)?;
    let r = match client(&addr, &devs, Duration::from_secs(5)) {
        Ok(_) => Err("connected with rdma_cm to a node that does not listen for it".into()),
        Err(e) if e.contains("does not listen for rdma_cm") => Ok(format!("refused: {e}")),
        Err(e) => Err(format!("error does not say the node does not listen: {e}")),
    };
    stop.store(true, Ordering::Relaxed);
    r
}

/// One error case: `probe_connect` must fail within `timeout` (+2 s slack
/// for set-up) with an error naming `dst` and containing every `want`.
fn bad_connect(
    dev: &str,
    src: Option<IpAddr>,
    dst: SocketAddr,
    timeout: Duration,
    want: &[&str],
) -> Result<String, String> {
    let t0 = Instant::now();
    let r = probe_connect(dev, src, dst, timeout);
    let took = t0.elapsed();
    match r {
        Ok(()) => Err(format!("connect to {dst} succeeded")),
        Err(e) => {
            let e = e.to_string();
            if took > timeout + Duration::from_secs(2) {
                return Err(format!("took {took:?} (timeout {timeout:?}): {e}"));
            }
            let dst_s = dst.to_string();
            match std::iter::once(dst_s.as_str())
                .chain(want.iter().copied())
                .find(|w| !e.contains(w))
            {
                Some(w) => Err(format!("error does not say {w:?}: {e}")),
                None => Ok(format!("failed in {:.1} s: {e}", took.as_secs_f64())),
            }
        }
    }
}

/// Runs the cm checks on `devices`; returns the number of failed checks.
pub(super) fn cmtest(devices: &str) -> u32 {
    let mut c = Checks { failed: 0 };
    let devs: Vec<String> = devices.split(',').map(str::to_string).collect();
    let dev0 = devs[0].clone();
    c.report(&format!("cm-read-{dev0}"), read_cm(&devs[..1]));
    if devs.len() > 1 {
        c.report("cm-read-rails", read_cm(&devs));
    } else {
        println!("CHECK cm-read-rails SKIP only one RDMA device");
    }
    c.report("cm-no-listener", node_without_cm(&dev0));

    // The error paths, on dev0's own subnet.
    let info = match seqfeed_verbs::open_devices(Some(&devs[..1])) {
        Ok(n) if !n.is_empty() => n[0].info.clone(),
        Ok(_) | Err(_) => {
            c.report("cm-errors", Err(format!("cannot open {dev0}")));
            return c.failed;
        }
    };
    let Some(IpAddr::V4(ip)) = rail_addr(&info) else {
        println!("CHECK cm-errors SKIP {dev0} has no IPv4-mapped RoCE GID to derive a subnet from");
        return c.failed;
    };
    let src = Some(IpAddr::V4(ip));
    let timeout = Duration::from_secs(3);
    // An address in the subnet that nobody holds (dummy netdevs drop everything).
    let o = ip.octets();
    let nobody = IpAddr::V4([o[0], o[1], o[2], o[3].wrapping_add(100)].into());
    c.report(
        "cm-wrong-address",
        bad_connect(
            &dev0,
            src,
            SocketAddr::new(nobody, 7472),
            timeout,
            &["rdma_cm"],
        ),
    );
    let (_, port, stop) = match node(&devs[..1], true) {
        Ok(n) => n,
        Err(e) => {
            c.report("cm-wrong-port", Err(e));
            return c.failed;
        }
    };
    let port = port.unwrap_or(0);
    let wrong = if port == 65535 { port - 1 } else { port + 1 };
    c.report(
        "cm-wrong-port",
        bad_connect(
            &dev0,
            src,
            SocketAddr::new(IpAddr::V4(ip), wrong),
            timeout,
            &["rdma_cm rejected"],
        ),
    );
    c.report(
        "cm-wrong-token",
        bad_connect(
            &dev0,
            src,
            SocketAddr::new(IpAddr::V4(ip), port),
            timeout,
            &["rdma_cm rejected", "node refused"],
        ),
    );
    stop.store(true, Ordering::Relaxed);
    c.failed
}
