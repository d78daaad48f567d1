//! Reloading identity, trust and policy when their files change.
//!
//! Design bias: *the old state stays until the new one is whole*. Files are
//! polled (modification time, size, inode) twice a second rather than
//! watched with inotify: polling sees every way a file can be replaced
//! (in-place write, rename over, Kubernetes' symlink swap of a mounted
//! secret) with no edge cases, at a cost of a few `stat` calls. A change is
//! loaded and validated completely before it is swapped in; a bad edit is
//! logged and the previous identity or policy keeps serving.
//!
//! A policy file is loaded only once it is *settled*: replaced by a rename
//! (a new inode, as editors, `kubectl` and `mv` do) and unchanged for one
//! more poll, or — when written in place — unchanged for
//! [`IN_PLACE_SETTLE`]. A half-written file can parse (a rule cut before
//! its `http:` line is an L4 allow), so parsing is no proof of completeness.

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;

use std::path::PathBuf;

use super::tls::LocalIdentity;
use super::{Shared, load_policy};
use crate::identity::verify::TrustBundle;

const POLL_INTERVAL: Duration = Duration::from_millis(500);

/// How long a policy file written in place must stay unchanged before it
/// is loaded.
pub(super) const IN_PLACE_SETTLE: Duration = Duration::from_secs(3);

/// Identity files to watch (when the identity comes from files).
#[derive(Debug, Clone)]
pub(super) struct Watched {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub bundle: PathBuf,
    /// `identity.federated`: other trust domains' bundle files.
    pub federated: BTreeMap<String, PathBuf>,
    pub trust_domains: Vec<String>,
}

/// What identifies one version of a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    modified: i64,
    modified_nanos: i64,
    size: u64,
    inode: u64,
}

fn stamp(path: &Path) -> Option<Stamp> {
    // `metadata` follows symlinks, so a swapped symlink target shows.
    let meta = std::fs::metadata(path).ok()?;
    Some(Stamp {
        modified: meta.mtime(),
        modified_nanos: meta.mtime_nsec(),
        size: meta.size(),
        inode: meta.ino(),
    })
}

/// Polls until shutdown.
pub(super) async fn watch_files(
    shared: Arc<Shared>,
    policy: PathBuf,
    identity: Option<Watched>,
    identity_json: Arc<ArcSwap<serde_json::Value>>,
) {
    let identity_stamps = |f: &Option<Watched>| {
        f.as_ref().map(|f| {
            [&f.cert, &f.key, &f.bundle]
                .into_iter()
                .chain(f.federated.values())
                .map(|path| stamp(path))
                .collect::<Vec<_>>()
        })
    };
    let mut last_identity = identity_stamps(&identity);
    let mut last_policy = stamp(&policy);
    // The change seen but not loaded yet: its stamp, and since when.
    let mut pending_policy: Option<(Option<Stamp>, tokio::time::Instant)> = None;
    let shutdown = shared.shutdown_signal();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = tokio::time::sleep(POLL_INTERVAL) => {}
            () = &mut shutdown => return,
        }

        let now = identity_stamps(&identity);
        if now != last_identity {
            // Writers replace cert and key one after the other; give the
            // second a moment so we don't load a mismatched pair.
            tokio::time::sleep(Duration::from_millis(100)).await;
            last_identity = identity_stamps(&identity);
            if let Some(files) = &identity {
                reload_identity(&shared, files, &identity_json);
            }
        }

        let now = stamp(&policy);
        let settled = match pending_policy {
            _ if now == last_policy => {
                pending_policy = None;
                false
            }
            Some((seen, since)) if seen == now => {
                let renamed = now.map(|s| s.inode) != last_policy.map(|s| s.inode);
                renamed || since.elapsed() >= IN_PLACE_SETTLE
            }
            // New, or changed again since last seen: wait for it to settle.
            _ => {
                pending_policy = Some((now, tokio::time::Instant::now()));
                false
            }
        };
        if settled {
            pending_policy = None;
            last_policy = now;
            let trust_domains = shared.trust.bundle.load().trust_domains().to_vec();
            match load_policy(&policy, &trust_domains) {
                Ok(new_policy) => {
                    shared.policy.store(Arc::new(new_policy));
                    shared.authorization_changed();
                    tracing::info!(file = %policy.display(), "policy reloaded");
                }
                Err(e) => {
                    tracing::error!(error = %e, "policy reload refused; keeping the previous policy");
                }
            }
        }

        let expiry = shared.locals.soonest_not_after();
        shared
            .metrics
            .set_certificate_expiry(expiry - time::OffsetDateTime::now_utc().unix_timestamp());
    }
}

fn reload_identity(shared: &Shared, files: &Watched, identity_json: &ArcSwap<serde_json::Value>) {
    let bundle = TrustBundle::from_pem_file(&files.bundle, files.trust_domains.clone())
        .and_then(|bundle| bundle.with_federated_files(&files.federated));
    let bundle = match bundle {
        Ok(bundle) => bundle,
        Err(e) => {
            tracing::error!(error = %e, "trust bundle reload refused; keeping the previous one");
            return;
        }
    };
    let identity = match LocalIdentity::load(&files.cert, &files.key, &bundle) {
        Ok(identity) => identity,
        Err(e) => {
            tracing::error!(error = %e, "certificate reload refused; keeping the previous one");
            return;
        }
    };
    tracing::info!(id = %identity.id, "certificate reloaded");
    shared.trust.bundle.store(Arc::new(bundle));
    shared.locals.own().tls.identity.store(Arc::new(identity));
    identity_json.store(Arc::new(shared.locals.admin_json()));
}
