//! Small bridges from an opened dataset (`seqfeed-format`).

use seqfeed_format::Dataset;

/// Every file of `dataset` as dataset-relative paths.
pub fn dataset_files(dataset: &Dataset) -> Vec<String> {
    dataset.all_files().into_iter().map(|(_, _, p)| p).collect()
}
