//! The RDMA fabric flags `serve` and `read` share: GID index, traffic class
//! or DSCP, service level, pkey index, port, ACK timeout and retry count.
//! Each falls back to its `SEQFEED_*` environment variable, then to
//! discovery's choice (or NCCL's timeout and retry count).
use anyhow::bail;
use seqfeed_node::FabricSettings;

/// Fabric settings of this side's queue pairs (node and client must agree).
#[derive(clap::Args, Debug, Default)]
pub struct FabricArgs {
    /// GID index for every queue pair (default: the port's RoCE v2
    /// IPv4-mapped GID; env SEQFEED_GID_INDEX).
    #[arg(long)]
    gid_index: Option<u8>,
    /// GRH traffic class byte (env SEQFEED_TRAFFIC_CLASS).
    #[arg(long, conflicts_with = "dscp")]
    traffic_class: Option<u8>,
    /// DSCP 0..=63, i.e. traffic class DSCP << 2 (env SEQFEED_DSCP).
    #[arg(long)]
    dscp: Option<u8>,
    /// Service level 0..=15 (env SEQFEED_SERVICE_LEVEL).
    #[arg(long)]
    service_level: Option<u8>,
    /// Partition key index (env SEQFEED_PKEY_INDEX).
    #[arg(long)]
    pkey_index: Option<u16>,
    /// Device port, 1-based (default: the first ACTIVE port; env SEQFEED_IB_PORT).
    #[arg(long)]
    ib_port: Option<u8>,
    /// QP local ACK timeout exponent 0..=31: each try waits 4.096 us *
    /// 2^value (20, the default as in NCCL: 4.3 s; 0 waits forever; env
    /// SEQFEED_IB_TIMEOUT).
    #[arg(long, value_parser = clap::value_parser!(u8).range(0..=31))]
    ib_timeout: Option<u8>,
    /// QP transport retries 0..=7 before a read fails (default 7; env
    /// SEQFEED_IB_RETRY_CNT).
    #[arg(long, value_parser = clap::value_parser!(u8).range(0..=7))]
    ib_retry_cnt: Option<u8>,
}

impl FabricArgs {
    /// Whether any flag was given.
    pub fn any(&self) -> bool {
        self.gid_index.is_some()
            || self.traffic_class.is_some()
            || self.dscp.is_some()
            || self.service_level.is_some()
            || self.pkey_index.is_some()
            || self.ib_port.is_some()
            || self.ib_timeout.is_some()
            || self.ib_retry_cnt.is_some()
    }

    /// The settings: the `SEQFEED_*` environment, then the flags over it.
    pub fn settings(&self) -> anyhow::Result<FabricSettings> {
        let mut f = FabricSettings::from_env().map_err(anyhow::Error::msg)?;
        if let Some(i) = self.gid_index {
            f.gid_index = Some(i);
        }
        if let Some(t) = self.traffic_class {
            f.traffic_class = t;
        }
        if let Some(d) = self.dscp {
            if d > 63 {
                bail!("--dscp {d}: DSCP is 0..=63");
            }
            f.traffic_class = d << 2;
        }
        if let Some(s) = self.service_level {
            f.service_level = s;
        }
        if let Some(p) = self.pkey_index {
            f.pkey_index = p;
        }
        if let Some(p) = self.ib_port {
            f.port = Some(p);
        }
        // clap checked the ranges (its error names the flag); `check`
        // below repeats it for the environment's values.
        if let Some(t) = self.ib_timeout {
            f.timeout = t;
        }
        if let Some(r) = self.ib_retry_cnt {
            f.retry_count = r;
        }
        f.check().map_err(anyhow::Error::msg)?;
        Ok(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(clap::Parser)]
    struct Cli {
        #[command(flatten)]
        fabric: FabricArgs,
    }

    #[test]
    fn timeout_and_retry_flags_parse_and_are_range_checked() {
        let c = Cli::try_parse_from(["x", "--ib-timeout", "22", "--ib-retry-cnt", "3"]).unwrap();
        assert!(c.fabric.any());
        assert_eq!(
            (c.fabric.ib_timeout, c.fabric.ib_retry_cnt),
            (Some(22), Some(3))
        );
        let e = Cli::try_parse_from(["x", "--ib-timeout", "32"])
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(e.contains("--ib-timeout"), "{e}");
        let e = Cli::try_parse_from(["x", "--ib-retry-cnt", "8"])
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(e.contains("--ib-retry-cnt"), "{e}");
    }
}
