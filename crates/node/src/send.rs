//! Writing answers to a client under a no-progress deadline: every write
//! must move at least one byte within the limit, however long the whole
//! answer takes. A slow client that keeps reading a large batch is served
//! to the end; a client that stops reading is dropped after the limit.

use std::io::IoSlice;
use std::time::Duration;

use seqfeed_transport::RegionTable;
use seqfeed_wire::{Frame, ReadBatch};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Most slices handed to one `writev` call (Linux `IOV_MAX` is 1024).
const MAX_IOV: usize = 1024;

/// Why an answer was not sent whole: an I/O error, or `None` when the
/// client took nothing for the whole limit.
pub(crate) type SendError = Option<std::io::Error>;

/// Writes `slices` whole; each `writev` must make progress within `limit`.
pub(crate) async fn write_slices(
    stream: &mut TcpStream,
    slices: &mut [IoSlice<'_>],
    limit: Duration,
) -> Result<(), SendError> {
    let mut rest: &mut [IoSlice<'_>] = slices;
    while !rest.is_empty() {
        let end = rest.len().min(MAX_IOV);
        let n = match tokio::time::timeout(limit, stream.write_vectored(&rest[..end])).await {
            Ok(Ok(0)) => return Err(Some(std::io::ErrorKind::WriteZero.into())),
            Ok(Ok(n)) => n,
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Ok(Err(e)) => return Err(Some(e)),
            Err(_) => return Err(None),
        };
        IoSlice::advance_slices(&mut rest, n);
    }
    Ok(())
}

/// Writes one frame under the no-progress deadline `limit`.
pub(crate) async fn write_frame(
    stream: &mut TcpStream,
    f: &Frame,
    limit: Duration,
) -> Result<(), SendError> {
    let bytes = f.to_bytes();
    write_slices(stream, &mut [IoSlice::new(&bytes)], limit).await
}

/// Writes the `ReadData` header and every read's bytes straight from the
/// mapping with vectored writes, under the no-progress deadline `limit`.
pub(crate) async fn serve_reads(
    stream: &mut TcpStream,
    table: &RegionTable,
    node: &str,
    batch: &ReadBatch,
    total: u64,
    limit: Duration,
) -> Result<(), SendError> {
    let header = Frame::ReadData {
        id: batch.id,
        total,
    }
    .to_bytes();
    let mut slices: Vec<IoSlice<'_>> = Vec::with_capacity(batch.reads.len() + 1);
    slices.push(IoSlice::new(&header));
    for r in &batch.reads {
        let src = table.slice(node, r.region, r.offset, r.len).map_err(|e| {
            Some(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                e.to_string(),
            ))
        })?;
        if !src.is_empty() {
            slices.push(IoSlice::new(src));
        }
    }
    write_slices(stream, &mut slices, limit).await
}

/// Half-closes the socket after a final frame and drains what the peer
/// still sends (briefly), so the final frame is not lost to a reset.
pub(crate) async fn linger_close(stream: &mut TcpStream) {
    let _ = stream.shutdown().await;
    let mut sink = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + Duration::from_millis(500);
    while let Ok(Ok(n)) = tokio::time::timeout_at(deadline, stream.read(&mut sink)).await {
        if n == 0 {
            break;
        }
    }
}
