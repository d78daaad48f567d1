//! The first connection through a fresh sidecar pair, measured: how long a
//! server-first protocol's banner takes to arrive through a pair that has
//! just become ready (no tunnel yet, no TLS session to resume), against the
//! same banner fetched directly from the app in the same round.
//!
//! Issue 12's line: the banner arrives within 50 ms of direct, with no
//! config at all (the policy has no `http` rule for the port). What made
//! the first connection slow was aws-lc seeding its random generator on
//! first use, on both sides (see `sidecar::tls::warm_up`).
//!
//! Run (release build of the sidecar): `cargo bench -p appid-proxy --bench first_byte`.
//! Environment: `FIRST_BYTE_PAIRS` fresh pairs per mode and round (default
//! 5), `FIRST_BYTE_ROUNDS` (default 3).
//!
//! Prints, per round and tunnel mode, the median first-connection banner
//! time over the fresh pairs and the direct median, then the median and
//! spread (min–max) over the rounds of the time added over direct.

#[path = "../tests/support/mod.rs"]
mod support;

use std::time::Duration;

use support::mesh::{Mesh, MeshOptions, WEB_TO_API};
use support::stats::{env_number, median_spread, ms};
use support::{apps, clients};

fn median(values: Vec<Duration>) -> Duration {
    let mut values = values;
    values.sort();
    values[values.len() / 2]
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    // `cargo bench` passes `--bench`; a filter that is not ours skips us.
    if std::env::args()
        .skip(1)
        .any(|a| !a.starts_with('-') && !"first_byte".contains(a.as_str()))
    {
        return;
    }
    let pairs = env_number("FIRST_BYTE_PAIRS", 5).max(1);
    let rounds = env_number("FIRST_BYTE_ROUNDS", 3).max(1);
    let app = apps::banner_server().await;
    println!("| round | mode | direct ms | first connection, fresh pair ms | added ms |");
    println!("|---|---|---|---|---|");
    let mut added: Vec<(&str, Vec<f64>)> = vec![("pooled", Vec::new()), ("strict", Vec::new())];
    for round in 1..=rounds {
        for (mode, added) in added.iter_mut() {
            let mut direct = Vec::new();
            let mut first = Vec::new();
            for _ in 0..pairs {
                let mesh = Mesh::start(
                    app,
                    MeshOptions {
                        server_policy: WEB_TO_API.into(),
                        client_policy: WEB_TO_API.into(),
                        server_tunnel: Some(mode),
                        client_tunnel: Some(mode),
                        ..MeshOptions::default()
                    },
                )
                .await;
                direct.push(clients::first_byte(app).await.0);
                let (took, banner) = clients::first_byte(mesh.outbound_addr()).await;
                assert_eq!(banner, b"220 banner.test ready\r\n", "{}", mesh.context());
                first.push(took);
            }
            let (direct, first) = (median(direct), median(first));
            let extra = ms(first) - ms(direct);
            println!(
                "| {round} | {mode} | {:.2} | {:.2} | {extra:.2} |",
                ms(direct),
                ms(first)
            );
            added.push(extra);
        }
    }
    println!();
    println!(
        "added over direct, first connection of a fresh pair, {rounds} rounds: median (min–max)"
    );
    for (mode, values) in added {
        let (median, low, high) = median_spread(values);
        println!("- {mode}: {median:.2} ms ({low:.2}–{high:.2})");
    }
}
