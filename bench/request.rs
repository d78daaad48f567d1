//! Criterion benchmarks of the per-request check every HTTP request goes
//! through before policy (`sidecar::http::check_request`: method, canonical
//! path), next to `path_of` alone — the baseline: what the sidecar did per
//! request before paths were canonicalized — so the added cost shows as a
//! ratio within one run.
//!
//! Run: `cargo bench -p appid-proxy --bench request`.

use criterion::{Criterion, criterion_group, criterion_main};
use std::hint::black_box;

use appid_proxy::sidecar::http::{check_request, path};

/// Typical targets: already canonical (the common case), with a query,
/// and ones that need rewriting.
const TARGETS: [(&str, &str); 4] = [
    ("canonical", "/v1/orders/42"),
    ("with_query", "/api/v2/search?q=shoes&page=3&sort=price"),
    ("encoded", "/v1/%6frders/caf%c3%a9"),
    ("parameters", "/v1//orders;jsessionid=0123456789abcdef/42"),
];

fn request_check(c: &mut Criterion) {
    let mut group = c.benchmark_group("request_check");
    for (name, target) in TARGETS {
        group.bench_function(format!("path_of/{name}"), |b| {
            b.iter(|| black_box(path::path_of(black_box(target))).map_or(0, str::len))
        });
        group.bench_function(format!("check_request/{name}"), |b| {
            b.iter(|| {
                check_request(black_box("GET"), black_box(target))
                    .map(|p| p.len())
                    .unwrap_or(0)
            })
        });
    }
    group.finish();
}

criterion_group!(benches, request_check);
criterion_main!(benches);
