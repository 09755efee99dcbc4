//! Datasets: a directory with one subdirectory per source.
use std::path::{Path, PathBuf};

use crate::error::{FormatError, Result};
use crate::seqfile::SeqFile;
use crate::source::{Source, SourceManifest, MANIFEST_NAME};

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
        let (dirs, skipped) = source_dirs(&root)?;
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

/// The source subdirectories of a dataset root (non-hidden directories with
/// a manifest, sorted) and those skipped for having none; an error when
/// there is no source at all. Skipped ones are logged.
fn source_dirs(root: &Path) -> Result<(Vec<String>, Vec<String>)> {
    let bad = |reason: String| FormatError::Dataset {
        path: root.to_path_buf(),
        reason,
    };
    let rd = std::fs::read_dir(root).map_err(|e| FormatError::io("read directory", root, e))?;
    let mut dirs = Vec::new();
    for entry in rd {
        let entry = entry.map_err(|e| FormatError::io("read directory", root, e))?;
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
    Ok((dirs, skipped))
}

/// A dataset's manifests alone, read without opening any sequence file:
/// what a storage node that holds only some of the files publishes, and
/// what a trainer needs to make the plan.
#[derive(Debug, Clone)]
pub struct DatasetManifests {
    root: PathBuf,
    sources: Vec<SourceManifest>,
    fingerprint: String,
}

impl DatasetManifests {
    /// Reads every source manifest under `root` (the sources [`Dataset::open`]
    /// would open, sorted by name); each must name its own directory.
    pub fn open(root: impl AsRef<Path>) -> Result<DatasetManifests> {
        let root = root.as_ref().to_path_buf();
        let (dirs, _) = source_dirs(&root)?;
        let mut sources = Vec::with_capacity(dirs.len());
        for d in &dirs {
            let m = SourceManifest::load(&root.join(d))?;
            if m.name != *d {
                return Err(FormatError::Dataset {
                    path: root.clone(),
                    reason: format!(
                        "directory '{d}' holds source named '{}' (they must match)",
                        m.name
                    ),
                });
            }
            sources.push(m);
        }
        Ok(Self::from_manifests(root, sources))
    }

    /// The manifests given (any order; kept sorted by name), with `root` for
    /// file paths and errors.
    pub fn from_manifests(root: PathBuf, mut sources: Vec<SourceManifest>) -> DatasetManifests {
        sources.sort_by(|a, b| a.name.cmp(&b.name));
        let fps: Vec<String> = sources.iter().map(SourceManifest::fingerprint).collect();
        let fingerprint = fingerprint_of(
            sources
                .iter()
                .zip(&fps)
                .map(|(m, fp)| (m.name.as_str(), fp.as_str())),
        );
        DatasetManifests {
            root,
            sources,
            fingerprint,
        }
    }

    /// The dataset root.
    pub fn root(&self) -> &Path {
        &self.root
    }
    /// The manifests, sorted by source name.
    pub fn sources(&self) -> &[SourceManifest] {
        &self.sources
    }
    /// The dataset fingerprint, as [`Dataset::fingerprint`] gives it for the
    /// same manifests.
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }
    /// `(source index, file index)` of the dataset-relative path
    /// `<source>/<file>`, when the manifests list it.
    pub fn find_file(&self, path: &str) -> Option<(usize, usize)> {
        let (source, file) = path.split_once('/')?;
        let si = self.sources.iter().position(|m| m.name == source)?;
        let fi = self.sources[si].files.iter().position(|f| f.path == file)?;
        Some((si, fi))
    }
    /// Every file's dataset-relative path, in source then file order.
    pub fn all_files(&self) -> Vec<String> {
        self.sources
            .iter()
            .flat_map(|m| {
                m.files
                    .iter()
                    .map(move |f| format!("{}/{}", m.name, f.path))
            })
            .collect()
    }
    /// Maps the dataset-relative file `path` and checks its header against
    /// its manifest entry ([`Source::open_file`]).
    pub fn open_file(&self, path: &str) -> Result<SeqFile> {
        let (si, fi) = self.find_file(path).ok_or_else(|| FormatError::Dataset {
            path: self.root.clone(),
            reason: format!("file '{path}' is not listed in any source manifest"),
        })?;
        let m = &self.sources[si];
        Source::open_file(&self.root.join(&m.name), m, fi)
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
