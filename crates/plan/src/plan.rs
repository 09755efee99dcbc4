//! The plan: quotas, the global shuffle, per-step blocks per rank.

use std::ops::Range;

use crate::bijection::{derive_key, Feistel};
use crate::config::{invalid, known_names};
use crate::split::{held_out, kept_index, split_key};
use crate::tokenizer;

mod validation;
use crate::{largest_remainder, Holdout, MixingMode, PlanConfig, PlanError, QuotaRow, SourceShape};

/// Where one sequence of the run lives.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SequenceRef {
    /// Global position in the run (`step * B + slot in the batch`); in the
    /// validation stream, the position in that stream.
    pub position: u64,
    /// Source id: index into [`Plan::sources`] (config order).
    pub source: u32,
    /// File id within the source: index into [`PlanSource::files`].
    pub file: u32,
    /// Sequence index within the file.
    pub index: u64,
    /// Byte offset of the sequence within the file.
    pub offset: u64,
    /// Bytes of the sequence (`seq_len * token_bytes`).
    pub len: u32,
}

/// One file of a planned source.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlanFile {
    /// Path relative to the dataset root.
    pub path: String,
    /// Sequences in the file.
    pub count: u64,
    /// Byte offset of sequence 0 in the file.
    pub data_offset: u64,
}

/// A source as planned: its weight, quota and files.
#[derive(Clone, Debug)]
pub struct PlanSource {
    /// Source name.
    pub name: String,
    /// Configured weight.
    pub weight: f64,
    /// Repetition limit in epochs.
    pub max_epochs: f64,
    /// Fingerprint of the source's data the plan was made for.
    pub fingerprint: String,
    /// The tokenizer recorded in the source's manifest, if any.
    pub tokenizer: Option<seqfeed_format::TokenizerInfo>,
    /// The special-token ids recorded in the source's manifest (EOS, BOS,
    /// pad), if any: a trainer's default EOD id.
    pub special_tokens: seqfeed_format::SpecialTokens,
    /// Sequences drawn from this source over the run (exact).
    pub quota: u64,
    /// Sequences in each global batch (stratified mode; `None` in global mode).
    pub per_batch: Option<u64>,
    /// Sequences the source holds (training and held out).
    pub size: u64,
    /// The source's hold-out, as configured (its own or the `[split]` default).
    pub holdout: Holdout,
    /// Sorted indices (within the source) of the held-out sequences.
    held_out: Vec<u64>,
    /// The source's files.
    pub files: Vec<PlanFile>,
    /// Exclusive cumulative end of each file's sequences within the source.
    file_ends: Vec<u64>,
    /// When every file but the last holds this many sequences (and the last
    /// no more), the file of sequence `i` is `i / uniform_count`: no search.
    uniform_count: Option<u64>,
    /// Permutation of the source's training sequences; re-keyed per epoch.
    perm: Feistel,
    /// Keys of the first epochs (the rest are derived on the fly).
    epoch_keys: Vec<u64>,
}

impl PlanSource {
    /// Sequences available for training: `size` less the held-out ones.
    pub fn train_size(&self) -> u64 {
        self.size - self.held_out.len() as u64
    }

    /// Sorted indices (within the source, `0..size`) of the sequences held
    /// out of training (the source's part of the validation stream).
    pub fn held_out(&self) -> &[u64] {
        &self.held_out
    }

    /// Passes over the source's training sequences the quota takes (may be
    /// fractional).
    pub fn epochs(&self) -> f64 {
        self.quota as f64 / self.train_size() as f64
    }

    /// Most times any one sequence of the source is used (`ceil(epochs)`).
    pub fn max_repeats(&self) -> u64 {
        self.quota.div_ceil(self.train_size())
    }

    /// Training sequences of the source used `max_repeats()` times (the rest
    /// are used one time fewer).
    pub fn sequences_at_max_repeats(&self) -> u64 {
        match self.quota % self.train_size() {
            0 if self.quota > 0 => self.train_size(),
            r => r,
        }
    }
}

/// A training plan: which sequence sits at every position of the run.
///
/// Built from a [`PlanConfig`] and the dataset's [`SourceShape`]s; every query
/// is `O(1)` time and the plan holds `O(sources + files)` memory, so every
/// rank computes the same order independently, from step 0 or from any step.
#[derive(Clone, Debug)]
pub struct Plan {
    config: PlanConfig,
    sources: Vec<PlanSource>,
    requested: u64,
    total: u64,
    steps: u64,
    global_batch: u64,
    seq_len: u32,
    token_bytes: u32,
    seq_bytes: u32,
    /// Exclusive cumulative end of each source's slot range (global mode:
    /// over the run; stratified: within one batch).
    slot_ends: Vec<u64>,
    /// The global shuffle (global mode: over all positions; stratified: over
    /// one batch, re-keyed per step).
    shuffle: Feistel,
    shuffle_key: u64,
    /// Exclusive cumulative end of each source's held-out sequences in the
    /// validation stream.
    validation_ends: Vec<u64>,
    /// Set when the sources were packed with different tokenizers (and no pin).
    mixed_tokenizers: Option<String>,
    fingerprint: String,
}

/// Epoch keys precomputed per source (a few KiB at most).
const MAX_CACHED_EPOCHS: u64 = 256;

fn seed_key(seed: u64, what: &str) -> u64 {
    let mut h = blake3::Hasher::new_derive_key("seqfeed plan v1 key");
    h.update(&seed.to_le_bytes());
    h.update(what.as_bytes());
    let out = h.finalize();
    let b = out.as_bytes();
    u64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]])
}

impl Plan {
    /// Builds the plan: validates the config against the dataset's sources,
    /// computes exact quotas, checks repetition limits and pinned
    /// fingerprints. Sources of `shapes` not named in the config are unused.
    pub fn new(config: PlanConfig, shapes: Vec<SourceShape>) -> Result<Plan, PlanError> {
        config.validate()?;
        let b = config.global_batch;
        // Resolve each configured source against the dataset.
        let mut chosen: Vec<&SourceShape> = Vec::with_capacity(config.sources.len());
        for (index, s) in config.sources.iter().enumerate() {
            let shape = shapes.iter().find(|x| x.name == s.name).ok_or_else(|| {
                PlanError::UnknownSource {
                    index,
                    name: s.name.clone(),
                    known: known_names(&shapes),
                }
            })?;
            if let Some(pinned) = &s.fingerprint {
                if *pinned != shape.fingerprint {
                    return Err(PlanError::SourceChanged {
                        source_name: s.name.clone(),
                        expected: pinned.clone(),
                        found: shape.fingerprint.clone(),
                    });
                }
            }
            chosen.push(shape);
        }
        let mixed_tokenizers = match &config.tokenizer {
            Some(pin) => {
                tokenizer::check_pin(pin, &chosen)?;
                None
            }
            None => tokenizer::mixed(&chosen),
        };
        if let Some(m) = &mixed_tokenizers {
            tracing::warn!("{m}");
        }
        let first = chosen[0];
        for shape in &chosen {
            if shape.seq_len == 0 || shape.token_bytes == 0 {
                return Err(invalid(
                    &format!("source '{}'", shape.name),
                    &format!(
                        "seq_len {} x token_bytes {}: both must be at least 1",
                        shape.seq_len, shape.token_bytes
                    ),
                ));
            }
            if (shape.seq_len, shape.token_bytes) != (first.seq_len, first.token_bytes) {
                return Err(PlanError::ShapeMismatch {
                    source_name: shape.name.clone(),
                    seq_len: shape.seq_len,
                    token_bytes: shape.token_bytes,
                    first: first.name.clone(),
                    first_seq_len: first.seq_len,
                    first_token_bytes: first.token_bytes,
                });
            }
            let mut count = 0u64;
            for f in &shape.files {
                count = count.checked_add(f.count).ok_or_else(|| {
                    invalid(
                        &format!("source '{}'", shape.name),
                        "sequence count overflows u64",
                    )
                })?;
            }
            if count == 0 {
                return Err(PlanError::SourceTooSmall {
                    source_name: shape.name.clone(),
                    count,
                    seq_len: shape.seq_len,
                });
            }
            if shape.files.len() > u32::MAX as usize {
                return Err(invalid(
                    &format!("source '{}'", shape.name),
                    "more than 2^32 files",
                ));
            }
        }
        let seq_bytes = u64::from(first.seq_len) * u64::from(first.token_bytes);
        // Every byte range a position can resolve to must fit u64.
        for shape in &chosen {
            for f in &shape.files {
                let end = f
                    .count
                    .checked_mul(seq_bytes)
                    .and_then(|n| n.checked_add(f.data_offset));
                if end.is_none() {
                    return Err(invalid(
                        &format!("source '{}' file '{}'", shape.name, f.path),
                        &format!(
                            "data_offset {} + {} sequences of {seq_bytes} bytes overflows u64",
                            f.data_offset, f.count
                        ),
                    ));
                }
            }
        }
        let seq_bytes = u32::try_from(seq_bytes).map_err(|_| {
            invalid(
                "seq_len",
                &format!("a sequence of {seq_bytes} bytes does not fit u32"),
            )
        })?;

        // Run length, rounded up to whole steps.
        const MAX_TOTAL: u64 = 1 << 62;
        let requested = match (config.run.sequences, config.run.tokens, config.run.steps) {
            (Some(n), _, _) => n,
            (_, Some(t), _) => t.div_ceil(u64::from(first.seq_len)),
            (_, _, Some(s)) => s
                .checked_mul(b)
                .filter(|&n| n <= MAX_TOTAL)
                .ok_or_else(|| {
                    invalid("run.steps", &format!("{s} steps of {b} sequences overflow"))
                })?,
            _ => return Err(invalid("run", "no run length")),
        };
        let steps = requested.div_ceil(b);
        let total = steps
            .checked_mul(b)
            .filter(|&n| n <= MAX_TOTAL)
            .ok_or_else(|| {
                invalid(
                    "run",
                    &format!("{requested} sequences: too many (max 2^62)"),
                )
            })?;
        if total != requested {
            tracing::info!(
                requested,
                total,
                steps,
                "run length rounded up to whole steps"
            );
        }

        // Quotas.
        let weights: Vec<f64> = config
            .sources
            .iter()
            .map(|s| s.weight.unwrap_or(0.0))
            .collect();
        let (quotas, per_batch): (Vec<u64>, Option<Vec<u64>>) = match config.mode {
            MixingMode::Global => (largest_remainder(total, &weights), None),
            MixingMode::Stratified => {
                let shares = largest_remainder(b, &weights);
                (shares.iter().map(|&s| s * steps).collect(), Some(shares))
            }
        };

        // Held-out sequences (the validation split), per source.
        let mut held: Vec<Vec<u64>> = Vec::with_capacity(chosen.len());
        for (i, shape) in chosen.iter().enumerate() {
            let holdout = config.holdout_of(i);
            let key = split_key(config.split_seed(), &shape.name);
            held.push(held_out(&shape.name, shape.sequences(), holdout, key)?);
        }

        // Repetition limits: report every source when any is over.
        let rows: Vec<QuotaRow> = config
            .sources
            .iter()
            .zip(&chosen)
            .zip(&quotas)
            .zip(&held)
            .map(|(((s, shape), &quota), held)| QuotaRow {
                source: s.name.clone(),
                quota,
                size: shape.sequences() - held.len() as u64,
                limit: s.max_epochs.unwrap_or(config.max_epochs),
            })
            .collect();
        if rows
            .iter()
            .any(|r| r.quota as f64 > r.limit * r.size as f64)
        {
            return Err(PlanError::RepetitionLimit { rows });
        }

        let mut sources = Vec::with_capacity(chosen.len());
        let mut validation_ends = Vec::with_capacity(chosen.len());
        let mut validation_end = 0u64;
        for (i, ((s, shape), held)) in config.sources.iter().zip(&chosen).zip(held).enumerate() {
            if quotas[i] == 0 {
                tracing::warn!(source = %s.name, "source's weight is too small to draw any sequence in this run");
            }
            let mut file_ends = Vec::with_capacity(shape.files.len());
            let mut end = 0u64;
            for f in &shape.files {
                end += f.count;
                file_ends.push(end);
            }
            let uniform_count = match shape.files.split_last() {
                Some((last, rest)) => {
                    let c = rest.first().map_or(last.count, |f| f.count);
                    (c > 0
                        && last.count > 0
                        && last.count <= c
                        && rest.iter().all(|f| f.count == c))
                    .then_some(c)
                }
                None => None,
            };
            let source_key = seed_key(config.seed, &format!("source:{}", s.name));
            let train = end - held.len() as u64;
            let epochs = quotas[i].div_ceil(train).min(MAX_CACHED_EPOCHS);
            validation_end += held.len() as u64;
            validation_ends.push(validation_end);
            sources.push(PlanSource {
                name: s.name.clone(),
                weight: weights[i],
                max_epochs: s.max_epochs.unwrap_or(config.max_epochs),
                fingerprint: shape.fingerprint.clone(),
                tokenizer: shape.tokenizer.clone(),
                special_tokens: shape.special_tokens,
                quota: quotas[i],
                per_batch: per_batch.as_ref().map(|p| p[i]),
                size: end,
                holdout: config.holdout_of(i),
                held_out: held,
                files: shape
                    .files
                    .iter()
                    .map(|f| PlanFile {
                        path: f.path.clone(),
                        count: f.count,
                        data_offset: f.data_offset,
                    })
                    .collect(),
                file_ends,
                uniform_count,
                perm: Feistel::new(train, source_key),
                epoch_keys: (0..epochs).map(|e| derive_key(source_key, e)).collect(),
            });
        }
        let slot_counts = per_batch.as_ref().unwrap_or(&quotas);
        let mut slot_ends = Vec::with_capacity(slot_counts.len());
        let mut end = 0u64;
        for &c in slot_counts {
            end += c;
            slot_ends.push(end);
        }
        let shuffle_key = seed_key(config.seed, "shuffle");
        let shuffle = match config.mode {
            MixingMode::Global => Feistel::new(total, shuffle_key),
            MixingMode::Stratified => Feistel::new(b, shuffle_key),
        };
        let mut plan = Plan {
            seq_len: first.seq_len,
            token_bytes: first.token_bytes,
            config,
            sources,
            requested,
            total,
            steps,
            global_batch: b,
            seq_bytes,
            slot_ends,
            shuffle,
            shuffle_key,
            validation_ends,
            mixed_tokenizers,
            fingerprint: String::new(),
        };
        plan.fingerprint = plan.compute_fingerprint();
        tracing::debug!(fingerprint = %plan.fingerprint, steps, total, "plan built");
        Ok(plan)
    }

    fn compute_fingerprint(&self) -> String {
        let mut h = blake3::Hasher::new_derive_key("seqfeed plan v1 fingerprint");
        let c = &self.config;
        h.update(&c.seed.to_le_bytes());
        h.update(&c.global_batch.to_le_bytes());
        h.update(c.mode.to_string().as_bytes());
        h.update(&c.max_epochs.to_bits().to_le_bytes());
        h.update(&self.total.to_le_bytes());
        h.update(&(self.sources.len() as u64).to_le_bytes());
        for s in &self.sources {
            for text in [&s.name, &s.fingerprint] {
                h.update(&(text.len() as u64).to_le_bytes());
                h.update(text.as_bytes());
            }
            h.update(&s.weight.to_bits().to_le_bytes());
            h.update(&s.max_epochs.to_bits().to_le_bytes());
            h.update(&self.seq_len.to_le_bytes());
            h.update(&self.token_bytes.to_le_bytes());
            h.update(&(s.files.len() as u64).to_le_bytes());
            for f in &s.files {
                h.update(&(f.path.len() as u64).to_le_bytes());
                h.update(f.path.as_bytes());
                h.update(&f.count.to_le_bytes());
                h.update(&f.data_offset.to_le_bytes());
            }
        }
        // Only plans with a split hash it, so plans without one keep the
        // fingerprints they had before splits existed.
        if c.has_split() {
            h.update(b"split");
            h.update(&c.split_seed().to_le_bytes());
            for s in &self.sources {
                let (kind, value) = match s.holdout {
                    Holdout::None => (0u8, 0u64),
                    Holdout::Fraction(f) => (1, f.to_bits()),
                    Holdout::Count(n) => (2, n),
                };
                h.update(&[kind]);
                h.update(&value.to_le_bytes());
                h.update(&(s.held_out.len() as u64).to_le_bytes());
            }
        }
        h.finalize().to_hex().to_string()
    }

    /// The config the plan was made from.
    pub fn config(&self) -> &PlanConfig {
        &self.config
    }

    /// The mixing mode.
    pub fn mode(&self) -> MixingMode {
        self.config.mode
    }

    /// The planned sources, in config order (index = source id).
    pub fn sources(&self) -> &[PlanSource] {
        &self.sources
    }

    /// Sequences per step across all ranks (`B`).
    pub fn global_batch(&self) -> u64 {
        self.global_batch
    }

    /// Steps in the run.
    pub fn steps(&self) -> u64 {
        self.steps
    }

    /// Sequences in the run (`steps * B`).
    pub fn total_sequences(&self) -> u64 {
        self.total
    }

    /// Sequences the config asked for before rounding up to whole steps.
    pub fn requested_sequences(&self) -> u64 {
        self.requested
    }

    /// Tokens per sequence.
    pub fn seq_len(&self) -> u32 {
        self.seq_len
    }

    /// Bytes per token.
    pub fn token_bytes(&self) -> u32 {
        self.token_bytes
    }

    /// Bytes per sequence.
    pub fn seq_bytes(&self) -> u32 {
        self.seq_bytes
    }

    /// When the plan's sources were packed with different tokenizers (by
    /// vocab hash; a source packed from token ids has none) and the config
    /// pins none: the warning `Plan::new` logged, naming each tokenizer and
    /// its sources. `None` when they agree (or a pin was checked).
    pub fn mixed_tokenizers(&self) -> Option<&str> {
        self.mixed_tokenizers.as_deref()
    }

    /// The plan's fingerprint (hex): covers the config and every source's
    /// fingerprint and file shapes.
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    /// Dataset-relative path of a file. Panics if the ids are out of range
    /// (ids from [`SequenceRef`] of this plan never are).
    pub fn file_path(&self, source: u32, file: u32) -> &str {
        &self.sources[source as usize].files[file as usize].path
    }

    /// Refuses `current` data that differs from what the plan was made for:
    /// a missing source, another fingerprint or other file shapes, naming the
    /// source.
    pub fn check_fingerprints(&self, current: &[SourceShape]) -> Result<(), PlanError> {
        for s in &self.sources {
            let Some(now) = current.iter().find(|x| x.name == s.name) else {
                return Err(PlanError::SourceMissing {
                    source_name: s.name.clone(),
                    known: known_names(current),
                });
            };
            if now.fingerprint != s.fingerprint {
                return Err(PlanError::SourceChanged {
                    source_name: s.name.clone(),
                    expected: s.fingerprint.clone(),
                    found: now.fingerprint.clone(),
                });
            }
            let same_files = now.seq_len == self.seq_len
                && now.token_bytes == self.token_bytes
                && now.files.len() == s.files.len()
                && now.files.iter().zip(&s.files).all(|(a, b)| {
                    a.path == b.path && a.count == b.count && a.data_offset == b.data_offset
                });
            if !same_files {
                return Err(PlanError::SourceChanged {
                    source_name: s.name.clone(),
                    expected: format!("{} with the planned files", s.fingerprint),
                    found: format!("{} with other files, counts or offsets", now.fingerprint),
                });
            }
        }
        Ok(())
    }

    /// The sequence at `position`.
    ///
    /// # Panics
    /// If `position >= total_sequences()`, like slice indexing; use
    /// [`Plan::try_locate`] for unchecked input.
    #[inline]
    pub fn locate(&self, position: u64) -> SequenceRef {
        assert!(
            position < self.total,
            "position {position} out of range ({})",
            self.total
        );
        let (source, draw) = self.draw(position);
        self.resolve(position, source, draw)
    }

    /// The sequence at `position`, or an error past the end of the run.
    pub fn try_locate(&self, position: u64) -> Result<SequenceRef, PlanError> {
        if position >= self.total {
            return Err(PlanError::PositionOutOfRange {
                position,
                total: self.total,
            });
        }
        Ok(self.locate(position))
    }

    /// Which source a position draws from and which draw of that source it
    /// is (`k`: the source's `k`-th sequence of the run, `k < quota`).
    #[inline]
    pub fn draw(&self, position: u64) -> (u32, u64) {
        match self.config.mode {
            MixingMode::Global => {
                let slot = self.shuffle.apply(position);
                let src = self.slot_ends.partition_point(|&e| e <= slot);
                let start = if src == 0 { 0 } else { self.slot_ends[src - 1] };
                (src as u32, slot - start)
            }
            MixingMode::Stratified => {
                let b = self.global_batch;
                let step = position / b;
                let slot = self
                    .shuffle
                    .with_key(derive_key(self.shuffle_key, step))
                    .apply(position % b);
                let src = self.slot_ends.partition_point(|&e| e <= slot);
                let start = if src == 0 { 0 } else { self.slot_ends[src - 1] };
                let share = self.slot_ends[src] - start;
                (src as u32, step * share + (slot - start))
            }
        }
    }

    /// The sequence of the source (index within the source) taken by its
    /// `k`-th draw: epoch `k / t`, and within it the keyed permutation of
    /// that epoch over the `t = train_size` training sequences, mapped to
    /// the source's indices past the held-out ones.
    #[inline]
    pub fn source_index(&self, source: u32, k: u64) -> u64 {
        let s = &self.sources[source as usize];
        let train = s.perm.len();
        let epoch = k / train;
        let j = k - epoch * train;
        let key = match s.epoch_keys.get(epoch as usize) {
            Some(&key) => key,
            None => derive_key(s.perm.key(), epoch),
        };
        let r = s.perm.with_key(key).apply(j);
        if s.held_out.is_empty() {
            r
        } else {
            kept_index(&s.held_out, r)
        }
    }

    #[inline]
    fn resolve(&self, position: u64, source: u32, k: u64) -> SequenceRef {
        let idx = self.source_index(source, k);
        self.resolve_index(position, source, idx)
    }

    #[inline]
    fn resolve_index(&self, position: u64, source: u32, idx: u64) -> SequenceRef {
        let s = &self.sources[source as usize];
        let (file, start) = match s.uniform_count {
            Some(c) => {
                let file = idx / c;
                (file as usize, file * c)
            }
            None => {
                let file = s.file_ends.partition_point(|&e| e <= idx);
                (file, if file == 0 { 0 } else { s.file_ends[file - 1] })
            }
        };
        let index = idx - start;
        let f = &s.files[file];
        SequenceRef {
            position,
            source,
            file: file as u32,
            index,
            offset: f.data_offset + index * u64::from(self.seq_bytes),
            len: self.seq_bytes,
        }
    }

    /// Positions of rank `rank`'s block of step `step` in a world of `world`
    /// ranks: the contiguous `rank`-th of `world` even shares of
    /// `[step * B, (step + 1) * B)`.
    pub fn rank_range(&self, step: u64, rank: u32, world: u32) -> Result<Range<u64>, PlanError> {
        let bad = |message: String| PlanError::BadWorld {
            rank,
            world,
            global_batch: self.global_batch,
            message,
        };
        if world == 0 {
            return Err(bad("world size must be at least 1".into()));
        }
        if rank >= world {
            return Err(bad("rank must be below the world size".into()));
        }
        if self.global_batch % u64::from(world) != 0 {
            return Err(bad(format!(
                "the global batch is not divisible by the world size ({} % {} = {})",
                self.global_batch,
                world,
                self.global_batch % u64::from(world)
            )));
        }
        if step >= self.steps {
            return Err(PlanError::StepOutOfRange {
                step,
                steps: self.steps,
            });
        }
        let per = self.global_batch / u64::from(world);
        let start = step * self.global_batch + u64::from(rank) * per;
        Ok(start..start + per)
    }

    /// Rank `rank`'s block of step `step`: `B / world` sequences.
    pub fn rank_block(
        &self,
        step: u64,
        rank: u32,
        world: u32,
    ) -> Result<Vec<SequenceRef>, PlanError> {
        let mut out = Vec::new();
        self.rank_block_into(step, rank, world, &mut out)?;
        Ok(out)
    }

    /// Like [`Plan::rank_block`], into a reused vector (cleared first).
    pub fn rank_block_into(
        &self,
        step: u64,
        rank: u32,
        world: u32,
        out: &mut Vec<SequenceRef>,
    ) -> Result<(), PlanError> {
        let range = self.rank_range(step, rank, world)?;
        out.clear();
        out.reserve(range.end.saturating_sub(range.start) as usize);
        out.extend(range.map(|p| self.locate(p)));
        Ok(())
    }

    /// The whole global batch of `step` (all ranks, in rank order).
    pub fn step_block(&self, step: u64) -> Result<Vec<SequenceRef>, PlanError> {
        self.rank_block(step, 0, 1)
    }

    /// An iterator over rank `rank`'s blocks from `start_step` to the end of
    /// the run. Starting is `O(1)` at any step (resume).
    pub fn cursor(
        &self,
        rank: u32,
        world: u32,
        start_step: u64,
    ) -> Result<RankCursor<'_>, PlanError> {
        if start_step > self.steps {
            return Err(PlanError::StepOutOfRange {
                step: start_step,
                steps: self.steps,
            });
        }
        if start_step < self.steps {
            self.rank_range(start_step, rank, world)?;
        } else {
            self.rank_range(0, rank, world)?;
        }
        Ok(RankCursor {
            plan: self,
            rank,
            world,
            next_step: start_step,
        })
    }

    /// Counts, per source, the positions in `range` that draw from it.
    pub fn count_sources(&self, range: Range<u64>) -> Vec<u64> {
        let mut counts = vec![0u64; self.sources.len()];
        for p in range.start..range.end.min(self.total) {
            counts[self.draw(p).0 as usize] += 1;
        }
        counts
    }
}

/// Rank blocks of consecutive steps; see [`Plan::cursor`].
#[derive(Clone, Debug)]
pub struct RankCursor<'a> {
    plan: &'a Plan,
    rank: u32,
    world: u32,
    next_step: u64,
}

impl RankCursor<'_> {
    /// The step the next call to `next` returns (the resume point).
    pub fn next_step(&self) -> u64 {
        self.next_step
    }
}

impl Iterator for RankCursor<'_> {
    type Item = (u64, Vec<SequenceRef>);

    fn next(&mut self) -> Option<Self::Item> {
        if self.next_step >= self.plan.steps {
            return None;
        }
        let step = self.next_step;
        let block = self.plan.rank_block(step, self.rank, self.world).ok()?;
        self.next_step += 1;
        Some((step, block))
    }
}
