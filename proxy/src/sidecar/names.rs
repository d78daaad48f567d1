//! Where a host outside the mesh is, by the name the app gave.
//!
//! An app allowed out by name (`external.hosts`) has resolved that name
//! itself and dialled an address; the sidecar resolves it again, as the
//! app would (the system resolver: the pod's `/etc/hosts` and DNS), to
//! check that the address belongs to the name, and sends the connection
//! where the name resolves when it does not (an app can send any name to
//! any address).
//!
//! Design bias: *confirm from memory, move a connection only on a fresh
//! answer*. Resolving every connection again doubled the app's DNS
//! traffic and, in a Kubernetes pod (`ndots: 5` tries each search domain
//! first), cost several round trips to the cluster's DNS before each
//! egress connection could start. So what a name resolved to is kept
//! for [`KEPT_FOR`] (Envoy's DNS cache refreshes every 5 s too), and a
//! connection to an address the name resolved to that recently goes
//! ahead without a lookup. A connection to any other address is never
//! sent elsewhere on a kept answer: the name is resolved afresh (a DNS
//! change the app saw before we did must not send its connection to the
//! old address), and that answer is kept instead (of two lookups of one
//! name under way at once, the later one's, whichever ends last). Failed
//! lookups are not kept. At most [`MAX_NAME_LOOKUPS`] lookups run at once, and at most
//! [`MAX_KEPT`] names are kept.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs as _};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Semaphore;
use tokio::time::Instant;

/// Name lookups under way at once, per sidecar. Each holds a thread of
/// the blocking pool until the system resolver answers, whatever our own
/// timeout, so an app opening connections to names that never resolve
/// could otherwise tie up hundreds of threads.
pub const MAX_NAME_LOOKUPS: usize = 16;

/// How long what a name resolved to confirms a connection without a new
/// lookup.
pub const KEPT_FOR: Duration = Duration::from_secs(5);

/// Names kept at once; past it, expired answers go first, then the one
/// closest to expiring.
pub const MAX_KEPT: usize = 1024;

/// Resolves a name to its addresses (blocking).
type Resolver = Arc<dyn Fn(&str) -> io::Result<Vec<IpAddr>> + Send + Sync>;

/// The addresses of external hosts by name: lookups bounded in number,
/// recent answers kept.
pub struct Names {
    lookups: Arc<Semaphore>,
    kept: Mutex<HashMap<String, Kept>>,
    resolve: Resolver,
}

/// What a name resolved to, and until when it confirms a connection.
struct Kept {
    addresses: Arc<[IpAddr]>,
    /// When the lookup that answered began: of two lookups of one name
    /// under way at once, the later one's answer is kept, whichever ends
    /// last.
    asked: Instant,
    until: Instant,
}

impl Default for Names {
    fn default() -> Self {
        Names::with_resolver(MAX_NAME_LOOKUPS, Arc::new(system_resolver))
    }
}

impl Names {
    fn with_resolver(lookups: usize, resolve: Resolver) -> Names {
        Names {
            lookups: Arc::new(Semaphore::new(lookups)),
            kept: Mutex::new(HashMap::new()),
            resolve,
        }
    }

    /// Where a connection allowed by `name` goes: the address the app
    /// dialled when `name` resolves to it (an honest app: nothing changes),
    /// else the first address `name` resolves to in the dialled address's
    /// family (else the first), on the port the app dialled. `name` is
    /// normalized as rules see it. A lookup, when one is needed, must
    /// finish within `limit` in all (waiting for a lookup slot included).
    pub async fn address_of(
        &self,
        name: &str,
        dialled: SocketAddr,
        limit: Duration,
    ) -> Result<SocketAddr, String> {
        let name = appid_policy::policy::normalize_host(name).to_string();
        let same = |ip: &IpAddr| ip.to_canonical() == dialled.ip().to_canonical();
        if self.kept(&name).is_some_and(|kept| kept.iter().any(same)) {
            return Ok(dialled);
        }
        let asked = Instant::now();
        let resolved = self.lookup(&name, limit).await?;
        self.keep(&name, resolved.clone(), asked);
        if resolved.iter().any(same) {
            return Ok(dialled);
        }
        // The dialled address's family first: an IPv4-only app's connection
        // must not go to an IPv6 address it could not have dialled.
        let family = |ip: &&IpAddr| ip.is_ipv4() == dialled.ip().to_canonical().is_ipv4();
        resolved
            .iter()
            .find(family)
            .or(resolved.first())
            .map(|ip| SocketAddr::new(*ip, dialled.port()))
            .ok_or_else(|| format!("external host {name} resolved to no address"))
    }

    /// A fresh answer for `name`, within `limit`.
    async fn lookup(&self, name: &str, limit: Duration) -> Result<Arc<[IpAddr]>, String> {
        let lookup = async {
            let permit = self.lookups.clone().acquire_owned().await.ok()?;
            let resolve = self.resolve.clone();
            let owned = name.to_string();
            let resolved = tokio::task::spawn_blocking(move || {
                let _held = permit;
                resolve(&owned)
            });
            resolved.await.ok()
        };
        match tokio::time::timeout(limit, lookup).await {
            Ok(Some(Ok(resolved))) => Ok(resolved.into()),
            Ok(Some(Err(e))) => Err(format!("external host {name} did not resolve: {e}")),
            Ok(None) | Err(_) => Err(format!(
                "external host {name} did not resolve within {limit:?}"
            )),
        }
    }

    /// What `name` resolved to within [`KEPT_FOR`], if anything.
    fn kept(&self, name: &str) -> Option<Arc<[IpAddr]>> {
        let kept = lock(&self.kept);
        kept.get(name)
            .filter(|kept| kept.until > Instant::now())
            .map(|kept| kept.addresses.clone())
    }

    /// Keeps `addresses`, the answer of a lookup begun at `asked`, as
    /// `name`'s, unless a later lookup's answer is kept already; makes room
    /// if need be.
    fn keep(&self, name: &str, addresses: Arc<[IpAddr]>, asked: Instant) {
        let now = Instant::now();
        let mut kept = lock(&self.kept);
        if kept.get(name).is_some_and(|kept| kept.asked > asked) {
            return;
        }
        if kept.len() >= MAX_KEPT && !kept.contains_key(name) {
            kept.retain(|_, kept| kept.until > now);
            if kept.len() >= MAX_KEPT {
                let soonest = kept
                    .iter()
                    .min_by_key(|(_, kept)| kept.until)
                    .map(|(name, _)| name.clone());
                if let Some(soonest) = soonest {
                    kept.remove(&soonest);
                }
            }
        }
        kept.insert(
            name.to_string(),
            Kept {
                addresses,
                asked,
                until: asked + KEPT_FOR,
            },
        );
    }
}

/// The system resolver, as the app uses it (`getaddrinfo`).
fn system_resolver(name: &str) -> io::Result<Vec<IpAddr>> {
    Ok((name, 0)
        .to_socket_addrs()?
        .map(|address| address.ip())
        .collect())
}

/// The lock, even if a panic elsewhere poisoned it (the map stays sound:
/// every change is one insert or remove).
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    const LIMIT: Duration = Duration::from_secs(2);

    /// Names served from a table that a test changes, counting lookups.
    struct Table {
        answers: Mutex<HashMap<String, Vec<IpAddr>>>,
        lookups: AtomicUsize,
    }

    impl Table {
        fn new(entries: &[(&str, &[&str])]) -> Arc<Table> {
            let table = Arc::new(Table {
                answers: Mutex::new(HashMap::new()),
                lookups: AtomicUsize::new(0),
            });
            for (name, addresses) in entries {
                table.set(name, addresses);
            }
            table
        }

        fn set(&self, name: &str, addresses: &[&str]) {
            let addresses = addresses.iter().map(|a| a.parse().unwrap()).collect();
            lock(&self.answers).insert(name.to_string(), addresses);
        }

        fn names(self: &Arc<Table>) -> Names {
            let table = self.clone();
            Names::with_resolver(
                MAX_NAME_LOOKUPS,
                Arc::new(move |name: &str| {
                    table.lookups.fetch_add(1, Ordering::SeqCst);
                    lock(&table.answers)
                        .get(name)
                        .cloned()
                        .ok_or_else(|| io::Error::other("no such name"))
                }),
            )
        }

        fn lookups(&self) -> usize {
            self.lookups.load(Ordering::SeqCst)
        }
    }

    fn at(address: &str) -> SocketAddr {
        address.parse().unwrap()
    }

    #[tokio::test]
    async fn the_system_resolver_answers_as_the_app_would() {
        let names = Names::default();
        let dialled = at("127.0.0.1:8080");
        assert_eq!(
            names.address_of("localhost", dialled, LIMIT).await,
            Ok(dialled)
        );
        assert_eq!(
            names.address_of("LOCALHOST.:8080", dialled, LIMIT).await,
            Ok(dialled),
            "the name as rules see it"
        );
        let elsewhere = at("192.0.2.20:8080");
        let to = names
            .address_of("localhost", elsewhere, LIMIT)
            .await
            .unwrap();
        assert!(to.ip().is_loopback() && to.port() == 8080, "{to}");
        let error = names
            .address_of("no-such-host.invalid", elsewhere, LIMIT)
            .await
            .unwrap_err();
        assert!(error.contains("no-such-host.invalid"), "{error}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_recent_answer_confirms_a_connection_without_a_lookup() {
        let table = Table::new(&[("api.example.com", &["192.0.2.1", "2001:db8::1"])]);
        let names = table.names();
        let dialled = at("192.0.2.1:443");
        for _ in 0..3 {
            assert_eq!(
                names.address_of("api.example.com", dialled, LIMIT).await,
                Ok(dialled)
            );
        }
        assert_eq!(table.lookups(), 1, "one lookup for three connections");
        // The other address of the same answer: confirmed from memory too.
        let v6 = at("[2001:db8::1]:443");
        assert_eq!(names.address_of("api.example.com", v6, LIMIT).await, Ok(v6));
        assert_eq!(table.lookups(), 1);
        // Past KEPT_FOR, the name is looked up again.
        tokio::time::advance(KEPT_FOR).await;
        assert_eq!(
            names.address_of("api.example.com", dialled, LIMIT).await,
            Ok(dialled)
        );
        assert_eq!(table.lookups(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn an_address_the_kept_answer_lacks_is_checked_afresh() {
        let table = Table::new(&[("api.example.com", &["192.0.2.1"])]);
        let names = table.names();
        assert!(
            names
                .address_of("api.example.com", at("192.0.2.1:443"), LIMIT)
                .await
                .is_ok()
        );
        // DNS moved the name, and the app saw it first: its connection to
        // the new address goes ahead, never to the old one.
        table.set("api.example.com", &["192.0.2.2"]);
        let moved = at("192.0.2.2:443");
        assert_eq!(
            names.address_of("api.example.com", moved, LIMIT).await,
            Ok(moved)
        );
        assert_eq!(table.lookups(), 2);
        // The fresh answer is the one kept: the old address is no longer
        // the name's, so a connection to it goes where the name is now.
        assert_eq!(
            names
                .address_of("api.example.com", at("192.0.2.1:443"), LIMIT)
                .await,
            Ok(moved)
        );
        assert_eq!(table.lookups(), 3, "an address not in the answer: afresh");
    }

    #[tokio::test(start_paused = true)]
    async fn an_address_elsewhere_goes_where_the_name_is_in_its_family() {
        let table = Table::new(&[("api.example.com", &["2001:db8::1", "192.0.2.1"])]);
        let names = table.names();
        assert_eq!(
            names
                .address_of("api.example.com", at("198.51.100.7:8443"), LIMIT)
                .await,
            Ok(at("192.0.2.1:8443")),
            "an IPv4 app's connection stays IPv4"
        );
        let only_v6 = Table::new(&[("v6.example.com", &["2001:db8::1"])]);
        assert_eq!(
            only_v6
                .names()
                .address_of("v6.example.com", at("198.51.100.7:80"), LIMIT)
                .await,
            Ok(at("[2001:db8::1]:80")),
            "else the first address"
        );
        let empty = Table::new(&[("nothing.example.com", &[])]);
        let error = empty
            .names()
            .address_of("nothing.example.com", at("198.51.100.7:80"), LIMIT)
            .await
            .unwrap_err();
        assert!(error.contains("resolved to no address"), "{error}");
    }

    #[tokio::test(start_paused = true)]
    async fn failed_lookups_are_not_kept() {
        let table = Table::new(&[]);
        let names = table.names();
        let dialled = at("192.0.2.1:443");
        for _ in 0..2 {
            let error = names
                .address_of("late.example.com", dialled, LIMIT)
                .await
                .unwrap_err();
            assert!(error.contains("did not resolve"), "{error}");
        }
        assert_eq!(table.lookups(), 2);
        table.set("late.example.com", &["192.0.2.1"]);
        assert_eq!(
            names.address_of("late.example.com", dialled, LIMIT).await,
            Ok(dialled)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn at_most_max_kept_names_are_kept() {
        let table = Table::new(&[]);
        let names = table.names();
        let dialled = at("192.0.2.1:443");
        for i in 0..MAX_KEPT + 10 {
            let name = format!("n{i}.example.com");
            table.set(&name, &["192.0.2.1"]);
            names.address_of(&name, dialled, LIMIT).await.unwrap();
            tokio::time::advance(Duration::from_millis(1)).await;
        }
        assert_eq!(lock(&names.kept).len(), MAX_KEPT);
        // The first names (closest to expiring) made room; the last are kept.
        let before = table.lookups();
        let last = format!("n{}.example.com", MAX_KEPT + 9);
        names.address_of(&last, dialled, LIMIT).await.unwrap();
        assert_eq!(table.lookups(), before, "the newest name is kept");
        names
            .address_of("n0.example.com", dialled, LIMIT)
            .await
            .unwrap();
        assert_eq!(table.lookups(), before + 1, "the oldest made room");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn of_two_lookups_at_once_the_later_answer_is_kept() {
        let table = Table::new(&[("api.example.com", &["192.0.2.1"])]);
        // The first lookup answers what the table says when it starts,
        // then waits to be let go.
        let (release, gate) = std::sync::mpsc::channel::<()>();
        let gate = Mutex::new(Some(gate));
        let names = Arc::new(Names::with_resolver(MAX_NAME_LOOKUPS, {
            let table = table.clone();
            Arc::new(move |name: &str| {
                table.lookups.fetch_add(1, Ordering::SeqCst);
                let answer = lock(&table.answers).get(name).cloned().unwrap_or_default();
                let first = lock(&gate).take();
                if let Some(gate) = first {
                    let _ = gate.recv();
                }
                Ok(answer)
            })
        }));
        let first = tokio::spawn({
            let names = names.clone();
            async move {
                names
                    .address_of("api.example.com", at("198.51.100.9:443"), LIMIT)
                    .await
            }
        });
        while table.lookups() < 1 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        // DNS moved; a lookup begun later answers first and is kept.
        table.set("api.example.com", &["192.0.2.2"]);
        let moved = at("192.0.2.2:443");
        assert_eq!(
            names.address_of("api.example.com", moved, LIMIT).await,
            Ok(moved)
        );
        release.send(()).unwrap();
        assert_eq!(
            first.await.unwrap(),
            Ok(at("192.0.2.1:443")),
            "its own answer"
        );
        // The older answer, ending last, did not replace the newer one: the
        // old address is not confirmed from memory.
        assert_eq!(
            names
                .address_of("api.example.com", at("192.0.2.1:443"), LIMIT)
                .await,
            Ok(moved)
        );
        assert_eq!(table.lookups(), 3);
    }

    #[tokio::test]
    async fn with_every_lookup_slot_taken_none_starts_and_the_limit_holds() {
        let table = Table::new(&[("api.example.com", &["192.0.2.1"])]);
        let names = Names::with_resolver(0, {
            let table = table.clone();
            Arc::new(move |_: &str| {
                table.lookups.fetch_add(1, Ordering::SeqCst);
                Ok(vec![])
            })
        });
        let error = names
            .address_of(
                "api.example.com",
                at("192.0.2.1:443"),
                Duration::from_millis(50),
            )
            .await
            .unwrap_err();
        assert!(error.contains("within"), "{error}");
        assert_eq!(table.lookups(), 0);
    }
}
