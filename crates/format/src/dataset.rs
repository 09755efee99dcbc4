//! Datasets: a directory with one subdirectory per source.
use std::path::{Path, PathBuf};

use crate::error::{FormatError, Result};
use crate::source::{Source, MANIFEST_NAME};

/// An opened dataset: its sources sorted by name, and a fingerprint over
/// their manifests.
#[derive(Debug)]
pub struct Dataset {
    root: PathBuf,
    sources: Vec<Source>,
    fingerprint: String,
    skipped: Vec<String>,
}

impl Dataset {
    /// Opens every source under `root`. Each non-hidden subdirectory holding a
    /// manifest must be a source whose manifest name equals the directory
    /// name. Subdirectories without a manifest (not packed sources: notes,
    /// logs, a corpus kept beside the data) are skipped with a warning naming
    /// them ([`Dataset::skipped`]); hidden entries (names starting with `.`,
    /// e.g. unfinished temporary outputs) and plain files are ignored.
    pub fn open(root: impl AsRef<Path>) -> Result<Dataset> {
        let root = root.as_ref().to_path_buf();
        let bad = |reason: String| FormatError::Dataset {
            path: root.clone(),
            reason,
        };
        let rd =
            std::fs::read_dir(&root).map_err(|e| FormatError::io("read directory", &root, e))?;
        let mut dirs = Vec::new();
        for entry in rd {
            let entry = entry.map_err(|e| FormatError::io("read directory", &root, e))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') {
                continue;
            }
            let ft = entry
                .file_type()
                .map_err(|e| FormatError::io("stat", entry.path(), e))?;
            if ft.is_dir() {
                dirs.push(name);
            }
        }
        dirs.sort();
        if dirs.is_empty() && root.join(MANIFEST_NAME).exists() {
            return Err(bad("this is a source directory, not a dataset (a dataset holds one subdirectory per source)".into()));
        }
        let (dirs, skipped): (Vec<String>, Vec<String>) = dirs
            .into_iter()
            .partition(|d| root.join(d).join(MANIFEST_NAME).exists());
        for d in &skipped {
            tracing::warn!(
                dataset = %root.display(),
                "skipping '{d}': not a packed source (no {MANIFEST_NAME}); move it out of the dataset or rename it to start with '.' to silence this"
            );
        }
        if dirs.is_empty() {
            return Err(bad(if skipped.is_empty() {
                "no source subdirectories".into()
            } else {
                format!(
                    "no source subdirectories (skipped, without {MANIFEST_NAME}: {})",
                    skipped.join(", ")
                )
            }));
        }
        let mut sources = Vec::with_capacity(dirs.len());
        for d in &dirs {
            let src = Source::open(root.join(d))?;
            if src.name() != d {
                return Err(bad(format!(
                    "directory '{d}' holds source named '{}' (they must match)",
                    src.name()
                )));
            }
            sources.push(src);
        }
        let fingerprint = fingerprint_of(sources.iter().map(|s| (s.name(), s.fingerprint())));
        Ok(Dataset {
            root,
            sources,
            fingerprint,
            skipped,
        })
    }

    /// The dataset root.
    pub fn root(&self) -> &Path {
        &self.root
    }
    /// Subdirectories skipped because they hold no manifest (not packed
    /// sources), sorted by name.
    pub fn skipped(&self) -> &[String] {
        &self.skipped
    }
    /// The sources, sorted by name.
    pub fn sources(&self) -> &[Source] {
        &self.sources
    }
    /// The source named `name`.
    pub fn source(&self, name: &str) -> Option<&Source> {
        self.sources.iter().find(|s| s.name() == name)
    }
    /// Index of the source named `name` in [`Dataset::sources`].
    pub fn source_index(&self, name: &str) -> Option<usize> {
        self.sources.iter().position(|s| s.name() == name)
    }
    /// Hex blake3 over the sources' names and manifest fingerprints.
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }
    /// Total sequences over all sources.
    pub fn total_sequences(&self) -> u64 {
        self.sources.iter().map(|s| s.total_sequences()).sum()
    }

    /// Dataset-relative, `/`-separated path of a file, e.g. `web/part-00000.seq`.
    /// This string names the file's memory region on a storage node; it is stable.
    ///
    /// # Panics
    /// If either index is out of range (indices come from [`Dataset::sources`]
    /// and [`Source::files`]).
    pub fn file_path(&self, source_idx: usize, file_idx: usize) -> String {
        let s = &self.sources[source_idx];
        format!("{}/{}", s.name(), s.manifest().files[file_idx].path)
    }

    /// Every file as `(source index, file index, dataset-relative path)`.
    pub fn all_files(&self) -> Vec<(usize, usize, String)> {
        let mut out = Vec::new();
        for (si, s) in self.sources.iter().enumerate() {
            for fi in 0..s.files().len() {
                out.push((si, fi, self.file_path(si, fi)));
            }
        }
        out
    }
}

/// The dataset fingerprint over `(source name, source fingerprint)` pairs
/// (sorted by name here, so the order given does not matter).
pub fn fingerprint_of<'a>(sources: impl Iterator<Item = (&'a str, &'a str)>) -> String {
    let mut v: Vec<_> = sources.collect();
    v.sort();
    let mut h = blake3::Hasher::new();
    h.update(b"seqfeed-dataset-v1\0");
    h.update(&(v.len() as u64).to_le_bytes());
    for (name, fp) in v {
        h.update(&(name.len() as u64).to_le_bytes());
        h.update(name.as_bytes());
        h.update(&(fp.len() as u64).to_le_bytes());
        h.update(fp.as_bytes());
    }
    h.finalize().to_hex().to_string()
}
