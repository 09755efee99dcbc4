//! `seqfeed-node DATASET LISTEN [SECRET]`: a minimal standalone storage
//! node (every file of the dataset), printing `listening on ADDR` on stdout
//! once it accepts connections and stopping cleanly on SIGINT/SIGTERM.
//! The full command is `seqfeed serve`; this binary lets the node's own
//! tests run nodes as real processes.
#![forbid(unsafe_code)]

use std::io::Write;
use std::process::ExitCode;

use seqfeed_node::{Node, NodeConfig};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (dataset, listen) = match (args.first(), args.get(1)) {
        (Some(d), Some(l)) => (d, l),
        _ => {
            eprintln!("usage: seqfeed-node DATASET LISTEN [SECRET]");
            return ExitCode::from(2);
        }
    };
    let listen = match listen.parse() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("seqfeed-node: bad listen address {listen:?}: {e}");
            return ExitCode::from(2);
        }
    };
    let mut cfg = NodeConfig::new(dataset, listen);
    cfg.secret = args.get(2).cloned();
    let mut node = match Node::start(cfg) {
        Ok(n) => n,
        Err(e) => {
            eprintln!("seqfeed-node: {e}");
            return ExitCode::FAILURE;
        }
    };
    if let Err(e) = node.catch_signals() {
        eprintln!("seqfeed-node: installing signal handlers: {e}");
        return ExitCode::FAILURE;
    }
    println!("listening on {}", node.local_addr());
    let _ = std::io::stdout().flush();
    match node.wait_for_signal() {
        Ok(sig) => eprintln!("seqfeed-node: {sig}, stopping"),
        Err(e) => eprintln!("seqfeed-node: waiting for signals: {e}"),
    }
    node.shutdown();
    ExitCode::SUCCESS
}
