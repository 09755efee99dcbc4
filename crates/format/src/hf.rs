//! The Hugging Face `tokenizer.json` backend of [`crate::Tokenizer`].

use std::path::Path;

use crate::error::{FormatError, Result};
use crate::source::TokenizerInfo;

/// End-of-text tokens of common tokenizers, tried when no EOS is given:
/// GPT-2/GPT-NeoX/Qwen/Phi, Llama 3, Llama 2/Mistral/T5, Gemma, and BERT.
pub(crate) const EOS_CANDIDATES: &[&str] = &[
    "<|endoftext|>",
    "<|end_of_text|>",
    "</s>",
    "<eos>",
    "<|eos|>",
    "[EOS]",
    "<EOS>",
    "[SEP]",
];

/// A loaded `tokenizer.json`.
pub(crate) struct HfTokenizer {
    pub(crate) tok: tokenizers::Tokenizer,
    pub(crate) info: TokenizerInfo,
    pub(crate) max_id: u32,
    pub(crate) end_of_text: std::result::Result<(u32, String), String>,
}

impl HfTokenizer {
    /// Reads and parses `path`; switches truncation and padding off.
    pub(crate) fn load(path: &Path) -> Result<HfTokenizer> {
        let bytes = std::fs::read(path).map_err(|e| FormatError::io("read", path, e))?;
        let mut tok = tokenizers::Tokenizer::from_bytes(&bytes).map_err(|e| {
            FormatError::InvalidOption(format!(
                "{}: not a tokenizer.json the Hugging Face tokenizers library can load: {e}",
                path.display()
            ))
        })?;
        if let Some(t) = tok.get_truncation() {
            tracing::info!(
                path = %path.display(),
                max_length = t.max_length,
                "the tokenizer file sets truncation; it is switched off (documents are packed whole)"
            );
        }
        if tok.get_padding().is_some() {
            tracing::info!(path = %path.display(), "the tokenizer file sets padding; it is switched off");
        }
        tok.with_truncation(None).map_err(|e| {
            FormatError::InvalidOption(format!(
                "{}: cannot switch truncation off: {e}",
                path.display()
            ))
        })?;
        tok.with_padding(None);
        let max_id = tok.get_vocab(true).values().copied().max().ok_or_else(|| {
            FormatError::InvalidOption(format!("{}: the vocabulary is empty", path.display()))
        })?;
        let info = TokenizerInfo {
            name: format!("hf:{}", label(path)),
            vocab_hash: blake3::hash(&bytes).to_hex().to_string(),
            n_vocab: tok.get_vocab_size(true) as u64,
        };
        let end_of_text = find_eos(&tok);
        Ok(HfTokenizer {
            tok,
            info,
            max_id,
            end_of_text,
        })
    }

    /// Ids of the added tokens marked special, ascending.
    pub(crate) fn special_ids(&self) -> Vec<u32> {
        let mut ids: Vec<u32> = self
            .tok
            .get_added_tokens_decoder()
            .into_iter()
            .filter(|(_, t)| t.special)
            .map(|(id, _)| id)
            .collect();
        ids.sort_unstable();
        ids
    }

    /// `encode(text, add_special_tokens=False)`.
    pub(crate) fn encode(&self, text: &str) -> std::result::Result<Vec<u32>, String> {
        self.tok
            .encode_fast(text, false)
            .map(|e| e.get_ids().to_vec())
            .map_err(|e| format!("the tokenizer failed on this text: {e}"))
    }

    /// `decode(ids, skip_special_tokens=False)`; an unknown id is an error.
    pub(crate) fn decode(&self, ids: &[u32]) -> Result<String> {
        if let Some(bad) = ids.iter().find(|&&id| self.tok.id_to_token(id).is_none()) {
            return Err(FormatError::InvalidOption(format!(
                "decoding: unknown token id {bad}"
            )));
        }
        self.tok
            .decode(ids, false)
            .map_err(|e| FormatError::InvalidOption(format!("decoding: {e}")))
    }
}

/// The manifest label of a tokenizer file: its stem, or the directory's name
/// for the usual `.../<model>/tokenizer.json`.
fn label(path: &Path) -> String {
    let stem = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    if stem == "tokenizer" {
        let parent = path
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let dir = std::fs::canonicalize(parent)
            .ok()
            .and_then(|d| d.file_name().map(|n| n.to_string_lossy().into_owned()));
        if let Some(d) = dir.filter(|d| !d.is_empty()) {
            return d;
        }
    }
    stem
}

/// The one special added token among [`EOS_CANDIDATES`], or why there is none.
fn find_eos(tok: &tokenizers::Tokenizer) -> std::result::Result<(u32, String), String> {
    let mut specials: Vec<(u32, String)> = tok
        .get_added_tokens_decoder()
        .into_iter()
        .filter(|(_, t)| t.special)
        .map(|(id, t)| (id, t.content))
        .collect();
    specials.sort_unstable();
    let found: Vec<&(u32, String)> = specials
        .iter()
        .filter(|(_, s)| EOS_CANDIDATES.contains(&s.as_str()))
        .collect();
    match found[..] {
        [one] => Ok(one.clone()),
        [] => {
            let listed = specials
                .iter()
                .take(16)
                .map(|(id, s)| format!("{s} ({id})"))
                .collect::<Vec<_>>()
                .join(", ");
            Err(format!(
                "no end-of-text token among the tokenizer's special tokens ({}; looked for {})",
                if listed.is_empty() { "none" } else { &listed },
                EOS_CANDIDATES.join(" ")
            ))
        }
        _ => Err(format!(
            "several end-of-text candidates among the special tokens: {}",
            found
                .iter()
                .map(|(id, s)| format!("{s} ({id})"))
                .collect::<Vec<_>>()
                .join(", ")
        )),
    }
}
