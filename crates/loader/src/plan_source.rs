//! The plan as a [`BlockSource`]: rank `r`'s block of step `s` is
//! [`Plan::rank_block`], each [`SequenceRef`](seqfeed_plan::SequenceRef)
//! turned into a [`SeqRead`] of a flat file table (every file of every
//! source, in plan order).

use std::sync::Arc;

use seqfeed_plan::Plan;

use crate::block::{BlockSource, Dtype, SeqRead};
use crate::error::{BoxError, LoaderError};

/// A [`Plan`] serving blocks to the loader.
#[derive(Debug, Clone)]
pub struct PlanSource {
    plan: Arc<Plan>,
    files: Vec<String>,
    sources: Vec<String>,
    /// Index of each source's first file in `files`.
    file_base: Vec<u32>,
    dtype: Dtype,
}

impl PlanSource {
    /// Wraps `plan`. Fails when its token size is neither 2 nor 4 bytes.
    pub fn new(plan: Arc<Plan>) -> Result<Self, LoaderError> {
        let dtype = match plan.token_bytes() {
            2 => Dtype::U16,
            4 => Dtype::U32,
            other => {
                return Err(LoaderError::Config {
                    what: format!("plan has {other}-byte tokens; the loader reads u16 or u32"),
                })
            }
        };
        let mut files = Vec::new();
        let mut file_base = Vec::new();
        let mut sources = Vec::new();
        for s in plan.sources() {
            file_base.push(u32::try_from(files.len()).map_err(|_| LoaderError::Config {
                what: "more than 2^32 files".into(),
            })?);
            sources.push(s.name.clone());
            files.extend(s.files.iter().map(|f| f.path.clone()));
        }
        Ok(PlanSource {
            plan,
            files,
            sources,
            file_base,
            dtype,
        })
    }

    /// The plan.
    pub fn plan(&self) -> &Arc<Plan> {
        &self.plan
    }
}

impl BlockSource for PlanSource {
    fn steps(&self) -> u64 {
        self.plan.steps()
    }

    fn global_batch(&self) -> usize {
        self.plan.global_batch() as usize
    }

    fn seq_len(&self) -> usize {
        self.plan.seq_len() as usize
    }

    fn dtype(&self) -> Dtype {
        self.dtype
    }

    fn files(&self) -> &[String] {
        &self.files
    }

    fn sources(&self) -> &[String] {
        &self.sources
    }

    fn block(
        &self,
        step: u64,
        rank: usize,
        world: usize,
        out: &mut Vec<SeqRead>,
    ) -> Result<(), BoxError> {
        let rank = u32::try_from(rank).map_err(|_| format!("rank {rank} too large"))?;
        let world = u32::try_from(world).map_err(|_| format!("world {world} too large"))?;
        let block = self.plan.rank_block(step, rank, world)?;
        out.extend(block.iter().map(|r| SeqRead {
            file: self.file_base[r.source as usize] + r.file,
            offset: r.offset,
            len: r.len,
            source: r.source,
            position: r.position,
        }));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use seqfeed_plan::{FileShape, PlanConfig, SourceShape};

    #[test]
    fn blocks_follow_the_plan() {
        let shape = |name: &str, files: u64| SourceShape {
            name: name.into(),
            fingerprint: format!("fp-{name}"),
            seq_len: 64,
            token_bytes: 2,
            files: (0..files)
                .map(|i| FileShape {
                    path: format!("{name}/part-{i:05}.seq"),
                    count: 50,
                    data_offset: 4096,
                })
                .collect(),
        };
        let config = PlanConfig::from_toml_str(
            "seed = 3\nglobal_batch = 8\n[run]\nsteps = 5\n[[sources]]\nname = \"a\"\nweight = 1\n[[sources]]\nname = \"b\"\nweight = 2\n",
        )
        .unwrap();
        let plan = Arc::new(Plan::new(config, vec![shape("a", 2), shape("b", 3)]).unwrap());
        let src = PlanSource::new(plan.clone()).unwrap();
        assert_eq!(src.files().len(), 5);
        assert_eq!(src.sources(), ["a", "b"]);
        assert_eq!(src.dtype(), Dtype::U16);
        assert_eq!(src.seq_bytes(), 128);
        for step in 0..5 {
            let mut out = Vec::new();
            src.block(step, 1, 2, &mut out).unwrap();
            let want = plan.rank_block(step, 1, 2).unwrap();
            assert_eq!(out.len(), 4);
            for (r, w) in out.iter().zip(&want) {
                assert_eq!(
                    src.files()[r.file as usize],
                    plan.file_path(w.source, w.file)
                );
                assert_eq!(
                    (r.offset, r.len, r.source, r.position),
                    (w.offset, w.len, w.source, w.position)
                );
            }
        }
        let mut out = Vec::new();
        assert!(src.block(5, 0, 2, &mut out).is_err());
        assert!(src.block(0, 0, 3, &mut out).is_err());
    }
}
