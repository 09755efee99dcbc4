//! `seqfeed-verbs-check sleep DEV` (issue 10 item 6): spin-then-sleep
//! completion handling. A client reads byte-exact from a node in a child
//! process, the node is killed, and the client's next batch waits for
//! completions that never come until it notices the node is gone (the
//! stall check, 1 s). That wait is measured twice: with a client that polls
//! without pause (`spin: None`, as ib_read_bw) and with the default
//! spin-then-sleep. Both must report a node failure; the sleeping client
//! must have slept on its completion channels and spent clearly less CPU
//! per wall second of the wait than the spinning one.
//!
//! A healthy batch cannot show it on rxe: its requester and the node's
//! responder run in the posting thread's own system calls (loopback
//! bypasses the network), so completions are there when `ibv_post_send`
//! returns and there is nothing to wait for.

use std::time::{Duration, Instant};

use seqfeed_transport::Transport;
use seqfeed_verbs::standalone::TcpExchange;
use seqfeed_verbs::{ClientOptions, VerbsTransport, DEFAULT_SPIN};

use super::{make_batch, run_batches, spawn_node, Checks};
use rand::SeedableRng;

/// CPU seconds (user + system) of the calling thread, from
/// /proc/thread-self/stat (clock ticks, 100 per second).
fn thread_cpu() -> Result<f64, String> {
    let s = std::fs::read_to_string("/proc/thread-self/stat").map_err(|e| e.to_string())?;
    let rest = s.rsplit_once(')').map(|x| x.1).ok_or("no ')' in stat")?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    // Fields after the comm start at 3 (state); utime is 14 and stime 15.
    let tick = |i: usize| -> Result<f64, String> {
        f.get(i - 3)
            .and_then(|v| v.parse::<u64>().ok())
            .map(|t| t as f64 / 100.0)
            .ok_or_else(|| format!("/proc/thread-self/stat field {i} unreadable"))
    };
    Ok(tick(14)? + tick(15)?)
}

/// What one mode measured while waiting on the killed node.
struct Wait {
    cpu: f64,
    wall: f64,
    sleeps: u64,
    reads_before: u64,
    error: String,
}

fn run(dev: &str, spin: Option<Duration>) -> Result<Wait, String> {
    let (mut child, addr) = spawn_node()?;
    let r = (|| {
        let ex = TcpExchange::connect(&addr).map_err(|e| e.to_string())?;
        let opts = ClientOptions {
            devices: Some(vec![dev.to_string()]),
            qps_per_rail: 1,
            max_rebuilds: 1,
            timeout: Duration::from_secs(30),
            stall_check: Duration::from_secs(1),
            spin,
            ..Default::default()
        };
        let mut t =
            VerbsTransport::connect(&addr, Box::new(ex), opts).map_err(|e| e.to_string())?;
        let (reads_before, _) = run_batches(&mut t, 5, 3, 16 << 10, 32)?;
        child.kill().map_err(|e| e.to_string())?;
        let _ = child.wait();
        let (reads, _) = make_batch(
            &mut rand::rngs::StdRng::seed_from_u64(11),
            2,
            1 << 20,
            16 << 10,
            32,
        );
        let mut dst = vec![0u8; 1 << 20];
        let sleeps0 = t.counters().sleeps;
        let (c0, w0) = (thread_cpu()?, Instant::now());
        let res = t.read_batch(&reads, &mut dst);
        let (cpu, wall) = (thread_cpu()? - c0, w0.elapsed().as_secs_f64());
        let error = match res {
            Ok(_) => return Err("reads succeeded after the node was killed".into()),
            Err(e) if e.is_node_failure() => e.to_string(),
            Err(e) => return Err(format!("error is not a node failure: {e}")),
        };
        Ok(Wait {
            cpu,
            wall,
            sleeps: t.counters().sleeps - sleeps0,
            reads_before,
            error,
        })
    })();
    let _ = child.kill();
    let _ = child.wait();
    r
}

/// Runs both modes on `dev`; returns the number of failed checks.
pub(super) fn sleeptest(dev: &str) -> u32 {
    let mut c = Checks { failed: 0 };
    let r = (|| {
        let spun = run(dev, None).map_err(|e| format!("spinning client: {e}"))?;
        let slept = run(dev, Some(DEFAULT_SPIN)).map_err(|e| format!("sleeping client: {e}"))?;
        let (fs, fp) = (spun.cpu / spun.wall, slept.cpu / slept.wall);
        let detail = format!(
            "on {dev}, {} and {} reads byte-exact, then the node killed: the spinning client \
             waited {:.2} s using {:.2} CPU s per wall s ({} sleeps); spinning {} us then \
             sleeping, {:.2} s using {:.2} CPU s per wall s ({} sleeps); both failed over: {}",
            spun.reads_before,
            slept.reads_before,
            spun.wall,
            fs,
            spun.sleeps,
            DEFAULT_SPIN.as_micros(),
            slept.wall,
            fp,
            slept.sleeps,
            slept.error
        );
        if spun.sleeps != 0 {
            return Err(format!("the spinning client slept: {detail}"));
        }
        if slept.sleeps == 0 {
            return Err(format!("the sleeping client never slept: {detail}"));
        }
        if fp >= 0.5 * fs {
            return Err(format!(
                "sleeping did not halve the CPU per wall second of spinning: {detail}"
            ));
        }
        Ok(detail)
    })();
    c.report("sleep", r);
    c.failed
}
