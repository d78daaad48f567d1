//! "At most N at once per key": the share one source (in protocol
//! detection, outside the mesh, on the health, admin and authority ports)
//! or one peer identity (in tunnel streams) may hold of a budget, so that
//! one caller cannot take all of it.
//!
//! A source is an address as one caller holds addresses ([`Source`]): an
//! IPv4 address, or an IPv6 /64. One host is routinely given a whole /64
//! (SLAAC, a cloud VM's or a pod's prefix), so a share per IPv6 address
//! would let one caller take any number of shares.

use std::collections::HashMap;
use std::fmt;
use std::hash::Hash;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::{Arc, Mutex};

/// Who a connection comes from, for shares and for who gives way: its
/// IPv4 address (also when written as IPv4-mapped IPv6), or the /64 its
/// IPv6 address is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Source(IpAddr);

impl Source {
    /// Bits of an IPv6 address that name its source (a /64).
    pub const IPV6_PREFIX: u32 = 64;

    pub fn of(address: IpAddr) -> Source {
        match address {
            IpAddr::V4(v4) => Source(IpAddr::V4(v4)),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => Source(IpAddr::V4(v4)),
                None => {
                    let network = u128::from(v6) & (u128::MAX << (128 - Self::IPV6_PREFIX));
                    Source(IpAddr::V6(Ipv6Addr::from(network)))
                }
            },
        }
    }
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            IpAddr::V4(v4) => write!(f, "{v4}"),
            IpAddr::V6(v6) => write!(f, "{v6}/{}", Self::IPV6_PREFIX),
        }
    }
}

/// Counts per key, each at most `per_key`.
#[derive(Debug)]
pub struct Shares<K: Hash + Eq + Clone> {
    counts: Arc<Mutex<HashMap<K, usize>>>,
    per_key: usize,
}

/// One unit of a key's share, held until dropped.
#[derive(Debug)]
pub struct ShareGuard<K: Hash + Eq + Clone> {
    counts: Arc<Mutex<HashMap<K, usize>>>,
    key: K,
}

impl<K: Hash + Eq + Clone> Shares<K> {
    /// At most `per_key` (at least 1) held per key at once.
    pub fn new(per_key: usize) -> Self {
        Shares {
            counts: Arc::new(Mutex::new(HashMap::new())),
            per_key: per_key.max(1),
        }
    }

    /// One unit of `key`'s share, or `None` when it holds `per_key` already.
    pub fn take(&self, key: &K) -> Option<ShareGuard<K>> {
        let mut counts = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        let count = counts.entry(key.clone()).or_insert(0);
        if *count >= self.per_key {
            return None;
        }
        *count += 1;
        Some(ShareGuard {
            counts: self.counts.clone(),
            key: key.clone(),
        })
    }
}

impl<K: Hash + Eq + Clone> Drop for ShareGuard<K> {
    fn drop(&mut self) {
        let mut counts = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(count) = counts.get_mut(&self.key) {
            *count -= 1;
            if *count == 0 {
                counts.remove(&self.key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn source(text: &str) -> Source {
        Source::of(text.parse().unwrap())
    }

    #[test]
    fn an_ipv6_source_is_its_64_and_an_ipv4_one_its_address() {
        assert_eq!(source("2001:db8:1:2:aaaa::1"), source("2001:db8:1:2::ffff"));
        assert_ne!(source("2001:db8:1:2::1"), source("2001:db8:1:3::1"));
        assert_eq!(
            source("2001:db8:1:2:aaaa::1").to_string(),
            "2001:db8:1:2::/64"
        );
        assert_eq!(source("::ffff:10.0.0.1"), source("10.0.0.1"));
        assert_ne!(source("10.0.0.1"), source("10.0.0.2"));
        assert_eq!(source("10.0.0.1").to_string(), "10.0.0.1");
        assert_eq!(source("::1").to_string(), "::/64");
    }

    #[test]
    fn one_ipv6_prefix_holds_one_share_however_many_addresses_it_uses() {
        let shares = Shares::new(2);
        let held: Vec<_> = (1..=2u16)
            .map(|i| shares.take(&source(&format!("2001:db8::{i:x}"))).unwrap())
            .collect();
        assert!(shares.take(&source("2001:db8::ffff:1")).is_none());
        assert!(shares.take(&source("2001:db8:0:1::1")).is_some());
        drop(held);
    }

    #[test]
    fn one_key_holds_at_most_its_share() {
        let shares = Shares::new(2);
        let first = shares.take(&"a").unwrap();
        let _second = shares.take(&"a").unwrap();
        assert!(shares.take(&"a").is_none());
        assert!(shares.take(&"b").is_some());
        drop(first);
        assert!(shares.take(&"a").is_some());
        assert!(
            shares.counts.lock().unwrap().len() == 1,
            "empty keys are forgotten"
        );
    }
}
