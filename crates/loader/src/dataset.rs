//! Bridges from an opened dataset (`seqfeed-format`) to the plan's view of it.

use seqfeed_format::Dataset;
use seqfeed_plan::{FileShape, SourceShape};

use crate::error::LoaderError;

/// The plan's view of every source of `dataset`: sequence shape, files with
/// counts and payload offsets, and the source fingerprint.
pub fn source_shapes(dataset: &Dataset) -> Result<Vec<SourceShape>, LoaderError> {
    dataset
        .sources()
        .iter()
        .enumerate()
        .map(|(si, s)| {
            Ok(SourceShape {
                name: s.name().to_owned(),
                fingerprint: s.fingerprint().to_owned(),
                seq_len: u32::try_from(s.seq_len()).map_err(|_| LoaderError::Config {
                    what: format!("source {}: seq_len {} exceeds u32", s.name(), s.seq_len()),
                })?,
                token_bytes: s.dtype().size() as u32,
                files: s
                    .files()
                    .iter()
                    .enumerate()
                    .map(|(fi, f)| FileShape {
                        path: dataset.file_path(si, fi),
                        count: f.count(),
                        data_offset: f.data_offset(),
                    })
                    .collect(),
            })
        })
        .collect()
}

/// Every file of `dataset` as dataset-relative paths.
pub fn dataset_files(dataset: &Dataset) -> Vec<String> {
    dataset.all_files().into_iter().map(|(_, _, p)| p).collect()
}
