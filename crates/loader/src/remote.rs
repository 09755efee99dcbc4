//! The dataset as the storage nodes describe it: a trainer host that holds
//! no data asks every node for its sources' manifests over the control
//! service (after the handshake, so only a holder of the shared secret
//! learns them), checks each node's manifests against the dataset
//! fingerprint of its own handshake, and requires every node that answers
//! to describe the same data.
//!
//! The manifests carry everything the plan needs (files, sequence counts,
//! `seq_len`, dtype, tokenizer, special-token ids) and the BLAKE3 hash of
//! every file's payload, and the dataset fingerprint computed from them is
//! exactly the one a trainer opening the dataset directory computes.

use std::net::ToSocketAddrs;
use std::path::{Path, PathBuf};

use seqfeed_format::{DatasetManifests, SourceManifest};
use seqfeed_transport::tcp::{ConnectOptions, ControlClient};

use crate::connect::Endpoint;
use crate::error::LoaderError;
use crate::open::error_message;

/// Nodes asked at once.
const PARALLEL_ASKS: usize = 32;

/// The dataset the storage nodes agree on.
#[derive(Debug, Clone)]
pub struct NodeDataset {
    /// The sources' manifests (sorted by name) and the dataset fingerprint.
    pub manifests: DatasetManifests,
    /// The nodes that answered, in the order given.
    pub answered: Vec<String>,
    /// The nodes that did not answer, each with why.
    pub failed: Vec<(String, String)>,
}

/// Asks every remote endpoint for the dataset's manifests (in parallel) and
/// returns what the nodes that answered agree on.
///
/// Nodes that cannot be reached are left out (and logged); when none
/// answers, the error names every node tried and why it failed. Nodes that
/// answer with different data are refused, naming both nodes, the source
/// and the field that differs.
pub fn fetch_dataset(
    endpoints: &[Endpoint],
    opts: &ConnectOptions,
) -> Result<NodeDataset, LoaderError> {
    let remote: Vec<&Endpoint> = endpoints.iter().filter(|e| e.addr.is_some()).collect();
    if remote.is_empty() {
        return Err(LoaderError::Config {
            what: "no remote storage node to ask for the dataset: give a cluster file or node addresses, or the dataset directory".into(),
        });
    }
    let mut results: Vec<(String, Result<DatasetManifests, String>)> = Vec::new();
    for chunk in remote.chunks(PARALLEL_ASKS) {
        let answers: Vec<_> = std::thread::scope(|scope| {
            let handles: Vec<_> = chunk
                .iter()
                .map(|ep| scope.spawn(move || ask(ep, opts)))
                .collect();
            handles
                .into_iter()
                .map(|h| {
                    h.join()
                        .unwrap_or_else(|_| Err("asking the node panicked".into()))
                })
                .collect()
        });
        results.extend(chunk.iter().map(|ep| ep.name.clone()).zip(answers));
    }
    let mut agreed: Option<(String, DatasetManifests)> = None;
    let mut answered = Vec::new();
    let mut failed = Vec::new();
    for (name, result) in results {
        match result {
            Err(why) => {
                tracing::warn!(node = %name, error = %why, "storage node did not describe the dataset; opening from the others");
                failed.push((name, why));
            }
            Ok(ds) => {
                if let Some((first, reference)) = &agreed {
                    if reference.fingerprint() != ds.fingerprint() {
                        return Err(LoaderError::Nodes {
                            what: format!(
                                "nodes {first} and {name} serve different data: {}",
                                first_difference(reference, first, &ds, &name)
                            ),
                        });
                    }
                } else {
                    agreed = Some((name.clone(), ds));
                }
                answered.push(name);
            }
        }
    }
    match agreed {
        Some((_, manifests)) => {
            tracing::info!(
                fingerprint = %manifests.fingerprint(),
                sources = manifests.sources().len(),
                answered = answered.len(),
                failed = failed.len(),
                "dataset described by the storage nodes"
            );
            Ok(NodeDataset {
                manifests,
                answered,
                failed,
            })
        }
        None => Err(LoaderError::Nodes {
            what: format!(
                "no storage node described the dataset; tried {}",
                failed
                    .iter()
                    .map(|(n, why)| format!("{n}: {why}"))
                    .collect::<Vec<_>>()
                    .join("; ")
            ),
        }),
    }
}

/// One node's manifests, checked: valid JSON manifests, one per source
/// name, whose dataset fingerprint is the one the node's handshake gave.
fn ask(ep: &Endpoint, opts: &ConnectOptions) -> Result<DatasetManifests, String> {
    let addr = ep.addr.as_deref().unwrap_or_default();
    let resolved = addr
        .to_socket_addrs()
        .map_err(|e| format!("resolving {addr}: {e}"))?
        .next()
        .ok_or_else(|| format!("{addr} resolves to no address"))?;
    let mut client = ControlClient::connect(resolved, opts).map_err(|e| error_message(&e))?;
    let texts = client.manifests().map_err(|e| error_message(&e))?;
    let mut manifests = Vec::with_capacity(texts.len());
    for (i, text) in texts.iter().enumerate() {
        let label = format!("<manifest {i} from node {}>", ep.name);
        let m = SourceManifest::from_json(Path::new(&label), text).map_err(|e| e.to_string())?;
        if manifests.iter().any(|o: &SourceManifest| o.name == m.name) {
            return Err(format!("it describes source '{}' twice", m.name));
        }
        manifests.push(m);
    }
    if manifests.is_empty() {
        return Err("it describes no source".into());
    }
    let ds =
        DatasetManifests::from_manifests(PathBuf::from(format!("node {}", ep.name)), manifests);
    let claimed = &client.welcome().fingerprint;
    if ds.fingerprint() != claimed {
        return Err(format!(
            "its manifests give dataset fingerprint {}, but its handshake claims {claimed}",
            ds.fingerprint()
        ));
    }
    Ok(ds)
}

/// The first field in which two nodes' descriptions differ, naming the
/// source, the field and both values.
pub(crate) fn first_difference(
    a: &DatasetManifests,
    a_name: &str,
    b: &DatasetManifests,
    b_name: &str,
) -> String {
    for ma in a.sources() {
        let Some(mb) = b.sources().iter().find(|m| m.name == ma.name) else {
            return format!("source '{}' is served by {a_name} only", ma.name);
        };
        if let Some(d) = manifest_difference(ma, mb) {
            return format!(
                "source '{}': {} is {} on {a_name} and {} on {b_name}",
                ma.name, d.0, d.1, d.2
            );
        }
    }
    if let Some(mb) = b
        .sources()
        .iter()
        .find(|mb| !a.sources().iter().any(|ma| ma.name == mb.name))
    {
        return format!("source '{}' is served by {b_name} only", mb.name);
    }
    format!(
        "dataset fingerprint {} on {a_name} and {} on {b_name}",
        a.fingerprint(),
        b.fingerprint()
    )
}

/// `(field, value in a, value in b)` of the first difference between two
/// manifests of one source, `None` when they are equal.
pub(crate) fn manifest_difference(
    a: &SourceManifest,
    b: &SourceManifest,
) -> Option<(String, String, String)> {
    let dbg = |v: &dyn std::fmt::Debug| format!("{v:?}");
    let fields: [(&str, String, String); 5] = [
        ("dtype", a.dtype.to_string(), b.dtype.to_string()),
        ("seq_len", a.seq_len.to_string(), b.seq_len.to_string()),
        ("tokenizer", dbg(&a.tokenizer), dbg(&b.tokenizer)),
        (
            "special_tokens",
            dbg(&a.special_tokens),
            dbg(&b.special_tokens),
        ),
        (
            "the number of files",
            a.files.len().to_string(),
            b.files.len().to_string(),
        ),
    ];
    for (field, va, vb) in fields {
        if va != vb {
            return Some((field.into(), va, vb));
        }
    }
    for (i, (fa, fb)) in a.files.iter().zip(&b.files).enumerate() {
        let fields: [(&str, String, String); 5] = [
            ("path", fa.path.clone(), fb.path.clone()),
            ("count", fa.count.to_string(), fb.count.to_string()),
            (
                "data_offset",
                fa.data_offset.to_string(),
                fb.data_offset.to_string(),
            ),
            ("file_len", fa.file_len.to_string(), fb.file_len.to_string()),
            (
                "payload_hash",
                fa.payload_hash.clone(),
                fb.payload_hash.clone(),
            ),
        ];
        for (field, va, vb) in fields {
            if va != vb {
                return Some((format!("files[{i}].{field} ({})", fa.path), va, vb));
            }
        }
    }
    None
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use seqfeed_format::{Dtype, FileEntry, SpecialTokens};

    fn manifest(name: &str, hash: char) -> SourceManifest {
        SourceManifest {
            name: name.into(),
            dtype: Dtype::U16,
            seq_len: 9,
            files: vec![FileEntry {
                path: "part-00000.seq".into(),
                count: 4,
                data_offset: 4096,
                file_len: 8192,
                payload_hash: std::iter::repeat_n(hash, 64).collect(),
            }],
            tokenizer: None,
            special_tokens: SpecialTokens::default(),
        }
    }

    #[test]
    fn differences_name_the_source_the_field_and_both_values() {
        let ds = |ms| DatasetManifests::from_manifests(PathBuf::from("x"), ms);
        let a = ds(vec![manifest("web", 'a'), manifest("code", 'b')]);
        let b = ds(vec![manifest("web", 'a'), manifest("code", 'c')]);
        let d = first_difference(&a, "node a", &b, "node b");
        assert!(
            d.contains("source 'code'")
                && d.contains("files[0].payload_hash (part-00000.seq)")
                && d.contains(&"b".repeat(64))
                && d.contains(&"c".repeat(64))
                && d.contains("node a")
                && d.contains("node b"),
            "{d}"
        );
        let mut eos = manifest("code", 'b');
        eos.special_tokens.eos = Some(3);
        let c = ds(vec![manifest("web", 'a'), eos]);
        let d = first_difference(&a, "a", &c, "c");
        assert!(d.contains("special_tokens"), "{d}");
        let only = ds(vec![manifest("web", 'a')]);
        let d = first_difference(&a, "a", &only, "o");
        assert_eq!(d, "source 'code' is served by a only");
        let d = first_difference(&only, "o", &a, "a");
        assert_eq!(d, "source 'code' is served by a only");
        assert!(manifest_difference(&manifest("web", 'a'), &manifest("web", 'a')).is_none());
    }
}
