//! Fabric settings of the queue pairs: GID index, traffic class (DSCP),
//! service level, pkey index, port, and the transport's ACK timeout and
//! retry count. The defaults are what discovery picks (the first ACTIVE
//! port, its RoCE v2 IPv4-mapped GID), zeros, and NCCL's timeout and retry
//! count (20 and 7); a cluster sets them to match its fabric (e.g. the DSCP
//! of its lossless RoCE class). Node and client both apply theirs to every
//! QP they connect, with rdma_cm too.
//!
//! The timeout is an exponent: a QP waits 4.096 us * 2^timeout for an
//! acknowledgement before it sends again ([`ack_timeout`]), and gives up
//! after `retry_count` resends (the work request then completes with
//! `IBV_WC_RETRY_EXC_ERR` and the client rebuilds the QP).

/// Environment variable: GID index (`SEQFEED_GID_INDEX=3`).
pub const GID_INDEX_ENV: &str = "SEQFEED_GID_INDEX";
/// Environment variable: IP traffic class byte (`SEQFEED_TRAFFIC_CLASS=106`).
pub const TRAFFIC_CLASS_ENV: &str = "SEQFEED_TRAFFIC_CLASS";
/// Environment variable: DSCP (0..=63), the traffic class's upper six bits
/// (`SEQFEED_DSCP=26` is traffic class 104); not with `SEQFEED_TRAFFIC_CLASS`.
pub const DSCP_ENV: &str = "SEQFEED_DSCP";
/// Environment variable: service level (0..=15).
pub const SERVICE_LEVEL_ENV: &str = "SEQFEED_SERVICE_LEVEL";
/// Environment variable: pkey index.
pub const PKEY_INDEX_ENV: &str = "SEQFEED_PKEY_INDEX";
/// Environment variable: device port (1-based).
pub const PORT_ENV: &str = "SEQFEED_IB_PORT";
/// Environment variable: local ACK timeout exponent 0..=31 (4.096 us *
/// 2^value per try; 0 waits forever), as `NCCL_IB_TIMEOUT`.
pub const TIMEOUT_ENV: &str = "SEQFEED_IB_TIMEOUT";
/// Environment variable: transport retry count 0..=7, as `NCCL_IB_RETRY_CNT`.
pub const RETRY_CNT_ENV: &str = "SEQFEED_IB_RETRY_CNT";

/// Default [`FabricSettings::timeout`]: NCCL's (`NCCL_IB_TIMEOUT=20`,
/// 4.3 s per try), long enough for congested large fabrics.
pub const DEFAULT_TIMEOUT: u8 = 20;
/// Default [`FabricSettings::retry_count`]: NCCL's (`NCCL_IB_RETRY_CNT=7`),
/// the most the attribute holds.
pub const DEFAULT_RETRY_CNT: u8 = 7;
/// Largest timeout exponent (the attribute has five bits).
pub const MAX_TIMEOUT: u8 = 31;
/// Largest retry count (the attribute has three bits).
pub const MAX_RETRY_CNT: u8 = 7;

/// How this side's QPs are addressed on the fabric.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FabricSettings {
    /// GID table index (`sgid_index`); `None`: the port's RoCE v2
    /// IPv4-mapped GID (else the best other), as discovery picks it.
    pub gid_index: Option<u8>,
    /// Traffic class of the GRH (`grh.traffic_class`, DSCP << 2 | ECN).
    pub traffic_class: u8,
    /// Service level (`ah_attr.sl`, 0..=15).
    pub service_level: u8,
    /// Partition key index (`pkey_index`).
    pub pkey_index: u16,
    /// Device port (1-based); `None`: the first ACTIVE port.
    pub port: Option<u8>,
    /// Local ACK timeout exponent (`qp_attr.timeout`, 0..=31): a try waits
    /// [`ack_timeout`]`(timeout)`; 0 waits forever.
    pub timeout: u8,
    /// Transport retries before a work request fails (`qp_attr.retry_cnt`,
    /// 0..=7).
    pub retry_count: u8,
}

impl Default for FabricSettings {
    fn default() -> Self {
        FabricSettings::DEFAULT
    }
}

/// How long a QP with timeout exponent `timeout` waits for an ACK before it
/// resends: 4.096 us * 2^timeout (`None` for 0: no timeout, it waits forever).
pub fn ack_timeout(timeout: u8) -> Option<std::time::Duration> {
    if timeout == 0 {
        return None;
    }
    let ns = 4096u128 << u32::from(timeout.min(63));
    Some(std::time::Duration::from_nanos(
        u64::try_from(ns).unwrap_or(u64::MAX),
    ))
}

fn num<T: std::str::FromStr>(var: &str, v: &str, range: &str) -> Result<T, String>
where
    T::Err: std::fmt::Display,
{
    v.trim()
        .parse::<T>()
        .map_err(|e| format!("{var}={v:?}: {e} (expected {range})"))
}

impl FabricSettings {
    /// Discovery's choices, zeros, and NCCL's timeout and retry count.
    pub const DEFAULT: FabricSettings = FabricSettings {
        gid_index: None,
        traffic_class: 0,
        service_level: 0,
        pkey_index: 0,
        port: None,
        timeout: DEFAULT_TIMEOUT,
        retry_count: DEFAULT_RETRY_CNT,
    };

    /// The settings from the `SEQFEED_*` environment variables (unset ones
    /// keep the default); a malformed value is an error naming the variable.
    pub fn from_env() -> Result<FabricSettings, String> {
        FabricSettings::from_lookup(|k| std::env::var(k).ok())
    }

    /// [`FabricSettings::from_env`] over any lookup (for tests and configs).
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<FabricSettings, String> {
        let mut f = FabricSettings::DEFAULT;
        if let Some(v) = get(GID_INDEX_ENV) {
            f.gid_index = Some(num(GID_INDEX_ENV, &v, "0..=255")?);
        }
        match (get(TRAFFIC_CLASS_ENV), get(DSCP_ENV)) {
            (Some(_), Some(_)) => {
                return Err(format!(
                    "{TRAFFIC_CLASS_ENV} and {DSCP_ENV} are both set: give one"
                ))
            }
            (Some(v), None) => f.traffic_class = num(TRAFFIC_CLASS_ENV, &v, "0..=255")?,
            (None, Some(v)) => {
                f.traffic_class = dscp_to_traffic_class(num(DSCP_ENV, &v, "0..=63")?)
                    .map_err(|e| format!("{DSCP_ENV}: {e}"))?
            }
            (None, None) => {}
        }
        if let Some(v) = get(SERVICE_LEVEL_ENV) {
            f.service_level = num(SERVICE_LEVEL_ENV, &v, "0..=15")?;
        }
        if let Some(v) = get(PKEY_INDEX_ENV) {
            f.pkey_index = num(PKEY_INDEX_ENV, &v, "0..=65535")?;
        }
        if let Some(v) = get(PORT_ENV) {
            f.port = Some(num(PORT_ENV, &v, "1..=255")?);
        }
        if let Some(v) = get(TIMEOUT_ENV) {
            f.timeout = num(TIMEOUT_ENV, &v, "0..=31")?;
            if f.timeout > MAX_TIMEOUT {
                return Err(format!(
                    "{TIMEOUT_ENV}={v:?}: the timeout exponent is 0..=31 (4.096 us * 2^value)"
                ));
            }
        }
        if let Some(v) = get(RETRY_CNT_ENV) {
            f.retry_count = num(RETRY_CNT_ENV, &v, "0..=7")?;
            if f.retry_count > MAX_RETRY_CNT {
                return Err(format!("{RETRY_CNT_ENV}={v:?}: the retry count is 0..=7"));
            }
        }
        f.check()?;
        Ok(f)
    }

    /// Checks the ranges the verbs attributes allow (service level 0..=15,
    /// port from 1, timeout 0..=31, retry count 0..=7).
    pub fn check(&self) -> Result<(), String> {
        if self.timeout > MAX_TIMEOUT {
            return Err(format!(
                "QP timeout exponent {} is over {MAX_TIMEOUT} (--ib-timeout / {TIMEOUT_ENV})",
                self.timeout
            ));
        }
        if self.retry_count > MAX_RETRY_CNT {
            return Err(format!(
                "QP retry count {} is over {MAX_RETRY_CNT} (--ib-retry-cnt / {RETRY_CNT_ENV})",
                self.retry_count
            ));
        }
        if self.service_level > 15 {
            return Err(format!("service level {} is over 15", self.service_level));
        }
        if self.port == Some(0) {
            return Err("port 0 does not exist (ports are 1-based)".into());
        }
        Ok(())
    }
}

/// The traffic class carrying DSCP `dscp` (its upper six bits, ECN 0).
pub fn dscp_to_traffic_class(dscp: u8) -> Result<u8, String> {
    if dscp > 63 {
        return Err(format!("DSCP {dscp} is over 63"));
    }
    Ok(dscp << 2)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let v: Vec<(String, String)> = pairs
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect();
        move |k| v.iter().find(|(a, _)| a == k).map(|(_, b)| b.clone())
    }

    #[test]
    fn defaults_when_nothing_is_set() {
        assert_eq!(
            FabricSettings::from_lookup(env(&[])).unwrap(),
            FabricSettings::DEFAULT
        );
        assert_eq!(FabricSettings::default(), FabricSettings::DEFAULT);
        assert_eq!(
            (
                FabricSettings::DEFAULT.timeout,
                FabricSettings::DEFAULT.retry_count
            ),
            (20, 7),
            "NCCL's defaults"
        );
    }

    #[test]
    fn timeout_and_retry_ranges() {
        for t in [0u8, 1, 20, 31] {
            let f = FabricSettings::from_lookup(env(&[(TIMEOUT_ENV, &t.to_string())])).unwrap();
            assert_eq!(f.timeout, t);
        }
        for r in 0u8..=7 {
            let f = FabricSettings::from_lookup(env(&[(RETRY_CNT_ENV, &r.to_string())])).unwrap();
            assert_eq!(f.retry_count, r);
        }
        let bad = FabricSettings {
            timeout: 32,
            ..FabricSettings::DEFAULT
        };
        assert!(bad.check().unwrap_err().contains("--ib-timeout"));
        let bad = FabricSettings {
            retry_count: 8,
            ..FabricSettings::DEFAULT
        };
        assert!(bad.check().unwrap_err().contains("--ib-retry-cnt"));
    }

    #[test]
    fn ack_timeout_is_4096ns_times_two_to_the_exponent() {
        assert_eq!(ack_timeout(0), None, "0 waits forever");
        assert_eq!(ack_timeout(1), Some(std::time::Duration::from_nanos(8192)));
        // The old hard-coded 14: about 67 ms; NCCL's 20: about 4.3 s.
        assert_eq!(ack_timeout(14).unwrap().as_millis(), 67);
        assert_eq!(ack_timeout(20).unwrap().as_millis(), 4294);
        assert_eq!(ack_timeout(31).unwrap().as_secs(), 8796);
    }

    #[test]
    fn every_variable_parses() {
        let f = FabricSettings::from_lookup(env(&[
            (GID_INDEX_ENV, "3"),
            (DSCP_ENV, "26"),
            (SERVICE_LEVEL_ENV, "5"),
            (PKEY_INDEX_ENV, "1"),
            (PORT_ENV, "2"),
            (TIMEOUT_ENV, "18"),
            (RETRY_CNT_ENV, "5"),
        ]))
        .unwrap();
        assert_eq!(
            f,
            FabricSettings {
                gid_index: Some(3),
                traffic_class: 104,
                service_level: 5,
                pkey_index: 1,
                port: Some(2),
                timeout: 18,
                retry_count: 5,
            }
        );
        let f = FabricSettings::from_lookup(env(&[(TRAFFIC_CLASS_ENV, " 106 ")])).unwrap();
        assert_eq!(f.traffic_class, 106);
    }

    #[test]
    fn bad_values_name_the_variable() {
        for (pairs, says) in [
            (vec![(GID_INDEX_ENV, "x")], "SEQFEED_GID_INDEX=\"x\""),
            (vec![(GID_INDEX_ENV, "256")], "SEQFEED_GID_INDEX"),
            (vec![(DSCP_ENV, "64")], "DSCP 64 is over 63"),
            (
                vec![(SERVICE_LEVEL_ENV, "16")],
                "service level 16 is over 15",
            ),
            (vec![(PORT_ENV, "0")], "port 0"),
            (vec![(PKEY_INDEX_ENV, "-1")], "SEQFEED_PKEY_INDEX"),
            (vec![(DSCP_ENV, "1"), (TRAFFIC_CLASS_ENV, "4")], "both set"),
            (vec![(TIMEOUT_ENV, "32")], "SEQFEED_IB_TIMEOUT=\"32\""),
            (vec![(TIMEOUT_ENV, "-1")], "SEQFEED_IB_TIMEOUT"),
            (vec![(RETRY_CNT_ENV, "8")], "SEQFEED_IB_RETRY_CNT=\"8\""),
            (vec![(RETRY_CNT_ENV, "seven")], "SEQFEED_IB_RETRY_CNT"),
        ] {
            let e = FabricSettings::from_lookup(env(&pairs)).unwrap_err();
            assert!(e.contains(says), "{pairs:?}: {e}");
        }
    }
}
