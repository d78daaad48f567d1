//! Criterion benchmarks of encoding one audit line (`AuditRecord::write_line`,
//! what `AuditLog::log_at` does outside its lock), next to the encoder it
//! replaced — serde with the record `#[serde(flatten)]`ed and the time
//! through a `time` format description, kept here as the baseline — so the
//! gain shows as a ratio within one run. Both give the same bytes (checked
//! before measuring; the unit tests in `proxy/src/audit.rs` check it for
//! every field combination and any string).
//!
//! Run: `cargo bench -p appid-proxy --bench audit`.

use std::collections::BTreeMap;
use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use serde::Serialize;
use time::OffsetDateTime;
use time::format_description::FormatItem;
use time::macros::format_description;

use appid_proxy::audit::{AppIdDoc, AuditRecord, Claims};

const TIME_FORMAT: &[FormatItem<'static>] =
    format_description!("[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z");

/// The line as the serde-flatten encoder wrote it.
#[derive(Serialize)]
struct Line<'r, 'a> {
    time: &'r str,
    #[serde(flatten)]
    record: &'r AuditRecord<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    appids: Option<BTreeMap<&'r str, &'r serde_json::Value>>,
}

fn serde_flatten(record: &AuditRecord<'_>, at: OffsetDateTime) -> Vec<u8> {
    let time = at
        .to_offset(time::UtcOffset::UTC)
        .format(TIME_FORMAT)
        .unwrap();
    let mut buf = Vec::with_capacity(512);
    serde_json::to_writer(
        &mut buf,
        &Line {
            time: &time,
            record,
            appids: None,
        },
    )
    .unwrap();
    buf.push(b'\n');
    buf
}

fn hand_written(record: &AuditRecord<'_>, at: OffsetDateTime) -> Vec<u8> {
    let mut buf = Vec::with_capacity(512);
    record.write_line(&mut buf, at).unwrap();
    buf
}

fn doc(digest: &str) -> AppIdDoc {
    AppIdDoc {
        digest: digest.into(),
        value: serde_json::Value::Null,
    }
}

fn audit_line(c: &mut Criterion) {
    let peer = doc("5f0c0123456789abcdef0123456789ab");
    let local = doc("9ab10123456789abcdef0123456789ab");
    let web = serde_json::Value::from("web");
    let mut claims = vec![("from.labels.app", &web)];
    let claims = Claims::new(&mut claims);
    // What the HTTP/2 load writes: an allowed request, as each sidecar
    // logs it (inbound; outbound with the app's address).
    let allow = AuditRecord {
        direction: "inbound",
        decision: "allow",
        audit_only: false,
        rule: "web-to-api",
        peer_id: Some("spiffe://prod.example/ns/shop/sa/web"),
        peer_addr: Some("10.0.0.7:41234"),
        app_addr: None,
        port: 8080,
        protocol: "http2",
        method: Some("GET"),
        path: Some("/v1/orders/42"),
        reason: None,
        claims,
        external: None,
        peer_appid: Some(&peer),
        local_appid: Some(&local),
    };
    let outbound = AuditRecord {
        direction: "outbound",
        app_addr: Some("127.0.0.1:51234"),
        peer_addr: Some("10.0.0.8:15006"),
        peer_id: Some("spiffe://prod.example/ns/shop/sa/api"),
        ..allow
    };
    let deny = AuditRecord {
        decision: "deny",
        rule: "default",
        reason: Some("no rule matched"),
        path: Some("/admin/\"x\"\n"),
        claims: Claims::NONE,
        ..allow
    };
    let at = OffsetDateTime::from_unix_timestamp_nanos(1_795_341_600_123_456_789).unwrap();
    let mut group = c.benchmark_group("audit_line");
    group
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    for (name, record) in [("allow", allow), ("outbound", outbound), ("deny", deny)] {
        assert_eq!(
            hand_written(&record, at),
            serde_flatten(&record, at),
            "{name}: not the same bytes"
        );
        group.bench_function(format!("serde_flatten/{name}"), |b| {
            b.iter(|| serde_flatten(black_box(&record), black_box(at)).len())
        });
        group.bench_function(format!("hand_written/{name}"), |b| {
            b.iter(|| hand_written(black_box(&record), black_box(at)).len())
        });
        // As `log_at` does: one buffer per thread, reused.
        let mut buf = Vec::new();
        group.bench_function(format!("hand_written_reused/{name}"), |b| {
            b.iter(|| {
                buf.clear();
                black_box(&record)
                    .write_line(&mut buf, black_box(at))
                    .unwrap();
                buf.len()
            })
        });
    }
    group.finish();
}

criterion_group!(benches, audit_line);
criterion_main!(benches);
