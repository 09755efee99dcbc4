//! `seqfeed-verbs-check fabric DEV` (issue 10 item 4): fabric settings on
//! node and client. A GID index other than discovery's (another RoCE v2 GID
//! of the port) with DSCP 26 (traffic class 104) and service level 3 on both
//! sides: the devices report them and reads are byte-exact over QPs brought
//! up with them. A GID index the port does not have: the client's connect
//! fails with an error naming the device, port and index.

use std::net::TcpListener;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use seqfeed_verbs::standalone::{serve, TcpExchange};
use seqfeed_verbs::{
    open_devices_with, ClientOptions, FabricSettings, VerbsServer, VerbsTransport,
};

use super::{regions, run_batches, Checks};

fn read_with(dev: &str, fabric: FabricSettings) -> Result<String, String> {
    let devs = vec![dev.to_string()];
    let server = VerbsServer::open_with(Some(&devs), &fabric, regions(2, 1 << 20))
        .map_err(|e| format!("node: {e}"))?;
    let d = server
        .devices()
        .first()
        .cloned()
        .ok_or("node has no device")?;
    if Some(d.gid_index) != fabric.gid_index || d.traffic_class != fabric.traffic_class {
        return Err(format!(
            "node device reports GID index {} traffic class {}",
            d.gid_index, d.traffic_class
        ));
    }
    let listener = TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    let addr = listener
        .local_addr()
        .map_err(|e| e.to_string())?
        .to_string();
    let stop = Arc::new(AtomicBool::new(false));
    let st = Arc::clone(&stop);
    std::thread::spawn(move || serve(Arc::new(server), listener, st));
    let r = (|| {
        let ex = TcpExchange::connect(&addr).map_err(|e| e.to_string())?;
        let opts = ClientOptions {
            devices: Some(devs.clone()),
            fabric: Some(fabric),
            qps_per_rail: 1,
            max_rebuilds: 0,
            timeout: Duration::from_secs(10),
            ..Default::default()
        };
        let mut t =
            VerbsTransport::connect(&addr, Box::new(ex), opts).map_err(|e| e.to_string())?;
        let (reads, _) = run_batches(&mut t, 41, 3, 512, 64)?;
        Ok(format!(
            "GID index {} ({} {}), traffic class {}, service level {} on both sides: {reads} reads byte-exact",
            d.gid_index,
            d.gid_type,
            std::net::Ipv6Addr::from(d.gid),
            d.traffic_class,
            d.service_level
        ))
    })();
    stop.store(true, Ordering::Relaxed);
    r
}

/// Runs both cases on `dev`; returns the number of failed checks.
pub(super) fn fabrictest(dev: &str) -> u32 {
    let mut c = Checks { failed: 0 };
    let devs = vec![dev.to_string()];
    let info = match open_devices_with(Some(&devs), &FabricSettings::DEFAULT) {
        Ok(n) => match n.first() {
            Some(n) => n.info.clone(),
            None => {
                c.report("fabric", Err(format!("no device {dev}")));
                return c.failed;
            }
        },
        Err(e) => {
            c.report("fabric", Err(e.to_string()));
            return c.failed;
        }
    };
    // Another RoCE v2 GID of the port, IPv4-mapped ones first.
    let mut others: Vec<_> = info
        .gids
        .iter()
        .filter(|(i, t, _)| *i != u32::from(info.gid_index) && *t == "RoCEv2" && *i < 256)
        .collect();
    others.sort_by_key(|(_, _, g)| g.to_ipv4_mapped().is_none());
    match others.first() {
        Some((i, ..)) => {
            let fabric = FabricSettings {
                gid_index: Some(*i as u8),
                traffic_class: 104,
                service_level: 3,
                ..FabricSettings::DEFAULT
            };
            c.report(
                "fabric-gid-index",
                read_with(dev, fabric)
                    .map(|d| format!("{dev} (discovery picks GID index {}): {d}", info.gid_index)),
            );
        }
        None => println!(
            "CHECK fabric-gid-index SKIP {dev} has no second RoCE v2 GID ({:?})",
            info.gids
        ),
    }
    // A GID index the port does not have: a clear error.
    let missing = (0..=255u8)
        .rev()
        .find(|i| !info.gids.iter().any(|(g, ..)| *g == u32::from(*i)))
        .unwrap_or(255);
    let fabric = FabricSettings {
        gid_index: Some(missing),
        ..FabricSettings::DEFAULT
    };
    let r = match open_devices_with(Some(&devs), &fabric) {
        Ok(_) => Err(format!("GID index {missing} was accepted")),
        Err(e) => {
            let e = e.to_string();
            let want = [
                dev.to_string(),
                format!("port {}", info.port),
                format!("GID index {missing}"),
            ];
            if want.iter().all(|w| e.contains(w.as_str())) {
                Ok(format!("refused: {e}"))
            } else {
                Err(format!("error does not name {want:?}: {e}"))
            }
        }
    };
    c.report("fabric-missing-gid", r);
    c.failed
}
