//! Cluster files: which storage node holds which sequence files.
//!
//! A cluster file is TOML:
//!
//! ```toml
//! fingerprint = "9f2c…"   # dataset fingerprint (optional)
//! replicas = 2
//!
//! [[node]]
//! name = "node-0"
//! addr = "127.0.0.1:7000"
//! files = ["code/part-00000.seq", "web/part-00001.seq"]
//!
//! [[node]]
//! name = "node-1"
//! addr = "127.0.0.1:7001"
//! files = ["code/part-00000.seq", "web/part-00000.seq"]
//! ```
//!
//! [`place`] assigns a dataset's files to nodes with a replication factor:
//! deterministic, each file on `replicas` distinct nodes, balanced by bytes
//! (largest files first, each to the least-loaded nodes).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::regions::check_relative;

/// Errors reading, checking or building a cluster file.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClusterError {
    /// Reading or writing the file failed.
    #[error("{what} cluster file {}: {source}", path.display())]
    Io {
        /// `reading` or `writing`.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// Underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The TOML does not parse into a cluster file.
    #[error("cluster file {}: {message}", path.display())]
    Parse {
        /// The file.
        path: PathBuf,
        /// Parser message (with line and column).
        message: String,
    },
    /// The cluster is inconsistent.
    #[error("cluster file{}: {what}", path.as_ref().map(|p| format!(" {}", p.display())).unwrap_or_default())]
    Invalid {
        /// The file, when read from one.
        path: Option<PathBuf>,
        /// What is wrong.
        what: String,
    },
}

/// One storage node of a cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterNode {
    /// Node name (unique in the cluster).
    pub name: String,
    /// Address of its control service, `host:port`.
    pub addr: String,
    /// Dataset-relative sequence files it holds, sorted.
    pub files: Vec<String>,
}

/// A cluster: nodes and the files each holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterFile {
    /// Fingerprint of the dataset the files belong to, if recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fingerprint: Option<String>,
    /// Replication factor the placement used (informational).
    #[serde(default = "one")]
    pub replicas: u32,
    /// The nodes.
    #[serde(rename = "node", default)]
    pub nodes: Vec<ClusterNode>,
}

fn one() -> u32 {
    1
}

impl ClusterFile {
    /// Parses and checks a cluster file's text (`path` names it in errors).
    pub fn from_toml(text: &str, path: &Path) -> Result<Self, ClusterError> {
        let c: ClusterFile = toml::from_str(text).map_err(|e| ClusterError::Parse {
            path: path.to_owned(),
            message: e.to_string(),
        })?;
        c.validate().map_err(|e| match e {
            ClusterError::Invalid { what, .. } => ClusterError::Invalid {
                path: Some(path.to_owned()),
                what,
            },
            e => e,
        })?;
        Ok(c)
    }

    /// Reads and checks a cluster file.
    pub fn load(path: &Path) -> Result<Self, ClusterError> {
        let text = std::fs::read_to_string(path).map_err(|source| ClusterError::Io {
            what: "reading",
            path: path.to_owned(),
            source,
        })?;
        Self::from_toml(&text, path)
    }

    /// The TOML text of this cluster file.
    pub fn to_toml(&self) -> String {
        let body =
            toml::to_string_pretty(self).unwrap_or_else(|e| format!("# unserializable: {e}\n"));
        format!("# seqfeed cluster file: which storage node holds which sequence files.\n{body}")
    }

    /// Writes the file (to a temporary name, then renamed into place).
    pub fn save(&self, path: &Path) -> Result<(), ClusterError> {
        let io = |source| ClusterError::Io {
            what: "writing",
            path: path.to_owned(),
            source,
        };
        let mut tmp = path.as_os_str().to_owned();
        tmp.push(format!(".tmp.{}", std::process::id()));
        let tmp = PathBuf::from(tmp);
        std::fs::write(&tmp, self.to_toml()).map_err(io)?;
        std::fs::rename(&tmp, path).map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            io(e)
        })
    }

    /// Checks names are unique and non-empty, addresses non-empty, paths
    /// clean and not repeated within a node.
    pub fn validate(&self) -> Result<(), ClusterError> {
        let bad = |what: String| Err(ClusterError::Invalid { path: None, what });
        if self.nodes.is_empty() {
            return bad("no [[node]] entries".into());
        }
        let mut names = BTreeSet::new();
        for (i, n) in self.nodes.iter().enumerate() {
            if n.name.is_empty() {
                return bad(format!("node {i} has an empty name"));
            }
            if !names.insert(n.name.as_str()) {
                return bad(format!("node name {:?} appears twice", n.name));
            }
            if n.addr.is_empty() {
                return bad(format!("node {:?} has an empty addr", n.name));
            }
            let mut seen = BTreeSet::new();
            for f in &n.files {
                if let Err(e) = check_relative(f) {
                    return bad(format!("node {:?}: {e}", n.name));
                }
                if !seen.insert(f.as_str()) {
                    return bad(format!("node {:?} lists {f:?} twice", n.name));
                }
            }
        }
        Ok(())
    }

    /// The node named `name`.
    pub fn node(&self, name: &str) -> Option<&ClusterNode> {
        self.nodes.iter().find(|n| n.name == name)
    }

    /// For every file, the indices (into [`ClusterFile::nodes`]) of the
    /// nodes holding it, in node order.
    pub fn holders(&self) -> BTreeMap<&str, Vec<usize>> {
        let mut m: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
        for (i, n) in self.nodes.iter().enumerate() {
            for f in &n.files {
                m.entry(f.as_str()).or_default().push(i);
            }
        }
        m
    }
}

/// Assigns `files` (`(dataset-relative path, bytes)`) to `nodes`
/// (`(name, addr)`), each file to `replicas` distinct nodes, balanced by
/// bytes. Deterministic: the same inputs give the same cluster file.
pub fn place(
    files: &[(String, u64)],
    nodes: &[(String, String)],
    replicas: usize,
    fingerprint: Option<String>,
) -> Result<ClusterFile, ClusterError> {
    let bad = |what: String| Err(ClusterError::Invalid { path: None, what });
    if nodes.is_empty() {
        return bad("no nodes given".into());
    }
    if replicas == 0 || replicas > nodes.len() {
        return bad(format!(
            "replication factor {replicas} needs between 1 and {} (the number of nodes)",
            nodes.len()
        ));
    }
    let mut order: Vec<&(String, u64)> = files.iter().collect();
    order.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    let mut load = vec![(0u64, 0usize); nodes.len()]; // (bytes, files)
    let mut held: Vec<Vec<String>> = vec![Vec::new(); nodes.len()];
    for (path, bytes) in order {
        let mut idx: Vec<usize> = (0..nodes.len()).collect();
        idx.sort_by_key(|&i| (load[i], i));
        for &i in &idx[..replicas] {
            load[i].0 += bytes;
            load[i].1 += 1;
            held[i].push(path.clone());
        }
    }
    let c = ClusterFile {
        fingerprint,
        replicas: replicas as u32,
        nodes: nodes
            .iter()
            .zip(held)
            .map(|((name, addr), mut files)| {
                files.sort();
                ClusterNode {
                    name: name.clone(),
                    addr: addr.clone(),
                    files,
                }
            })
            .collect(),
    };
    c.validate()?;
    Ok(c)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nodes(n: usize) -> Vec<(String, String)> {
        (0..n)
            .map(|i| (format!("n{i}"), format!("127.0.0.1:{}", 7000 + i)))
            .collect()
    }

    #[test]
    fn placement_replicates_and_balances() {
        let files: Vec<(String, u64)> = (0..40)
            .map(|i| {
                (
                    format!("s{}/part-{i:05}.seq", i % 3),
                    1000 + (i as u64 * 37) % 500,
                )
            })
            .collect();
        let total: u64 = files.iter().map(|f| f.1).sum();
        for (n, r) in [(1, 1), (2, 2), (3, 2), (5, 3), (4, 1)] {
            let c = place(&files, &nodes(n), r, Some("fp".into())).unwrap();
            let h = c.holders();
            assert_eq!(h.len(), files.len());
            for (f, holders) in &h {
                assert_eq!(holders.len(), r, "{f}");
                let distinct: BTreeSet<_> = holders.iter().collect();
                assert_eq!(distinct.len(), r);
            }
            let sizes: BTreeMap<&str, u64> = files.iter().map(|f| (f.0.as_str(), f.1)).collect();
            let loads: Vec<u64> = c
                .nodes
                .iter()
                .map(|n| n.files.iter().map(|f| sizes[f.as_str()]).sum())
                .collect();
            assert_eq!(loads.iter().sum::<u64>(), total * r as u64);
            let (min, max) = (loads.iter().min().unwrap(), loads.iter().max().unwrap());
            assert!(max - min <= 1500, "{loads:?}"); // within one file's size
                                                     // Deterministic, and the text round-trips.
            assert_eq!(place(&files, &nodes(n), r, Some("fp".into())).unwrap(), c);
            let back = ClusterFile::from_toml(&c.to_toml(), Path::new("x.toml")).unwrap();
            assert_eq!(back, c);
        }
    }

    #[test]
    fn bad_inputs_refused() {
        let files = vec![("a.seq".to_string(), 1)];
        assert!(place(&files, &nodes(2), 3, None).is_err());
        assert!(place(&files, &nodes(2), 0, None).is_err());
        assert!(place(&files, &[], 1, None).is_err());
        let dup = vec![("n".to_string(), "a:1".to_string()); 2];
        assert!(place(&files, &dup, 1, None).is_err());
        let p = Path::new("c.toml");
        for (text, want) in [
            (
                "[[node]]\nname='a'\naddr='x:1'\nfiles=['../x.seq']\n",
                "'..'",
            ),
            (
                "[[node]]\nname='a'\naddr='x:1'\nfiles=[]\nbogus=1\n",
                "bogus",
            ),
            ("replicas = 1\n", "no [[node]]"),
            ("[[node]]\nname='a'\naddr=''\nfiles=[]\n", "empty addr"),
            ("[[node\n", "c.toml"),
        ] {
            let e = ClusterFile::from_toml(text, p).unwrap_err().to_string();
            assert!(e.contains(want) && e.contains("c.toml"), "{e}");
        }
        let dir = tempfile::tempdir().unwrap();
        let c = place(&files, &nodes(1), 1, None).unwrap();
        let path = dir.path().join("cluster.toml");
        c.save(&path).unwrap();
        assert_eq!(ClusterFile::load(&path).unwrap(), c);
        assert!(ClusterFile::load(&dir.path().join("nope.toml"))
            .unwrap_err()
            .to_string()
            .contains("nope.toml"));
    }
}
