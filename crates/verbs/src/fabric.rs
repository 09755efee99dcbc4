//! Fabric settings of the queue pairs: GID index, traffic class (DSCP),
//! service level, pkey index and port. The defaults are what discovery
//! picks (the first ACTIVE port, its RoCE v2 IPv4-mapped GID) and zeros;
//! a cluster sets them to match its fabric (e.g. the DSCP of its lossless
//! RoCE class). Node and client both apply theirs to every QP they connect.

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

/// How this side's QPs are addressed on the fabric.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
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
    /// Discovery's choices and zeros (what every QP used before these
    /// settings existed).
    pub const DEFAULT: FabricSettings = FabricSettings {
        gid_index: None,
        traffic_class: 0,
        service_level: 0,
        pkey_index: 0,
        port: None,
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
        f.check()?;
        Ok(f)
    }

    /// Checks the ranges the verbs attributes allow (service level 0..=15,
    /// port from 1).
    pub fn check(&self) -> Result<(), String> {
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
    }

    #[test]
    fn every_variable_parses() {
        let f = FabricSettings::from_lookup(env(&[
            (GID_INDEX_ENV, "3"),
            (DSCP_ENV, "26"),
            (SERVICE_LEVEL_ENV, "5"),
            (PKEY_INDEX_ENV, "1"),
            (PORT_ENV, "2"),
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
        ] {
            let e = FabricSettings::from_lookup(env(&pairs)).unwrap_err();
            assert!(e.contains(says), "{pairs:?}: {e}");
        }
    }
}
