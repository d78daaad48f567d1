//! What the authority accepts as `reported` (the workload's self-reported
//! facts) and how it fits them into the certificate.
//!
//! Design bias: *bounded, quarantined, never in the way*. `reported` is
//! taken as it comes — the authority cannot check it — but only as a
//! small, shallow JSON object (at most [`MAX_REPORTED_BYTES`] and
//! [`MAX_REPORTED_DEPTH`] levels, or the request is refused with a 400
//! saying which), and only ever under the claims' `reported` key: nothing
//! a workload sends can reach a vouched claim. The AppID extension holds
//! at most [`MAX_CLAIMS_LEN`] bytes of claims in all, so what does not fit
//! is cut rather than failing the issuance: library entries first (from
//! the end, marking `process.libraries_truncated`), and if even that is
//! not enough the whole object becomes `{"truncated": true}`.

use serde_json::{Map, Value};

use appid_policy::AppIdClaims;
use appid_policy::extension::MAX_CLAIMS_LEN;

/// Largest `reported` object accepted, as compact JSON.
pub const MAX_REPORTED_BYTES: usize = 16 * 1024;
/// Deepest nesting accepted, counting `reported` itself as level 1
/// (`reported.process.libraries[i].sha256` is 4 levels of objects and
/// arrays).
pub const MAX_REPORTED_DEPTH: usize = 4;

/// Why a `reported` object is refused.
pub fn check(reported: &Map<String, Value>) -> Result<(), String> {
    let len = serde_json::to_string(reported).map_or(usize::MAX, |j| j.len());
    if len > MAX_REPORTED_BYTES {
        return Err(format!(
            "`reported` is {len} bytes; at most {MAX_REPORTED_BYTES} are accepted (cut the library list)"
        ));
    }
    let depth = 1 + reported.values().map(depth).max().unwrap_or(0);
    if depth > MAX_REPORTED_DEPTH {
        return Err(format!(
            "`reported` nests {depth} levels deep; at most {MAX_REPORTED_DEPTH} are accepted"
        ));
    }
    Ok(())
}

/// Levels of objects and arrays in `value` (a scalar is 0).
fn depth(value: &Value) -> usize {
    match value {
        Value::Object(map) => 1 + map.values().map(depth).max().unwrap_or(0),
        Value::Array(items) => 1 + items.iter().map(depth).max().unwrap_or(0),
        _ => 0,
    }
}

/// What [`fit`] had to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fit {
    /// Everything fits.
    Whole,
    /// This many library entries were left out.
    LibrariesCut(usize),
    /// `reported` was replaced by `{"truncated": true}` (or, if even that
    /// did not fit, removed).
    Dropped,
}

/// Cuts `claims.reported` until the claims fit the extension: keeps the
/// most library entries that fit (found by halving, so a report of
/// thousands of tiny entries costs a dozen serializations, not one per
/// entry: this runs inside the issuing transaction, at every renewal any
/// certificate holder may ask for), else the marker alone, else nothing.
pub fn fit(claims: &mut AppIdClaims) -> Fit {
    if claims.to_json().len() <= MAX_CLAIMS_LEN {
        return Fit::Whole;
    }
    let Some(all) = take_libraries(claims) else {
        return drop_reported(claims);
    };
    // The claims' length grows with the entries kept: the largest count
    // that fits, between none and all but one.
    let keep = |claims: &mut AppIdClaims, count: usize| {
        set_libraries(claims, all[..count].to_vec());
        claims.to_json().len() <= MAX_CLAIMS_LEN
    };
    let (mut fits, mut too_many) = (0, all.len());
    if !keep(claims, 0) {
        return drop_reported(claims);
    }
    while too_many - fits > 1 {
        let middle = fits + (too_many - fits) / 2;
        if keep(claims, middle) {
            fits = middle;
        } else {
            too_many = middle;
        }
    }
    keep(claims, fits);
    Fit::LibrariesCut(all.len() - fits)
}

/// `reported.process.libraries` when it is a non-empty list, taken out and
/// marked `libraries_truncated`.
fn take_libraries(claims: &mut AppIdClaims) -> Option<Vec<Value>> {
    let process = claims
        .reported
        .as_mut()?
        .get_mut("process")?
        .as_object_mut()?;
    match process.get_mut("libraries")? {
        Value::Array(list) if !list.is_empty() => {
            let all = std::mem::take(list);
            process.insert("libraries_truncated".into(), Value::Bool(true));
            Some(all)
        }
        _ => None,
    }
}

/// Puts `list` back as `reported.process.libraries`.
fn set_libraries(claims: &mut AppIdClaims, list: Vec<Value>) {
    if let Some(process) = claims
        .reported
        .as_mut()
        .and_then(|r| r.get_mut("process"))
        .and_then(Value::as_object_mut)
    {
        process.insert("libraries".into(), Value::Array(list));
    }
}

/// `reported` as `{"truncated": true}`, or none if even that does not fit.
fn drop_reported(claims: &mut AppIdClaims) -> Fit {
    let marker = Map::from_iter([("truncated".to_owned(), Value::Bool(true))]);
    claims.reported = Some(marker);
    if claims.to_json().len() > MAX_CLAIMS_LEN {
        claims.reported = None;
    }
    Fit::Dropped
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn map(v: Value) -> Map<String, Value> {
        match v {
            Value::Object(m) => m,
            _ => panic!("not an object"),
        }
    }

    fn libraries(n: usize) -> Value {
        Value::Array(
            (0..n)
                .map(
                    |i| json!({"path": format!("/usr/lib/lib{i:03}.so"), "sha256": "b".repeat(64)}),
                )
                .collect(),
        )
    }

    #[test]
    fn size_and_depth_are_bounded() {
        let ok = map(
            json!({"process": {"sha256": "a", "libraries": [{"path": "/l", "sha256": "b"}]},
                            "host": {"os": {"id": "debian"}}}),
        );
        assert_eq!(check(&ok), Ok(()));
        let deep = map(json!({"a": {"b": {"c": {"d": {"e": 1}}}}}));
        let why = check(&deep).unwrap_err();
        assert!(
            why.contains("5 levels") && why.contains("at most 4"),
            "{why}"
        );
        let deep_list = map(json!({"a": [[[1]]]}));
        assert!(check(&deep_list).is_ok());
        let deeper_list = map(json!({"a": [[[[1]]]]}));
        assert!(check(&deeper_list).is_err());
        let big = map(json!({"process": {"libraries": libraries(200)}}));
        let why = check(&big).unwrap_err();
        assert!(why.contains("at most 16384"), "{why}");
        assert_eq!(check(&Map::new()), Ok(()));
    }

    #[test]
    fn libraries_are_cut_first_to_fit_the_certificate() {
        let mut claims = AppIdClaims::new("spiffe://td/web", "join_token");
        claims.reported = Some(map(json!({
            "process": {"sha256": "a".repeat(64), "uid": 1000, "libraries": libraries(40)},
            "host": {"kernel": "6.1.0"}
        })));
        let Fit::LibrariesCut(cut) = fit(&mut claims) else {
            panic!("expected a cut")
        };
        assert!(claims.to_json().len() <= MAX_CLAIMS_LEN);
        let process = &claims.reported.as_ref().unwrap()["process"];
        let kept = process["libraries"].as_array().unwrap();
        assert_eq!(kept.len() + cut, 40);
        assert!(!kept.is_empty());
        assert_eq!(kept[0]["path"], "/usr/lib/lib000.so");
        assert_eq!(process["libraries_truncated"], true);
        assert_eq!(process["uid"], 1000);

        // Small enough: untouched.
        let mut small = AppIdClaims::new("spiffe://td/web", "join_token");
        small.reported = Some(map(json!({"process": {"uid": 1}})));
        let before = small.clone();
        assert_eq!(fit(&mut small), Fit::Whole);
        assert_eq!(small, before);
    }

    /// What `fit` keeps is what cutting one entry at a time from the end
    /// would keep (the claims' length grows with the entries), for lists
    /// of every shape: long and short entries, thousands of tiny ones (a
    /// report any certificate holder may send at every renewal), a blob
    /// beside them that no cut can make fit.
    #[test]
    fn fit_keeps_what_cutting_entry_by_entry_would() {
        fn one_by_one(claims: &mut AppIdClaims) -> Fit {
            let mut cut = 0;
            while claims.to_json().len() > MAX_CLAIMS_LEN {
                let process = claims.reported.as_mut().unwrap()["process"]
                    .as_object_mut()
                    .unwrap();
                let list = process["libraries"].as_array_mut().unwrap();
                if list.is_empty() {
                    return drop_reported(claims);
                }
                list.pop();
                process.insert("libraries_truncated".into(), Value::Bool(true));
                cut += 1;
            }
            if cut == 0 {
                Fit::Whole
            } else {
                Fit::LibrariesCut(cut)
            }
        }
        let tiny = |n: usize| Value::Array((0..n).map(|i| json!(i % 10)).collect());
        let mut cases = vec![(libraries(40), 0), (libraries(3), 0), (tiny(1500), 0)];
        // A blob beside them from nothing to more than fits, by steps
        // shorter than an entry: every count kept, none at all, the marker.
        for blob in (0..2100).step_by(20) {
            cases.extend([(libraries(5), blob), (tiny(30), blob)]);
        }
        for (list, blob) in cases {
            let mut claims = AppIdClaims::new("spiffe://td/web", "join_token");
            claims.reported = Some(map(
                json!({"process": {"uid": 1, "libraries": list}, "blob": "x".repeat(blob)}),
            ));
            let mut reference = claims.clone();
            let how = fit(&mut claims);
            assert_eq!(how, one_by_one(&mut reference), "{blob}");
            assert_eq!(claims, reference, "{how:?}");
            assert!(claims.to_json().len() <= MAX_CLAIMS_LEN);
        }
    }

    #[test]
    fn what_cannot_be_cut_is_replaced_by_a_marker() {
        let mut claims = AppIdClaims::new("spiffe://td/web", "join_token");
        claims.reported = Some(map(json!({"blob": "x".repeat(3000)})));
        assert_eq!(fit(&mut claims), Fit::Dropped);
        assert_eq!(claims.reported, Some(map(json!({"truncated": true}))));
        assert!(claims.to_json().len() <= MAX_CLAIMS_LEN);
    }
}
