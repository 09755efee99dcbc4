//! Helpers shared by the integration tests: independent readers of the
//! documented byte layouts (not using the crate's decoders).
#![allow(
    dead_code,
    missing_docs,
    clippy::unwrap_used,
    clippy::should_implement_trait
)]

use std::path::Path;

pub fn u32_at(b: &[u8], off: usize) -> u32 {
    u32::from_le_bytes(b[off..off + 4].try_into().unwrap())
}
pub fn u64_at(b: &[u8], off: usize) -> u64 {
    u64::from_le_bytes(b[off..off + 8].try_into().unwrap())
}

/// Fields of a sequence file, parsed by hand from docs/FORMAT.md.
#[derive(Debug)]
pub struct RawHeader {
    pub dtype_size: usize,
    pub flags: u8,
    pub seq_len: u64,
    pub count: u64,
    pub data_offset: u64,
    pub crc_offset: u64,
    pub file_len: u64,
    pub hash: [u8; 32],
    pub name: String,
}

pub fn raw_header(bytes: &[u8]) -> RawHeader {
    assert_eq!(&bytes[..8], b"SEQFEED\0");
    assert_eq!(u32_at(bytes, 8), 1);
    let name_len = u16::from_le_bytes([bytes[18], bytes[19]]) as usize;
    assert_eq!(u32_at(bytes, 12) as usize, 128 + name_len);
    RawHeader {
        dtype_size: bytes[16] as usize,
        flags: bytes[17],
        seq_len: u64_at(bytes, 24),
        count: u64_at(bytes, 32),
        data_offset: u64_at(bytes, 40),
        crc_offset: u64_at(bytes, 48),
        file_len: u64_at(bytes, 56),
        hash: bytes[64..96].try_into().unwrap(),
        name: String::from_utf8(bytes[128..128 + name_len].to_vec()).unwrap(),
    }
}

/// All tokens of a source, read by hand from its files in manifest order,
/// widened to u32, one Vec per sequence.
pub fn read_source_by_hand(dir: &Path) -> Vec<Vec<u32>> {
    let manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("manifest.json")).unwrap()).unwrap();
    let mut out = Vec::new();
    for f in manifest["files"].as_array().unwrap() {
        let bytes = std::fs::read(dir.join(f["path"].as_str().unwrap())).unwrap();
        let h = raw_header(&bytes);
        assert_eq!(h.data_offset % 4096, 0);
        assert_eq!(h.file_len as usize, bytes.len());
        let seq_bytes = h.seq_len as usize * h.dtype_size;
        let payload =
            &bytes[h.data_offset as usize..h.data_offset as usize + h.count as usize * seq_bytes];
        assert_eq!(blake3::hash(payload).as_bytes(), &h.hash);
        assert_eq!(
            blake3::hash(payload).to_hex().as_str(),
            f["payload_hash"].as_str().unwrap()
        );
        for (i, seq) in payload.chunks_exact(seq_bytes).enumerate() {
            if h.flags & 1 == 1 {
                let crc = u32_at(&bytes, h.crc_offset as usize + 4 * i);
                assert_eq!(crc, crc32c::crc32c(seq), "crc of sequence {i}");
            }
            let toks: Vec<u32> = match h.dtype_size {
                2 => seq
                    .chunks_exact(2)
                    .map(|c| u16::from_le_bytes([c[0], c[1]]) as u32)
                    .collect(),
                4 => seq
                    .chunks_exact(4)
                    .map(|c| u32::from_le_bytes(c.try_into().unwrap()))
                    .collect(),
                s => panic!("dtype size {s}"),
            };
            out.push(toks);
        }
    }
    out
}

/// The expected sequences: documents concatenated, each followed by `eos`,
/// cut at `seq_len`, tail dropped or padded.
pub fn expected_sequences(
    docs: &[Vec<u32>],
    seq_len: usize,
    eos: Option<u32>,
    pad: Option<u32>,
) -> Vec<Vec<u32>> {
    let mut stream = Vec::new();
    for d in docs {
        stream.extend_from_slice(d);
        if let Some(e) = eos {
            stream.push(e);
        }
    }
    let mut out: Vec<Vec<u32>> = stream.chunks(seq_len).map(|c| c.to_vec()).collect();
    if let Some(last) = out.last_mut() {
        if last.len() < seq_len {
            match pad {
                Some(p) => last.resize(seq_len, p),
                None => {
                    out.pop();
                }
            }
        }
    }
    out
}

/// Deterministic pseudo-random numbers for tests.
pub struct Rng(pub u64);
impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

pub fn random_docs(rng: &mut Rng, n: usize, max_len: u64, max_id: u64) -> Vec<Vec<u32>> {
    (0..n)
        .map(|_| {
            let len = rng.below(max_len + 1);
            (0..len).map(|_| rng.below(max_id + 1) as u32).collect()
        })
        .collect()
}

/// A Megatron MMIDIDX pair written from the documented layout.
pub fn write_megatron(prefix: &Path, dtype_code: u8, elem: usize, docs: &[Vec<i64>], gap: usize) {
    let mut bin = Vec::new();
    let mut lengths = Vec::new();
    let mut pointers = Vec::new();
    for d in docs {
        bin.extend(std::iter::repeat_n(0xEEu8, gap)); // junk between documents
        pointers.push(bin.len() as i64);
        lengths.push(d.len() as i32);
        for &t in d {
            bin.extend_from_slice(&t.to_le_bytes()[..elem]);
        }
    }
    let mut idx = Vec::new();
    idx.extend_from_slice(b"MMIDIDX\0\0");
    idx.extend_from_slice(&1u64.to_le_bytes());
    idx.push(dtype_code);
    idx.extend_from_slice(&(docs.len() as u64).to_le_bytes());
    idx.extend_from_slice(&(docs.len() as u64 + 1).to_le_bytes());
    assert_eq!(idx.len(), 34);
    for l in &lengths {
        idx.extend_from_slice(&l.to_le_bytes());
    }
    for p in &pointers {
        idx.extend_from_slice(&p.to_le_bytes());
    }
    for j in 0..=docs.len() as i64 {
        idx.extend_from_slice(&j.to_le_bytes());
    }
    let with = |ext: &str| {
        let mut s = prefix.as_os_str().to_owned();
        s.push(ext);
        std::path::PathBuf::from(s)
    };
    std::fs::write(with(".idx"), idx).unwrap();
    std::fs::write(with(".bin"), bin).unwrap();
}

/// A version-1 .npy file with a 1-D array.
pub fn write_npy(path: &Path, descr: &str, elem_bytes: &[u8], n: usize) {
    let mut header = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': ({n},), }}");
    while (10 + header.len() + 1) % 64 != 0 {
        header.push(' ');
    }
    header.push('\n');
    let mut out = b"\x93NUMPY\x01\x00".to_vec();
    out.extend_from_slice(&(header.len() as u16).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(elem_bytes);
    std::fs::write(path, out).unwrap();
}
