//! Tokenizer checks across a plan's sources: a warning when they were packed
//! with different tokenizers, an error against the config's pin.

use seqfeed_format::TokenizerInfo;

use crate::{PlanError, SourceShape};

/// Whether `pin` names `t`: equal to its vocab hash (64 hex digits, any case)
/// or, for any other pin, to its name.
pub(crate) fn pin_matches(pin: &str, t: &TokenizerInfo) -> bool {
    let pin = pin.trim();
    if pin.len() == 64 && pin.bytes().all(|b| b.is_ascii_hexdigit()) {
        pin.eq_ignore_ascii_case(&t.vocab_hash)
    } else {
        pin == t.name
    }
}

/// How a source's tokenizer is shown in messages.
pub(crate) fn describe(t: Option<&TokenizerInfo>) -> String {
    match t {
        Some(t) => format!(
            "{} (vocab_hash {}, n_vocab {})",
            t.name, t.vocab_hash, t.n_vocab
        ),
        None => "none recorded (packed from token ids)".to_string(),
    }
}

/// Checks `shapes` (the plan's sources, in config order) against the pin:
/// the first source whose tokenizer does not match is an error naming it.
pub(crate) fn check_pin(pin: &str, shapes: &[&SourceShape]) -> Result<(), PlanError> {
    for s in shapes {
        if !s.tokenizer.as_ref().is_some_and(|t| pin_matches(pin, t)) {
            return Err(PlanError::TokenizerMismatch {
                source_name: s.name.clone(),
                pinned: pin.trim().to_string(),
                found: describe(s.tokenizer.as_ref()),
            });
        }
    }
    Ok(())
}

/// When the sources do not all share one tokenizer (by vocab hash; a source
/// without one counts as its own kind), a message naming each tokenizer and
/// its sources.
pub(crate) fn mixed(shapes: &[&SourceShape]) -> Option<String> {
    let mut groups: Vec<(Option<&TokenizerInfo>, Vec<&str>)> = Vec::new();
    for s in shapes {
        let key = s.tokenizer.as_ref();
        let same = |g: &Option<&TokenizerInfo>| match (g, key) {
            (Some(a), Some(b)) => a.vocab_hash == b.vocab_hash,
            (None, None) => true,
            _ => false,
        };
        match groups.iter_mut().find(|(g, _)| same(g)) {
            Some((_, names)) => names.push(&s.name),
            None => groups.push((key, vec![&s.name])),
        }
    }
    if groups.len() < 2 {
        return None;
    }
    let parts: Vec<String> = groups
        .iter()
        .map(|(t, names)| format!("{}: {}", names.join(", "), describe(*t)))
        .collect();
    Some(format!(
        "the plan's sources were packed with different tokenizers; their token ids mean different things. {}. Pin one with tokenizer = \"<vocab_hash>\" in the plan config to refuse this.",
        parts.join("; ")
    ))
}
