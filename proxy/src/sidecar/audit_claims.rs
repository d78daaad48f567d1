//! The `claims` object of an audit line, encoded once per thread for each
//! rule and pair of identities rather than once per line.
//!
//! Design bias: *what cannot change between two requests is not worked out
//! again for the second*. An audit line shows the attributes the deciding
//! rule looked at and their values (`{"from.labels.app":"web",...}`).
//! Working that out means walking the claims JSON once per attribute path
//! and encoding what was found: about 2 800 of the 9 300 instructions a
//! sidecar spent authorizing and auditing an HTTP/1.1 request
//! (`bench/e2e/instructions.sh`). Yet the object is a function of exactly:
//!
//! - the deciding rule, which names the paths (immutable while its policy
//!   lives);
//! - the direction, which says which side is the peer and which is us;
//! - the peer's claims and our own, which hold the values (immutable
//!   behind their `Arc`s; a renewal or a new peer is a new `Arc`).
//!
//! So each data-plane thread keeps the last [`ENTRIES`] objects it encoded
//! under that key. A thread of its own needs no lock; the few keys a
//! sidecar meets (its rules × its peers) fit, and a key not found is
//! encoded as before. The key holds the policy and the claims by `Weak`
//! reference: their allocations then outlive the entry, so no other policy
//! or claims can take their addresses while it lives, and two keys with the
//! same addresses are the same objects (without the `Weak`, a policy freed
//! by a reload and a new one at its address would reuse a stale object).
//! Nothing is held alive beyond that memory, and nothing per connection.

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::{Arc, Weak};

use appid_policy::AppIdClaims;
use appid_policy::policy::{Direction, Policy};

/// Objects kept per thread.
pub const ENTRIES: usize = 16;

/// What an audit line's `claims` object is a function of (module doc).
pub struct Key<'a> {
    pub policy: &'a Arc<Policy>,
    /// [`appid_policy::Decision::rule_identity`].
    pub rule: usize,
    pub direction: Direction,
    /// `None` for a caller or destination outside the mesh: nothing is read
    /// from its side.
    pub peer: Option<&'a Arc<AppIdClaims>>,
    pub local: &'a Arc<AppIdClaims>,
}

struct Entry {
    policy: Weak<Policy>,
    rule: usize,
    direction: Direction,
    peer: Option<Weak<AppIdClaims>>,
    local: Weak<AppIdClaims>,
    json: Rc<[u8]>,
}

impl Entry {
    fn is_for(&self, key: &Key<'_>) -> bool {
        self.rule == key.rule
            && self.direction == key.direction
            && std::ptr::eq(self.policy.as_ptr(), Arc::as_ptr(key.policy))
            && std::ptr::eq(self.local.as_ptr(), Arc::as_ptr(key.local))
            && match (&self.peer, key.peer) {
                (Some(kept), Some(peer)) => std::ptr::eq(kept.as_ptr(), Arc::as_ptr(peer)),
                (None, None) => true,
                _ => false,
            }
    }
}

#[derive(Default)]
struct Cache {
    entries: Vec<Entry>,
    /// The entry replaced next once all [`ENTRIES`] are taken.
    next: usize,
}

thread_local! {
    static CACHE: RefCell<Cache> = RefCell::default();
}

/// The object for `key`: kept from an earlier line on this thread, or
/// written now by `encode` (and kept). `None` if `encode` fails (nothing is
/// kept then).
pub fn claims_json(
    key: &Key<'_>,
    encode: impl FnOnce(&mut Vec<u8>) -> serde_json::Result<()>,
) -> Option<Rc<[u8]>> {
    // A thread whose locals are being torn down has no cache: made, not kept.
    let found = CACHE.try_with(|cache| {
        cache
            .borrow()
            .entries
            .iter()
            .find(|entry| entry.is_for(key))
            .map(|entry| entry.json.clone())
    });
    if let Ok(Some(json)) = found {
        return Some(json);
    }
    let mut json = Vec::new();
    encode(&mut json).ok()?;
    let json: Rc<[u8]> = json.into();
    let entry = Entry {
        policy: Arc::downgrade(key.policy),
        rule: key.rule,
        direction: key.direction,
        peer: key.peer.map(Arc::downgrade),
        local: Arc::downgrade(key.local),
        json: json.clone(),
    };
    let _ = CACHE.try_with(|cache| {
        let mut cache = cache.borrow_mut();
        if cache.entries.len() < ENTRIES {
            cache.entries.push(entry);
        } else {
            let slot = cache.next;
            cache.entries[slot] = entry;
            cache.next = (slot + 1) % ENTRIES;
        }
    });
    Some(json)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    fn policy(rule: &str) -> Arc<Policy> {
        let yaml = format!(
            "version: 1\nrules:\n  - name: {rule}\n    action: allow\n    from: {{ labels.app: web }}\n"
        );
        Arc::new(Policy::load("policy.yaml", &yaml).unwrap())
    }

    fn claims(id: &str) -> Arc<AppIdClaims> {
        Arc::new(AppIdClaims::new(id, "manual"))
    }

    /// Looks `key` up, counting encodings in `encoded`; the object written
    /// is `tag`.
    fn get(key: &Key<'_>, encoded: &Cell<u32>, tag: &str) -> Vec<u8> {
        claims_json(key, |buf| {
            encoded.set(encoded.get() + 1);
            buf.extend_from_slice(tag.as_bytes());
            Ok(())
        })
        .unwrap()
        .to_vec()
    }

    #[test]
    fn an_object_is_encoded_once_per_key() {
        // Each test runs on a thread of its own: a cache of its own.
        let (p, q) = (policy("a"), policy("a"));
        let (peer, other_peer, local) = (
            claims("spiffe://t/p"),
            claims("spiffe://t/p"),
            claims("spiffe://t/l"),
        );
        let encoded = Cell::new(0);
        let key = |policy, rule, direction, peer, local| Key {
            policy,
            rule,
            direction,
            peer,
            local,
        };
        let base = key(&p, 1, Direction::Inbound, Some(&peer), &local);
        assert_eq!(get(&base, &encoded, "first"), b"first");
        assert_eq!(get(&base, &encoded, "again"), b"first");
        assert_eq!(encoded.get(), 1);

        // Any part of the key that differs is another object, even where the
        // contents are equal (another policy, other claims with the same id).
        let others = [
            key(&q, 1, Direction::Inbound, Some(&peer), &local),
            key(&p, 2, Direction::Inbound, Some(&peer), &local),
            key(&p, 1, Direction::Outbound, Some(&peer), &local),
            key(&p, 1, Direction::Inbound, Some(&other_peer), &local),
            key(&p, 1, Direction::Inbound, None, &local),
            key(&p, 1, Direction::Inbound, Some(&peer), &peer),
        ];
        for (i, other) in others.iter().enumerate() {
            let tag = format!("other {i}");
            assert_eq!(get(other, &encoded, &tag), tag.as_bytes());
            assert_eq!(get(other, &encoded, "again"), tag.as_bytes());
        }
        assert_eq!(encoded.get(), 1 + others.len() as u32);
        assert_eq!(get(&base, &encoded, "again"), b"first");
    }

    #[test]
    fn a_failed_encoding_is_not_kept() {
        let (p, local) = (policy("a"), claims("spiffe://t/l"));
        let key = Key {
            policy: &p,
            rule: 1,
            direction: Direction::Outbound,
            peer: None,
            local: &local,
        };
        let failed = claims_json(&key, |buf| {
            buf.extend_from_slice(b"{\"half");
            Err(serde::ser::Error::custom("no"))
        });
        assert!(failed.is_none());
        assert_eq!(get(&key, &Cell::new(0), "{}"), b"{}");
    }

    #[test]
    fn a_reloaded_policy_never_meets_an_object_of_the_old_one() {
        // The old policy's allocation stays while its entry does, so the new
        // one cannot land at its address and be taken for it.
        let local = claims("spiffe://t/l");
        let encoded = Cell::new(0);
        for round in 0..50 {
            let p = policy(&format!("rule{round}"));
            let key = Key {
                policy: &p,
                rule: 7,
                direction: Direction::Inbound,
                peer: None,
                local: &local,
            };
            let tag = format!("round {round}");
            assert_eq!(get(&key, &encoded, &tag), tag.as_bytes());
            drop(p);
        }
        assert_eq!(encoded.get(), 50);
    }

    #[test]
    fn renewed_or_new_claims_never_meet_an_object_of_freed_ones() {
        // Claims freed (a renewal, a peer gone) and new ones made: the
        // entries' `Weak`s keep the old addresses taken, on both sides.
        let p = policy("a");
        let local = claims("spiffe://t/l");
        let encoded = Cell::new(0);
        for round in 0..50 {
            let peer = claims("spiffe://t/p");
            let renewed = claims("spiffe://t/l");
            let tag = format!("round {round}");
            for (peer, local) in [(Some(&peer), &local), (None, &renewed)] {
                let key = Key {
                    policy: &p,
                    rule: 7,
                    direction: Direction::Inbound,
                    peer,
                    local,
                };
                assert_eq!(get(&key, &encoded, &tag), tag.as_bytes());
            }
        }
        assert_eq!(encoded.get(), 100);
    }

    #[test]
    fn the_oldest_entries_make_room() {
        let (p, local) = (policy("a"), claims("spiffe://t/l"));
        let encoded = Cell::new(0);
        let key = |rule| Key {
            policy: &p,
            rule,
            direction: Direction::Inbound,
            peer: None,
            local: &local,
        };
        for rule in 0..=ENTRIES {
            get(&key(rule), &encoded, &rule.to_string());
        }
        assert_eq!(encoded.get(), ENTRIES as u32 + 1);
        // Rule 0 made room for the last; rule 1 is still kept.
        assert_eq!(get(&key(1), &encoded, "x"), b"1");
        assert_eq!(get(&key(0), &encoded, "0 again"), b"0 again");
        assert_eq!(encoded.get(), ENTRIES as u32 + 2);
    }
}
