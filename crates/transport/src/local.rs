//! The `local` backend: a node on the same host, read straight from the
//! mapping. It is the reference implementation the other backends are
//! tested against.

use std::path::Path;
use std::sync::Arc;

use crate::regions::{RegionError, RegionTable};
use crate::{BatchStats, ReadRequest, RegionInfo, Transport, TransportError};

/// Reads from sequence files mapped in this process.
#[derive(Debug, Clone)]
pub struct LocalTransport {
    node: String,
    table: Arc<RegionTable>,
}

impl LocalTransport {
    /// Maps `files` (dataset-relative paths under `root`) and serves them.
    /// Region ids follow sorted path order, as on a storage node.
    pub fn open<S: AsRef<str>>(root: &Path, files: &[S]) -> Result<Self, RegionError> {
        let table = RegionTable::open(root, files)?;
        Ok(Self::from_table(
            format!("local:{}", root.display()),
            Arc::new(table),
        ))
    }

    /// Serves an already mapped table; `node` names it in errors.
    pub fn from_table(node: impl Into<String>, table: Arc<RegionTable>) -> Self {
        LocalTransport {
            node: node.into(),
            table,
        }
    }

    /// The mapped table.
    pub fn table(&self) -> &Arc<RegionTable> {
        &self.table
    }
}

impl Transport for LocalTransport {
    fn backend(&self) -> &'static str {
        "local"
    }

    fn node(&self) -> &str {
        &self.node
    }

    fn regions(&self) -> &[RegionInfo] {
        self.table.infos()
    }

    fn read_batch(
        &mut self,
        reads: &[ReadRequest],
        dst: &mut [u8],
    ) -> Result<BatchStats, TransportError> {
        let mut bytes = 0u64;
        for r in reads {
            let len = self.table.source(&self.node, r)?.len();
            r.check(len as u64 + r.offset, dst.len())?;
            // check() proved dst_offset + len <= dst.len(). pread, not the
            // mapping: a file truncated under us is an error, not SIGBUS.
            let start = r.dst_offset as usize;
            self.table
                .copy_into(&self.node, r, &mut dst[start..start + len])?;
            bytes += u64::from(r.len);
        }
        Ok(BatchStats {
            reads: reads.len() as u64,
            bytes,
            posts: 0,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::RegionId;
    use rand::{Rng, SeedableRng};

    #[test]
    fn random_batches_byte_for_byte() {
        let dir = tempfile::tempdir().unwrap();
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let mut files = Vec::new();
        for (i, len) in [70_000usize, 1, 33_333].into_iter().enumerate() {
            let bytes: Vec<u8> = (0..len).map(|_| rng.gen()).collect();
            let name = format!("src{i}/part-{i:05}.seq");
            std::fs::create_dir_all(dir.path().join(format!("src{i}"))).unwrap();
            std::fs::write(dir.path().join(&name), &bytes).unwrap();
            files.push((name, bytes));
        }
        let names: Vec<&str> = files.iter().map(|f| f.0.as_str()).collect();
        let mut t = LocalTransport::open(dir.path(), &names).unwrap();
        assert_eq!(t.backend(), "local");
        assert_eq!(t.regions().len(), 3);
        for _ in 0..50 {
            let n = rng.gen_range(0..40);
            let mut reads = Vec::new();
            let mut want = Vec::new();
            for _ in 0..n {
                let region = rng.gen_range(0..3u32);
                let src = &files[region as usize].1;
                let offset = rng.gen_range(0..src.len());
                let len = rng.gen_range(0..=(src.len() - offset).min(5000));
                reads.push(ReadRequest {
                    region: RegionId(region),
                    offset: offset as u64,
                    len: len as u32,
                    dst_offset: want.len() as u64,
                });
                want.extend_from_slice(&src[offset..offset + len]);
            }
            let mut dst = vec![0xAAu8; want.len()];
            let st = t.read_batch(&reads, &mut dst).unwrap();
            assert_eq!(dst, want);
            assert_eq!(st.reads, n as u64);
            assert_eq!(st.bytes, want.len() as u64);
        }
    }

    #[test]
    fn bad_reads_refused() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a.seq"), [1u8, 2, 3, 4]).unwrap();
        let mut t = LocalTransport::open(dir.path(), &["a.seq"]).unwrap();
        let mut dst = [0u8; 4];
        let r = |region, offset, len, dst_offset| ReadRequest {
            region: RegionId(region),
            offset,
            len,
            dst_offset,
        };
        t.read_batch(&[r(0, 1, 3, 1)], &mut dst).unwrap();
        assert_eq!(dst, [0, 2, 3, 4]);
        assert!(matches!(
            t.read_batch(&[r(0, 2, 3, 0)], &mut dst),
            Err(TransportError::OutOfBounds { .. })
        ));
        assert!(matches!(
            t.read_batch(&[r(0, 0, 3, 2)], &mut dst),
            Err(TransportError::OutOfBounds { .. })
        ));
        assert!(matches!(
            t.read_batch(&[r(1, 0, 1, 0)], &mut dst),
            Err(TransportError::UnknownRegion { .. })
        ));
        let e = t.read_batch(&[r(0, 2, 3, 0)], &mut dst).unwrap_err();
        assert!(e.to_string().contains("a.seq"), "{e}");
        assert!(!e.is_node_failure());
    }

    /// Issue 12 item 8: a served file truncated after it was mapped. Copying
    /// from the mapping would raise SIGBUS and kill the process; the local
    /// transport reads with pread and reports the file.
    #[test]
    fn a_file_truncated_while_mapped_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.seq");
        let bytes: Vec<u8> = (0..64 * 1024).map(|i| (i % 251) as u8).collect();
        std::fs::write(&path, &bytes).unwrap();
        let mut t = LocalTransport::open(dir.path(), &["a.seq"]).unwrap();
        let read = ReadRequest {
            region: RegionId(0),
            offset: 40_000,
            len: 8192,
            dst_offset: 0,
        };
        let mut dst = vec![0u8; 8192];
        t.read_batch(&[read], &mut dst).unwrap();
        assert_eq!(dst, &bytes[40_000..48_192]);
        std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .unwrap()
            .set_len(4096)
            .unwrap();
        let e = t.read_batch(&[read], &mut dst).unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.contains("a.seq") && msg.contains("shorter than when it was opened"),
            "{msg}"
        );
        // Reads inside what is left still work.
        let head = ReadRequest {
            offset: 0,
            len: 4096,
            ..read
        };
        t.read_batch(&[head], &mut dst[..4096]).unwrap();
        assert_eq!(&dst[..4096], &bytes[..4096]);
    }
}
