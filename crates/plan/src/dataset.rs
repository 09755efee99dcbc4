//! Shapes of a packed dataset (`seqfeed-format`).

use seqfeed_format::{Dataset, SourceManifest};

use crate::{FileShape, PlanError, SourceShape};

impl SourceShape {
    /// The shape of a source from its manifest. File paths become
    /// dataset-relative (`<source>/<file>`, as [`Dataset::file_path`] gives
    /// them) and the fingerprint is the manifest's.
    pub fn from_manifest(manifest: &SourceManifest) -> Result<SourceShape, PlanError> {
        let seq_len = u32::try_from(manifest.seq_len).map_err(|_| PlanError::Invalid {
            field: format!("source '{}'", manifest.name),
            message: format!("seq_len {} does not fit u32", manifest.seq_len),
        })?;
        Ok(SourceShape {
            name: manifest.name.clone(),
            fingerprint: manifest.fingerprint(),
            seq_len,
            token_bytes: manifest.dtype.size() as u32,
            tokenizer: manifest.tokenizer.clone(),
            special_tokens: manifest.special_tokens,
            files: manifest
                .files
                .iter()
                .map(|f| FileShape {
                    path: format!("{}/{}", manifest.name, f.path),
                    count: f.count,
                    data_offset: f.data_offset,
                })
                .collect(),
        })
    }
}

/// The shapes of every source of an opened dataset, in the dataset's order.
pub fn shapes_from_dataset(dataset: &Dataset) -> Result<Vec<SourceShape>, PlanError> {
    dataset
        .sources()
        .iter()
        .map(|s| SourceShape::from_manifest(s.manifest()))
        .collect()
}

/// The shapes of a dataset's sources from their manifests alone (what the
/// storage nodes publish), in the order given.
pub fn shapes_from_manifests(manifests: &[SourceManifest]) -> Result<Vec<SourceShape>, PlanError> {
    manifests.iter().map(SourceShape::from_manifest).collect()
}
