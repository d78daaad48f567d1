//! Criterion benchmark of the copy rustls makes of every record's plaintext
//! (16 KiB into a buffer 5 bytes past its start), at the distances between
//! source and destination that decide its speed on some CPUs (see
//! `proxy/src/sidecar/copy_buf.rs` and docs/performance.md):
//!
//! - `aliased_5`: the destination is 5 bytes past the source modulo 4 KiB,
//!   what a plaintext chunk on a 4 KiB boundary gives (before `copy_buf`);
//! - `led`: the source starts `copy_buf::LEAD` bytes in, as the sidecar's
//!   buffers now do (the destination is 4 KiB − 59 past it);
//! - `aligned`: both on the same 4 KiB offset, the baseline.
//!
//! On a CPU without the 4K-aliasing penalty of `rep movsb` all three are
//! the same; on the AMD EPYC machines this project runs on, `aliased_5` is
//! about 15× slower.
//!
//! Run: `cargo bench -p appid-proxy --bench copy`.

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use std::hint::black_box;

use appid_proxy::sidecar::copy_buf::LEAD;

const RECORD: usize = 16 * 1024;
const PAGE: usize = 4096;
const HEADER: usize = 5; // the TLS record header rustls writes first

/// A page-aligned slice of `len` bytes at `offset` into a buffer that lives
/// as long as `storage`.
fn at(storage: &mut [u8], offset: usize, len: usize) -> &mut [u8] {
    let start = storage.as_ptr() as usize;
    let aligned = start.next_multiple_of(PAGE) - start;
    &mut storage[aligned + offset..aligned + offset + len]
}

fn record_copy(c: &mut Criterion) {
    let mut group = c.benchmark_group("record_copy_16k");
    group.throughput(Throughput::Bytes(RECORD as u64));
    for (name, source_offset, destination_offset) in [
        ("aliased_5", 0, HEADER),
        ("led", LEAD, HEADER),
        ("aligned", 0, 0),
    ] {
        let mut source_storage = vec![7u8; RECORD + 2 * PAGE];
        let mut destination_storage = vec![0u8; RECORD + 2 * PAGE];
        let source_slice: &[u8] = at(&mut source_storage, source_offset, RECORD);
        let destination = at(&mut destination_storage, destination_offset, RECORD);
        group.bench_function(name, |b| {
            b.iter(|| {
                destination.copy_from_slice(black_box(source_slice));
                black_box(&destination[RECORD - 1]);
            })
        });
    }
    group.finish();
}

criterion_group!(benches, record_copy);
criterion_main!(benches);
