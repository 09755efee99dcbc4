//! The plan's error type.

use std::path::PathBuf;

/// A quota that does not fit its source within the repetition limit.
#[derive(Clone, Debug, PartialEq)]
pub struct QuotaRow {
    /// Source name.
    pub source: String,
    /// Sequences the plan would draw from the source over the run.
    pub quota: u64,
    /// Sequences the source holds for training (less any held out).
    pub size: u64,
    /// Passes over the source allowed (`max_epochs`).
    pub limit: f64,
}

impl std::fmt::Display for QuotaRow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let epochs = self.quota as f64 / self.size.max(1) as f64;
        let flag = if epochs > self.limit {
            "  <-- over the limit"
        } else {
            ""
        };
        write!(
            f,
            "  {:<24} quota {:>14}  size {:>14}  epochs {:>10.4}  limit {:>8}{}",
            self.source, self.quota, self.size, epochs, self.limit, flag
        )
    }
}

/// Everything that can go wrong building or querying a plan.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PlanError {
    /// The config text is not valid TOML for a plan (syntax, a wrong type, an
    /// unknown key); the message names the key and the line.
    #[error("plan config{}: {message}", path_suffix(.path))]
    Config {
        /// The config file, when read from one.
        path: Option<PathBuf>,
        /// What the parser said (names the key and its position).
        message: String,
    },
    /// The config file could not be read.
    #[error("cannot read plan config {}: {source}", .path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// A value in the config is out of range or inconsistent.
    #[error("plan config: {field}: {message}")]
    Invalid {
        /// The key (for example `sources[1].weight` or `global_batch`).
        field: String,
        /// What is wrong with it.
        message: String,
    },
    /// The config names a source the dataset does not have.
    #[error("plan config: sources[{index}]: unknown source '{name}' (the dataset has: {known})")]
    UnknownSource {
        /// Position in the config's source list.
        index: usize,
        /// The unknown name.
        name: String,
        /// The dataset's source names, comma separated.
        known: String,
    },
    /// A source holds fewer sequences than one (it has no complete sequence).
    #[error("source '{source_name}' holds {count} sequences: smaller than one sequence of {seq_len} tokens")]
    SourceTooSmall {
        /// Source name.
        source_name: String,
        /// Sequences it holds.
        count: u64,
        /// Tokens per sequence.
        seq_len: u32,
    },
    /// The mixed sources do not share one sequence shape.
    #[error("source '{source_name}' has seq_len {seq_len} x {token_bytes} bytes per token, but '{first}' has {first_seq_len} x {first_token_bytes}: a plan mixes sources of one sequence shape")]
    ShapeMismatch {
        /// The mismatching source.
        source_name: String,
        /// Its tokens per sequence.
        seq_len: u32,
        /// Its bytes per token.
        token_bytes: u32,
        /// The first source of the config.
        first: String,
        /// The first source's tokens per sequence.
        first_seq_len: u32,
        /// The first source's bytes per token.
        first_token_bytes: u32,
    },
    /// Some quota exceeds its source's repetition limit. Lists every source.
    #[error("a quota exceeds its source's repetition limit (raise max_epochs for that source, or change its weight or the run length):\n{}", rows_text(.rows))]
    RepetitionLimit {
        /// One row per source: quota, size and limit.
        rows: Vec<QuotaRow>,
    },
    /// The data a plan was made for has changed (or is gone).
    #[error("source '{source_name}' changed since the plan was made: fingerprint {expected}, now {found}; refusing to run the plan against different data")]
    SourceChanged {
        /// The source whose fingerprint differs.
        source_name: String,
        /// The fingerprint the plan expects.
        expected: String,
        /// The fingerprint found now.
        found: String,
    },
    /// A source's tokenizer is not the one the config pins (`tokenizer = ...`).
    #[error("source '{source_name}' was packed with tokenizer {found}, but the plan pins tokenizer = \"{pinned}\"; refusing to mix token ids of another vocabulary (repack the source, or drop it from the plan)")]
    TokenizerMismatch {
        /// The mismatching source.
        source_name: String,
        /// The config's pin.
        pinned: String,
        /// The source's tokenizer (`name (vocab_hash ...)`, or that it has none).
        found: String,
    },
    /// A source of the plan is missing from the current dataset.
    #[error(
        "source '{source_name}' of the plan is missing from the dataset (the dataset has: {known})"
    )]
    SourceMissing {
        /// The missing source.
        source_name: String,
        /// The dataset's source names, comma separated.
        known: String,
    },
    /// A step at or past the end of the run.
    #[error("step {step} is out of range: the plan has {steps} steps")]
    StepOutOfRange {
        /// The step asked for.
        step: u64,
        /// Steps in the plan.
        steps: u64,
    },
    /// A position at or past the end of the run.
    #[error("position {position} is out of range: the plan has {total} sequences")]
    PositionOutOfRange {
        /// The position asked for.
        position: u64,
        /// Sequences in the plan.
        total: u64,
    },
    /// A rank/world pair that cannot split the global batch.
    #[error("rank {rank} of world {world} with global batch {global_batch}: {message}")]
    BadWorld {
        /// The rank.
        rank: u32,
        /// The world size.
        world: u32,
        /// The global batch.
        global_batch: u64,
        /// What is wrong.
        message: String,
    },
}

fn path_suffix(path: &Option<PathBuf>) -> String {
    match path {
        Some(p) => format!(" {}", p.display()),
        None => String::new(),
    }
}

fn rows_text(rows: &[QuotaRow]) -> String {
    rows.iter()
        .map(|r| r.to_string())
        .collect::<Vec<_>>()
        .join("\n")
}
