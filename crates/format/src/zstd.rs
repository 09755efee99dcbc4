//! A streaming reader of zstd files (`.jsonl.zst`) on the pure-Rust `ruzstd`
//! decoder: every frame of the file in turn (the `zstd` tool writes one per
//! input, and concatenated files are valid), skippable frames skipped, each
//! frame's checksum checked when it has one.

use std::io::{self, BufRead, Read};

use ruzstd::decoding::errors::{FrameDecoderError, ReadFrameHeaderError};
use ruzstd::decoding::{BlockDecodingStrategy, FrameDecoder};

/// Whether `head` starts like a zstd file: a frame's magic number
/// (`28 b5 2f fd`) or a skippable frame's (`5? 2a 4d 18`).
pub(crate) fn is_zstd(head: &[u8]) -> bool {
    head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd])
        || (head.len() >= 4 && head[0] & 0xf0 == 0x50 && head[1..4] == [0x2a, 0x4d, 0x18])
}

/// Decompresses every frame of a zstd stream.
pub(crate) struct ZstdReader<R> {
    src: R,
    frame: FrameDecoder,
    in_frame: bool,
    /// Frames finished so far (names the frame in errors).
    frames: u64,
}

impl<R: BufRead> ZstdReader<R> {
    /// Reads the zstd stream `src`.
    pub(crate) fn new(src: R) -> Self {
        ZstdReader {
            src,
            frame: FrameDecoder::new(),
            in_frame: false,
            frames: 0,
        }
    }

    fn bad(&self, what: impl std::fmt::Display) -> io::Error {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("zstd frame {}: {what}", self.frames),
        )
    }
}

impl<R: BufRead> Read for ZstdReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        loop {
            if self.in_frame {
                while self.frame.can_collect() < buf.len() && !self.frame.is_finished() {
                    let want = buf.len() - self.frame.can_collect();
                    if let Err(e) = self
                        .frame
                        .decode_blocks(&mut self.src, BlockDecodingStrategy::UptoBytes(want))
                    {
                        return Err(self.bad(e));
                    }
                }
                let n = self.frame.read(buf)?;
                if n > 0 {
                    return Ok(n);
                }
                if !self.frame.is_finished() {
                    continue;
                }
                if let (Some(want), Some(got)) = (
                    self.frame.get_checksum_from_data(),
                    self.frame.get_calculated_checksum(),
                ) {
                    if want != got {
                        return Err(self.bad(format!(
                            "checksum mismatch (the frame says {want:08x}, the data gives {got:08x}): the file is corrupt"
                        )));
                    }
                }
                self.in_frame = false;
                self.frames += 1;
            }
            if self.src.fill_buf()?.is_empty() {
                return Ok(0);
            }
            match self.frame.reset(&mut self.src) {
                Ok(()) => self.in_frame = true,
                Err(FrameDecoderError::ReadFrameHeaderError(ReadFrameHeaderError::SkipFrame {
                    length,
                    ..
                })) => {
                    let skipped = io::copy(
                        &mut (&mut self.src).take(u64::from(length)),
                        &mut io::sink(),
                    )?;
                    if skipped < u64::from(length) {
                        return Err(self.bad("truncated skippable frame"));
                    }
                    self.frames += 1;
                }
                Err(e) => return Err(self.bad(e)),
            }
        }
    }
}
