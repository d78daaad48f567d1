//! The authority's issuance rate, measured: how many certificates per
//! second real `appid authority serve` processes sign from CSRs, on SQLite
//! (one replica) and on PostgreSQL with 1, 2 and 3 replicas sharing one
//! database; and how long a renewal takes (p50, p99).
//!
//! Run: `cargo bench -p appid-proxy --bench issuance` (it builds and drives
//! the release `appid`; PostgreSQL's server must be installed under
//! `/usr/lib/postgresql/*/bin`, or only SQLite is measured).
//!
//! Environment: `ISSUANCE_SECONDS` per phase (default 10),
//! `ISSUANCE_ROUNDS` (default 3), `ISSUANCE_WORKERS` concurrent clients
//! (default 32), `ISSUANCE_CONFIGS` (default `sqlite,pg1,pg2,pg3`),
//! `ISSUANCE_TOKENS` join tokens made per configuration and round (default
//! 1 500 per second of phase; running out is reported),
//! `ISSUANCE_JSON=FILE` to also write every figure as JSON, and
//! `ISSUANCE_APPID_BIN=PATH` to measure another build of `appid` (say, the
//! commit before a change) with this load generator.
//!
//! For each round and configuration, in that order (so configurations
//! interleave across rounds), on a fresh CA and a fresh database:
//!
//! 1. One-time join tokens, one registration each, are written beforehand
//!    through the store API (not counted). Keys and CSRs for every request
//!    are made once, before the first round: each sidecar makes its own on
//!    its machine, not on the authority's.
//! 2. Attest phase: `ISSUANCE_WORKERS` tasks, each with the sidecar's own
//!    [`AuthorityClient`] (workers spread over the replicas by their first
//!    URL), redeem one token after the other for `ISSUANCE_SECONDS`, each
//!    with a key of its own: `POST /v1/attest` on a new TLS connection, as
//!    a sidecar's bootstrap does. Issuances/s = certificates / phase time.
//! 3. Renew phase: the same workers renew over mTLS (`POST /v1/renew`),
//!    presenting the last certificate each got in the attest phase, a new
//!    key each time, for `ISSUANCE_SECONDS`. Renewals/s and the renewal
//!    latency (request sent to certificate received).
//! 4. Every certificate of both phases is then loaded as a sidecar loads
//!    it (chain, AppID extension, key match): one that does not verify is
//!    a failure. Like key generation, this is the sidecars' work on their
//!    machines, so it is not done while the CPU is measured.
//!
//! PostgreSQL runs as a production server would: `fsync`,
//! `synchronous_commit` and `full_page_writes` on. Everything — load
//! generator, authority replicas, PostgreSQL — shares this machine's cores.
//!
//! Prints per-round figures, with the CPU time per certificate of the
//! authority replicas, PostgreSQL and the load generator (from `/proc`)
//! and the share of the CPU other processes took meanwhile (a round with
//! more than 10% is flagged); then per configuration the median and spread
//! (min–max) over the rounds, and each as a ratio to the SQLite figure of
//! the same round.

#[path = "../tests/support/mod.rs"]
mod support;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use appid_proxy::authority::client::{AuthorityClient, KeyAndCsr, new_key_and_csr};
use appid_proxy::authority::service::{Proof, hash_token, new_token};
use appid_proxy::authority::store::{Database, Registration, Store, StoreError};
use appid_proxy::identity::verify::TrustBundle;
use appid_proxy::sidecar::tls::LocalIdentity;
use rustls::sign::CertifiedKey;

use support::net::free_port;
use support::pki::{APPID, appid};
use support::postgres::Postgres;
use support::stats::{env_number, median_spread, ms};

const TRUST_DOMAIN: &str = "bench.example";
const READY_LIMIT: Duration = Duration::from_secs(30);

/// Where the authority keeps its state, and how many replicas serve it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Config {
    Sqlite,
    Postgres(usize),
}

impl Config {
    fn parse(name: &str) -> Option<Config> {
        match name.trim() {
            "sqlite" => Some(Config::Sqlite),
            "pg1" => Some(Config::Postgres(1)),
            "pg2" => Some(Config::Postgres(2)),
            "pg3" => Some(Config::Postgres(3)),
            _ => None,
        }
    }

    fn name(self) -> String {
        match self {
            Config::Sqlite => "SQLite, 1 replica".into(),
            Config::Postgres(1) => "PostgreSQL, 1 replica".into(),
            Config::Postgres(n) => format!("PostgreSQL, {n} replicas"),
        }
    }

    fn replicas(self) -> usize {
        match self {
            Config::Sqlite => 1,
            Config::Postgres(n) => n,
        }
    }
}

/// The settings of one run.
struct Settings {
    phase: Duration,
    workers: usize,
    /// Join tokens made per configuration and round.
    tokens: usize,
}

/// The figures of one configuration in one round.
#[derive(Debug, Clone, serde::Serialize)]
struct Figures {
    round: u64,
    config: String,
    issued: usize,
    issuances_per_s: f64,
    attest_p50_ms: f64,
    attest_p99_ms: f64,
    renewed: usize,
    renewals_per_s: f64,
    renew_p50_ms: f64,
    renew_p99_ms: f64,
    failed: usize,
    /// CPU time per certificate (issued or renewed), in ms: the authority
    /// replicas, PostgreSQL's processes, this load generator.
    authority_cpu_ms: f64,
    postgres_cpu_ms: f64,
    load_cpu_ms: f64,
    /// The share of the machine's CPU that other processes used meanwhile.
    others_cpu_percent: f64,
}

/// `appid authority serve` processes on one CA and database; killed on drop.
struct Authority {
    _temp: tempfile::TempDir,
    ca_dir: PathBuf,
    replicas: Vec<(Child, PathBuf)>,
    urls: Vec<String>,
}

impl Drop for Authority {
    fn drop(&mut self) {
        for (child, _) in &mut self.replicas {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Authority {
    /// A fresh CA, `tokens` registrations with a join token each in
    /// `database` (SQLite in the CA directory when `None`), then
    /// `replicas` servers, once they answer. Also the tokens.
    async fn start(
        database: Option<String>,
        replicas: usize,
        tokens: usize,
    ) -> (Self, Vec<String>) {
        let temp = tempfile::tempdir().expect("temp dir");
        let ca_dir = temp.path().join("ca");
        appid(&[
            "authority",
            "init",
            "--trust-domain",
            TRUST_DOMAIN,
            "--dir",
            ca_dir.to_str().expect("UTF-8 path"),
        ]);
        let made = {
            let (ca_dir, database) = (ca_dir.clone(), database.clone());
            tokio::task::spawn_blocking(move || register(&ca_dir, database.as_deref(), tokens))
                .await
                .expect("register")
                .unwrap_or_else(|e| panic!("registering join tokens: {e}"))
        };
        let mut authority = Authority {
            ca_dir,
            replicas: Vec::new(),
            urls: Vec::new(),
            _temp: temp,
        };
        for n in 0..replicas {
            let port = free_port();
            let log = authority._temp.path().join(format!("replica-{n}.log"));
            let mut command = Command::new(appid_bin());
            command
                .args(["authority", "serve", "--dir"])
                .arg(&authority.ca_dir)
                .args(["--listen", &format!("127.0.0.1:{port}")])
                .arg("--audit-log")
                .arg(authority._temp.path().join(format!("audit-{n}.jsonl")))
                .env("RUST_LOG", "warn")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(&log).expect("create log"));
            if let Some(url) = &database {
                command.env("APPID_AUTHORITY_DATABASE", url);
            }
            let child = command.spawn().expect("spawn appid authority serve");
            authority.replicas.push((child, log));
            authority.urls.push(format!("https://127.0.0.1:{port}"));
        }
        authority.wait_ready().await;
        (authority, made)
    }

    fn bundle(&self) -> TrustBundle {
        TrustBundle::from_pem_file(&self.ca_dir.join("ca.pem"), vec![TRUST_DOMAIN.into()])
            .expect("ca.pem")
    }

    fn logs(&self) -> String {
        self.replicas
            .iter()
            .map(|(_, log)| std::fs::read_to_string(log).unwrap_or_default())
            .collect::<Vec<_>>()
            .join("\n---\n")
    }

    async fn wait_ready(&mut self) {
        for url in self.urls.clone() {
            let client = AuthorityClient::new(&url, self.bundle()).expect("client");
            let start = Instant::now();
            while let Err(e) = client.revocations().await {
                let exited = self
                    .replicas
                    .iter_mut()
                    .any(|(child, _)| child.try_wait().ok().flatten().is_some());
                if exited || start.elapsed() > READY_LIMIT {
                    panic!("{url} not serving ({e}):\n{}", self.logs());
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }

    /// A client of every replica that tries replica `n` first.
    fn client(&self, n: usize) -> AuthorityClient {
        let mut urls = self.urls.clone();
        let first = n % urls.len();
        urls.rotate_left(first);
        AuthorityClient::with_replicas(&urls, self.bundle()).expect("client")
    }
}

/// Writes `count` registrations (`w/0`, `w/1`, …), a one-time join token
/// each, in one transaction, as `appid authority register` does one at a
/// time; the tokens.
fn register(
    ca_dir: &Path,
    database: Option<&str>,
    count: usize,
) -> Result<Vec<String>, StoreError> {
    let mut store = Store::open_database(&Database::from_flags(ca_dir, database)?)?;
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let tokens: Vec<String> = (0..count)
        .map(|_| new_token().expect("system randomness"))
        .collect();
    store.transaction(|tx| {
        for (n, token) in tokens.iter().enumerate() {
            let registration = Registration {
                id: format!("spiffe://{TRUST_DOMAIN}/w/{n}"),
                labels: [("app".to_string(), "bench".to_string())].into(),
                image_digest: None,
                cloud_match: Default::default(),
            };
            tx.register(&registration, now)?;
            tx.add_token(&hash_token(token), &registration.id, now + 3600)?;
        }
        Ok::<_, StoreError>(())
    })?;
    Ok(tokens)
}

/// What one worker did in one phase.
#[derive(Default)]
struct Work {
    latencies: Vec<Duration>,
    failures: Vec<String>,
    /// Each certificate it got (PEM), with the index of its key.
    issued: Vec<(usize, String)>,
}

/// Keys and CSRs for every request of a round, made before the run: a
/// sidecar makes its own on its machine, so the load generator (which
/// shares this machine with the authority) does not make them while it
/// measures. One of each per token for the attest phase, as many again for
/// renewals. The same for every configuration and round.
struct Keys {
    attest: Arc<Vec<KeyAndCsr>>,
    renew: Arc<Vec<KeyAndCsr>>,
}

impl Keys {
    /// `count` of each, made on every core.
    async fn make(count: usize) -> Keys {
        let threads = cores();
        let share = count * 2 / threads + 1;
        let made: Vec<KeyAndCsr> = futures_util::future::join_all((0..threads).map(|_| {
            tokio::task::spawn_blocking(move || {
                (0..share)
                    .map(|_| new_key_and_csr().expect("key and CSR"))
                    .collect::<Vec<_>>()
            })
        }))
        .await
        .into_iter()
        .flat_map(|made| made.expect("key generation"))
        .collect();
        let mut made = made.into_iter();
        Keys {
            attest: Arc::new(made.by_ref().take(count).collect()),
            renew: Arc::new(made.take(count).collect()),
        }
    }
}

/// The certificate `pem` (with `key`'s private key) as a sidecar loads
/// it: verified against `bundle`.
fn verified(bundle: &TrustBundle, pem: &str, key: &KeyAndCsr) -> Result<LocalIdentity, String> {
    LocalIdentity::from_pem(
        "issued",
        pem.as_bytes(),
        "key",
        key.key_pem.as_bytes(),
        bundle,
    )
    .map_err(|e| format!("an issued certificate does not verify: {e}"))
}

/// Runs `workers` tasks until `deadline`; the phase's length (until the
/// last request in flight finished) and what each did.
async fn phase<F, Fut>(workers: usize, mut per_worker: F) -> (Duration, Vec<Work>)
where
    F: FnMut(usize) -> Fut,
    Fut: std::future::Future<Output = Work> + Send + 'static,
{
    let start = Instant::now();
    let tasks: Vec<_> = (0..workers).map(|n| tokio::spawn(per_worker(n))).collect();
    let mut done = Vec::new();
    for task in tasks {
        done.push(task.await.expect("worker"));
    }
    (start.elapsed(), done)
}

fn quantile(latencies: &mut [Duration], q: f64) -> f64 {
    if latencies.is_empty() {
        return f64::NAN;
    }
    latencies.sort();
    let index = ((latencies.len() as f64 * q) as usize).min(latencies.len() - 1);
    ms(latencies[index])
}

/// CPU time (user + system) used so far by process `pid` ("self" for
/// this one), from `/proc/PID/stat` (clock ticks of 10 ms).
fn process_cpu(pid: &str) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // The fields after the command name, which is in parentheses.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map_or(vec![], |(_, rest)| rest.split_whitespace().collect());
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    Duration::from_millis((ticks(11) + ticks(12)) * 10)
}

/// CPU time used so far by every process named `postgres` (the cluster's).
fn postgres_cpu() -> Duration {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| entry.file_name().into_string().ok())
        .filter(|pid| pid.bytes().all(|b| b.is_ascii_digit()))
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .is_ok_and(|c| c.trim() == "postgres")
        })
        .map(|pid| process_cpu(&pid))
        .sum()
}

/// CPU time the whole machine spent busy so far (`/proc/stat`).
fn machine_busy() -> Duration {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let ticks: Vec<u64> = stat
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .skip(1)
        .filter_map(|v| v.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal: all but idle, iowait.
    let busy: u64 = ticks
        .iter()
        .take(8)
        .enumerate()
        .filter(|(i, _)| *i != 3 && *i != 4)
        .map(|(_, t)| t)
        .sum();
    Duration::from_millis(busy * 10)
}

/// Where the CPU went during a measurement.
#[derive(Clone, Copy)]
struct Cpu {
    authority: Duration,
    postgres: Duration,
    load: Duration,
    machine: Duration,
}

impl Cpu {
    fn now(authority: &Authority) -> Cpu {
        Cpu {
            authority: authority
                .replicas
                .iter()
                .map(|(child, _)| process_cpu(&child.id().to_string()))
                .sum(),
            postgres: postgres_cpu(),
            load: process_cpu("self"),
            machine: machine_busy(),
        }
    }

    fn since(self, before: Cpu) -> Cpu {
        Cpu {
            authority: self.authority.saturating_sub(before.authority),
            postgres: self.postgres.saturating_sub(before.postgres),
            load: self.load.saturating_sub(before.load),
            machine: self.machine.saturating_sub(before.machine),
        }
    }

    /// What other processes of the machine used.
    fn others(self) -> Duration {
        self.machine
            .saturating_sub(self.authority + self.postgres + self.load)
    }
}

/// One configuration, one round.
async fn measure(
    config: Config,
    round: u64,
    settings: &Settings,
    keys: &Keys,
    cluster: Option<&Postgres>,
) -> Figures {
    let database = match config {
        Config::Sqlite => None,
        // The cluster's own client blocks: not on a runtime thread.
        Config::Postgres(_) => Some(tokio::task::block_in_place(|| {
            cluster
                .expect("a PostgreSQL cluster")
                .create_database("issuance")
        })),
    };
    let (authority, tokens) = Authority::start(database, config.replicas(), settings.tokens).await;
    let tokens = Arc::new(tokens);
    let next = Arc::new(AtomicUsize::new(0));
    let bundle = authority.bundle();

    // Attest: each worker redeems tokens until the deadline, each with a
    // key and CSR of its own (made beforehand, as each sidecar makes its
    // own on its machine).
    let cpu_before = Cpu::now(&authority);
    let wall = Instant::now();
    let deadline = Instant::now() + settings.phase;
    let (attest_time, attested) = phase(settings.workers, |n| {
        let client = authority.client(n);
        let (tokens, next, keys) = (tokens.clone(), next.clone(), keys.attest.clone());
        async move {
            let mut work = Work::default();
            while Instant::now() < deadline {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let (Some(token), Some(key)) = (tokens.get(i), keys.get(i)) else {
                    work.failures.push("out of join tokens".into());
                    break;
                };
                let proof = Proof::JoinToken {
                    token: token.clone(),
                };
                let sent = Instant::now();
                match client.attest(&key.csr_pem, proof, None).await {
                    Ok(issued) => {
                        work.latencies.push(sent.elapsed());
                        work.issued.push((i, issued.certificate));
                    }
                    Err(e) => work.failures.push(e.to_string()),
                }
            }
            work
        }
    })
    .await;

    // Renew: each worker renews over mTLS with a certificate of the attest
    // phase (its last), a fresh key and CSR each time, until the deadline.
    let mut attested = attested;
    let current: Vec<Option<Arc<CertifiedKey>>> = attested
        .iter()
        .map(|work| {
            let (i, pem) = work.issued.last()?;
            Some(verified(&bundle, pem, &keys.attest[*i]).ok()?.certified)
        })
        .collect();
    let next = Arc::new(AtomicUsize::new(0));
    let deadline = Instant::now() + settings.phase;
    let (renew_time, mut renewed) = phase(settings.workers, |n| {
        let client = authority.client(n);
        let (current, next, keys) = (current[n].clone(), next.clone(), keys.renew.clone());
        async move {
            let mut work = Work::default();
            let Some(current) = current else {
                work.failures.push("no certificate to renew".into());
                return work;
            };
            while Instant::now() < deadline {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(key) = keys.get(i) else {
                    work.failures.push("out of keys for renewals".into());
                    break;
                };
                let sent = Instant::now();
                match client.renew(&key.csr_pem, current.clone(), None).await {
                    Ok(issued) => {
                        work.latencies.push(sent.elapsed());
                        work.issued.push((i, issued.certificate));
                    }
                    Err(e) => work.failures.push(e.to_string()),
                }
            }
            work
        }
    })
    .await;

    let cpu = Cpu::now(&authority).since(cpu_before);
    let wall = wall.elapsed();
    // Every certificate must verify (chain to the CA, carry the AppID
    // extension, match its key), checked after the phases: a sidecar
    // checks its own on its machine.
    let unverified = tokio::task::block_in_place(|| {
        let check = |works: &[Work], keys: &[KeyAndCsr]| {
            works
                .iter()
                .flat_map(|work| &work.issued)
                .filter_map(|(i, pem)| verified(&bundle, pem, &keys[*i]).err())
                .collect::<Vec<_>>()
        };
        let mut all = check(&attested, &keys.attest);
        all.extend(check(&renewed, &keys.renew));
        all
    });
    let failures: Vec<String> = attested
        .iter_mut()
        .chain(&mut renewed)
        .flat_map(|w| std::mem::take(&mut w.failures))
        .chain(unverified)
        .collect();
    if let Some(first) = failures.first() {
        eprintln!(
            "{}, round {round}: {} requests failed; the first: {first}",
            config.name(),
            failures.len()
        );
        if failures.iter().any(|f| f.contains("out of join tokens")) {
            eprintln!("  raise ISSUANCE_TOKENS (now {})", settings.tokens);
        }
    }
    let mut attest: Vec<Duration> = attested.into_iter().flat_map(|w| w.latencies).collect();
    let mut renew: Vec<Duration> = renewed.into_iter().flat_map(|w| w.latencies).collect();
    let certificates = (attest.len() + renew.len()).max(1) as f64;
    let per_certificate = |d: Duration| ms(d) / certificates;
    Figures {
        round,
        config: config.name(),
        issued: attest.len(),
        issuances_per_s: attest.len() as f64 / attest_time.as_secs_f64(),
        attest_p50_ms: quantile(&mut attest, 0.5),
        attest_p99_ms: quantile(&mut attest, 0.99),
        renewed: renew.len(),
        renewals_per_s: renew.len() as f64 / renew_time.as_secs_f64(),
        renew_p50_ms: quantile(&mut renew, 0.5),
        renew_p99_ms: quantile(&mut renew, 0.99),
        failed: failures.len(),
        authority_cpu_ms: per_certificate(cpu.authority),
        postgres_cpu_ms: per_certificate(cpu.postgres),
        load_cpu_ms: per_certificate(cpu.load),
        others_cpu_percent: 100.0 * cpu.others().as_secs_f64()
            / (wall.as_secs_f64() * cores() as f64),
    }
}

fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// `median (min–max)` of `values`, with `digits` decimals.
fn summary(values: Vec<f64>, digits: usize) -> String {
    summary_in(values, digits, "")
}

/// [`summary`] with a unit after each number.
fn summary_in(values: Vec<f64>, digits: usize, unit: &str) -> String {
    let (median, low, high) = median_spread(values);
    format!("{median:.digits$}{unit} ({low:.digits$}{unit}–{high:.digits$}{unit})")
}

/// The `appid` whose authority is measured: this build's, or
/// `ISSUANCE_APPID_BIN`.
fn appid_bin() -> String {
    std::env::var("ISSUANCE_APPID_BIN").unwrap_or_else(|_| APPID.to_string())
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    // `cargo bench` passes `--bench`; a filter that is not ours skips us.
    if std::env::args()
        .skip(1)
        .any(|a| !a.starts_with('-') && !"issuance".contains(a.as_str()))
    {
        return;
    }
    support::soak::raise_fd_limit();
    let seconds = env_number("ISSUANCE_SECONDS", 10).max(1);
    let settings = Settings {
        phase: Duration::from_secs(seconds),
        workers: env_number("ISSUANCE_WORKERS", 32).max(1) as usize,
        tokens: env_number("ISSUANCE_TOKENS", seconds * 1500) as usize,
    };
    let rounds = env_number("ISSUANCE_ROUNDS", 3).max(1);
    let mut configs: Vec<Config> = std::env::var("ISSUANCE_CONFIGS")
        .unwrap_or_else(|_| "sqlite,pg1,pg2,pg3".into())
        .split(',')
        .map(|name| {
            Config::parse(name)
                .unwrap_or_else(|| panic!("ISSUANCE_CONFIGS: `{name}`: sqlite, pg1, pg2 or pg3"))
        })
        .collect();
    let cluster = match configs.iter().any(|c| matches!(c, Config::Postgres(_))) {
        true => tokio::task::spawn_blocking(Postgres::start_durable)
            .await
            .expect("start PostgreSQL"),
        false => None,
    };
    if cluster.is_none() {
        configs.retain(|c| *c == Config::Sqlite);
    }
    let keys = Keys::make(settings.tokens).await;
    println!(
        "{} workers, {seconds} s per phase, {rounds} rounds, {} cores",
        settings.workers,
        cores()
    );
    println!();
    println!(
        "| round | configuration | issued | issuances/s | attest p50 ms | attest p99 ms | renewed | renewals/s | renew p50 ms | renew p99 ms | failed | CPU ms/cert: authority, PostgreSQL, load | others' CPU |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    let mut all: Vec<Figures> = Vec::new();
    for round in 1..=rounds {
        for config in &configs {
            let f = measure(*config, round, &settings, &keys, cluster.as_ref()).await;
            println!(
                "| {} | {} | {} | {:.0} | {:.2} | {:.2} | {} | {:.0} | {:.2} | {:.2} | {} | {:.2}, {:.2}, {:.2} | {:.0}% |",
                f.round,
                f.config,
                f.issued,
                f.issuances_per_s,
                f.attest_p50_ms,
                f.attest_p99_ms,
                f.renewed,
                f.renewals_per_s,
                f.renew_p50_ms,
                f.renew_p99_ms,
                f.failed,
                f.authority_cpu_ms,
                f.postgres_cpu_ms,
                f.load_cpu_ms,
                f.others_cpu_percent,
            );
            if f.others_cpu_percent > 10.0 {
                println!(
                    "  (other processes used {:.0}% of the CPU meanwhile: this round's figures are low)",
                    f.others_cpu_percent
                );
            }
            all.push(f);
        }
    }

    // Per configuration: median (min–max) over the rounds, and the ratio
    // to SQLite in the same round.
    let baseline = |round: u64| {
        all.iter()
            .find(|f| f.round == round && f.config == Config::Sqlite.name())
    };
    println!();
    println!(
        "median (min–max) over {rounds} rounds; × SQLite: ratio to the SQLite figure of the same round"
    );
    println!();
    println!(
        "| configuration | issuances/s | × SQLite | renewals/s | × SQLite | renew p50 ms | renew p99 ms | authority CPU ms/cert | others' CPU |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    let mut summaries = Vec::new();
    for config in &configs {
        let mine: Vec<&Figures> = all.iter().filter(|f| f.config == config.name()).collect();
        let column = |get: fn(&Figures) -> f64| mine.iter().map(|f| get(f)).collect::<Vec<_>>();
        let ratio = |get: fn(&Figures) -> f64| {
            mine.iter()
                .filter_map(|f| baseline(f.round).map(|b| get(f) / get(b)))
                .collect::<Vec<_>>()
        };
        let issuance_ratio = ratio(|f| f.issuances_per_s);
        let renewal_ratio = ratio(|f| f.renewals_per_s);
        let show_ratio = |values: Vec<f64>| match values.is_empty() {
            true => "–".to_string(),
            false => summary_in(values, 2, "×"),
        };
        println!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            config.name(),
            summary(column(|f| f.issuances_per_s), 0),
            show_ratio(issuance_ratio.clone()),
            summary(column(|f| f.renewals_per_s), 0),
            show_ratio(renewal_ratio.clone()),
            summary(column(|f| f.renew_p50_ms), 2),
            summary(column(|f| f.renew_p99_ms), 2),
            summary(column(|f| f.authority_cpu_ms), 2),
            summary_in(column(|f| f.others_cpu_percent), 0, "%"),
        );
        summaries.push(serde_json::json!({
            "config": config.name(),
            "issuances_per_s": median_spread(column(|f| f.issuances_per_s)),
            "issuances_vs_sqlite": (!issuance_ratio.is_empty()).then(|| median_spread(issuance_ratio)),
            "renewals_per_s": median_spread(column(|f| f.renewals_per_s)),
            "renewals_vs_sqlite": (!renewal_ratio.is_empty()).then(|| median_spread(renewal_ratio)),
            "renew_p50_ms": median_spread(column(|f| f.renew_p50_ms)),
            "renew_p99_ms": median_spread(column(|f| f.renew_p99_ms)),
            "authority_cpu_ms_per_certificate": median_spread(column(|f| f.authority_cpu_ms)),
        }));
    }
    if let Ok(path) = std::env::var("ISSUANCE_JSON") {
        let json = serde_json::json!({
            "workers": settings.workers,
            "seconds_per_phase": seconds,
            "rounds": all,
            "summary (median, min, max)": summaries,
        });
        std::fs::write(&path, serde_json::to_string_pretty(&json).expect("JSON"))
            .unwrap_or_else(|e| panic!("ISSUANCE_JSON={path}: {e}"));
        println!();
        println!("written to {path}");
    }
}
