//! The plan config (TOML): sources with weights, run length, global batch,
//! seed, repetition limits, mixing mode.
//!
//! ```toml
//! seed = 1234
//! global_batch = 1024          # sequences per step (B)
//! mode = "global"              # or "stratified"; default "global"
//! max_epochs = 1.0             # default repetition limit (passes over a source)
//! tokenizer = "3f9a..."        # optional: every source's tokenizer (vocab hash or name)
//!
//! [run]                        # exactly one of: sequences, tokens, steps
//! tokens = 1_000_000_000_000
//!
//! [[sources]]
//! name = "web"
//! weight = 0.7
//!
//! [[sources]]
//! name = "code"
//! weight = 0.2
//! max_epochs = 3.0             # this source may be seen up to 3 times
//! fingerprint = "9f2c..."      # optional: pin the source's data
//! holdout = 0.02               # optional: this source's held-out fraction
//!
//! [split]                      # optional: hold out a validation part
//! seed = 7                     # key of the choice (not the plan's seed)
//! holdout = 0.01               # a fraction of each source, or:
//! # holdout_sequences = 1000   # a count of each source's sequences
//! ```
//!
//! Unknown keys are rejected, naming the key.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::PlanError;

/// How sources are mixed into the global order.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MixingMode {
    /// Exact per-source quotas over the whole run; one global shuffle over
    /// all positions (each batch's mix varies around the ratios).
    #[default]
    Global,
    /// Every global batch holds each source's exact largest-remainder share
    /// of `B`, in an order shuffled within the batch.
    Stratified,
}

impl std::fmt::Display for MixingMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            MixingMode::Global => "global",
            MixingMode::Stratified => "stratified",
        })
    }
}

/// The length of the run: exactly one of the three fields.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunLength {
    /// Total sequences (rounded up to whole steps).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sequences: Option<u64>,
    /// Total tokens (rounded up to whole sequences, then whole steps).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens: Option<u64>,
    /// Total steps.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub steps: Option<u64>,
}

/// One source of the mixture.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceWeight {
    /// The source's name in the dataset.
    pub name: String,
    /// Relative weight: finite and positive (weights need not sum to 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight: Option<f64>,
    /// Repetition limit for this source (passes over it); overrides the
    /// config-wide `max_epochs`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_epochs: Option<f64>,
    /// Expected fingerprint of the source's data; the plan refuses data with
    /// another fingerprint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fingerprint: Option<String>,
    /// Fraction of this source held out of training, in `[0, 1)`; overrides
    /// the `[split]` default. Exclusive with `holdout_sequences`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub holdout: Option<f64>,
    /// Sequences of this source held out of training; overrides the
    /// `[split]` default. Exclusive with `holdout`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub holdout_sequences: Option<u64>,
}

impl SourceWeight {
    /// Whether this source sets its own hold-out.
    pub fn overrides_holdout(&self) -> bool {
        self.holdout.is_some() || self.holdout_sequences.is_some()
    }
}

/// The `[split]` table: which part of each source is held out of training
/// (the validation split). See [`Holdout`].
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SplitConfig {
    /// Key of the choice of held-out sequences. Independent of the plan's
    /// seed, so plans with other seeds hold out the same sequences.
    #[serde(default)]
    pub seed: u64,
    /// Default fraction of every source held out, in `[0, 1)`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub holdout: Option<f64>,
    /// Default count of every source's sequences held out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub holdout_sequences: Option<u64>,
}

/// How much of one source is held out of training.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub enum Holdout {
    /// Nothing: every sequence is for training.
    #[default]
    None,
    /// Sequence `j` is held out when its keyed 64-bit hash is below
    /// `floor(f * 2^64)`: decided per sequence, so stable when the source grows.
    Fraction(f64),
    /// The `n` sequences with the smallest keyed hashes.
    Count(u64),
}

impl std::fmt::Display for Holdout {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Holdout::None => f.write_str("none"),
            Holdout::Fraction(x) => write!(f, "fraction {x}"),
            Holdout::Count(n) => write!(f, "{n} sequences"),
        }
    }
}

fn default_max_epochs() -> f64 {
    1.0
}

/// A plan config, as written in TOML.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlanConfig {
    /// Seed of every shuffle of the plan.
    pub seed: u64,
    /// Sequences per step across all ranks (`B`).
    pub global_batch: u64,
    /// How sources are mixed.
    #[serde(default)]
    pub mode: MixingMode,
    /// Default repetition limit: how many passes over a source a quota may
    /// take (1.0: no sequence repeats). Fractions are allowed.
    #[serde(default = "default_max_epochs")]
    pub max_epochs: f64,
    /// Pins the tokenizer of every source of the mixture: a tokenizer's
    /// `vocab_hash` (64 hex digits, as in the source manifests) or its name
    /// (`tiktoken:cl100k_base`, `hf:<label>`). A source packed with another
    /// tokenizer, or from token ids (no tokenizer recorded), is refused.
    /// Without a pin, sources with different tokenizers only draw a warning.
    /// Not part of the plan's fingerprint (it selects no sequence).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokenizer: Option<String>,
    /// The run length.
    pub run: RunLength,
    /// The validation split (none when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub split: Option<SplitConfig>,
    /// The sources, in order. Order matters: it breaks ties in the quotas
    /// and fixes source ids.
    pub sources: Vec<SourceWeight>,
}

impl PlanConfig {
    /// Parses a config from TOML text. Unknown keys are an error naming the key.
    pub fn from_toml_str(text: &str) -> Result<Self, PlanError> {
        toml::from_str(text).map_err(|e| PlanError::Config {
            path: None,
            message: e.to_string().trim_end().to_string(),
        })
    }

    /// Reads and parses a config file.
    pub fn from_file(path: &Path) -> Result<Self, PlanError> {
        let text = std::fs::read_to_string(path).map_err(|source| PlanError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        toml::from_str(&text).map_err(|e| PlanError::Config {
            path: Some(path.to_path_buf()),
            message: e.to_string().trim_end().to_string(),
        })
    }

    /// The config as TOML text (for example after [`PlanConfig::pin`]).
    pub fn to_toml_string(&self) -> Result<String, PlanError> {
        toml::to_string(self).map_err(|e| PlanError::Config {
            path: None,
            message: e.to_string(),
        })
    }

    /// Records each configured source's current fingerprint from `shapes`, so
    /// a plan made from the returned config refuses changed data.
    pub fn pin(&mut self, shapes: &[crate::SourceShape]) -> Result<(), PlanError> {
        for (index, s) in self.sources.iter_mut().enumerate() {
            let shape = shapes.iter().find(|x| x.name == s.name).ok_or_else(|| {
                PlanError::UnknownSource {
                    index,
                    name: s.name.clone(),
                    known: known_names(shapes),
                }
            })?;
            s.fingerprint = Some(shape.fingerprint.clone());
        }
        Ok(())
    }

    /// Whether the config holds anything out (a `[split]` table or a
    /// source's `holdout` / `holdout_sequences`).
    pub fn has_split(&self) -> bool {
        self.split.is_some() || self.sources.iter().any(SourceWeight::overrides_holdout)
    }

    /// The key of the split's choice (`split.seed`, 0 when absent).
    pub fn split_seed(&self) -> u64 {
        self.split.as_ref().map_or(0, |s| s.seed)
    }

    /// The hold-out of source `index` (its own, else the `[split]` default).
    /// Assumes [`PlanConfig::validate`] passed.
    pub fn holdout_of(&self, index: usize) -> Holdout {
        let s = &self.sources[index];
        let (f, n) = if s.overrides_holdout() {
            (s.holdout, s.holdout_sequences)
        } else {
            match &self.split {
                Some(sp) => (sp.holdout, sp.holdout_sequences),
                None => (None, None),
            }
        };
        match (f, n) {
            (Some(f), _) => Holdout::Fraction(f),
            (None, Some(n)) => Holdout::Count(n),
            (None, None) => Holdout::None,
        }
    }

    /// Checks the values that do not depend on the dataset.
    pub fn validate(&self) -> Result<(), PlanError> {
        if self.global_batch == 0 {
            return Err(invalid("global_batch", "must be at least 1 (got 0)"));
        }
        check_limit("max_epochs", self.max_epochs)?;
        let r = &self.run;
        let set = [r.sequences.is_some(), r.tokens.is_some(), r.steps.is_some()]
            .iter()
            .filter(|&&b| b)
            .count();
        if set != 1 {
            return Err(invalid(
                "run",
                &format!("give exactly one of run.sequences, run.tokens, run.steps (got {set})"),
            ));
        }
        for (key, v) in [
            ("run.sequences", r.sequences),
            ("run.tokens", r.tokens),
            ("run.steps", r.steps),
        ] {
            if v == Some(0) {
                return Err(invalid(key, "zero-length run: must be at least 1"));
            }
        }
        if self.sources.is_empty() {
            return Err(invalid("sources", "the mixture has no sources"));
        }
        if self
            .tokenizer
            .as_deref()
            .is_some_and(|t| t.trim().is_empty())
        {
            return Err(invalid(
                "tokenizer",
                "empty tokenizer pin: give a vocab hash (64 hex digits) or a tokenizer name",
            ));
        }
        for (i, s) in self.sources.iter().enumerate() {
            let field = format!("sources[{i}] ('{}')", s.name);
            if s.name.is_empty() {
                return Err(invalid(&format!("sources[{i}].name"), "empty source name"));
            }
            if let Some(j) = self.sources[..i].iter().position(|o| o.name == s.name) {
                return Err(invalid(
                    &format!("{field}.name"),
                    &format!("source listed twice (also sources[{j}])"),
                ));
            }
            match s.weight {
                None => return Err(invalid(&format!("{field}.weight"), "missing weight")),
                Some(w) if w.is_nan() => {
                    return Err(invalid(&format!("{field}.weight"), "weight is NaN"))
                }
                Some(w) if !w.is_finite() => {
                    return Err(invalid(
                        &format!("{field}.weight"),
                        &format!("weight must be finite (got {w})"),
                    ))
                }
                Some(w) if w <= 0.0 => {
                    return Err(invalid(
                        &format!("{field}.weight"),
                        &format!("weight must be positive (got {w})"),
                    ))
                }
                Some(_) => {}
            }
            if let Some(l) = s.max_epochs {
                check_limit(&format!("{field}.max_epochs"), l)?;
            }
            check_holdout(&field, s.holdout, s.holdout_sequences)?;
        }
        if let Some(sp) = &self.split {
            check_holdout("split", sp.holdout, sp.holdout_sequences)?;
        }
        Ok(())
    }
}

fn check_limit(field: &str, l: f64) -> Result<(), PlanError> {
    if !(l.is_finite() && l > 0.0) {
        return Err(invalid(
            field,
            &format!("repetition limit must be a positive finite number of epochs (got {l})"),
        ));
    }
    Ok(())
}

fn check_holdout(field: &str, f: Option<f64>, n: Option<u64>) -> Result<(), PlanError> {
    if f.is_some() && n.is_some() {
        return Err(invalid(
            field,
            "give holdout (a fraction) or holdout_sequences (a count), not both",
        ));
    }
    if let Some(f) = f {
        if !(0.0..1.0).contains(&f) {
            return Err(invalid(
                &format!("{field}.holdout"),
                &format!("the held-out fraction must be in [0, 1) (got {f})"),
            ));
        }
    }
    Ok(())
}

pub(crate) fn invalid(field: &str, message: &str) -> PlanError {
    PlanError::Invalid {
        field: field.to_string(),
        message: message.to_string(),
    }
}

pub(crate) fn known_names(shapes: &[crate::SourceShape]) -> String {
    if shapes.is_empty() {
        return "no sources".to_string();
    }
    shapes
        .iter()
        .map(|s| s.name.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}
