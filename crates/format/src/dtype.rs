//! Token data types of sequence files.
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// The token type stored in a sequence file: unsigned 16- or 32-bit, little-endian.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Dtype {
    /// Unsigned 16-bit tokens (vocabularies up to 65 536 ids).
    U16,
    /// Unsigned 32-bit tokens.
    U32,
}

impl Dtype {
    /// Bytes per token (2 or 4).
    pub fn size(self) -> usize {
        match self {
            Dtype::U16 => 2,
            Dtype::U32 => 4,
        }
    }

    /// The largest token id this dtype can hold.
    pub fn max_id(self) -> u64 {
        match self {
            Dtype::U16 => u64::from(u16::MAX),
            Dtype::U32 => u64::from(u32::MAX),
        }
    }

    /// The code stored in a sequence file header (equal to [`Dtype::size`]).
    pub fn code(self) -> u8 {
        match self {
            Dtype::U16 => 2,
            Dtype::U32 => 4,
        }
    }

    /// The dtype for a header code, if it is one.
    pub fn from_code(code: u8) -> Option<Dtype> {
        match code {
            2 => Some(Dtype::U16),
            4 => Some(Dtype::U32),
            _ => None,
        }
    }

    /// The lowercase name, `"u16"` or `"u32"`.
    pub fn name(self) -> &'static str {
        match self {
            Dtype::U16 => "u16",
            Dtype::U32 => "u32",
        }
    }
}

impl fmt::Display for Dtype {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Dtype {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "u16" => Ok(Dtype::U16),
            "u32" => Ok(Dtype::U32),
            other => Err(format!(
                "unknown token dtype '{other}' (expected u16 or u32)"
            )),
        }
    }
}

/// A token type that sequence files can hold; implemented for `u16` and `u32` only.
pub trait Token: bytemuck::Pod + Copy + Into<u32> + sealed::Sealed {
    /// The dtype this Rust type corresponds to.
    const DTYPE: Dtype;
}

impl Token for u16 {
    const DTYPE: Dtype = Dtype::U16;
}
impl Token for u32 {
    const DTYPE: Dtype = Dtype::U32;
}

mod sealed {
    pub trait Sealed {}
    impl Sealed for u16 {}
    impl Sealed for u32 {}
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip() {
        for d in [Dtype::U16, Dtype::U32] {
            assert_eq!(Dtype::from_code(d.code()), Some(d));
            assert_eq!(d.name().parse::<Dtype>().unwrap(), d);
            assert_eq!(d.size(), d.code() as usize);
        }
        assert_eq!(Dtype::from_code(3), None);
        assert!("u8".parse::<Dtype>().is_err());
        assert_eq!(Dtype::U16.max_id(), 65535);
    }
}
