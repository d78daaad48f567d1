//! The rule index: which rules could possibly match a query, without
//! looking at every rule.
//!
//! Design bias: *every rule is filed exactly once, under its most selective
//! necessary condition* (once in each partition it is in: one index per
//! kind of caller and callee, `super::eval::PARTITIONS`). A rule can only match if each of its L4 clauses
//! holds, so any one of them is a safe key. At build time each rule picks
//! the key whose bucket is smallest:
//!
//! 1. an exact text value: `labels.app: web`, `id: spiffe://...`, a list or
//!    `in` of them, or a glob without wildcards — filed under each value;
//! 2. a glob's literal prefix up to a `/` (`spiffe://td/ns/shop/` for
//!    `spiffe://td/ns/shop/sa/*`) — looked up with every `/`-ended prefix of
//!    the query's value;
//! 3. its ports, when they span few 64-port buckets;
//! 4. otherwise the always-checked list.
//!
//! A query then does one hash lookup per indexed attribute (a few per
//! `/` for prefixes), one array lookup for the port, and evaluates only
//! what it found. Rule ids are ranks by name; buckets are sorted, and no
//! rule is in two buckets a single query can reach, so nothing is checked
//! twice. Lookups borrow the query's strings: no allocation.
//!
//! The hash is FxHash: keys are policy literals and looked-up values come
//! from certificates the authority signed, not from arbitrary peers.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

use super::attr::{Attr, AttrValue};
use super::query::{Callee, Caller, Query};
use super::rule::{Rule, Side, Test};

/// Ports per port bucket (as a shift): 64.
const BUCKET_SHIFT: u32 = 6;
const BUCKETS: usize = 1 << (16 - BUCKET_SHIFT);
/// A rule whose ports touch more buckets than this is not filed by port.
const MAX_BUCKETS_PER_RULE: usize = 16;

type FxMap<K, V> = HashMap<K, V, BuildHasherDefault<FxHasher>>;

/// The index over the rules about one kind of query (meshed→meshed,
/// unauthenticated→meshed, meshed→external: `super::eval::PARTITIONS`).
#[derive(Debug, Default)]
pub(crate) struct Index {
    exact: Box<[Dim]>,
    prefix: Box<[Dim]>,
    /// `BUCKETS` lists, or none when no rule is filed by port.
    ports: Box<[Box<[u32]>]>,
    rest: Box<[u32]>,
}

#[derive(Debug)]
struct Dim {
    side: Side,
    attr: Attr,
    map: FxMap<Box<str>, Box<[u32]>>,
}

/// How many rules were filed where (for tests and `policy check`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct IndexStats {
    pub by_value: usize,
    pub by_prefix: usize,
    pub by_port: usize,
    pub unindexed: usize,
}

enum Key<'r> {
    Exact(usize, Vec<&'r str>),
    Prefix(usize, Vec<&'r str>),
    Ports(Vec<usize>),
}

impl Index {
    /// Files `members` (ids into `rules`, ascending).
    pub fn build(rules: &[Rule], members: &[u32]) -> Index {
        let mut exact_dims: Vec<(Side, Attr)> = Vec::new();
        let mut prefix_dims: Vec<(Side, Attr)> = Vec::new();
        let dim = |dims: &mut Vec<(Side, Attr)>, side: Side, attr: &Attr| -> usize {
            match dims.iter().position(|(s, a)| *s == side && a == attr) {
                Some(i) => i,
                None => {
                    dims.push((side, attr.clone()));
                    dims.len() - 1
                }
            }
        };

        // Every key each rule could be filed under.
        let mut keys: Vec<Vec<Key<'_>>> = Vec::with_capacity(members.len());
        for &id in members {
            let rule = &rules[id as usize];
            let mut options = Vec::new();
            for clause in &rule.clauses[..rule.l7_from] {
                match &clause.test {
                    Test::Claim(side, attr, pred) if attr.is_text() => {
                        if let Some(values) = pred.required_values() {
                            options
                                .push(Key::Exact(dim(&mut exact_dims, *side, attr), dedup(values)));
                        } else if let Some(prefixes) = pred.required_prefixes() {
                            options.push(Key::Prefix(
                                dim(&mut prefix_dims, *side, attr),
                                shortest_prefixes(prefixes),
                            ));
                        }
                    }
                    Test::Ports(ports) | Test::ExternalPorts(ports) => {
                        let mut buckets: Vec<usize> = Vec::new();
                        for &(lo, hi) in ports.0.iter() {
                            let (a, b) = (bucket(lo), bucket(hi));
                            if b - a >= MAX_BUCKETS_PER_RULE {
                                buckets.clear();
                                buckets.resize(MAX_BUCKETS_PER_RULE + 1, 0);
                                break;
                            }
                            buckets.extend(a..=b);
                        }
                        buckets.sort_unstable();
                        buckets.dedup();
                        if buckets.len() <= MAX_BUCKETS_PER_RULE {
                            options.push(Key::Ports(buckets));
                        }
                    }
                    _ => {}
                }
            }
            keys.push(options);
        }

        // How crowded each bucket would be if every rule used every key.
        let mut exact_count: HashMap<(usize, &str), usize> = HashMap::new();
        let mut prefix_count: HashMap<(usize, &str), usize> = HashMap::new();
        let mut port_count = vec![0usize; BUCKETS];
        for options in &keys {
            for key in options {
                match key {
                    Key::Exact(d, vs) => vs
                        .iter()
                        .for_each(|v| *exact_count.entry((*d, v)).or_default() += 1),
                    Key::Prefix(d, ps) => ps
                        .iter()
                        .for_each(|p| *prefix_count.entry((*d, p)).or_default() += 1),
                    Key::Ports(bs) => bs.iter().for_each(|b| port_count[*b] += 1),
                }
            }
        }
        let cost = |key: &Key<'_>| -> (usize, u8) {
            match key {
                Key::Exact(d, vs) => (vs.iter().map(|v| exact_count[&(*d, *v)]).sum(), 0),
                Key::Prefix(d, ps) => (ps.iter().map(|p| prefix_count[&(*d, *p)]).sum(), 1),
                Key::Ports(bs) => (bs.iter().map(|b| port_count[*b]).sum(), 2),
            }
        };

        // File each rule under its cheapest key.
        let mut exact: Vec<FxMap<Box<str>, Vec<u32>>> = vec![FxMap::default(); exact_dims.len()];
        let mut prefix: Vec<FxMap<Box<str>, Vec<u32>>> = vec![FxMap::default(); prefix_dims.len()];
        let mut ports: Vec<Vec<u32>> = vec![Vec::new(); BUCKETS];
        let mut any_port = false;
        let mut rest = Vec::new();
        for (&id, options) in members.iter().zip(&keys) {
            match options.iter().min_by_key(|k| cost(k)) {
                Some(Key::Exact(d, vs)) => {
                    for v in vs {
                        exact[*d].entry((*v).into()).or_default().push(id);
                    }
                }
                Some(Key::Prefix(d, ps)) => {
                    for p in ps {
                        prefix[*d].entry((*p).into()).or_default().push(id);
                    }
                }
                Some(Key::Ports(bs)) => {
                    any_port = true;
                    for b in bs {
                        ports[*b].push(id);
                    }
                }
                None => rest.push(id),
            }
        }
        let finish =
            |dims: Vec<(Side, Attr)>, maps: Vec<FxMap<Box<str>, Vec<u32>>>| -> Box<[Dim]> {
                dims.into_iter()
                    .zip(maps)
                    .filter(|(_, m)| !m.is_empty())
                    .map(|((side, attr), m)| Dim {
                        side,
                        attr,
                        map: m
                            .into_iter()
                            .map(|(k, v)| (k, v.into_boxed_slice()))
                            .collect(),
                    })
                    .collect()
            };
        Index {
            exact: finish(exact_dims, exact),
            prefix: finish(prefix_dims, prefix),
            ports: if any_port {
                ports.into_iter().map(Vec::into_boxed_slice).collect()
            } else {
                Box::new([])
            },
            rest: rest.into(),
        }
    }

    /// Calls `f` with every rule id that could match `q` (each at most
    /// once). No allocation.
    pub fn candidates(&self, q: &Query<'_>, mut f: impl FnMut(u32)) {
        for dim in &self.exact {
            if let Some(value) = text_of(dim, q)
                && let Some(ids) = dim.map.get(value)
            {
                ids.iter().for_each(|id| f(*id));
            }
        }
        for dim in &self.prefix {
            if let Some(value) = text_of(dim, q) {
                for (i, b) in value.bytes().enumerate() {
                    if b == b'/'
                        && let Some(ids) = value.get(..=i).and_then(|p| dim.map.get(p))
                    {
                        ids.iter().for_each(|id| f(*id));
                    }
                }
            }
        }
        if let Some(ids) = self.ports.get(bucket(q.port)) {
            ids.iter().for_each(|id| f(*id));
        }
        self.rest.iter().for_each(|id| f(*id));
    }
}

/// How the rules of `indexes` were filed, each rule counted once per way
/// (a rule in two partitions, filed by value in both, is one `by_value`).
pub(crate) fn stats(indexes: &[Index]) -> IndexStats {
    let count = |ids: &mut dyn Iterator<Item = &u32>| -> usize {
        ids.collect::<std::collections::BTreeSet<_>>().len()
    };
    let filed = |dims: fn(&Index) -> &[Dim]| {
        count(&mut indexes.iter().flat_map(|i| {
            dims(i)
                .iter()
                .flat_map(|d| d.map.values().flat_map(|ids| ids.iter()))
        }))
    };
    IndexStats {
        by_value: filed(|i| &i.exact),
        by_prefix: filed(|i| &i.prefix),
        by_port: count(&mut indexes.iter().flat_map(|i| i.ports.iter().flatten())),
        unindexed: count(&mut indexes.iter().flat_map(|i| i.rest.iter())),
    }
}

fn text_of<'q>(dim: &Dim, q: &Query<'q>) -> Option<&'q str> {
    let claims = match (dim.side, q.caller, q.callee) {
        (Side::Caller, Caller::Meshed(c), _) | (Side::Callee, _, Callee::Meshed(c)) => c,
        _ => return None,
    };
    match dim.attr.get(claims) {
        AttrValue::Str(s) => Some(s),
        _ => None,
    }
}

/// Drops prefixes that extend another in the list, so that no value has
/// two of them as prefixes (and the rule is found once).
fn shortest_prefixes(mut v: Vec<&str>) -> Vec<&str> {
    v.sort_unstable_by_key(|p| p.len());
    let mut out: Vec<&str> = Vec::with_capacity(v.len());
    for p in v {
        if !out.iter().any(|q| p.starts_with(q)) {
            out.push(p);
        }
    }
    out
}

fn bucket(port: u16) -> usize {
    usize::from(port >> BUCKET_SHIFT)
}

fn dedup(mut v: Vec<&str>) -> Vec<&str> {
    v.sort_unstable();
    v.dedup();
    v
}

/// FxHash (as in rustc): a multiply-rotate hash, fast on short keys.
#[derive(Default, Clone, Copy)]
pub(crate) struct FxHasher(u64);

const FX_SEED: u64 = 0x51_7c_c1_b7_27_22_0a_95;

impl FxHasher {
    fn add(&mut self, word: u64) {
        self.0 = (self.0.rotate_left(5) ^ word).wrapping_mul(FX_SEED);
    }
}

impl Hasher for FxHasher {
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for chunk in &mut chunks {
            let mut word = [0u8; 8];
            word.copy_from_slice(chunk);
            self.add(u64::from_le_bytes(word));
        }
        let tail = chunks.remainder();
        if !tail.is_empty() {
            let mut word = [0u8; 8];
            word[..tail.len()].copy_from_slice(tail);
            self.add(u64::from_le_bytes(word));
        }
    }

    fn write_u8(&mut self, i: u8) {
        self.add(u64::from(i));
    }

    fn write_usize(&mut self, i: usize) {
        self.add(i as u64);
    }

    fn finish(&self) -> u64 {
        self.0
    }
}
