//! Test support: real files on disk, seeded block sources, and a transport
//! wrapper that fails on demand (failure injection for fail-over tests).
//!
//! Public behind the `testutil` feature so that other crates' tests and
//! examples (the CUDA destinations' loader test and GPU check) share these
//! fixtures; not part of the loader's API.

// Fixtures: a failed set-up is a failed test.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};

use rand::{Rng, SeedableRng};
use seqfeed_transport::{
    BatchStats, DeviceRegion, DmaBuf, LocalTransport, ReadRequest, RegionInfo, Transport,
    TransportError,
};

use crate::alloc::{BufferAllocator, HostBuffer};
use crate::block::{BlockSource, Dtype, SeqRead};
use crate::cluster_reader::NodeSpec;
use crate::error::BoxError;

/// A dataset of `nfiles` files of `seqs` sequences of `seq_bytes` random bytes.
pub struct Files {
    /// The dataset root (removed on drop).
    pub dir: tempfile::TempDir,
    /// Each file's dataset-relative path.
    pub names: Vec<String>,
    /// Each file's bytes.
    pub bytes: Vec<Vec<u8>>,
    /// Bytes per sequence.
    pub seq_bytes: usize,
    /// Sequences per file.
    pub seqs: usize,
}

/// Files `s{i % 3}/part-{i:05}.seq` of bytes from a `StdRng` seeded with `seed`.
pub fn files(nfiles: usize, seqs: usize, seq_bytes: usize, seed: u64) -> Files {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    write_files(
        nfiles,
        seqs,
        seq_bytes,
        |i| format!("s{}/part-{i:05}.seq", i % 3),
        |_, b| b.iter_mut().for_each(|x| *x = rng.gen()),
    )
}

/// Files `part-{i:05}.seq` of xorshift bytes (file `i` seeded by `i`);
/// cheap enough for GiB-sized data sets. `seqs * seq_bytes` must be a
/// multiple of 8.
pub fn xorshift_files(nfiles: usize, seqs: usize, seq_bytes: usize) -> Files {
    write_files(
        nfiles,
        seqs,
        seq_bytes,
        |i| format!("part-{i:05}.seq"),
        |i, b| {
            let mut x = 0x9E37_79B9_7F4A_7C15u64 ^ (i as u64 + 1);
            for c in b.chunks_exact_mut(8) {
                x = xorshift(x);
                c.copy_from_slice(&x.to_le_bytes());
            }
        },
    )
}

/// Writes file `i` as `name(i)`, its `seqs * seq_bytes` bytes set by `fill(i, ..)`.
fn write_files(
    nfiles: usize,
    seqs: usize,
    seq_bytes: usize,
    name: impl Fn(usize) -> String,
    mut fill: impl FnMut(usize, &mut [u8]),
) -> Files {
    let dir = tempfile::tempdir().unwrap();
    let mut names = Vec::new();
    let mut bytes = Vec::new();
    for i in 0..nfiles {
        let name = name(i);
        let path = dir.path().join(&name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        let mut b = vec![0u8; seqs * seq_bytes];
        fill(i, &mut b);
        std::fs::write(path, &b).unwrap();
        names.push(name);
        bytes.push(b);
    }
    Files {
        dir,
        names,
        bytes,
        seq_bytes,
        seqs,
    }
}

fn xorshift(mut x: u64) -> u64 {
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    x
}

/// How a [`RandomBlocks`] picks the sequence at each global position.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Draw {
    /// A `StdRng` seeded with the position.
    StdRng,
    /// xorshift of the position.
    Xorshift,
}

/// Blocks drawn pseudo-randomly, keyed by global position: rank `r` of
/// `world` reads, at step `s`, the `micro` positions from
/// `s * global + r * micro`. Position `p`'s sequence is in source
/// `file % sources.len()`.
pub struct RandomBlocks {
    /// The file table.
    pub files: Vec<String>,
    /// The source table.
    pub sources: Vec<String>,
    /// Sequences per file.
    pub seqs: usize,
    /// Tokens per sequence.
    pub seq_len: usize,
    /// Token type.
    pub dtype: Dtype,
    /// Sequences per step, all ranks.
    pub global: usize,
    /// Steps.
    pub steps: u64,
    /// How positions pick sequences.
    pub draw: Draw,
}

impl RandomBlocks {
    /// u32 rows over [`files`]' three sources, drawn by `StdRng`.
    pub fn new(f: &Files, global: usize, steps: u64) -> Self {
        RandomBlocks {
            files: f.names.clone(),
            sources: vec!["s0".into(), "s1".into(), "s2".into()],
            seqs: f.seqs,
            seq_len: f.seq_bytes / 4,
            dtype: Dtype::U32,
            global,
            steps,
            draw: Draw::StdRng,
        }
    }

    /// u16 rows over one source, drawn by xorshift (for [`xorshift_files`]).
    pub fn xorshift(f: &Files, global: usize, steps: u64) -> Self {
        RandomBlocks {
            files: f.names.clone(),
            sources: vec!["random".into()],
            seqs: f.seqs,
            seq_len: f.seq_bytes / 2,
            dtype: Dtype::U16,
            global,
            steps,
            draw: Draw::Xorshift,
        }
    }

    /// The sequence at global position `pos`.
    pub fn position(&self, pos: u64) -> SeqRead {
        let (file, index) = match self.draw {
            Draw::StdRng => {
                let mut rng = rand::rngs::StdRng::seed_from_u64(pos.wrapping_mul(0x9E37_79B9));
                let file = rng.gen_range(0..self.files.len());
                (file, rng.gen_range(0..self.seqs))
            }
            Draw::Xorshift => {
                let r = xorshift(pos.wrapping_mul(0x2545_F491_4F6C_DD1D) | 1);
                let file = r % self.files.len() as u64;
                let index = (r >> 20) % self.seqs as u64;
                (file as usize, index as usize)
            }
        };
        let seq_bytes = self.seq_bytes();
        SeqRead {
            file: file as u32,
            offset: (index * seq_bytes) as u64,
            len: seq_bytes as u32,
            source: (file % self.sources.len()) as u32,
            position: pos,
        }
    }
}

impl BlockSource for RandomBlocks {
    fn steps(&self) -> u64 {
        self.steps
    }
    fn global_batch(&self) -> usize {
        self.global
    }
    fn seq_len(&self) -> usize {
        self.seq_len
    }
    fn dtype(&self) -> Dtype {
        self.dtype
    }
    fn files(&self) -> &[String] {
        &self.files
    }
    fn sources(&self) -> &[String] {
        &self.sources
    }
    fn block(
        &self,
        step: u64,
        rank: usize,
        world: usize,
        out: &mut Vec<SeqRead>,
    ) -> Result<(), BoxError> {
        let micro = self.micro_batch(world)?;
        let first = step * self.global as u64 + (rank * micro) as u64;
        out.extend((first..first + micro as u64).map(|p| self.position(p)));
        Ok(())
    }
}

/// Expected bytes of `reads`, from the files directly.
pub fn expected(f: &Files, reads: &[SeqRead]) -> Vec<u8> {
    let mut v = Vec::new();
    for r in reads {
        let b = &f.bytes[r.file as usize];
        v.extend_from_slice(&b[r.offset as usize..r.offset as usize + r.len as usize]);
    }
    v
}

/// Switches for a [`Flaky`] node.
#[derive(Default)]
pub struct Switch {
    /// When set, every read and connect fails with an I/O error.
    pub down: AtomicBool,
    /// Batches served.
    pub batches: AtomicU64,
    /// Connects made.
    pub connects: AtomicU64,
    /// Milliseconds each batch takes (a slow link).
    pub delay_ms: AtomicU64,
    /// When non-zero, the node is frozen (a stopped process): every read and
    /// connect blocks this many milliseconds, then fails as a socket timeout
    /// does (EAGAIN).
    pub frozen_ms: AtomicU64,
    /// `register_buffer` calls.
    pub registers: AtomicU64,
    /// `unregister_buffer` calls that removed a registration.
    pub unregisters: AtomicU64,
    /// Registrations that overlapped a live one (a buffer registered while a
    /// stale registration of its addresses was still held).
    pub overlaps: AtomicU64,
    /// Batches whose destination lay inside a registered buffer.
    pub hits: AtomicU64,
    /// Batches whose destination lay outside every registered buffer.
    pub misses: AtomicU64,
    /// Device memory accepted: 0 none, 1 peer memory only, 2 dmabuf too.
    pub device_mode: AtomicU8,
    /// Live device registrations (register minus unregister), all transports.
    pub device_live: AtomicI64,
    /// Device registrations accepted, dmabuf ones.
    pub device_dmabuf: AtomicU64,
    /// Batches read into device memory.
    pub device_batches: AtomicU64,
}

/// A local transport that fails while its switch is down.
pub struct Flaky {
    inner: LocalTransport,
    name: String,
    switch: Arc<Switch>,
    /// Registered buffers (address, length), as an RDMA transport keeps them.
    regs: Vec<(usize, usize)>,
    /// Registered device regions.
    dev: Vec<DeviceRegion>,
}

impl Drop for Flaky {
    fn drop(&mut self) {
        self.switch
            .device_live
            .fetch_sub(self.dev.len() as i64, Ordering::SeqCst);
    }
}

impl Transport for Flaky {
    fn backend(&self) -> &'static str {
        "local"
    }
    fn node(&self) -> &str {
        &self.name
    }
    fn regions(&self) -> &[RegionInfo] {
        self.inner.regions()
    }
    fn read_batch(
        &mut self,
        reads: &[ReadRequest],
        dst: &mut [u8],
    ) -> Result<BatchStats, TransportError> {
        freeze(&self.switch, &self.name, "receiving a frame header")?;
        if self.switch.down.load(Ordering::SeqCst) {
            return Err(TransportError::Io {
                node: self.name.clone(),
                what: "read".into(),
                source: std::io::Error::from(std::io::ErrorKind::ConnectionReset),
            });
        }
        self.switch.batches.fetch_add(1, Ordering::SeqCst);
        let (a, l) = (dst.as_ptr() as usize, dst.len());
        if self
            .regs
            .iter()
            .any(|&(ra, rl)| ra <= a && a + l <= ra + rl)
        {
            self.switch.hits.fetch_add(1, Ordering::SeqCst);
        } else {
            self.switch.misses.fetch_add(1, Ordering::SeqCst);
        }
        let delay = self.switch.delay_ms.load(Ordering::SeqCst);
        if delay > 0 {
            std::thread::sleep(std::time::Duration::from_millis(delay));
        }
        self.inner.read_batch(reads, dst)
    }
    fn register_buffer(&mut self, buf: &mut [u8]) -> Result<(), TransportError> {
        let (a, l) = (buf.as_ptr() as usize, buf.len());
        let before = self.regs.len();
        self.regs.retain(|&(ra, rl)| !(a < ra + rl && ra < a + l));
        if self.regs.len() != before {
            self.switch.overlaps.fetch_add(1, Ordering::SeqCst);
        }
        self.regs.push((a, l));
        self.switch.registers.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
    fn unregister_buffer(&mut self, addr: usize, len: usize) {
        let before = self.regs.len();
        self.regs
            .retain(|&(ra, rl)| !(addr < ra + rl && ra < addr + len.max(1)));
        let gone = (before - self.regs.len()) as u64;
        self.switch.unregisters.fetch_add(gone, Ordering::SeqCst);
    }
    fn register_device(&mut self, region: &DeviceRegion) -> Result<(), TransportError> {
        let mode = self.switch.device_mode.load(Ordering::SeqCst);
        if mode == 0 || (mode == 1 && region.dmabuf().is_some()) {
            return Err(TransportError::Unsupported {
                node: self.name.clone(),
                backend: "fake-rdma",
                what: format!("{} registration refused", region.kind()),
            });
        }
        self.dev.push(*region);
        self.switch.device_live.fetch_add(1, Ordering::SeqCst);
        if region.dmabuf().is_some() {
            self.switch.device_dmabuf.fetch_add(1, Ordering::SeqCst);
        }
        Ok(())
    }
    fn unregister_device(&mut self, addr: u64, len: usize) {
        let before = self.dev.len();
        self.dev
            .retain(|r| !(r.addr() < addr + len as u64 && addr < r.addr() + r.len() as u64));
        let gone = (before - self.dev.len()) as i64;
        self.switch.device_live.fetch_sub(gone, Ordering::SeqCst);
    }
    fn read_batch_device(
        &mut self,
        reads: &[ReadRequest],
        dst: &DeviceRegion,
    ) -> Result<BatchStats, TransportError> {
        if self.switch.down.load(Ordering::SeqCst) {
            return Err(TransportError::Io {
                node: self.name.clone(),
                what: "device read".into(),
                source: std::io::Error::from(std::io::ErrorKind::ConnectionReset),
            });
        }
        if !self.dev.iter().any(|r| r.contains(dst)) {
            return Err(TransportError::Unsupported {
                node: self.name.clone(),
                backend: "fake-rdma",
                what: format!("{dst} not registered"),
            });
        }
        self.switch.batches.fetch_add(1, Ordering::SeqCst);
        self.switch.device_batches.fetch_add(1, Ordering::SeqCst);
        // The "NIC": read each request, then place it in the fake device memory.
        let (base, mem) = fake_device_memory(dst.addr()).expect("unknown fake device address");
        let mut mem = mem.lock().unwrap();
        let mut stats = BatchStats::default();
        for r in reads {
            let mut tmp = vec![0u8; r.len as usize];
            let one = ReadRequest {
                dst_offset: 0,
                ..*r
            };
            let st = self.inner.read_batch(&[one], &mut tmp)?;
            let at = (dst.addr() - base + r.dst_offset) as usize;
            mem[at..at + tmp.len()].copy_from_slice(&tmp);
            stats.reads += st.reads;
            stats.bytes += st.bytes;
        }
        stats.posts = 1;
        Ok(stats)
    }
}

/// Fake device memory: (address, bytes) blocks at made-up device addresses.
type DeviceBlock = (u64, usize, Arc<Mutex<Vec<u8>>>);
static DEVICE_MEMORY: Mutex<Vec<DeviceBlock>> = Mutex::new(Vec::new());
static NEXT_DEVICE_ADDR: AtomicU64 = AtomicU64::new(0x7e00_0000_0000);

/// The fake device block holding `addr`.
fn fake_device_memory(addr: u64) -> Option<(u64, Arc<Mutex<Vec<u8>>>)> {
    DEVICE_MEMORY
        .lock()
        .unwrap()
        .iter()
        .find(|(a, l, _)| *a <= addr && addr < *a + *l as u64)
        .map(|(a, _, m)| (*a, m.clone()))
}

/// Counters of [`FakeDeviceBuffer`]s.
#[derive(Default)]
pub struct DeviceCounters {
    /// `filled` calls (host path: the bounce copy).
    pub bounced: AtomicU64,
    /// `filled_device` calls (direct path).
    pub direct: AtomicU64,
    /// `begin_device_fill` calls.
    pub begun: AtomicU64,
    /// Set: buffers copy a direct step back to their host bytes when asked
    /// ([`HostBuffer::copy_back`]); unset: they cannot.
    pub can_copy_back: std::sync::atomic::AtomicBool,
    /// `copy_back` calls that copied.
    pub copied_back: AtomicU64,
}

/// A step buffer with host bytes and fake device memory: `filled` copies
/// host to device (the bounce path), `filled_device` only marks readiness.
pub struct FakeDeviceBuffer {
    host: Vec<u8>,
    addr: u64,
    dev: Arc<Mutex<Vec<u8>>>,
    /// Offer a dmabuf region before the peer-memory one.
    dmabuf: bool,
    counters: Arc<DeviceCounters>,
}

impl FakeDeviceBuffer {
    /// The device bytes.
    pub fn device_bytes(&self) -> Vec<u8> {
        self.dev.lock().unwrap().clone()
    }
}

impl HostBuffer for FakeDeviceBuffer {
    fn bytes(&self) -> &[u8] {
        &self.host
    }
    fn bytes_mut(&mut self) -> &mut [u8] {
        &mut self.host
    }
    fn filled(&mut self, len: usize) -> Result<(), BoxError> {
        self.dev.lock().unwrap()[..len].copy_from_slice(&self.host[..len]);
        self.counters.bounced.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
    fn device_regions(&self) -> Vec<DeviceRegion> {
        let len = self.host.len();
        let mut v = Vec::new();
        if self.dmabuf {
            v.push(DeviceRegion::simulated(
                self.addr,
                len,
                Some(DmaBuf {
                    fd: 1000,
                    offset: 0,
                }),
            ));
        }
        // Simulated: fake device memory at made-up addresses, which a real
        // (verbs) transport refuses; only `Flaky` "registers" it.
        v.push(DeviceRegion::simulated(self.addr, len, None));
        v
    }
    fn begin_device_fill(&mut self, _region: &DeviceRegion) -> Result<(), BoxError> {
        self.counters.begun.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
    fn filled_device(&mut self, _len: usize) -> Result<(), BoxError> {
        self.counters.direct.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
    fn copy_back(&mut self, len: usize) -> Result<bool, BoxError> {
        if !self.counters.can_copy_back.load(Ordering::SeqCst) {
            return Ok(false);
        }
        let dev = self.dev.lock().map_err(|_| "fake device memory poisoned")?;
        let src = dev.get(..len).ok_or("copy back past the device buffer")?;
        self.host
            .get_mut(..len)
            .ok_or("copy back past the host buffer")?
            .copy_from_slice(src);
        self.counters.copied_back.fetch_add(1, Ordering::SeqCst);
        Ok(true)
    }
    fn backend(&self) -> Option<&dyn std::any::Any> {
        Some(self)
    }
}

/// Allocates [`FakeDeviceBuffer`]s.
pub struct FakeDeviceAllocator {
    /// Buffers offer a dmabuf region before the peer-memory one.
    pub dmabuf: bool,
    /// Counters shared by every buffer allocated.
    pub counters: Arc<DeviceCounters>,
}

impl BufferAllocator for FakeDeviceAllocator {
    fn name(&self) -> &str {
        "fake-device"
    }
    fn allocate(&self, len: usize) -> Result<Box<dyn HostBuffer>, BoxError> {
        let addr = NEXT_DEVICE_ADDR.fetch_add(len as u64 + 4096, Ordering::SeqCst);
        let dev = Arc::new(Mutex::new(vec![0u8; len]));
        DEVICE_MEMORY.lock().unwrap().push((addr, len, dev.clone()));
        Ok(Box::new(FakeDeviceBuffer {
            host: vec![0; len],
            addr,
            dev,
            dmabuf: self.dmabuf,
            counters: self.counters.clone(),
        }))
    }
}

/// While `switch` is frozen: waits its `frozen_ms`, then fails the way a
/// socket read past `SO_RCVTIMEO` does (EAGAIN).
fn freeze(switch: &Switch, node: &str, what: &str) -> Result<(), TransportError> {
    let ms = switch.frozen_ms.load(Ordering::SeqCst);
    if ms == 0 {
        return Ok(());
    }
    std::thread::sleep(std::time::Duration::from_millis(ms));
    Err(TransportError::Io {
        node: node.to_owned(),
        what: what.to_owned(),
        source: std::io::Error::from(std::io::ErrorKind::WouldBlock),
    })
}

/// A node over `root` holding `files`, controlled by the returned switch.
pub fn flaky_node(root: &Path, name: &str, files: Vec<String>) -> (NodeSpec, Arc<Switch>) {
    let switch = Arc::new(Switch::default());
    let s = switch.clone();
    let root = root.to_owned();
    let held = files.clone();
    let n = name.to_owned();
    let spec = NodeSpec {
        name: name.to_owned(),
        files: Some(files),
        connect: Box::new(move || {
            s.connects.fetch_add(1, Ordering::SeqCst);
            freeze(&s, &n, "receiving a frame header")?;
            if s.down.load(Ordering::SeqCst) {
                return Err(TransportError::Io {
                    node: n.clone(),
                    what: "connect".into(),
                    source: std::io::Error::from(std::io::ErrorKind::ConnectionRefused),
                });
            }
            let inner =
                LocalTransport::open(&root, &held).map_err(|e| TransportError::Protocol {
                    node: n.clone(),
                    what: e.to_string(),
                })?;
            Ok(Box::new(Flaky {
                inner,
                name: n.clone(),
                switch: s.clone(),
                regs: Vec::new(),
                dev: Vec::new(),
            }) as Box<dyn Transport>)
        }),
    };
    (spec, switch)
}

/// One event in a [`RecordingAllocator`]'s log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SlotEvent {
    /// The reader finished filling buffer `buf` (`HostBuffer::filled`).
    Filled {
        /// Buffer id (allocation order).
        buf: usize,
    },
    /// The consumer released buffer `buf` on these streams.
    Released {
        /// Buffer id.
        buf: usize,
        /// Streams passed to `HostBuffer::release`.
        streams: Vec<u64>,
    },
    /// A test's consumer is about to drop its last view of `step` (logged
    /// by the test itself, through [`RecordingAllocator::note`]).
    Dropping {
        /// Buffer id, see [`RecordingAllocator::id_of`].
        buf: usize,
        /// The step.
        step: u64,
    },
}

/// Heap step buffers that log every fill and release, in order, to check
/// the ring's reuse rules.
#[derive(Default, Clone)]
pub struct RecordingAllocator {
    /// The shared log.
    pub log: Arc<Mutex<Vec<SlotEvent>>>,
    addrs: Arc<Mutex<Vec<usize>>>,
}

impl RecordingAllocator {
    /// The buffer id of a batch's step buffer.
    pub fn id_of(&self, batch: &crate::Batch) -> usize {
        let addr = batch.buffer().unwrap().bytes().as_ptr() as usize;
        self.addrs
            .lock()
            .unwrap()
            .iter()
            .position(|a| *a == addr)
            .unwrap()
    }

    /// Appends an event (the consumer's side).
    pub fn note(&self, e: SlotEvent) {
        self.log.lock().unwrap().push(e);
    }

    /// The log so far.
    pub fn events(&self) -> Vec<SlotEvent> {
        self.log.lock().unwrap().clone()
    }
}

struct RecordingBuffer {
    id: usize,
    inner: crate::alloc::HeapBuffer,
    log: Arc<Mutex<Vec<SlotEvent>>>,
}

impl HostBuffer for RecordingBuffer {
    fn bytes(&self) -> &[u8] {
        self.inner.bytes()
    }
    fn bytes_mut(&mut self) -> &mut [u8] {
        self.inner.bytes_mut()
    }
    fn filled(&mut self, _len: usize) -> Result<(), BoxError> {
        self.log
            .lock()
            .unwrap()
            .push(SlotEvent::Filled { buf: self.id });
        Ok(())
    }
    fn release(&mut self, streams: &[u64]) -> Result<(), BoxError> {
        self.log.lock().unwrap().push(SlotEvent::Released {
            buf: self.id,
            streams: streams.to_vec(),
        });
        Ok(())
    }
}

impl BufferAllocator for RecordingAllocator {
    fn name(&self) -> &str {
        "recording"
    }
    fn allocate(&self, len: usize) -> Result<Box<dyn HostBuffer>, BoxError> {
        let inner = crate::alloc::HeapBuffer::new(len)?;
        let mut addrs = self.addrs.lock().unwrap();
        addrs.push(inner.bytes().as_ptr() as usize);
        Ok(Box::new(RecordingBuffer {
            id: addrs.len() - 1,
            inner,
            log: self.log.clone(),
        }))
    }
}
