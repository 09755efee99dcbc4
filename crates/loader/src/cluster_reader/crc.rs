//! Integrity on the read path: every sequence a step reads into host memory
//! is checked against its file's CRC32C table (docs/FORMAT.md 1.2).
//!
//! The table comes from the nodes themselves, over the same transport as
//! the data: a node serves each sequence file whole as one region, header
//! and table included, so the reader fetches a file's header and table with
//! two reads the first time it reads that file (from whichever node it
//! reads it from first), and checks every later read of it, from any
//! replica, against that table. A region that does not start with the
//! sequence-file magic (a bare array) has no table and is read unchecked. No node protocol change, and no access to
//! the nodes' disks: loaders in a real deployment may not see them. The
//! tables cost 4 bytes per sequence of each file read (1/1024 of the data
//! for 4 KiB sequences), shared by every node of the reader.
//!
//! Off by default ([`ClusterReader::set_verify_crc`]): computed on the
//! reading thread after each batch, the check cost 20-33% of the tcp
//! reader's throughput on the development host (`SEQFEED_BENCH_ONLY=crc
//! cargo bench -p seqfeed-benches --bench loader`: 0.81x and 0.67x in two
//! runs), above the 5% that would make it the default. Checking each piece
//! as the transport receives it, while it is in cache, is the way to make
//! it cheap.
//!
//! Reads into device memory (GPUDirect) are not checked: the CPU never sees
//! those bytes. Files written without a table (`pack --no-crc`) are read
//! unchecked.

use std::sync::OnceLock;

use seqfeed_format::{check_sequence_crc, Dtype, FIXED_HEADER_LEN, FLAG_CRC, MAGIC, MAX_NAME_LEN};
use seqfeed_transport::{ReadRequest, RegionId, Transport, TransportError};

use super::round::NodeCtx;
use super::ClusterReader;

// Header field offsets (docs/FORMAT.md 1.1).
const OFF_VERSION: usize = 8;
const OFF_HEADER_LEN: usize = 12;
const OFF_DTYPE: usize = 16;
const OFF_FLAGS: usize = 17;
const OFF_SEQ_LEN: usize = 24;
const OFF_COUNT: usize = 32;
const OFF_DATA_OFFSET: usize = 40;
const OFF_CRC_OFFSET: usize = 48;
const OFF_HEADER_CRC: usize = 96;

/// What the reader knows about one file's checksums.
#[derive(Debug)]
pub(super) enum FileCrc {
    /// The file carries a table.
    Table(CrcTable),
    /// The file was written without one: its reads are not checked.
    Absent,
}

/// A file's per-sequence CRC32C table and the layout to index it.
#[derive(Debug)]
pub(super) struct CrcTable {
    data_offset: u64,
    seq_bytes: u64,
    table: Vec<u32>,
}

/// A sequence whose bytes do not match its table entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Mismatch {
    /// Sequence index within its file.
    pub sequence: u64,
    /// The table's CRC32C of the sequence.
    pub stored: u32,
}

impl FileCrc {
    /// Checks `bytes`, read at byte `offset` of the file. Reads that are not
    /// one whole sequence (or of a file without a table) pass unchecked.
    pub(super) fn check(&self, offset: u64, bytes: &[u8]) -> Result<(), Mismatch> {
        let FileCrc::Table(t) = self else {
            return Ok(());
        };
        let Some(rel) = offset.checked_sub(t.data_offset) else {
            return Ok(());
        };
        if t.seq_bytes == 0 || bytes.len() as u64 != t.seq_bytes || rel % t.seq_bytes != 0 {
            return Ok(());
        }
        let sequence = rel / t.seq_bytes;
        let Some(&stored) = usize::try_from(sequence).ok().and_then(|i| t.table.get(i)) else {
            return Ok(());
        };
        if check_sequence_crc(bytes, stored) {
            Ok(())
        } else {
            Err(Mismatch { sequence, stored })
        }
    }
}

/// Why a file's table could not be had from a node.
#[derive(Debug)]
pub(super) enum FetchError {
    /// The node failed (another replica may serve).
    Transport(TransportError),
    /// The node's copy of the file has a malformed header or table.
    Malformed(String),
}

/// Fetches the header and CRC table of `file` (region `region` of `len`
/// bytes) through `t`.
pub(super) fn fetch(
    t: &mut dyn Transport,
    region: RegionId,
    len: u64,
    file: &str,
) -> Result<FileCrc, FetchError> {
    let head_len = (FIXED_HEADER_LEN + MAX_NAME_LEN as u64).min(len);
    let mut head = vec![0u8; head_len as usize];
    read(t, region, 0, &mut head)?;
    let bad = |what: String| FetchError::Malformed(format!("{file}: {what}"));
    if head.len() < FIXED_HEADER_LEN as usize || head[..8] != MAGIC {
        // Not a sequence file at all (a bare token array, as in tests):
        // there is no table to check against.
        return Ok(FileCrc::Absent);
    }
    let u32_at = |o: usize| u32::from_le_bytes([head[o], head[o + 1], head[o + 2], head[o + 3]]);
    let u64_at = |o: usize| {
        let mut b = [0u8; 8];
        b.copy_from_slice(&head[o..o + 8]);
        u64::from_le_bytes(b)
    };
    if u32_at(OFF_VERSION) != seqfeed_format::VERSION {
        return Err(bad(format!("format version {}", u32_at(OFF_VERSION))));
    }
    let header_len = u32_at(OFF_HEADER_LEN) as usize;
    if header_len < FIXED_HEADER_LEN as usize || header_len > head.len() {
        return Err(bad(format!("header_len {header_len}")));
    }
    // The header CRC covers the header with its own field taken as zero.
    let mut zeroed = head[..header_len].to_vec();
    zeroed[OFF_HEADER_CRC..OFF_HEADER_CRC + 4].fill(0);
    if !check_sequence_crc(&zeroed, u32_at(OFF_HEADER_CRC)) {
        return Err(bad("header checksum mismatch".into()));
    }
    if head[OFF_FLAGS] & FLAG_CRC == 0 {
        return Ok(FileCrc::Absent);
    }
    let dtype = Dtype::from_code(head[OFF_DTYPE])
        .ok_or_else(|| bad(format!("unknown dtype code {}", head[OFF_DTYPE])))?;
    let count = u64_at(OFF_COUNT);
    let seq_bytes = u64_at(OFF_SEQ_LEN)
        .checked_mul(dtype.size() as u64)
        .ok_or_else(|| bad("seq_len overflows".into()))?;
    let crc_offset = u64_at(OFF_CRC_OFFSET);
    let table_bytes = count
        .checked_mul(4)
        .filter(|&b| crc_offset.checked_add(b).is_some_and(|end| end <= len))
        .ok_or_else(|| {
            bad(format!(
                "a {count}-entry CRC table at {crc_offset} does not fit the {len}-byte file"
            ))
        })?;
    let mut raw = vec![0u8; table_bytes as usize];
    read(t, region, crc_offset, &mut raw)?;
    let table = raw
        .chunks_exact(4)
        .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    Ok(FileCrc::Table(CrcTable {
        data_offset: u64_at(OFF_DATA_OFFSET),
        seq_bytes,
        table,
    }))
}

/// Reads `dst.len()` bytes at `offset` of `region`, in pieces the
/// transports take (at most 16 MiB per read).
fn read(
    t: &mut dyn Transport,
    region: RegionId,
    offset: u64,
    dst: &mut [u8],
) -> Result<(), FetchError> {
    const PIECE: usize = 16 << 20;
    let reads: Vec<ReadRequest> = (0..dst.len())
        .step_by(PIECE)
        .map(|at| ReadRequest {
            region,
            offset: offset + at as u64,
            len: (dst.len() - at).min(PIECE) as u32,
            dst_offset: at as u64,
        })
        .collect();
    if reads.is_empty() {
        return Ok(());
    }
    t.read_batch(&reads, dst).map_err(|e| match e {
        TransportError::OutOfBounds { what } => {
            FetchError::Malformed(format!("reading the CRC table: {what}"))
        }
        e => FetchError::Transport(e),
    })?;
    Ok(())
}

/// A node's copy of a file that failed the check.
#[derive(Debug, Clone)]
pub(super) struct Corrupt {
    /// Index in the reader's file table.
    pub file: usize,
    /// The first sequence that failed (`None`: the header or table is bad).
    pub sequence: Option<u64>,
    /// Rows of the batch that failed.
    pub rows: u64,
    /// What failed, naming the file and sequence.
    pub what: String,
}

/// Fetches the table of every file of `rows` not fetched yet, through the
/// node's transport `t`. Returns the files whose header or table is
/// malformed on this node; a transport error is the node's failure.
pub(super) fn ensure_tables(
    t: &mut dyn Transport,
    regions: &[Option<RegionId>],
    ctx: &NodeCtx<'_>,
    rows: &[usize],
) -> Result<Vec<Corrupt>, TransportError> {
    let mut bad: Vec<Corrupt> = Vec::new();
    let mut tried: Vec<usize> = Vec::new();
    for &row in rows {
        let fi = ctx.reads[row].file as usize;
        if ctx.crcs[fi].get().is_some() || tried.contains(&fi) {
            continue;
        }
        tried.push(fi);
        let Some(region) = regions[fi] else {
            continue; // the read itself reports the missing region
        };
        let len = t
            .regions()
            .iter()
            .find(|r| r.id == region)
            .map_or(0, |r| r.len);
        match fetch(t, region, len, &ctx.files[fi]) {
            Ok(c) => {
                let _ = ctx.crcs[fi].set(c);
            }
            Err(FetchError::Transport(e)) => return Err(e),
            Err(FetchError::Malformed(what)) => bad.push(Corrupt {
                file: fi,
                sequence: None,
                rows: 0,
                what,
            }),
        }
    }
    Ok(bad)
}

/// Checks each of `rows` (row `i` of them at `i * row_bytes` of `buf`)
/// against its file's table. Returns each file with a failing row.
pub(super) fn check_rows(ctx: &NodeCtx<'_>, rows: &[usize], buf: &[u8]) -> Vec<Corrupt> {
    let mut bad: Vec<Corrupt> = Vec::new();
    for (i, &row) in rows.iter().enumerate() {
        let r = &ctx.reads[row];
        let fi = r.file as usize;
        let Some(table) = ctx.crcs.get(fi).and_then(OnceLock::get) else {
            continue;
        };
        let at = i * ctx.row_bytes;
        let Some(bytes) = buf.get(at..at + r.len as usize) else {
            continue;
        };
        let Err(m) = table.check(r.offset, bytes) else {
            continue;
        };
        if let Some(c) = bad.iter_mut().find(|c| c.file == fi) {
            c.rows += 1;
            continue;
        }
        bad.push(Corrupt {
            file: fi,
            sequence: Some(m.sequence),
            rows: 1,
            what: format!(
                "sequence {} of {} fails its CRC32C (table entry {:#010x}; step {}, row {row})",
                m.sequence, ctx.files[fi], m.stored, ctx.step
            ),
        });
    }
    bad
}

impl ClusterReader {
    /// Turns reading `corrupt` files away from node `ni`: they are read from
    /// replicas from now on (also after a reconnect), and the damage is
    /// logged once per file, naming the node, the file and the sequence.
    pub(super) fn mark_corrupt(&mut self, ni: usize, step: u64, corrupt: &[Corrupt]) {
        let node = &mut self.nodes[ni];
        for c in corrupt {
            node.crc_mismatches += c.rows;
            let file = &self.files[c.file];
            if let Some(seq) = c.sequence {
                node.last_crc_mismatch = Some(format!("{file} sequence {seq}"));
            }
            if node.bad_files[c.file].is_none() {
                tracing::warn!(node = %node.spec.name, file = %file, sequence = ?c.sequence, step, "node serves a damaged copy: {}; reading the file from replicas", c.what);
            }
            node.bad_files[c.file] = Some(format!("node {}: {}", node.spec.name, c.what));
        }
    }
}
