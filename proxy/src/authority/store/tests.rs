//! The store's tests, each run against both backends: SQLite in a temp dir,
//! and a fresh database in a throw-away PostgreSQL cluster (one per test
//! binary, `tests/support/postgres.rs`). Without PostgreSQL installed the
//! PostgreSQL runs are skipped with a printed reason (never under CI).

use super::*;

#[path = "../../../../tests/support/postgres.rs"]
mod cluster;

/// One backend, on a database of its own.
struct Backend {
    name: &'static str,
    database: Database,
    _dir: tempfile::TempDir,
}

impl Backend {
    fn open(&self) -> Store {
        Store::open_database(&self.database).unwrap_or_else(|e| panic!("{}: open: {e}", self.name))
    }
}

fn backends() -> Vec<Backend> {
    let dir = tempfile::tempdir().unwrap();
    let mut all = vec![Backend {
        name: "sqlite",
        database: Database::Sqlite(dir.path().to_path_buf()),
        _dir: dir,
    }];
    if let Some(cluster) = cluster::Postgres::shared() {
        let url = cluster.create_database("store");
        all.push(Backend {
            name: "postgres",
            database: Database::Postgres(DatabaseUrl::parse(&url).unwrap()),
            _dir: tempfile::tempdir().unwrap(),
        });
    }
    all
}

fn registration(id: &str) -> Registration {
    Registration {
        id: id.into(),
        labels: BTreeMap::from([("app".into(), "web".into())]),
        image_digest: Some(format!("sha256:{}", "a".repeat(64))),
        cloud_match: BTreeMap::new(),
    }
}

#[test]
fn a_token_is_redeemed_once_and_expires() {
    for backend in backends() {
        let mut store = backend.open();
        store.register(&registration("spiffe://td/web"), 0).unwrap();
        store.add_token("h1", "spiffe://td/web", 100).unwrap();
        store.add_token("h2", "spiffe://td/web", 100).unwrap();
        assert_eq!(
            store.redeem_token("h1", 50).unwrap(),
            Redemption::Redeemed {
                id: "spiffe://td/web".into()
            },
            "{}",
            backend.name
        );
        assert_eq!(
            store.redeem_token("h1", 51).unwrap(),
            Redemption::AlreadyUsed,
            "{}",
            backend.name
        );
        assert_eq!(
            store.redeem_token("h2", 100).unwrap(),
            Redemption::Expired,
            "{}",
            backend.name
        );
        assert_eq!(
            store.redeem_token("nope", 1).unwrap(),
            Redemption::Unknown,
            "{}",
            backend.name
        );
    }
}

#[test]
fn concurrent_redemptions_have_exactly_one_winner() {
    for backend in backends() {
        {
            let mut store = backend.open();
            store.register(&registration("spiffe://td/web"), 0).unwrap();
            store.add_token("h", "spiffe://td/web", i64::MAX).unwrap();
        }
        let outcomes: Vec<Redemption> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..16)
                .map(|_| {
                    scope.spawn(|| {
                        let mut store = backend.open();
                        store.redeem_token("h", 1).unwrap()
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let winners = outcomes
            .iter()
            .filter(|o| matches!(o, Redemption::Redeemed { .. }))
            .count();
        assert_eq!(winners, 1, "{}: {outcomes:?}", backend.name);
        assert_eq!(
            outcomes
                .iter()
                .filter(|o| **o == Redemption::AlreadyUsed)
                .count(),
            15,
            "{}: {outcomes:?}",
            backend.name
        );
    }
}

#[test]
fn newest_scan_wins_and_state_survives_reopen() {
    for backend in backends() {
        let digest = format!("sha256:{}", "a".repeat(64));
        let vulns = |critical, report: &str| Vulns {
            critical,
            scanner: "trivy".into(),
            report: report.into(),
            ..Vulns::default()
        };
        {
            let mut store = backend.open();
            store
                .import_scan(&digest, &vulns(0, "sha256:1"), 10)
                .unwrap();
            store
                .import_scan(&digest, &vulns(3, "sha256:2"), 20)
                .unwrap();
            // Same second: the later import wins.
            store
                .import_scan(&digest, &vulns(5, "sha256:3"), 20)
                .unwrap();
            store.revoke("spiffe://td/bad", 5).unwrap();
        }
        let mut store = backend.open();
        assert_eq!(
            store.latest_scan(&digest).unwrap().unwrap().vulns.critical,
            5,
            "{}",
            backend.name
        );
        assert!(store.is_revoked("spiffe://td/bad").unwrap());
        assert!(!store.is_revoked("spiffe://td/good").unwrap());
        assert_eq!(
            store.revoked().unwrap(),
            vec!["spiffe://td/bad".to_string()]
        );
        assert!(
            !store.revoke("spiffe://td/bad", 6).unwrap(),
            "{}: already revoked",
            backend.name
        );
    }
}

#[test]
fn a_k8s_token_is_redeemed_once_and_forgotten_after_it_expires() {
    for backend in backends() {
        let mut store = backend.open();
        let id = "spiffe://td/ns/shop/sa/web";
        assert!(store.redeem_k8s_token("jti:a", id, 1000, 400).unwrap());
        assert!(!store.redeem_k8s_token("jti:a", id, 1000, 401).unwrap());
        assert!(store.redeem_k8s_token("jti:b", id, 1000, 402).unwrap());
        // Long after both expired, a redemption prunes them: `jti:a` is
        // forgotten (it is refused as expired before reaching the store),
        // while the fresh `jti:c` is remembered.
        assert!(store.redeem_k8s_token("jti:c", id, 5000, 4000).unwrap());
        assert!(
            store.redeem_k8s_token("jti:a", id, 1000, 4001).unwrap(),
            "{}: pruned",
            backend.name
        );
        assert!(!store.redeem_k8s_token("jti:c", id, 5000, 4002).unwrap());
    }
}

#[test]
fn cloud_registrations_match_on_all_facts() {
    for backend in backends() {
        let mut store = backend.open();
        let mut aws = registration("spiffe://td/vm");
        aws.cloud_match = BTreeMap::from([
            ("provider".into(), "aws".into()),
            ("account".into(), "123".into()),
            ("region".into(), "ap-southeast-2".into()),
        ]);
        store.register(&aws, 0).unwrap();
        store.register(&registration("spiffe://td/web"), 0).unwrap();
        let mut facts = BTreeMap::from([
            ("provider".to_string(), "aws".to_string()),
            ("account".to_string(), "123".to_string()),
            ("region".to_string(), "ap-southeast-2".to_string()),
            ("zone".to_string(), "ap-southeast-2a".to_string()),
        ]);
        assert_eq!(
            store.registrations_matching_cloud(&facts).unwrap(),
            vec![aws.clone()],
            "{}",
            backend.name
        );
        facts.insert("region".into(), "us-east-1".into());
        assert!(
            store
                .registrations_matching_cloud(&facts)
                .unwrap()
                .is_empty()
        );
        // Re-registering replaces: the instance claims and the rest stay.
        assert!(store.claim_instance("aws/123/i-1", &aws.id, 1).unwrap());
        assert!(!store.claim_instance("aws/123/i-1", &aws.id, 2).unwrap());
        store.register(&registration("spiffe://td/vm"), 3).unwrap();
        assert_eq!(
            store.registration("spiffe://td/vm").unwrap(),
            Some(registration("spiffe://td/vm"))
        );
        assert!(!store.claim_instance("aws/123/i-1", &aws.id, 4).unwrap());
    }
}

/// The cloud signs identity documents for every customer's instances: a
/// registration that names no customer (an AWS account, a GCP project)
/// would be met by anyone's instance. `register` refuses it; one stored
/// before is never matched.
#[test]
fn a_cloud_match_that_names_no_customer_matches_no_instance() {
    let facts = BTreeMap::from([
        ("provider".to_string(), "aws".to_string()),
        ("account".to_string(), "999999999999".to_string()),
        ("region".to_string(), "us-east-1".to_string()),
        ("image".to_string(), "ami-0golden".to_string()),
    ]);
    let with = |pairs: &[(&str, &str)]| {
        let mut r = registration("spiffe://td/vm/billing");
        r.cloud_match = pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        r
    };
    for (pairs, problem) in [
        (
            &[("provider", "aws"), ("image", "ami-0golden")][..],
            "no account",
        ),
        (
            &[("provider", "gcp"), ("region", "us-east-1")][..],
            "no project",
        ),
        (&[("image", "ami-0golden")][..], "no provider"),
        (
            &[("provider", "azure"), ("account", "1")][..],
            "provider `azure`",
        ),
    ] {
        let unsafe_match = with(pairs);
        let why = unsafe_match.cloud_match_problem().expect("refused");
        assert!(why.contains(problem), "{pairs:?}: {why}");
        for backend in backends() {
            let mut store = backend.open();
            store.register(&unsafe_match, 0).unwrap();
            let found = store.registrations_matching_cloud(&facts).unwrap();
            assert!(found.is_empty(), "{}: {pairs:?} matched", backend.name);
        }
    }
    for fine in [
        &[("provider", "aws"), ("account", "999999999999")][..],
        &[("provider", "gcp"), ("project", "p")][..],
        &[("provider", "kubernetes")][..],
        &[][..],
    ] {
        assert_eq!(with(fine).cloud_match_problem(), None, "{fine:?}");
    }
}

#[test]
fn issued_serials_are_recorded() {
    for backend in backends() {
        let mut store = backend.open();
        assert!(!store.was_issued("0a").unwrap());
        store
            .record_issued("0a", "spiffe://td/web", 100, "join_token", 1)
            .unwrap();
        store
            .record_issued("0b", "spiffe://td/web", 100, "join_token", 2)
            .unwrap();
        assert!(store.was_issued("0a").unwrap(), "{}", backend.name);
        assert_eq!(store.issued_count("spiffe://td/web").unwrap(), 2);
        assert_eq!(store.issued_count("spiffe://td/api").unwrap(), 0);
        // A serial is recorded once.
        assert!(
            store
                .record_issued("0a", "spiffe://td/web", 100, "join_token", 3)
                .is_err()
        );
    }
}

/// Why a transaction below gave up.
#[derive(Debug)]
enum Stop {
    #[allow(dead_code)] // shown by Debug when a test fails
    Store(StoreError),
    Refused,
}

impl From<StoreError> for Stop {
    fn from(error: StoreError) -> Self {
        Stop::Store(error)
    }
}

#[test]
fn a_failed_transaction_leaves_nothing_behind() {
    for backend in backends() {
        let mut store = backend.open();
        store.register(&registration("spiffe://td/web"), 0).unwrap();
        store.add_token("h", "spiffe://td/web", i64::MAX).unwrap();
        // The token is consumed, a certificate recorded, then the caller
        // refuses: all of it is rolled back.
        let result: Result<(), Stop> = store.transaction(|tx| {
            assert!(matches!(
                tx.redeem_token("h", 1)?,
                Redemption::Redeemed { .. }
            ));
            tx.record_issued("0c", "spiffe://td/web", 100, "join_token", 1)?;
            tx.revoke("spiffe://td/web", 1)?;
            Err(Stop::Refused)
        });
        assert!(matches!(result, Err(Stop::Refused)), "{}", backend.name);
        assert!(!store.was_issued("0c").unwrap(), "{}", backend.name);
        assert!(!store.is_revoked("spiffe://td/web").unwrap());
        assert!(matches!(
            store.redeem_token("h", 2).unwrap(),
            Redemption::Redeemed { .. }
        ));
    }
}

/// Read-then-write transactions from many connections at once, each
/// recording a certificate only while fewer than `LIMIT` exist (a
/// write-skew pattern: no unique key stops the extra ones). Only a
/// serializable execution stops at exactly `LIMIT`; on PostgreSQL that
/// takes re-running the transactions aborted as conflicting.
#[test]
fn concurrent_read_then_write_transactions_are_serializable() {
    const WRITERS: usize = 12;
    const LIMIT: u64 = 5;
    for backend in backends() {
        let recorded: Vec<bool> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..WRITERS)
                .map(|writer| {
                    let backend = &backend;
                    scope.spawn(move || {
                        let mut store = backend.open();
                        store
                            .transaction(|tx| {
                                if tx.issued_count("spiffe://td/web")? >= LIMIT {
                                    return Ok::<_, StoreError>(false);
                                }
                                // Give the others time to read the same count.
                                std::thread::sleep(std::time::Duration::from_millis(20));
                                let serial = format!("{writer:02x}");
                                tx.record_issued(&serial, "spiffe://td/web", 100, "test", 1)?;
                                Ok(true)
                            })
                            .unwrap_or_else(|e| panic!("{}: {e}", backend.name))
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let mut store = backend.open();
        assert_eq!(
            store.issued_count("spiffe://td/web").unwrap(),
            LIMIT,
            "{}: {recorded:?}",
            backend.name
        );
        assert_eq!(
            recorded.iter().filter(|r| **r).count() as u64,
            LIMIT,
            "{}",
            backend.name
        );
    }
}

/// A database migrated by a newer appid is refused at open, naming the
/// versions.
#[test]
fn a_newer_schema_is_refused() {
    for backend in backends() {
        drop(backend.open());
        match &backend.database {
            Database::Sqlite(dir) => {
                let conn = rusqlite::Connection::open(dir.join(DB_FILE)).unwrap();
                conn.pragma_update(None, "user_version", 99).unwrap();
            }
            Database::Postgres(url) => {
                let mut client = url.config_for_tests().connect(::postgres::NoTls).unwrap();
                client
                    .execute(
                        "INSERT INTO appid_schema_migrations VALUES (99, 'future', 0)",
                        &[],
                    )
                    .unwrap();
            }
        }
        let error = Store::open_database(&backend.database)
            .err()
            .unwrap_or_else(|| panic!("{}: opened a newer schema", backend.name))
            .to_string();
        assert!(
            error.contains("schema version 99") && error.contains("(1)"),
            "{}: {error}",
            backend.name
        );
    }
}

/// Replicas starting at once on an empty database: every one opens, and
/// each migration is applied once.
#[test]
fn concurrent_opens_migrate_once() {
    let Some(cluster) = cluster::Postgres::shared() else {
        return;
    };
    let url = cluster.create_database("migrate");
    let database = Database::Postgres(DatabaseUrl::parse(&url).unwrap());
    std::thread::scope(|scope| {
        let handles: Vec<_> = (0..8)
            .map(|_| scope.spawn(|| Store::open_database(&database).map(drop)))
            .collect();
        for handle in handles {
            handle.join().unwrap().expect("a concurrent open");
        }
    });
    let mut client = ::postgres::Client::connect(&url, ::postgres::NoTls).unwrap();
    let rows = client
        .query("SELECT version FROM appid_schema_migrations", &[])
        .unwrap();
    assert_eq!(rows.len(), 1);
}

/// An unreachable database is a clear error naming the flag, without the
/// password.
#[test]
fn an_unreachable_database_names_the_flag() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = DatabaseUrl::parse(&format!(
        "postgres://appid:s3cret@127.0.0.1:{port}/appid?connect_timeout=2"
    ))
    .unwrap();
    let error = Store::open_database(&Database::Postgres(url))
        .err()
        .expect("nothing listens there")
        .to_string();
    assert!(
        error.starts_with(&format!(
            "--database postgres://appid:***@127.0.0.1:{port}/appid"
        )),
        "{error}"
    );
    assert!(error.contains("cannot connect"), "{error}");
    assert!(!error.contains("s3cret"), "{error}");
}
