//! Host step buffers that also hold the step as int64 token ids, widened by
//! the loader's reader thread right after the read (`HostBuffer::filled`),
//! so a CPU consumer asking for int64 gets it without a copy on its own
//! thread: the widening overlaps the training step, like prefetching.

use seqfeed_loader::{BoxError, BufferAllocator, Dtype, HeapAllocator, HostBuffer};

/// Allocates [`WidenedBuffer`]s for `token` ids.
pub(crate) struct WideningAllocator {
    pub(crate) token: Dtype,
}

impl BufferAllocator for WideningAllocator {
    fn name(&self) -> &str {
        "heap+int64"
    }

    fn allocate(&self, len: usize) -> Result<Box<dyn HostBuffer>, BoxError> {
        let raw = HeapAllocator.allocate(len)?;
        let n = len / self.token.size();
        let mut wide = Vec::new();
        wide.try_reserve_exact(n)
            .map_err(|e| Box::new(e) as BoxError)?;
        wide.resize(n, 0i64);
        Ok(Box::new(WidenedBuffer {
            raw,
            wide,
            token: self.token,
        }))
    }
}

/// A step buffer with its int64 twin.
pub(crate) struct WidenedBuffer {
    raw: Box<dyn HostBuffer>,
    wide: Vec<i64>,
    token: Dtype,
}

impl WidenedBuffer {
    /// The int64 ids of the last filled step.
    pub(crate) fn wide(&self) -> &[i64] {
        &self.wide
    }

    /// Token size of the raw step, in bytes.
    pub(crate) fn token_size(&self) -> usize {
        self.token.size()
    }
}

impl HostBuffer for WidenedBuffer {
    fn bytes(&self) -> &[u8] {
        self.raw.bytes()
    }

    fn bytes_mut(&mut self) -> &mut [u8] {
        self.raw.bytes_mut()
    }

    fn filled(&mut self, len: usize) -> Result<(), BoxError> {
        let bytes = self
            .raw
            .bytes()
            .get(..len)
            .ok_or("filled past the buffer")?;
        widen_into(bytes, self.token, &mut self.wide)
    }

    fn backend(&self) -> Option<&dyn std::any::Any> {
        Some(self)
    }
}

/// Widens little-endian `token` ids in `bytes` into the front of `out`.
pub(crate) fn widen_into(bytes: &[u8], token: Dtype, out: &mut [i64]) -> Result<(), BoxError> {
    let n = bytes.len() / token.size();
    let out = out.get_mut(..n).ok_or("int64 buffer too small")?;
    match token {
        Dtype::U16 => {
            for (o, c) in out.iter_mut().zip(bytes.chunks_exact(2)) {
                *o = i64::from(u16::from_le_bytes([c[0], c[1]]));
            }
        }
        Dtype::U32 => {
            for (o, c) in out.iter_mut().zip(bytes.chunks_exact(4)) {
                *o = i64::from(u32::from_le_bytes([c[0], c[1], c[2], c[3]]));
            }
        }
    }
    Ok(())
}
