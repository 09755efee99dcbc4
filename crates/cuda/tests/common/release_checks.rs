//! Slot-reuse checks on a GPU, shared by `tests/gpu.rs` and
//! `examples/gpu_check.rs` (included with `#[path]`): a consumer that holds
//! more steps than the ring, and the ordering of a slot's next write after
//! the consumer's stream work at release.
//!
//! Each check returns a one-line summary, or what went wrong.

use seqfeed_cuda::{
    batch_ready_on, device_batch, BounceSlot, CudaBounceAllocator, CudaStepBuffer, Device,
    DeviceBatch, DeviceBuffer, Event, Stream,
};
use seqfeed_loader::testutil::{expected, xorshift_files, Files, RandomBlocks};
use seqfeed_loader::{
    node_spec, Batch, ClusterReader, Endpoint, Loader, LoaderConfig, RetryPolicy, TransportKind,
};
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

type Check = Result<String, String>;

fn fail<E: std::fmt::Display>(what: &str) -> impl FnOnce(E) -> String + '_ {
    move |e| format!("{what}: {e}")
}

/// Deterministic pseudo-random bytes (xorshift).
fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// Enqueues `rounds` copies of `busy` (a large buffer) into `sink` on
/// `stream`: GPU work that keeps the stream busy for a while.
fn keep_busy(
    busy: &DeviceBuffer,
    sink: &DeviceBuffer,
    stream: &Stream,
    rounds: usize,
) -> Result<(), String> {
    for _ in 0..rounds {
        sink.copy_from_device_async(0, busy, 0, busy.len(), stream)
            .map_err(fail("enqueueing busy work"))?;
    }
    Ok(())
}

/// One micro-batch the consumer holds, with what it must contain.
struct Held {
    batch: Batch,
    db: DeviceBatch,
    want: Vec<u8>,
    /// The consumer stream's own copy of the batch (read on the GPU).
    snapshot: DeviceBuffer,
}

/// The batch's device bytes now, read back synchronously after its ready
/// event (the slot must not have been rewritten while held).
fn device_bytes(h: &Held) -> Result<Vec<u8>, String> {
    let slot = CudaStepBuffer::of(&h.batch)
        .ok_or("a held batch has no CUDA step buffer")?
        .slot();
    slot.event()
        .synchronize()
        .map_err(fail("waiting for a batch"))?;
    let base = slot.device_buffer().device_ptr();
    let mut got = vec![0u8; h.db.bytes()];
    slot.device_buffer()
        .copy_to_host((h.db.ptr - base) as usize, &mut got)
        .map_err(fail("reading a held batch back"))?;
    Ok(got)
}

/// A consumer that holds `2 * ring` steps' micro-batches over time, never
/// more than `ring` steps at once (holding the whole ring, then dropping the
/// oldest step to let the loader go on). Each micro-batch's device view is
/// ordered on a consumer stream ([`batch_ready_on`]), which copies it
/// (behind slow work, so the reads lag) before the batch may be dropped.
/// After every batch the loader hands out, every held batch is compared
/// byte for byte with the files; at the end every consumer copy is.
pub fn held_batches(dev: &Device, prefetch: usize) -> Check {
    const SEQ_LEN: usize = 1024;
    const ACCUMULATION: usize = 2;
    let ring = prefetch + 1;
    let steps = (4 * ring) as u64;
    let f: Files = xorshift_files(2, 512, SEQ_LEN * 2);
    let source = Arc::new(RandomBlocks::xorshift(&f, 64, steps));
    let spec = node_spec(
        TransportKind::Local,
        &Endpoint::local(f.dir.path(), Some(f.names.clone())),
    )
    .map_err(fail("node spec"))?;
    let reader = ClusterReader::connect(f.names.clone(), vec![spec], RetryPolicy::default())
        .map_err(fail("connecting"))?;
    let alloc = CudaBounceAllocator::new(dev).map_err(fail("allocator"))?;
    let config = LoaderConfig::new(0, 1)
        .prefetch(prefetch)
        .accumulation(ACCUMULATION)
        .ring_wait(Duration::from_secs(30));
    let mut loader = Loader::with_allocator(config, source, reader, Arc::new(alloc))
        .map_err(fail("starting the loader"))?;
    let consumer = dev.stream().map_err(fail("consumer stream"))?;
    let busy = dev.alloc(64 << 20, "busy work").map_err(fail("alloc"))?;
    let sink = dev.alloc(64 << 20, "busy sink").map_err(fail("alloc"))?;
    // Steps held, oldest first; each its micro-batches.
    let mut held: VecDeque<Vec<Held>> = VecDeque::new();
    // Consumer copies of dropped batches, checked at the end.
    let mut done: Vec<(u64, DeviceBuffer, Vec<u8>)> = Vec::new();
    let (mut max_held, mut checks, mut seen) = (0usize, 0usize, 0u64);
    for step in 0..steps {
        if held.len() == ring {
            // The ring is all ours: the loader waits. Drop the oldest step.
            let Some(old) = held.pop_front() else {
                unreachable!()
            };
            for h in old {
                done.push((h.batch.step(), h.snapshot, h.want));
            }
        }
        let mut micro = Vec::new();
        for m in 0..ACCUMULATION {
            let batch = loader
                .next()
                .ok_or(format!("the loader ended before step {step}"))?
                .map_err(fail("loader"))?;
            if (batch.step(), batch.micro()) != (step, m) {
                return Err(format!(
                    "got step {} micro {} for step {step} micro {m}",
                    batch.step(),
                    batch.micro()
                ));
            }
            let db = device_batch(&batch)
                .ok_or("a host batch from the CUDA allocator")?
                .map_err(fail("device batch"))?;
            let base = CudaStepBuffer::of(&batch)
                .ok_or("no CUDA step buffer")?
                .slot()
                .device_buffer()
                .device_ptr();
            let range = batch.byte_range();
            if db.ptr != base + range.start as u64 || db.bytes() != range.len() {
                return Err(format!(
                    "step {step} micro {m}: device view {:#x}+{} is not bytes {range:?} of the step buffer at {base:#x}",
                    db.ptr,
                    db.bytes()
                ));
            }
            // The consumer: wait for the batch on its stream, lag behind on
            // other work, then read the batch.
            batch_ready_on(&batch, consumer.handle())
                .ok_or("batch_ready_on: not a CUDA batch")?
                .map_err(fail("batch_ready_on"))?;
            keep_busy(&busy, &sink, &consumer, 4)?;
            let snapshot = dev
                .alloc(db.bytes(), "consumer copy")
                .map_err(fail("alloc"))?;
            let slot = CudaStepBuffer::of(&batch)
                .ok_or("no CUDA step buffer")?
                .slot();
            snapshot
                .copy_from_device_async(
                    0,
                    slot.device_buffer(),
                    range.start,
                    range.len(),
                    &consumer,
                )
                .map_err(fail("consumer copy"))?;
            let want = expected(&f, batch.reads());
            micro.push(Held {
                batch,
                db,
                want,
                snapshot,
            });
            // Give the reader time to (wrongly) reuse a held slot.
            std::thread::sleep(Duration::from_millis(10));
            for (age, h) in held.iter().flatten().chain(micro.iter()).enumerate() {
                let got = device_bytes(h)?;
                if got != h.want {
                    return Err(format!(
                        "step {} micro {} (held, {age} batches back) changed after the loader went on to step {step} micro {m}",
                        h.batch.step(),
                        h.batch.micro()
                    ));
                }
                checks += 1;
            }
        }
        held.push_back(micro);
        max_held = max_held.max(held.len());
        seen += 1;
    }
    for h in held.drain(..).flatten() {
        done.push((h.batch.step(), h.snapshot, h.want));
    }
    consumer
        .synchronize()
        .map_err(fail("waiting for the consumer"))?;
    for (step, snap, want) in &done {
        let mut got = vec![0u8; want.len()];
        snap.copy_to_host(0, &mut got)
            .map_err(fail("reading a consumer copy"))?;
        if &got != want {
            return Err(format!(
                "the consumer stream's copy of step {step} differs from the files: it read the slot before the batch arrived or after it was reused"
            ));
        }
    }
    if max_held != ring {
        return Err(format!("held at most {max_held} steps, wanted {ring}"));
    }
    Ok(format!(
        "held {ring} steps at a time ({} over the run, ring {ring}, prefetch {prefetch}); {checks} held micro-batch checks and {} consumer-stream copies match the files",
        seen,
        done.len()
    ))
}

/// A consumer stream reads a slot's batch behind slow work; the slot is
/// released with that stream recorded and the next step is copied in right
/// away. The next copy must complete only after the consumer's read (its
/// event complete when the slot's ready event is, and the consumer's copy
/// holds the old bytes); then the same for a direct fill, whose
/// `begin_direct` must return only after the consumer's work. Also checks
/// that the special default-stream handles are accepted.
pub fn release_ordering(dev: &Device) -> Check {
    let len = 64 << 20;
    let copy = Arc::new(dev.stream().map_err(fail("copy stream"))?);
    let mut slot = BounceSlot::new(dev, copy, len).map_err(fail("slot"))?;
    let consumer = dev.stream().map_err(fail("consumer stream"))?;
    let busy = dev.alloc(256 << 20, "busy work").map_err(fail("alloc"))?;
    let sink = dev.alloc(256 << 20, "busy sink").map_err(fail("alloc"))?;
    let read = dev.alloc(len, "consumer copy").map_err(fail("alloc"))?;
    let consumed: Event = dev.event(false).map_err(fail("event"))?;
    let (a, b, c) = (pattern(len, 11), pattern(len, 12), pattern(len, 13));
    let back = |buf: &DeviceBuffer| -> Result<Vec<u8>, String> {
        let mut v = vec![0u8; len];
        buf.copy_to_host(0, &mut v).map_err(fail("reading back"))?;
        Ok(v)
    };
    let mut notes = Vec::new();

    // Bounce: step A, read by the consumer behind slow work.
    slot.host_mut()
        .map_err(fail("host_mut"))?
        .copy_from_slice(&a);
    slot.submit(len).map_err(fail("submit A"))?;
    slot.ready_on(consumer.handle()).map_err(fail("ready_on"))?;
    keep_busy(&busy, &sink, &consumer, 64)?;
    read.copy_from_device_async(0, slot.device_buffer(), 0, len, &consumer)
        .map_err(fail("consumer read"))?;
    consumed.record(&consumer).map_err(fail("record"))?;
    slot.release(&[consumer.handle()])
        .map_err(fail("release"))?;
    if consumed.is_complete().map_err(fail("query"))? {
        notes.push("bounce: the consumer finished before the release (ordering not exercised; slow work too short)");
    }
    // Step B into the same slot, at once.
    slot.host_mut()
        .map_err(fail("host_mut"))?
        .copy_from_slice(&b);
    slot.submit(len).map_err(fail("submit B"))?;
    slot.event().synchronize().map_err(fail("waiting for B"))?;
    if !consumed.is_complete().map_err(fail("query"))? {
        return Err("bounce: the next copy into the slot completed before the consumer's work on the released batch".into());
    }
    consumer.synchronize().map_err(fail("consumer"))?;
    if back(&read)? != a {
        return Err("bounce: the consumer read bytes of the next step: the slot was overwritten before its release completed".into());
    }
    if back(slot.device_buffer())? != b {
        return Err("bounce: the next step's bytes did not land".into());
    }

    // Direct: the consumer reads B behind slow work; begin_direct must
    // block until that work has run.
    slot.ready_on(consumer.handle()).map_err(fail("ready_on"))?;
    keep_busy(&busy, &sink, &consumer, 64)?;
    read.copy_from_device_async(0, slot.device_buffer(), 0, len, &consumer)
        .map_err(fail("consumer read"))?;
    consumed.record(&consumer).map_err(fail("record"))?;
    slot.release(&[consumer.handle()])
        .map_err(fail("release"))?;
    if consumed.is_complete().map_err(fail("query"))? {
        notes.push("direct: the consumer finished before the release (ordering not exercised)");
    }
    slot.begin_direct().map_err(fail("begin_direct"))?;
    if !consumed.is_complete().map_err(fail("query"))? {
        return Err(
            "direct: begin_direct returned before the consumer's work on the released batch".into(),
        );
    }
    if !slot.released_event().is_complete().map_err(fail("query"))? {
        return Err("direct: begin_direct returned before the released event".into());
    }
    // A synchronous copy stands in for the NIC.
    slot.device_buffer()
        .copy_from_host(0, &c)
        .map_err(fail("direct write"))?;
    slot.complete_direct(len).map_err(fail("complete_direct"))?;
    slot.wait().map_err(fail("waiting for the direct step"))?;
    consumer.synchronize().map_err(fail("consumer"))?;
    if back(&read)? != b {
        return Err("direct: the consumer read bytes of the next step".into());
    }
    if back(slot.device_buffer())? != c {
        return Err("direct: the directly written bytes changed".into());
    }

    // Default-stream handles (legacy, per-thread) and several streams.
    slot.ready_on(0x1)
        .map_err(fail("ready_on(CU_STREAM_LEGACY)"))?;
    slot.ready_on(0x2)
        .map_err(fail("ready_on(CU_STREAM_PER_THREAD)"))?;
    slot.release(&[0x1, 0x2, consumer.handle()])
        .map_err(fail("release on default streams"))?;
    slot.begin_direct()
        .map_err(fail("begin_direct after default streams"))?;
    slot.complete_direct(len).map_err(fail("complete_direct"))?;
    slot.wait().map_err(fail("wait"))?;
    Ok(format!(
        "next bounce copy and direct fill ordered after the consumer stream; default-stream handles accepted; direct flush {:?}{}",
        dev.direct_flush(),
        notes
            .iter()
            .map(|n| format!("; NOTE {n}"))
            .collect::<String>()
    ))
}
