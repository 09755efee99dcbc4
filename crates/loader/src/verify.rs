//! Independent checks of batches: against direct reads of the sequence
//! files (plain `pread`, no mapping, no transport) and against the plan.
//!
//! Used by `seqfeed demo`, the example trainer and the integration tests:
//! a batch passes when every row is exactly the plan's sequence for that
//! step, rank and row, byte for byte as it is on disk.

use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use seqfeed_plan::Plan;

use crate::batch::Batch;

/// A batch that differs from the plan or from the files.
#[derive(Debug, thiserror::Error)]
#[error("step {step}, rank {rank}, row {row}: {what}")]
pub struct Mismatch {
    /// The step.
    pub step: u64,
    /// The rank.
    pub rank: usize,
    /// The row within the rank's block.
    pub row: usize,
    /// What differs.
    pub what: String,
}

/// Checks batches of one rank against the plan and the files under a
/// dataset root.
#[derive(Debug)]
pub struct Verifier {
    root: PathBuf,
    files: HashMap<String, File>,
    scratch: Vec<u8>,
}

impl Verifier {
    /// A verifier reading files under `root`.
    pub fn new(root: impl AsRef<Path>) -> Self {
        Verifier {
            root: root.as_ref().to_owned(),
            files: HashMap::new(),
            scratch: Vec::new(),
        }
    }

    /// `len` bytes at `offset` of the dataset-relative `path`, read directly.
    pub fn read(&mut self, path: &str, offset: u64, len: usize) -> Result<&[u8], std::io::Error> {
        if !self.files.contains_key(path) {
            let f = File::open(self.root.join(path))?;
            self.files.insert(path.to_owned(), f);
        }
        self.scratch.resize(len, 0);
        if let Some(f) = self.files.get(path) {
            f.read_exact_at(&mut self.scratch, offset)?;
        }
        Ok(&self.scratch)
    }

    /// Checks that `batch` is its micro-batch's share of data-parallel rank
    /// `rank` of `world`'s block of its step in `plan`: same positions,
    /// sources and files, and every byte equal to the files on disk.
    /// Returns the number of bytes checked. `row` in a [`Mismatch`] is the
    /// row within the rank's block.
    pub fn check(
        &mut self,
        plan: &Plan,
        batch: &Batch,
        rank: usize,
        world: usize,
    ) -> Result<u64, Mismatch> {
        let step = batch.step();
        let bad = |row: usize, what: String| Mismatch {
            step,
            rank,
            row,
            what,
        };
        let (r32, w32) = (
            u32::try_from(rank).map_err(|_| bad(0, "rank too large".into()))?,
            u32::try_from(world).map_err(|_| bad(0, "world too large".into()))?,
        );
        let block = plan
            .rank_block(step, r32, w32)
            .map_err(|e| bad(0, format!("plan: {e}")))?;
        let first = batch.block_rows().start;
        let want = block.get(batch.block_rows()).ok_or_else(|| {
            bad(
                first,
                format!(
                    "micro-batch rows {:?} are outside the block of {} rows",
                    batch.block_rows(),
                    block.len()
                ),
            )
        })?;
        let [rows, seq_len] = batch.shape();
        if rows != want.len() || seq_len != plan.seq_len() as usize {
            return Err(bad(
                0,
                format!(
                    "shape [{rows}, {seq_len}], plan says [{}, {}]",
                    want.len(),
                    plan.seq_len()
                ),
            ));
        }
        if batch.bytes().len() != rows * plan.seq_bytes() as usize {
            return Err(bad(
                0,
                format!("{} bytes in the batch", batch.bytes().len()),
            ));
        }
        let mut checked = 0u64;
        for (k, w) in want.iter().enumerate() {
            let bad = |_: usize, what: String| bad(first + k, what);
            let got = batch.reads()[k];
            if got.position != w.position {
                return Err(bad(
                    k,
                    format!("position {}, plan says {}", got.position, w.position),
                ));
            }
            let source = &plan.sources()[w.source as usize].name;
            if batch.source(k) != source {
                return Err(bad(
                    k,
                    format!("source {:?}, plan says {source:?}", batch.source(k)),
                ));
            }
            let path = plan.file_path(w.source, w.file).to_owned();
            if batch.file(k) != path {
                return Err(bad(
                    k,
                    format!("file {:?}, plan says {path:?}", batch.file(k)),
                ));
            }
            let disk = self
                .read(&path, w.offset, w.len as usize)
                .map_err(|e| bad(k, format!("reading {path} at {}: {e}", w.offset)))?;
            let row = batch.row(k);
            if row != disk {
                let at = row.iter().zip(disk).position(|(a, b)| a != b).unwrap_or(0);
                return Err(bad(
                    k,
                    format!(
                        "byte {at} differs from {path} (sequence {} at offset {}): got {:#04x}, file has {:#04x}",
                        w.index, w.offset, row[at], disk[at]
                    ),
                ));
            }
            checked += w.len as u64;
        }
        Ok(checked)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        dataset_files, node_spec, BlockSource, ClusterReader, Endpoint, Loader, LoaderConfig,
        PlanSource, RetryPolicy, TransportKind,
    };
    use seqfeed_format::{write_synthetic_source, Dataset, Dtype};
    use seqfeed_plan::PlanConfig;
    use std::sync::Arc;

    #[test]
    fn local_end_to_end_passes_and_a_corrupted_file_is_caught() {
        let dir = tempfile::tempdir().unwrap();
        for (i, (name, n)) in [("code", 150u64), ("web", 400), ("wiki", 90)]
            .iter()
            .enumerate()
        {
            write_synthetic_source(
                dir.path().join(name),
                name,
                Dtype::U16,
                128,
                *n,
                i as u64,
                64 << 10,
            )
            .unwrap();
        }
        let ds = Dataset::open(dir.path()).unwrap();
        let config = PlanConfig::from_toml_str(
            "seed = 5\nglobal_batch = 16\n[run]\nsteps = 20\n[[sources]]\nname = \"web\"\nweight = 5\n[[sources]]\nname = \"code\"\nweight = 3\n[[sources]]\nname = \"wiki\"\nweight = 2\n",
        )
        .unwrap();
        let plan = Arc::new(
            seqfeed_plan::Plan::new(config, seqfeed_plan::shapes_from_dataset(&ds).unwrap())
                .unwrap(),
        );
        let src = Arc::new(PlanSource::new(plan.clone()).unwrap());
        let mut files = src.files().to_vec();
        files.sort();
        assert_eq!(files, dataset_files(&ds));
        let reader = || {
            let spec = node_spec(TransportKind::Auto, &Endpoint::local(dir.path(), None)).unwrap();
            ClusterReader::connect(src.files().to_vec(), vec![spec], RetryPolicy::default())
                .unwrap()
        };
        let mut v = Verifier::new(dir.path());
        let mut checked = 0;
        for rank in 0..2 {
            let l = Loader::new(LoaderConfig::new(rank, 2), src.clone(), reader()).unwrap();
            for b in l {
                checked += v.check(&plan, &b.unwrap(), rank, 2).unwrap();
            }
        }
        assert_eq!(checked, 20 * 16 * 256);

        // Flip one byte of a row on disk after it was read: the check fails,
        // naming step, rank and row.
        let mut l =
            Loader::new(LoaderConfig::new(1, 2).start_step(7), src.clone(), reader()).unwrap();
        let b = l.next().unwrap().unwrap();
        let r = b.reads()[3];
        let path = dir.path().join(b.file(3));
        let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        let old = b.row(3)[10];
        f.write_all_at(&[old ^ 0xFF], r.offset + 10).unwrap();
        let e = Verifier::new(dir.path())
            .check(&plan, &b, 1, 2)
            .unwrap_err();
        assert_eq!((e.step, e.rank, e.row), (7, 1, 3), "{e}");
        assert!(e.to_string().contains("byte 10"), "{e}");
        // The wrong rank is caught too.
        assert!(Verifier::new(dir.path()).check(&plan, &b, 0, 2).is_err());
    }
}
