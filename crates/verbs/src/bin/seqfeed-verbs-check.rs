//! Verbs self-test for real RDMA devices (soft-RoCE in the VM harness, or a
//! host with rxe / InfiniBand / RoCE). Needs no other seqfeed crate.
//!
//! ```text
//! seqfeed-verbs-check devices                 list devices; exit 2 when none is usable
//! seqfeed-verbs-check serve ADDR REGIONS LEN SEED
//!                                             synthetic node (prints READY), until killed
//! seqfeed-verbs-check selftest [DEVICES]      in-process node + 4 ranks, byte-for-byte checks,
//!                                             QP fault injection; DEVICES = rxe0,rxe1 stripes
//! seqfeed-verbs-check killtest                node in a child process, killed mid-run:
//!                                             reads must fail as a node failure, bounded
//! seqfeed-verbs-check depth [DEVICE]          read depth 4, 16 and the device maximum, one
//!                                             QP each, send queue apart: OCCUPANCY rows
//! seqfeed-verbs-check rails DEV0,DEV1         rail pairing by index and by rail map
//! seqfeed-verbs-check fabric DEV              GID index, traffic class, service level
//! seqfeed-verbs-check sleep DEV               spin-then-sleep vs pure spinning, waiting on a
//!                                             killed node: CPU per wall second of the reader
//! seqfeed-verbs-check cm DEV0[,DEV1]         QPs connected with rdma_cm: reads byte-exact
//!                                             (both rails), rebuild, bounded clear errors
//! ```
//! Every check prints `CHECK <name> PASS|FAIL <detail>`; the exit code is
//! non-zero if any check failed or no device was found.

use std::collections::HashSet;
use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::process::{Command, ExitCode, Stdio};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use seqfeed_transport::{DeviceRegion, DmaBuf, ReadRequest, RegionId, Transport, TransportError};
use seqfeed_verbs::standalone::{serve, synthetic_byte, synthetic_region, TcpExchange};
use seqfeed_verbs::{probe, ClientOptions, Selection, ServedRegion, VerbsServer, VerbsTransport};

#[path = "check/cm.rs"]
mod cm;
#[path = "check/fabric.rs"]
mod fabric;
#[path = "check/rails.rs"]
mod rails;
#[path = "check/sleep.rs"]
mod sleep;

const SEED: u64 = 0x5eed_f00d;

struct Checks {
    failed: u32,
}

impl Checks {
    fn report(&mut self, name: &str, r: Result<String, String>) {
        match r {
            Ok(d) => println!("CHECK {name} PASS {d}"),
            Err(d) => {
                self.failed += 1;
                println!("CHECK {name} FAIL {d}");
            }
        }
    }
}

fn regions(n: u32, len: usize) -> Vec<ServedRegion> {
    (0..n)
        .map(|r| ServedRegion {
            id: RegionId(r),
            name: format!("synthetic/part-{r:05}.seq"),
            data: Arc::new(synthetic_region(SEED, r, len)),
        })
        .collect()
}

fn start_node(
    devices: Option<&[String]>,
    n: u32,
    len: usize,
) -> Result<(String, Arc<AtomicBool>), String> {
    let server = VerbsServer::open(devices, regions(n, len)).map_err(|e| e.to_string())?;
    let listener = TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    let addr = listener
        .local_addr()
        .map_err(|e| e.to_string())?
        .to_string();
    let stop = Arc::new(AtomicBool::new(false));
    let st = Arc::clone(&stop);
    let server = Arc::new(server);
    std::thread::spawn(move || serve(server, listener, st));
    Ok((addr, stop))
}

fn connect(addr: &str, devices: Option<Vec<String>>, qps: usize) -> Result<VerbsTransport, String> {
    let ex = TcpExchange::connect(addr).map_err(|e| e.to_string())?;
    let opts = ClientOptions {
        devices,
        qps_per_rail: qps,
        timeout: Duration::from_secs(60),
        ..Default::default()
    };
    VerbsTransport::connect(addr, Box::new(ex), opts).map_err(|e| e.to_string())
}

/// One batch of `n` reads of `seq` bytes at random sequence slots, plus a few
/// odd-sized unaligned reads; returns (reads, expected destination).
fn make_batch(
    rng: &mut impl Rng,
    nregions: u32,
    len: usize,
    seq: usize,
    n: usize,
) -> (Vec<ReadRequest>, Vec<u8>) {
    let mut reads = Vec::with_capacity(n + 3);
    let mut dst_off = 0u64;
    let slots = len / seq;
    for k in 0..n + 3 {
        let region = rng.gen_range(0..nregions);
        let (offset, l) = if k < n {
            ((rng.gen_range(0..slots) * seq) as u64, seq as u32)
        } else {
            let l = rng.gen_range(1..seq.min(5000)) as u32;
            (rng.gen_range(0..(len - l as usize)) as u64, l)
        };
        reads.push(ReadRequest {
            region: RegionId(region),
            offset,
            len: l,
            dst_offset: dst_off,
        });
        dst_off += u64::from(l);
    }
    let mut expect = vec![0u8; dst_off as usize];
    for r in &reads {
        for j in 0..r.len as u64 {
            expect[(r.dst_offset + j) as usize] = synthetic_byte(SEED, r.region.0, r.offset + j);
        }
    }
    (reads, expect)
}

fn compare(dst: &[u8], expect: &[u8], reads: &[ReadRequest]) -> Result<(), String> {
    if dst == expect {
        return Ok(());
    }
    let pos = dst
        .iter()
        .zip(expect)
        .position(|(a, b)| a != b)
        .unwrap_or(0);
    let r = reads
        .iter()
        .find(|r| (r.dst_offset..r.dst_offset + u64::from(r.len)).contains(&(pos as u64)));
    Err(format!(
        "first mismatch at destination byte {pos} (read {r:?})"
    ))
}

fn run_batches(
    t: &mut VerbsTransport,
    seed: u64,
    batches: usize,
    seq: usize,
    per: usize,
) -> Result<(u64, u64), String> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let (nregions, len) = (t.regions().len() as u32, t.regions()[0].len as usize);
    let mut dst = Vec::new();
    let (mut reads_done, mut bytes) = (0u64, 0u64);
    for b in 0..batches {
        let (reads, expect) = make_batch(&mut rng, nregions, len, seq, per);
        // One buffer for the whole run (a ring of one): registered once,
        // unregistered before it is freed.
        if dst.len() < expect.len() {
            t.unregister_buffer(dst.as_ptr() as usize, dst.len());
            dst = vec![0u8; expect.len() + (1 << 20)];
            t.register_buffer(&mut dst)
                .map_err(|e| format!("registering the destination: {e}"))?;
        }
        dst[..expect.len()].fill(0xAA);
        let st = t
            .read_batch(&reads, &mut dst[..])
            .map_err(|e| format!("batch {b}: {e}"))?;
        compare(&dst[..expect.len()], &expect, &reads).map_err(|e| format!("batch {b}: {e}"))?;
        if st.reads != reads.len() as u64 {
            return Err(format!(
                "batch {b}: {} reads reported for {}",
                st.reads,
                reads.len()
            ));
        }
        reads_done += st.reads;
        bytes += st.bytes;
    }
    Ok((reads_done, bytes))
}

fn selftest(devices: Option<Vec<String>>) -> u32 {
    let mut c = Checks { failed: 0 };
    let (nregions, len, seq) = (4u32, 4 << 20, 16 << 10);
    let (addr, stop) = match start_node(devices.as_deref(), nregions, len) {
        Ok(x) => x,
        Err(e) => {
            c.report("node-start", Err(e));
            return c.failed;
        }
    };
    let tag = devices
        .as_ref()
        .map(|d| d.join("+"))
        .unwrap_or_else(|| "all".into());

    // 1. Several ranks in parallel, each its own connection, every batch compared.
    let ranks = 4;
    let t0 = Instant::now();
    let handles: Vec<_> = (0..ranks)
        .map(|rank| {
            let (addr, devices) = (addr.clone(), devices.clone());
            std::thread::spawn(move || -> Result<(u64, u64, Vec<String>), String> {
                let mut t = connect(&addr, devices, 2)?;
                let (r, b) = run_batches(&mut t, 1000 + rank, 20, seq, 64)?;
                Ok((r, b, t.devices()))
            })
        })
        .collect();
    let mut total = (0u64, 0u64);
    let mut errs = Vec::new();
    let mut used = HashSet::new();
    for h in handles {
        match h.join() {
            Ok(Ok((r, b, d))) => {
                total.0 += r;
                total.1 += b;
                used.extend(d);
            }
            Ok(Err(e)) => errs.push(e),
            Err(_) => errs.push("rank thread panicked".into()),
        }
    }
    c.report(
        &format!("ranks[{tag}]"),
        if errs.is_empty() {
            Ok(format!(
                "{ranks} ranks x 20 batches: {} reads, {} bytes byte-for-byte equal in {:.2}s over {:?}",
                total.0,
                total.1,
                t0.elapsed().as_secs_f64(),
                used
            ))
        } else {
            Err(errs.join("; "))
        },
    );

    // 2. Striping: with more than one device, every device must carry reads.
    if let Some(d) = devices.as_ref().filter(|d| d.len() > 1) {
        c.report(&format!("striping[{tag}]"), {
            if used.len() == d.len() {
                Ok(format!("reads striped over {} devices", used.len()))
            } else {
                Err(format!("asked for {d:?}, transports used {used:?}"))
            }
        });
    }

    // 3. Fault injection: a QP forced into the error state is rebuilt and its reads retried.
    c.report(
        &format!("qp-rebuild[{tag}]"),
        (|| {
            let mut t = connect(&addr, devices.clone(), 2)?;
            run_batches(&mut t, 7, 2, seq, 64)?;
            let lanes = t.qp_count();
            for lane in 0..lanes {
                if !t.inject_qp_error(lane) {
                    return Err(format!("could not inject an error on QP {lane}"));
                }
                run_batches(&mut t, 100 + lane as u64, 3, seq, 64)?;
            }
            let k = t.counters();
            if k.rebuilds < lanes as u64 {
                return Err(format!(
                    "{} rebuilds for {lanes} injected faults",
                    k.rebuilds
                ));
            }
            Ok(format!(
                "{lanes} injected QP errors -> {} rebuilds, {} reads retried, all batches equal",
                k.rebuilds, k.retried_reads
            ))
        })(),
    );

    // 3b. With no rebuilds allowed, a QP error fails the batch as a node failure naming
    //     the step; the next batch rebuilds the QP and succeeds.
    c.report(
        &format!("rebuild-budget[{tag}]"),
        (|| {
            let ex = TcpExchange::connect(&addr).map_err(|e| e.to_string())?;
            let opts = ClientOptions {
                devices: devices.clone(),
                qps_per_rail: 1,
                max_rebuilds: 0,
                ..Default::default()
            };
            let mut t =
                VerbsTransport::connect(&addr, Box::new(ex), opts).map_err(|e| e.to_string())?;
            run_batches(&mut t, 90, 1, seq, 16)?;
            t.inject_qp_error(0);
            let err = match run_batches(&mut t, 91, 1, seq, 16) {
                Ok(_) => {
                    return Err("batch on a broken QP succeeded with no rebuild allowed".into())
                }
                Err(e) => e,
            };
            if !err.contains("RDMA READ completion") && !err.contains("ibv_post_send") {
                return Err(format!("error does not name the step: {err}"));
            }
            run_batches(&mut t, 92, 2, seq, 16)?;
            Ok(format!("failed as '{err}', then recovered"))
        })(),
    );

    // 4. Registration: a destination outside every registered buffer is registered for
    //    its batch only; sub-slices of a registered ring buffer need no registration; a
    //    destination freed and reallocated (at the same address, if the allocator
    //    reuses it) still receives the data, registered or not.
    c.report(
        &format!("registration[{tag}]"),
        (|| {
            let mut t = connect(&addr, devices.clone(), 1)?;
            let mut rng = rand::rngs::StdRng::seed_from_u64(77);
            for b in 0..3 {
                let (reads, expect) = make_batch(&mut rng, nregions, len, seq, 16);
                let mut dst = vec![0u8; expect.len()];
                t.read_batch(&reads, &mut dst)
                    .map_err(|e| format!("unregistered batch {b}: {e}"))?;
                compare(&dst, &expect, &reads).map_err(|e| format!("unregistered batch {b}: {e}"))?;
            }
            let k = t.counters();
            if k.batch_registrations != 3 || t.registered_buffers() != 0 {
                return Err(format!(
                    "{} per-batch registrations and {} buffers kept for 3 unregistered batches",
                    k.batch_registrations,
                    t.registered_buffers()
                ));
            }
            let mut t = connect(&addr, devices.clone(), 1)?;
            let mut ring = vec![0u8; 8 << 20];
            t.register_buffer(&mut ring).map_err(|e| e.to_string())?;
            for b in 0..6 {
                let (reads, expect) = make_batch(&mut rng, nregions, len, seq, 32);
                let off = (b * 1_000_003) % (ring.len() - expect.len());
                let dst = &mut ring[off..off + expect.len()];
                t.read_batch(&reads, dst)
                    .map_err(|e| format!("ring batch {b}: {e}"))?;
                compare(dst, &expect, &reads).map_err(|e| format!("ring batch {b}: {e}"))?;
            }
            let k = t.counters();
            if k.registrations != 1 || k.batch_registrations != 0 {
                return Err(format!(
                    "{} registrations ({} per batch) for 6 batches in a registered ring",
                    k.registrations, k.batch_registrations
                ));
            }
            t.unregister_buffer(ring.as_ptr() as usize, ring.len());
            drop(ring);

            // Two more transports (as the loader's one per node) announce one ring:
            // the second reuses the first's registration (once per device), and
            // both read into it byte for byte.
            let mut t2 = connect(&addr, devices.clone(), 1)?;
            let mut t3 = connect(&addr, devices.clone(), 1)?;
            let mut shared_ring = vec![0u8; 8 << 20];
            t2.register_buffer(&mut shared_ring).map_err(|e| e.to_string())?;
            t3.register_buffer(&mut shared_ring).map_err(|e| e.to_string())?;
            let (k2, k3) = (t2.counters(), t3.counters());
            if (k2.registrations, k3.registrations, k3.shared_registrations) != (1, 0, 1) {
                return Err(format!(
                    "one ring announced by two transports: registrations {} and {}, shared {}",
                    k2.registrations, k3.registrations, k3.shared_registrations
                ));
            }
            for (i, tr) in [&mut t2, &mut t3].into_iter().enumerate() {
                let (reads, expect) = make_batch(&mut rng, nregions, len, seq, 32);
                let off = i * (4 << 20);
                let dst = &mut shared_ring[off..off + expect.len()];
                tr.read_batch(&reads, dst)
                    .map_err(|e| format!("shared ring, transport {i}: {e}"))?;
                compare(dst, &expect, &reads).map_err(|e| format!("shared ring, transport {i}: {e}"))?;
            }
            t2.unregister_buffer(shared_ring.as_ptr() as usize, shared_ring.len());
            t3.unregister_buffer(shared_ring.as_ptr() as usize, shared_ring.len());
            drop((t2, t3, shared_ring));

            // Free + reallocate. Above glibc's largest mmap threshold (32 MiB) every
            // buffer is its own mapping, and the kernel tends to hand the same
            // addresses back: exactly the case a registration cache keyed by address
            // gets wrong (reads would land in the old, unmapped pages).
            let big = 40 << 20;
            let (reads, expect) = make_batch(&mut rng, nregions, len, seq, 64);
            let off = big / 2;
            let mut same = [false; 2];
            // a) never registered: per-batch registrations.
            let mut a = vec![0u8; big];
            let a_addr = a.as_ptr() as usize;
            t.read_batch(&reads, &mut a[off..off + expect.len()])
                .map_err(|e| format!("first buffer: {e}"))?;
            compare(&a[off..off + expect.len()], &expect, &reads).map_err(|e| format!("first buffer: {e}"))?;
            drop(a);
            let mut b = vec![0u8; big];
            same[0] = b.as_ptr() as usize == a_addr;
            t.read_batch(&reads, &mut b[off..off + expect.len()])
                .map_err(|e| format!("reallocated buffer: {e}"))?;
            compare(&b[off..off + expect.len()], &expect, &reads)
                .map_err(|e| format!("reallocated buffer (same address: {}): {e}", same[0]))?;
            // b) registered, unregistered before the free, the new buffer registered.
            t.register_buffer(&mut b).map_err(|e| e.to_string())?;
            t.read_batch(&reads, &mut b[off..off + expect.len()])
                .map_err(|e| format!("registered buffer: {e}"))?;
            compare(&b[off..off + expect.len()], &expect, &reads).map_err(|e| format!("registered buffer: {e}"))?;
            let b_addr = b.as_ptr() as usize;
            t.unregister_buffer(b_addr, big);
            drop(b);
            let mut c2 = vec![0u8; big];
            same[1] = c2.as_ptr() as usize == b_addr;
            t.register_buffer(&mut c2).map_err(|e| e.to_string())?;
            t.read_batch(&reads, &mut c2[off..off + expect.len()])
                .map_err(|e| format!("re-registered reallocated buffer: {e}"))?;
            compare(&c2[off..off + expect.len()], &expect, &reads).map_err(|e| {
                format!("re-registered reallocated buffer (same address: {}): {e}", same[1])
            })?;
            t.unregister_buffer(c2.as_ptr() as usize, big);
            drop(c2);
            if t.registered_buffers() != 0 {
                return Err(format!("{} buffers still registered after unregistering all", t.registered_buffers()));
            }
            let k = t.counters();
            Ok(format!(
                "3 unregistered batches: 3 per-batch registrations; 6 batches in a registered ring: 1 registration; \
                 one ring announced by two transports: registered once, reused once, both byte-exact; \
                 40 MiB destination freed and reallocated (same address: {}), then registered, freed and \
                 reallocated (same address: {}): all bytes equal ({} registrations, {} per batch)",
                same[0], same[1], k.registrations, k.batch_registrations
            ))
        })(),
    );

    // 4b. GPUDirect read path without a GPU: the safe register_device refuses host
    //     memory posing as device memory (the CUDA driver check); through the explicitly
    //     unsafe test hook, a peer-memory-style region whose address is ordinary host
    //     memory (rxe's ibv_reg_mr takes any valid address) is filled by
    //     read_batch_device, byte for byte; reads outside a registered region and after
    //     unregistering are refused; a dmabuf registration (rxe has none, and the fd is
    //     no dmabuf) is refused cleanly and the transport keeps working.
    c.report(
        &format!("gpudirect[{tag}]"),
        (|| {
            let mut t = connect(&addr, devices.clone(), 2)?;
            let mut rng = rand::rngs::StdRng::seed_from_u64(88);
            // The NIC writes `mem` behind Rust's back: it is a raw allocation, read
            // only through `mem_bytes` between batches, and freed after unregistering.
            let mem_len = 8usize << 20;
            let mem = Box::into_raw(vec![0u8; mem_len].into_boxed_slice());
            let base = mem.cast::<u8>() as u64;
            let mem_bytes = |off: usize, len: usize| -> Vec<u8> {
                // SAFETY: `off + len <= mem_len` (callers stay inside); `mem` is live until
                // the `Box::from_raw` below, and no read_batch_device runs during this copy.
                unsafe { std::slice::from_raw_parts((mem.cast::<u8>()).add(off), len).to_vec() }
            };
            let free_mem = || {
                // SAFETY: `mem` came from Box::into_raw above and is freed once, after the
                // device registration is gone (unregister_device or the refusal paths).
                drop(unsafe { Box::from_raw(mem) });
            };
            // SAFETY: `mem` is a live allocation of `mem_len` bytes that no reference
            // points at; it is freed only after `unregister_device` below.
            let whole = unsafe { DeviceRegion::new(base, mem_len, None) };
            let refused = match t.register_device(&whole) {
                Ok(()) => {
                    t.unregister_device(base, mem_len);
                    free_mem();
                    return Err(
                        "the safe register_device accepted host memory as device memory".into(),
                    );
                }
                Err(e) => e,
            };
            if !matches!(refused, TransportError::Unsupported { .. })
                || !refused.to_string().contains("peer-memory registration")
            {
                free_mem();
                return Err(format!(
                    "host memory refusal is not a clean Unsupported: {refused}"
                ));
            }
            // SAFETY: the test hook's contract: `mem` stays allocated and unreferenced
            // until `unregister_device` below; it is read only between batches.
            if let Err(e) = unsafe { t.register_host_as_device(&whole) } {
                free_mem();
                return Err(format!(
                    "peer-memory registration of host memory (test hook): {e}"
                ));
            }
            let mut bytes = 0u64;
            for b in 0..4u64 {
                let (reads, expect) = make_batch(&mut rng, nregions, len, seq, 48);
                let off = (b as usize * 1_500_007) % (mem_len - expect.len());
                let dst = whole
                    .part(off as u64, expect.len())
                    .ok_or_else(|| format!("device batch {b}: destination outside the region"))?;
                let st = t
                    .read_batch_device(&reads, &dst)
                    .map_err(|e| format!("device batch {b}: {e}"))?;
                compare(&mem_bytes(off, expect.len()), &expect, &reads)
                    .map_err(|e| format!("device batch {b}: {e}"))?;
                if st.reads != reads.len() as u64 {
                    return Err(format!(
                        "device batch {b}: {} reads reported for {}",
                        st.reads,
                        reads.len()
                    ));
                }
                bytes += st.bytes;
            }
            let (reads, _) = make_batch(&mut rng, nregions, len, seq, 4);
            let mut other = vec![0u8; 1 << 20];
            // SAFETY: never registered (a read into it must be refused before anything
            // is posted), and `other` outlives every use.
            let outside =
                unsafe { DeviceRegion::new(other.as_mut_ptr() as u64, other.len(), None) };
            let e1 = match t.read_batch_device(&reads, &outside) {
                Ok(_) => return Err("read into an unregistered device region accepted".into()),
                Err(e) => e,
            };
            t.unregister_device(base, mem_len);
            let e2 = match t.read_batch_device(&reads, &whole) {
                Ok(_) => return Err("read into an unregistered device region accepted".into()),
                Err(e) => e,
            };
            if e1.is_node_failure() || e2.is_node_failure() || t.registered_device_regions() != 0 {
                return Err(format!(
                    "unexpected: '{e1}' / '{e2}' / {} regions",
                    t.registered_device_regions()
                ));
            }
            free_mem();
            // dmabuf: any fd that is not a dmabuf export must be refused, and rxe has no
            // dmabuf MRs at all.
            let file = std::fs::File::open(std::env::current_exe().map_err(|e| e.to_string())?)
                .map_err(|e| e.to_string())?;
            let fd = std::os::fd::AsRawFd::as_raw_fd(&file);
            // SAFETY: the fd is a regular file, no dmabuf: the kernel refuses the
            // registration, so no NIC ever writes through it.
            let dmabuf = unsafe {
                DeviceRegion::new(
                    outside.addr(),
                    outside.len(),
                    Some(DmaBuf { fd, offset: 0 }),
                )
            };
            let e3 = match t.register_device(&dmabuf) {
                Ok(()) => return Err("rxe accepted a dmabuf registration of a regular file".into()),
                Err(e) => e,
            };
            if !matches!(e3, TransportError::Unsupported { .. })
                || !e3.to_string().contains("ibv_reg_dmabuf_mr")
            {
                return Err(format!(
                    "dmabuf refusal is not a clean Unsupported naming the call: {e3}"
                ));
            }
            run_batches(&mut t, 89, 2, seq, 16)?;
            Ok(format!(
                "safe register_device refused host memory: '{refused}'; through the unsafe test \
                 hook, 4 device batches into a registered peer-memory region: {bytes} bytes equal; \
                 refused: '{e1}', '{e2}'; dmabuf refused cleanly: '{e3}'; transport still works"
            ))
        })(),
    );

    // 5. Bad input is rejected with a clear error, nothing posted.
    c.report(
        "bad-input",
        (|| {
            let mut t = connect(&addr, devices.clone(), 1)?;
            let mut dst = vec![0u8; 4096];
            let oob = [ReadRequest {
                region: RegionId(0),
                offset: len as u64 - 10,
                len: 100,
                dst_offset: 0,
            }];
            let e1 = t
                .read_batch(&oob, &mut dst)
                .err()
                .ok_or("out-of-bounds read accepted")?;
            let unk = [ReadRequest {
                region: RegionId(999),
                offset: 0,
                len: 10,
                dst_offset: 0,
            }];
            let e2 = t
                .read_batch(&unk, &mut dst)
                .err()
                .ok_or("unknown region accepted")?;
            if e1.is_node_failure() || !e2.to_string().contains("999") {
                return Err(format!("unexpected errors: {e1} / {e2}"));
            }
            run_batches(&mut t, 55, 2, seq, 16)?;
            Ok(format!(
                "rejected: '{e1}' and '{e2}'; transport still works"
            ))
        })(),
    );

    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    c.failed
}

/// Read depth 4, 16 and the device maximum, one QP each, with the send
/// queue sized apart from the read depth: 4 batches of 4,096 reads of 512
/// bytes (checked byte for byte) per depth. Fails when the negotiated depth
/// exceeds the cap or the send queue is not deeper than the read depth.
/// Prints the client's occupancy ([`seqfeed_verbs::VerbsCounters::occupancy`])
/// as information only: rxe runs its requester inside `ibv_post_send` and,
/// over loopback, most likely answers the reads before the call returns, so
/// the send queue empties during each post and the client's lower bound
/// says little about a NIC's wire (the device-free simulator in
/// `sendq/sim.rs` asserts the occupancy instead).
fn depthtest(device: Option<String>) -> u32 {
    let mut c = Checks { failed: 0 };
    let devs = device.map(|d| vec![d]);
    let (addr, stop) = match start_node(devs.as_deref(), 4, 4 << 20) {
        Ok(x) => x,
        Err(e) => {
            c.report("depth-node", Err(e));
            return c.failed;
        }
    };
    for cap in [Some(4u32), Some(16), None] {
        let r = (|| {
            let ex = TcpExchange::connect(&addr).map_err(|e| e.to_string())?;
            let opts = ClientOptions {
                devices: devs.clone(),
                qps_per_rail: 1,
                max_outstanding: cap,
                timeout: Duration::from_secs(60),
                ..Default::default()
            };
            let mut t =
                VerbsTransport::connect(&addr, Box::new(ex), opts).map_err(|e| e.to_string())?;
            let (depth, sq, chain) = t.lane_depths().first().copied().ok_or("no QP")?;
            if cap.is_some_and(|c| depth > c) {
                return Err(format!("read depth {depth} above the cap {cap:?}"));
            }
            let start = Instant::now();
            let (reads, bytes) = run_batches(&mut t, 77 + u64::from(depth), 4, 512, 4096)?;
            let secs = start.elapsed().as_secs_f64();
            let occ = t.counters().occupancy().unwrap_or(0.0);
            println!(
                "OCCUPANCY depth={depth} sq_depth={sq} chain={chain} occupancy={occ:.3} reads={reads} MB/s={:.1}",
                bytes as f64 / secs / 1e6
            );
            // Information only (see above); the structure is what must hold.
            if sq <= depth {
                return Err(format!(
                    "send queue {sq} is not deeper than the read depth {depth}"
                ));
            }
            Ok(format!("read depth {depth}, send queue {sq}, chain {chain}: occupancy {occ:.3} (information) over {reads} reads"))
        })();
        let name = cap.map_or("depth-max".to_string(), |d| format!("depth-{d}"));
        c.report(&name, r);
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    c.failed
}

/// Starts a synthetic node (2 regions of 1 MiB) in a child process of this
/// binary; returns it and its control address once it is ready.
fn spawn_node() -> Result<(std::process::Child, String), String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let mut child = Command::new(exe)
        .args(["serve", "127.0.0.1:0", "2", "1048576", "0"])
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|e| format!("spawning node: {e}"))?;
    let mut line = String::new();
    let out = child.stdout.take().ok_or("no stdout")?;
    BufReader::new(out)
        .read_line(&mut line)
        .map_err(|e| e.to_string())?;
    match line.trim().strip_prefix("READY ") {
        Some(a) => Ok((child, a.to_string())),
        None => {
            let _ = child.kill();
            let _ = child.wait();
            Err(format!("node said {line:?}"))
        }
    }
}

fn killtest() -> u32 {
    let mut c = Checks { failed: 0 };
    let r = (|| -> Result<String, String> {
        let (mut child, addr) = spawn_node()?;
        let mut t = connect(&addr, None, 2)?;
        run_batches(&mut t, 3, 3, 16 << 10, 32)?;
        child.kill().map_err(|e| e.to_string())?;
        let _ = child.wait();
        let t0 = Instant::now();
        let (reads, _) = make_batch(
            &mut rand::rngs::StdRng::seed_from_u64(9),
            2,
            1 << 20,
            16 << 10,
            32,
        );
        let mut dst = vec![0u8; 1 << 20];
        match t.read_batch(&reads, &mut dst) {
            Ok(_) => Err("reads succeeded after the node was killed".into()),
            Err(e) if e.is_node_failure() => Ok(format!(
                "node failure reported after {:.2}s: {e}",
                t0.elapsed().as_secs_f64()
            )),
            Err(e) => Err(format!("error is not a node failure: {e}")),
        }
    })();
    c.report("node-killed", r);
    c.failed
}

fn node(args: &[String]) -> Result<(), String> {
    let [addr, n, len, _seed] = args else {
        return Err("serve ADDR REGIONS LEN SEED".into());
    };
    let n: u32 = n.parse().map_err(|e| format!("REGIONS: {e}"))?;
    let len: usize = len.parse().map_err(|e| format!("LEN: {e}"))?;
    let server = Arc::new(VerbsServer::open(None, regions(n, len)).map_err(|e| e.to_string())?);
    let listener = TcpListener::bind(addr).map_err(|e| format!("bind {addr}: {e}"))?;
    println!(
        "READY {}",
        listener.local_addr().map_err(|e| e.to_string())?
    );
    serve(server, listener, Arc::new(AtomicBool::new(false))).map_err(|e| e.to_string())
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let cmd = args.first().map(String::as_str).unwrap_or("");
    let need_device = || match probe() {
        Selection::Verbs { devices } => {
            println!("DEVICES {}", devices.join(","));
            true
        }
        Selection::Tcp { reason } => {
            println!("CHECK device FAIL no usable RDMA device: {reason}");
            false
        }
    };
    let failed = match cmd {
        "devices" => match seqfeed_verbs::list_devices() {
            Ok(d) => {
                for i in &d {
                    println!(
                        "{} port {} {} {} gid[{}]={} ({}) mtu {} rd_atom {}/{} max_qp_wr {} odp_rc_read {} gids {:?}",
                        i.name,
                        i.port,
                        if i.active { "ACTIVE" } else { "not-active" },
                        i.link_layer,
                        i.gid_index,
                        std::net::Ipv6Addr::from(i.gid),
                        i.gid_type,
                        i.mtu_bytes(),
                        i.max_qp_init_rd_atom,
                        i.max_qp_rd_atom,
                        i.max_qp_wr,
                        i.odp_rc_read,
                        i.gids
                    );
                }
                u32::from(!d.iter().any(|i| i.active))
            }
            Err(e) => {
                println!("no devices: {e}");
                1
            }
        },
        "serve" => match node(&args[1..]) {
            Ok(()) => 0,
            Err(e) => {
                eprintln!("serve: {e}");
                1
            }
        },
        "selftest" => {
            if !need_device() {
                return ExitCode::from(2);
            }
            let devs = args
                .get(1)
                .map(|s| s.split(',').map(str::to_string).collect());
            selftest(devs)
        }
        "killtest" => {
            if !need_device() {
                return ExitCode::from(2);
            }
            killtest()
        }
        "depth" => {
            if !need_device() {
                return ExitCode::from(2);
            }
            depthtest(args.get(1).cloned())
        }
        "rails" => {
            if !need_device() {
                return ExitCode::from(2);
            }
            rails::railtest(args.get(1).map_or("rxe0,rxe1", String::as_str))
        }
        "fabric" => {
            if !need_device() {
                return ExitCode::from(2);
            }
            fabric::fabrictest(args.get(1).map_or("rxe0", String::as_str))
        }
        "sleep" => {
            if !need_device() {
                return ExitCode::from(2);
            }
            sleep::sleeptest(args.get(1).map_or("rxe0", String::as_str))
        }
        "cm" => {
            if !need_device() {
                return ExitCode::from(2);
            }
            cm::cmtest(args.get(1).map_or("rxe0", String::as_str))
        }
        _ => {
            eprintln!("usage: seqfeed-verbs-check devices | serve ADDR REGIONS LEN SEED | selftest [DEVICES] | killtest | depth [DEVICE] | rails DEV0,DEV1 | fabric DEV | sleep DEV | cm DEV0[,DEV1]");
            return ExitCode::from(64);
        }
    };
    if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
