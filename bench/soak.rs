//! The overload soak, measured: the legitimate meshed client's latency and
//! the server sidecar's memory while outsiders attack (the scenario of
//! `tests/overload.rs`, from `tests/support/soak.rs`), against a baseline
//! with no attacker measured in the same run.
//!
//! Run (release build of the sidecar): `cargo bench -p appid-proxy --bench soak`.
//! Environment: `SOAK_SECONDS` per phase (default 10), `SOAK_ROUNDS`
//! (default 3; phases alternate baseline / attack).
//!
//! Prints, per round, p50 and p99 of the client's latency (a new connection
//! and one request through both sidecars, every 20 ms) and the server
//! sidecar's peak RSS, then the median and spread (min–max) over the
//! rounds of the attack/baseline ratios.

#[path = "../tests/support/mod.rs"]
mod support;

use std::time::Duration;

use support::apps::HttpApp;
use support::soak::{self, Attack, Report};
use support::stats::{env_number, median_spread, ms};

const INTERVAL: Duration = Duration::from_millis(20);

async fn phase(attack: Attack, seconds: u64) -> Report {
    // A fresh pair per phase: nothing one phase left behind weighs on the next.
    let app = HttpApp::start().await;
    let mesh = soak::mesh(app.addr).await;
    soak::run(&mesh, attack, Duration::from_secs(seconds), INTERVAL).await
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    // `cargo bench` passes `--bench`; a filter that is not ours skips us.
    if std::env::args()
        .skip(1)
        .any(|a| !a.starts_with('-') && !"soak".contains(a.as_str()))
    {
        return;
    }
    soak::raise_fd_limit();
    let seconds = env_number("SOAK_SECONDS", 10);
    let rounds = env_number("SOAK_ROUNDS", 3).max(1);
    println!("| round | phase | requests | failed | p50 ms | p99 ms | peak RSS KiB |");
    println!("|---|---|---|---|---|---|---|");
    let (mut p50_ratios, mut p99_ratios, mut rss_ratios) = (Vec::new(), Vec::new(), Vec::new());
    for round in 1..=rounds {
        let baseline = phase(Attack::NONE, seconds).await;
        let attacked = phase(soak::ATTACK, seconds).await;
        for (name, r) in [("baseline", &baseline), ("attack", &attacked)] {
            println!(
                "| {round} | {name} | {} | {} | {:.2} | {:.2} | {} |",
                r.latencies.len(),
                r.failures.len(),
                ms(r.quantile(0.5)),
                ms(r.quantile(0.99)),
                r.peak_rss_kib
            );
        }
        p50_ratios.push(ms(attacked.quantile(0.5)) / ms(baseline.quantile(0.5)));
        p99_ratios.push(ms(attacked.quantile(0.99)) / ms(baseline.quantile(0.99)));
        rss_ratios.push(attacked.peak_rss_kib as f64 / baseline.peak_rss_kib as f64);
    }
    println!();
    println!("attack / baseline over {rounds} rounds: median (min–max)");
    for (name, ratios) in [
        ("p50 latency", p50_ratios),
        ("p99 latency", p99_ratios),
        ("peak RSS", rss_ratios),
    ] {
        let (median, low, high) = median_spread(ratios);
        println!("- {name}: {median:.2}× ({low:.2}–{high:.2})");
    }
}
