//! A storage node's region table: one read-only mapped region per whole
//! sequence file.
//!
//! [`RegionTable::open`] maps each listed file (paths relative to the
//! dataset root, `/`-separated, e.g. `web/part-00000.seq`) and assigns
//! [`RegionId`]s `0..n` in sorted path order, so two nodes holding the same
//! files publish the same ids. The `name` of each [`RegionInfo`] is the
//! dataset-relative path. Every transport serves reads from this table: the
//! `local` backend copies from it, the tcp node writes from it, and the verbs
//! backend registers its mappings as memory regions.

use std::collections::BTreeSet;
use std::fs::File;
use std::path::{Component, Path, PathBuf};

use memmap2::Mmap;

use crate::{ReadRequest, RegionId, RegionInfo, TransportError};

/// Largest number of regions one node may publish.
pub const MAX_REGIONS: usize = 1 << 20;

/// Errors while building a region table.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RegionError {
    /// A listed path is not a clean dataset-relative path.
    #[error("bad dataset-relative path {path:?}: {why}")]
    BadPath {
        /// The offending path as given.
        path: String,
        /// What is wrong with it.
        why: &'static str,
    },
    /// The same file is listed twice.
    #[error("file {path:?} is listed twice")]
    Duplicate {
        /// The duplicated path.
        path: String,
    },
    /// Too many files for one node.
    #[error("{count} files listed; a node serves at most {max}")]
    TooMany {
        /// Number of files listed.
        count: usize,
        /// The limit.
        max: usize,
    },
    /// Opening, inspecting or mapping a file failed.
    #[error("{what} {}: {source}", path.display())]
    Io {
        /// What was being done (`open`, `map`, `list`).
        what: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// Underlying error.
        #[source]
        source: std::io::Error,
    },
}

/// One mapped sequence file.
#[derive(Debug)]
pub struct MappedRegion {
    path: PathBuf,
    map: Mmap,
    /// The open file, for reads that must survive the file shrinking
    /// ([`RegionTable::copy_into`]).
    file: File,
}

impl MappedRegion {
    /// The whole region's bytes (the whole sequence file).
    pub fn bytes(&self) -> &[u8] {
        &self.map
    }

    /// The file this region maps.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// The regions a node publishes, with their mappings.
///
/// Share it between threads with `Arc<RegionTable>`; the mappings live as
/// long as the table.
#[derive(Debug)]
pub struct RegionTable {
    root: PathBuf,
    infos: Vec<RegionInfo>,
    regions: Vec<MappedRegion>,
}

impl RegionTable {
    /// Maps every file of `files` (dataset-relative paths under `root`),
    /// ids assigned in sorted path order.
    pub fn open<S: AsRef<str>>(root: &Path, files: &[S]) -> Result<Self, RegionError> {
        if files.len() > MAX_REGIONS {
            return Err(RegionError::TooMany {
                count: files.len(),
                max: MAX_REGIONS,
            });
        }
        let mut sorted = BTreeSet::new();
        for f in files {
            let f = f.as_ref();
            check_relative(f)?;
            if !sorted.insert(f.to_owned()) {
                return Err(RegionError::Duplicate { path: f.to_owned() });
            }
        }
        let mut infos = Vec::with_capacity(sorted.len());
        let mut regions = Vec::with_capacity(sorted.len());
        for (i, name) in sorted.into_iter().enumerate() {
            let path = root.join(&name);
            let file = File::open(&path).map_err(|source| RegionError::Io {
                what: "open",
                path: path.clone(),
                source,
            })?;
            let meta = file.metadata().map_err(|source| RegionError::Io {
                what: "stat",
                path: path.clone(),
                source,
            })?;
            if !meta.is_file() {
                return Err(RegionError::Io {
                    what: "map",
                    path,
                    source: std::io::Error::new(
                        std::io::ErrorKind::InvalidInput,
                        "not a regular file",
                    ),
                });
            }
            let map = crate::mmap::map_readonly(&file).map_err(|source| RegionError::Io {
                what: "map",
                path: path.clone(),
                source,
            })?;
            let id = u32::try_from(i).map_err(|_| RegionError::TooMany {
                count: files.len(),
                max: MAX_REGIONS,
            })?;
            infos.push(RegionInfo {
                id: RegionId(id),
                name,
                len: map.len() as u64,
                addr: 0,
                rkey: 0,
            });
            regions.push(MappedRegion { path, map, file });
        }
        tracing::debug!(root = %root.display(), regions = infos.len(), "mapped region table");
        Ok(RegionTable {
            root: root.to_owned(),
            infos,
            regions,
        })
    }

    /// Maps every sequence file (`*.seq`) found under `root`.
    pub fn open_all(root: &Path) -> Result<Self, RegionError> {
        let files = list_sequence_files(root)?;
        Self::open(root, &files)
    }

    /// The dataset root the paths are relative to.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The region table as published to clients.
    pub fn infos(&self) -> &[RegionInfo] {
        &self.infos
    }

    /// Number of regions.
    pub fn len(&self) -> usize {
        self.regions.len()
    }

    /// True when the table has no regions.
    pub fn is_empty(&self) -> bool {
        self.regions.is_empty()
    }

    /// The mapped region with id `id`.
    pub fn get(&self, id: RegionId) -> Option<&MappedRegion> {
        self.regions.get(id.0 as usize)
    }

    /// The region whose dataset-relative path is `name`.
    pub fn find(&self, name: &str) -> Option<RegionId> {
        self.infos
            .binary_search_by(|i| i.name.as_str().cmp(name))
            .ok()
            .map(|i| self.infos[i].id)
    }

    /// The source bytes of one read (`offset`, `len` of `region`), checked
    /// against the region's length. `node` names this node in errors.
    pub fn slice(
        &self,
        node: &str,
        region: RegionId,
        offset: u64,
        len: u32,
    ) -> Result<&[u8], TransportError> {
        let r = self
            .get(region)
            .ok_or_else(|| TransportError::UnknownRegion {
                node: node.to_owned(),
                region,
            })?;
        let bytes = r.bytes();
        let end = offset.checked_add(u64::from(len));
        match end {
            Some(end) if end <= bytes.len() as u64 => {
                // Both fit in usize: end <= bytes.len().
                Ok(&bytes[offset as usize..end as usize])
            }
            _ => Err(TransportError::OutOfBounds {
                what: format!(
                    "node {node}: {len} bytes at offset {offset} of {region} ({}, length {})",
                    self.infos[region.0 as usize].name,
                    bytes.len()
                ),
            }),
        }
    }

    /// Copies the bytes of `req` into `dst` with `pread` rather than from the
    /// mapping: a file that was truncated after it was mapped gives an error
    /// naming it instead of a SIGBUS (touching a mapping past the end of
    /// its file raises one). The range is checked against the region's
    /// length at open time first, as [`slice`](Self::slice) does.
    pub fn copy_into(
        &self,
        node: &str,
        req: &ReadRequest,
        dst: &mut [u8],
    ) -> Result<(), TransportError> {
        let want = self.source(node, req)?.len();
        let have = dst.len();
        let dst = dst
            .get_mut(..want)
            .ok_or_else(|| TransportError::OutOfBounds {
                what: format!("node {node}: destination of {have} bytes for a {want}-byte read"),
            })?;
        let Some(r) = self.get(req.region) else {
            return Err(TransportError::UnknownRegion {
                node: node.to_owned(),
                region: req.region,
            });
        };
        std::os::unix::fs::FileExt::read_exact_at(&r.file, dst, req.offset).map_err(|e| {
            let what = if e.kind() == std::io::ErrorKind::UnexpectedEof {
                format!(
                    "reading {} bytes at offset {} of {}: the file is shorter than when it was opened (truncated or replaced while serving)",
                    req.len,
                    req.offset,
                    r.path.display()
                )
            } else {
                format!("reading {} bytes at offset {} of {}", req.len, req.offset, r.path.display())
            };
            TransportError::Io {
                node: node.to_owned(),
                what,
                source: e,
            }
        })
    }

    /// The source bytes of `req`, checked against the region only.
    pub fn source(&self, node: &str, req: &ReadRequest) -> Result<&[u8], TransportError> {
        self.slice(node, req.region, req.offset, req.len)
    }
}

/// Checks that `p` is a clean, `/`-separated path relative to the dataset
/// root: not empty, not absolute, no `.`/`..`/empty components.
pub fn check_relative(p: &str) -> Result<(), RegionError> {
    let bad = |why| {
        Err(RegionError::BadPath {
            path: p.to_owned(),
            why,
        })
    };
    if p.is_empty() {
        return bad("empty");
    }
    if p.starts_with('/') {
        return bad("absolute");
    }
    if p.contains('\\') || p.contains('\0') {
        return bad("contains a backslash or NUL");
    }
    for part in p.split('/') {
        if part.is_empty() || part == "." || part == ".." {
            return bad("empty, '.' or '..' component");
        }
    }
    if Path::new(p)
        .components()
        .any(|c| !matches!(c, Component::Normal(_)))
    {
        return bad("not a plain relative path");
    }
    Ok(())
}

/// Lists every sequence file (`*.seq`, recursively, symlinked directories
/// not followed) under `root`, as sorted dataset-relative `/`-separated paths.
pub fn list_sequence_files(root: &Path) -> Result<Vec<String>, RegionError> {
    let mut out = Vec::new();
    let mut stack = vec![(root.to_owned(), String::new())];
    while let Some((dir, prefix)) = stack.pop() {
        let rd = std::fs::read_dir(&dir).map_err(|source| RegionError::Io {
            what: "list",
            path: dir.clone(),
            source,
        })?;
        for entry in rd {
            let entry = entry.map_err(|source| RegionError::Io {
                what: "list",
                path: dir.clone(),
                source,
            })?;
            let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
                continue; // not UTF-8: cannot be a dataset path
            };
            let ft = entry.file_type().map_err(|source| RegionError::Io {
                what: "stat",
                path: entry.path(),
                source,
            })?;
            let rel = if prefix.is_empty() {
                name.clone()
            } else {
                format!("{prefix}/{name}")
            };
            if ft.is_dir() {
                stack.push((entry.path(), rel));
            } else if name.ends_with(".seq") && (ft.is_file() || ft.is_symlink()) {
                out.push(rel);
            }
        }
        if out.len() > MAX_REGIONS {
            return Err(RegionError::TooMany {
                count: out.len(),
                max: MAX_REGIONS,
            });
        }
    }
    out.sort();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(root: &Path, rel: &str, bytes: &[u8]) {
        let p = root.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, bytes).unwrap();
    }

    #[test]
    fn ids_in_sorted_order_and_bytes_match() {
        let dir = tempfile::tempdir().unwrap();
        let a: Vec<u8> = (0..5000u32).map(|i| (i * 7) as u8).collect();
        let b: Vec<u8> = (0..123u32).map(|i| (i * 13 + 1) as u8).collect();
        write(dir.path(), "web/part-00001.seq", &a);
        write(dir.path(), "code/part-00000.seq", &b);
        write(dir.path(), "empty.seq", &[]);
        let t = RegionTable::open(
            dir.path(),
            &["web/part-00001.seq", "empty.seq", "code/part-00000.seq"],
        )
        .unwrap();
        let names: Vec<_> = t.infos().iter().map(|i| i.name.as_str()).collect();
        assert_eq!(
            names,
            ["code/part-00000.seq", "empty.seq", "web/part-00001.seq"]
        );
        assert_eq!(t.infos()[0].id, RegionId(0));
        assert_eq!(t.infos()[2].id, RegionId(2));
        assert_eq!(t.infos()[2].len, 5000);
        assert_eq!(t.get(RegionId(0)).unwrap().bytes(), &b[..]);
        assert_eq!(t.get(RegionId(1)).unwrap().bytes(), &[] as &[u8]);
        assert_eq!(t.get(RegionId(2)).unwrap().bytes(), &a[..]);
        assert_eq!(t.find("web/part-00001.seq"), Some(RegionId(2)));
        assert_eq!(t.find("nope.seq"), None);
        assert_eq!(t.slice("n", RegionId(2), 4990, 10).unwrap(), &a[4990..]);
        assert!(matches!(
            t.slice("n", RegionId(2), 4991, 10),
            Err(TransportError::OutOfBounds { .. })
        ));
        assert!(matches!(
            t.slice("n", RegionId(2), u64::MAX, 10),
            Err(TransportError::OutOfBounds { .. })
        ));
        assert!(matches!(
            t.slice("n", RegionId(3), 0, 0),
            Err(TransportError::UnknownRegion { .. })
        ));
        assert_eq!(
            list_sequence_files(dir.path()).unwrap(),
            ["code/part-00000.seq", "empty.seq", "web/part-00001.seq"]
        );
        let all = RegionTable::open_all(dir.path()).unwrap();
        assert_eq!(all.infos(), t.infos());
    }

    #[test]
    fn bad_paths_refused() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "a.seq", b"x");
        for p in ["", "/etc/passwd", "../a.seq", "a/./b", "a//b", "x\\y"] {
            assert!(
                matches!(
                    RegionTable::open(dir.path(), &[p]),
                    Err(RegionError::BadPath { .. })
                ),
                "{p:?}"
            );
        }
        assert!(matches!(
            RegionTable::open(dir.path(), &["a.seq", "a.seq"]),
            Err(RegionError::Duplicate { .. })
        ));
        let e = RegionTable::open(dir.path(), &["missing.seq"]).unwrap_err();
        assert!(e.to_string().contains("missing.seq"), "{e}");
        std::fs::create_dir(dir.path().join("d.seq")).unwrap();
        assert!(RegionTable::open(dir.path(), &["d.seq"]).is_err());
    }
}
