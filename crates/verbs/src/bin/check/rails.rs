//! `seqfeed-verbs-check rails DEV0,DEV1` (issue 10 item 3): rail k of the
//! client pairs with rail k of the node, or as its rail map says, and reads
//! go round-robin over both rails. In the guest the two rxe devices sit on
//! dummy netdevs in separate subnets, so only the right pairing can carry a
//! read:
//! - node on DEV0,DEV1, client on DEV0,DEV1: every read right, both rails
//!   carry reads;
//! - node on DEV1,DEV0, client on DEV0,DEV1 with the map `0:1,1:0`: the same;
//! - node on DEV1,DEV0, client on DEV0,DEV1 without a map (a wrong pairing):
//!   the batch must fail (it would read fine if rails were not separate).

use std::time::Duration;

use seqfeed_verbs::standalone::TcpExchange;
use seqfeed_verbs::{parse_rail_map, ClientOptions, VerbsTransport};

use super::{run_batches, start_node, Checks};

fn client(
    addr: &str,
    devs: &[String],
    map: Option<Vec<u32>>,
    timeout: Duration,
) -> Result<VerbsTransport, String> {
    let ex = TcpExchange::connect(addr).map_err(|e| e.to_string())?;
    let opts = ClientOptions {
        devices: Some(devs.to_vec()),
        rail_map: map,
        qps_per_rail: 2,
        max_rebuilds: 0,
        timeout,
        ..Default::default()
    };
    VerbsTransport::connect(addr, Box::new(ex), opts).map_err(|e| e.to_string())
}

/// Reads through a client of `client_devs` (with `map`) from a node on
/// `node_devs`; the reads per rail.
fn read_over(
    node_devs: &[String],
    client_devs: &[String],
    map: Option<Vec<u32>>,
    timeout: Duration,
) -> Result<Vec<u64>, String> {
    let (addr, stop) = start_node(Some(node_devs), 4, 1 << 20)?;
    let r = (|| {
        let mut t = client(&addr, client_devs, map, timeout)?;
        run_batches(&mut t, 31, 4, 512, 256)?;
        Ok(t.rail_reads())
    })();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    r
}

/// Runs the three cases; returns the number of failed checks.
pub(super) fn railtest(devices: &str) -> u32 {
    let mut c = Checks { failed: 0 };
    let devs: Vec<String> = devices.split(',').map(str::to_string).collect();
    if devs.len() != 2 {
        c.report("rails", Err(format!("need two devices, got {devices:?}")));
        return c.failed;
    }
    let swapped = vec![devs[1].clone(), devs[0].clone()];
    let both = |reads: Vec<u64>| {
        if reads.iter().all(|&n| n > 0) {
            Ok(format!("reads per rail {reads:?}"))
        } else {
            Err(format!("a rail carried no reads: {reads:?}"))
        }
    };
    let slow = Duration::from_secs(60);
    let r = read_over(&devs, &devs, None, slow).and_then(both);
    c.report(
        "rails-paired",
        r.map(|d| format!("node {devs:?}, client {devs:?}: {d}")),
    );
    let r = parse_rail_map("0:1,1:0")
        .and_then(|m| read_over(&swapped, &devs, Some(m), slow))
        .and_then(both);
    c.report(
        "rails-mapped",
        r.map(|d| format!("node {swapped:?}, client {devs:?}, map 0:1,1:0: {d}")),
    );
    let r = match read_over(&swapped, &devs, Some(vec![0, 1]), Duration::from_secs(3)) {
        Ok(reads) => Err(format!(
            "node {swapped:?}, client {devs:?} paired by index read fine ({reads:?}): the rails are not separate"
        )),
        Err(e) => Ok(format!("node {swapped:?}, client {devs:?} paired by index fails: {e}")),
    };
    c.report("rails-wrong-pairing-fails", r);
    c.failed
}
