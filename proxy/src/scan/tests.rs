//! Tests for scanner report reading: the third-party fixtures (read in
//! place, never copied), small reports in the real formats, and properties.

use std::path::{Path, PathBuf};

use proptest::prelude::*;
use serde_json::{Value, json};

use super::*;

// ---------------------------------------------------------------------------
// (a) The fixtures in ../shared/fixtures, expected values from its SOURCES.md.

/// The shared fixture folder, or `None` (with the reason printed) when it is
/// absent outside CI. In CI (`CI=true`) a missing folder is a failure.
fn fixtures() -> Option<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/fixtures");
    if dir.is_dir() {
        return Some(dir);
    }
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "fixture folder {} is missing and CI=true",
        dir.display()
    );
    eprintln!("skipped: fixture folder {} does not exist", dir.display());
    None
}

struct Expected {
    file: &'static str,
    scanner: Scanner,
    /// critical, high, medium, low, unknown
    counts: [u64; 5],
    /// Listings before deduplication ("raw" in SOURCES.md).
    listed: u64,
    image_digest: Option<&'static str>,
    /// Further digests the report names, after the preferred one.
    other_digests: &'static [&'static str],
    image_name: Option<&'static str>,
    scanned_at: Option<&'static str>,
}

const TRIVY_TIME: Option<&str> = Some("2021-08-25T12:20:30Z");

/// Trivy fixtures have no `RepoDigests`, but every one has a `sha256:` `ImageID`.
const FIXTURES: &[Expected] = &[
    Expected {
        file: "trivy/alpine-39.json",
        scanner: Scanner::Trivy,
        counts: [2, 0, 4, 0, 0],
        listed: 6,
        image_digest: Some(
            "sha256:055936d3920576da37aa9bc460d70c5f212028bda1c08c0879aedf03d7a66ea1",
        ),
        other_digests: &[],
        image_name: Some("testdata/fixtures/images/alpine-39.tar.gz"),
        scanned_at: TRIVY_TIME,
    },
    Expected {
        file: "trivy/debian-buster.json",
        scanner: Scanner::Trivy,
        counts: [1, 0, 0, 1, 0],
        listed: 2,
        image_digest: Some(
            "sha256:c2c03a296d2329a4f3ab72a7bf38b78a8a80108204d326b0139d6af700e152d1",
        ),
        other_digests: &[],
        image_name: Some("testdata/fixtures/images/debian-buster.tar.gz"),
        scanned_at: TRIVY_TIME,
    },
    Expected {
        file: "trivy/fluentd-gems.json",
        scanner: Scanner::Trivy,
        counts: [1, 1, 0, 0, 0],
        listed: 2,
        image_digest: Some(
            "sha256:5a992077baba51b97f27591a10d54d2f2723dc9c81a3fe419e261023f2554933",
        ),
        other_digests: &[],
        image_name: Some("testdata/fixtures/images/fluentd-multiple-lockfiles.tar.gz"),
        scanned_at: TRIVY_TIME,
    },
    Expected {
        file: "trivy/ubuntu-1804.json",
        scanner: Scanner::Trivy,
        counts: [0, 0, 4, 1, 0],
        listed: 5,
        image_digest: Some(
            "sha256:a2a15febcdf362f6115e801d37b5e60d6faaeedcb9896155e5fe9d754025be12",
        ),
        other_digests: &[],
        image_name: Some("testdata/fixtures/images/ubuntu-1804.tar.gz"),
        scanned_at: TRIVY_TIME,
    },
    Expected {
        file: "trivy/sl-micro-rancher5.4.json",
        scanner: Scanner::Trivy,
        counts: [0, 0, 0, 0, 0],
        listed: 0,
        image_digest: Some(
            "sha256:c45ec974938acac29c893b5d273d73e4ebdd7e6a97b6fa861dfbd8dd430b9016",
        ),
        other_digests: &[],
        image_name: Some("testdata/fixtures/images/sle-micro-rancher-5.4_ndb.tar.gz"),
        scanned_at: TRIVY_TIME,
    },
    Expected {
        file: "grype/TestJsonImgsPresenter.json",
        scanner: Scanner::Grype,
        counts: [1, 0, 0, 1, 0],
        listed: 2,
        // manifestDigest, then imageID; repoDigests is empty.
        image_digest: Some(
            "sha256:ca738abb87a8d58f112d3400ebb079b61ceae7dc290beb34bda735be4b1941d5",
        ),
        other_digests: &["sha256:ab5608d634db2716a297adbfa6a5dd5d8f8f5a7d0cab73649ea7fbb8c8da544f"],
        image_name: Some("user-input"),
        scanned_at: None, // descriptor.timestamp is ""
    },
    Expected {
        file: "grype/TestEmptyJsonPresenter.json",
        scanner: Scanner::Grype,
        counts: [0, 0, 0, 0, 0],
        listed: 0,
        image_digest: None, // source.target is the string "unknown"
        other_digests: &[],
        image_name: None,
        scanned_at: None,
    },
    Expected {
        // Trap: CVE-2023-28755 in ruby-3.0 and in uri, plus its GHSA alias in uri.
        file: "grype/chainguard-ruby-test.json",
        scanner: Scanner::Grype,
        counts: [0, 3, 0, 0, 0],
        listed: 3,
        image_digest: Some(
            "sha256:86abe662dfa3746038eea6b0db91092b0767d78b8b8938a343d614cd1579adc2",
        ),
        other_digests: &[
            "sha256:2f88265cfbc43ca35cd327347a9f59375b9f29ef998b8a54a882e31111266640",
            "sha256:3c9afb4f188827ea1062ec3b8acea32893236a0d7df31e0498df93486cff0978",
        ],
        image_name: Some("cgr.dev/chainguard/ruby:latest-3.0"),
        scanned_at: Some("2023-05-18T01:00:56Z"), // 2023-05-17T21:00:56.783213-04:00
    },
    Expected {
        // Trap: one CVE across six rpm packages is six findings.
        file: "grype/keycloak-test.json",
        scanner: Scanner::Grype,
        counts: [0, 0, 0, 6, 0],
        listed: 6,
        image_digest: Some(
            "sha256:d1630d3eb8285a978301bcefc5b223e564ae300750af2fc9ea3f413c5376a47e",
        ),
        other_digests: &[
            "sha256:8cf8fd2be2ded92962d52adff75ad06a4c30f69c66facbdf223364c6c9e33b8c",
            "sha256:347a0d748d05a050dc64b92de2246d2240db6eb38afbc17c3c08d0acb0db1b50",
        ],
        image_name: Some(
            "docker.io/keycloak/keycloak:21.0.2@sha256:347a0d748d05a050dc64b92de2246d2240db6eb38afbc17c3c08d0acb0db1b50",
        ),
        scanned_at: Some("2023-09-01T12:13:42Z"), // 2023-09-01T08:13:42.20194-04:00
    },
];

fn counts_array(c: &SeverityCounts) -> [u64; 5] {
    [c.critical, c.high, c.medium, c.low, c.unknown]
}

#[test]
fn scan_fixtures_match_sources_md() {
    let Some(dir) = fixtures() else { return };
    for want in FIXTURES {
        let path = dir.join(want.file);
        let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let got = parse_report(&bytes).unwrap_or_else(|e| panic!("{}: {e}", want.file));
        assert_eq!(got.scanner, want.scanner, "{}", want.file);
        assert_eq!(
            counts_array(&got.counts),
            want.counts,
            "{}: counts",
            want.file
        );
        assert_eq!(got.listed, want.listed, "{}: listed", want.file);
        assert_eq!(
            got.image_digest.as_deref(),
            want.image_digest,
            "{}",
            want.file
        );
        let mut digests: Vec<&str> = want.image_digest.into_iter().collect();
        digests.extend(want.other_digests);
        assert_eq!(got.image_digests, digests, "{}: all digests", want.file);
        assert_eq!(got.image_name.as_deref(), want.image_name, "{}", want.file);
        assert_eq!(got.scanned_at.as_deref(), want.scanned_at, "{}", want.file);
        assert!(is_sha256_digest(&got.report_sha256), "{}", want.file);
    }
}

/// Every report in the fixture folders is in the table: a new fixture must
/// come with its expected counts.
#[test]
fn scan_fixture_table_covers_every_report() {
    let Some(dir) = fixtures() else { return };
    for sub in ["trivy", "grype"] {
        let entries = std::fs::read_dir(dir.join(sub)).unwrap_or_else(|e| panic!("{sub}: {e}"));
        for entry in entries {
            let name = entry.unwrap().file_name().to_string_lossy().into_owned();
            if name.ends_with(".json") {
                let file = format!("{sub}/{name}");
                assert!(
                    FIXTURES.iter().any(|f| f.file == file),
                    "{file} has no expected counts in FIXTURES"
                );
            }
        }
    }
}

#[test]
fn scan_fixture_report_hash_is_of_the_exact_bytes() {
    let Some(dir) = fixtures() else { return };
    // From `sha256sum` of the files.
    for (file, sum) in [
        (
            "trivy/alpine-39.json",
            "cad7a3950b281daededa6dc18cc4e88cc0ba974b61ed072dbb0f104b8f1bd443",
        ),
        (
            "grype/keycloak-test.json",
            "d22b0b785ba6439a29dfc0b93de180dc010b84f5f03c25e08a65dffe33a49991",
        ),
    ] {
        let bytes = std::fs::read(dir.join(file)).unwrap();
        let report = parse_report(&bytes).unwrap();
        assert_eq!(report.report_sha256, format!("sha256:{sum}"), "{file}");
        assert_eq!(report.to_vulns().report, report.report_sha256);
    }
}

// ---------------------------------------------------------------------------
// (b) Small reports in the real formats.

const D1: &str = "sha256:1111111111111111111111111111111111111111111111111111111111111111";
const D2: &str = "sha256:2222222222222222222222222222222222222222222222222222222222222222";
const D3: &str = "sha256:3333333333333333333333333333333333333333333333333333333333333333";

fn parse(v: &Value) -> Result<ScanReport, ScanError> {
    parse_report(v.to_string().as_bytes())
}

fn trivy_vuln(id: &str, pkg: &str, ver: &str, sev: &str) -> Value {
    json!({"VulnerabilityID": id, "PkgName": pkg, "InstalledVersion": ver,
           "Severity": sev, "Title": "ignored", "CVSS": {"nvd": {"V3Score": 9.8}}})
}

fn trivy(results: Value) -> Value {
    json!({
        "SchemaVersion": 2,
        "CreatedAt": "2026-11-20T10:00:00.123456789+01:00",
        "ArtifactName": "registry.example/web:1.4",
        "ArtifactType": "container_image",
        "Metadata": {"OS": {"Family": "alpine", "Name": "3.19"}, "ImageID": D1,
                     "RepoTags": ["registry.example/web:1.4"]},
        "Results": results,
    })
}

fn grype_match(id: &str, name: &str, version: &str, sev: &str) -> Value {
    json!({
        "vulnerability": {"id": id, "dataSource": "x", "severity": sev, "urls": []},
        "relatedVulnerabilities": [],
        "matchDetails": [],
        "artifact": {"id": "a", "name": name, "version": version, "type": "apk", "locations": []},
    })
}

fn grype(matches: Value) -> Value {
    json!({
        "matches": matches,
        "source": {"type": "image", "target": {
            "userInput": "registry.example/web:1.4", "imageID": D1,
            "manifestDigest": D2, "repoDigests": [format!("registry.example/web@{D3}")],
        }},
        "distro": {"name": "alpine", "version": "3.19"},
        "descriptor": {"name": "grype", "version": "0.80.0",
                       "timestamp": "2026-11-20T05:00:00.5-05:00"},
    })
}

#[test]
fn scan_trivy_dedups_across_results() {
    let report = parse(&trivy(json!([
        {"Target": "img (alpine 3.19)", "Class": "os-pkgs", "Type": "alpine", "Vulnerabilities": [
            trivy_vuln("CVE-1", "openssl", "3.1.0", "HIGH"),
            trivy_vuln("CVE-2", "openssl", "3.1.0", "LOW"),
        ]},
        {"Target": "app/Gemfile.lock", "Class": "lang-pkgs", "Type": "bundler", "Vulnerabilities": [
            trivy_vuln("CVE-1", "openssl", "3.1.0", "HIGH"),
            // Same ID and package, different installed version: another finding.
            trivy_vuln("CVE-1", "openssl", "3.0.9", "HIGH"),
        ]},
        {"Target": "no findings here", "Class": "lang-pkgs", "Type": "npm"},
    ])))
    .unwrap();
    assert_eq!(report.scanner, Scanner::Trivy);
    assert_eq!(counts_array(&report.counts), [0, 2, 0, 1, 0]);
    assert_eq!(report.listed, 4);
    assert_eq!(
        report.image_name.as_deref(),
        Some("registry.example/web:1.4")
    );
    assert_eq!(report.image_digest.as_deref(), Some(D1));
    assert_eq!(report.scanned_at.as_deref(), Some("2026-11-20T09:00:00Z"));
}

#[test]
fn scan_severities_are_case_insensitive_and_unrecognised_is_unknown() {
    let report = parse(&trivy(json!([{"Target": "t", "Vulnerabilities": [
        trivy_vuln("CVE-1", "p", "1", "critical"),
        trivy_vuln("CVE-2", "p", "1", "High"),
        trivy_vuln("CVE-3", "p", "1", "mEdIuM"),
        trivy_vuln("CVE-4", "p", "1", "LOW"),
        trivy_vuln("CVE-5", "p", "1", "UNKNOWN"),
        trivy_vuln("CVE-6", "p", "1", "severe"),
        trivy_vuln("CVE-7", "p", "1", ""),
        {"VulnerabilityID": "CVE-8", "PkgName": "p", "InstalledVersion": "1"},
    ]}])))
    .unwrap();
    assert_eq!(counts_array(&report.counts), [1, 1, 1, 1, 4]);
}

#[test]
fn scan_same_finding_with_two_severities_keeps_the_higher() {
    let report = parse(&trivy(json!([
        {"Target": "a", "Vulnerabilities": [trivy_vuln("CVE-1", "p", "1", "UNKNOWN")]},
        {"Target": "b", "Vulnerabilities": [trivy_vuln("CVE-1", "p", "1", "MEDIUM")]},
        {"Target": "c", "Vulnerabilities": [trivy_vuln("CVE-1", "p", "1", "LOW")]},
    ])))
    .unwrap();
    assert_eq!(counts_array(&report.counts), [0, 0, 1, 0, 0]);
}

#[test]
fn scan_grype_negligible_counts_as_low() {
    let report = parse(&grype(json!([
        grype_match("CVE-1", "busybox", "1.36", "Negligible"),
        grype_match("CVE-2", "busybox", "1.36", "NEGLIGIBLE"),
        grype_match("CVE-3", "busybox", "1.36", "Low"),
        grype_match("CVE-4", "busybox", "1.36", "Unknown"),
    ])))
    .unwrap();
    assert_eq!(report.scanner, Scanner::Grype);
    assert_eq!(counts_array(&report.counts), [0, 0, 0, 3, 1]);
    assert_eq!(report.scanned_at.as_deref(), Some("2026-11-20T10:00:00Z"));
}

#[test]
fn scan_trivy_repo_digest_is_preferred_and_only_sha256_is_accepted() {
    let mut report = trivy(json!([]));
    report["Metadata"]["RepoDigests"] = json!([
        "registry.example/web@sha256:ABCDEF1111111111111111111111111111111111111111111111111111111111",
        "registry.example/web@sha512:1111",
        "registry.example/web@sha256:1234",
        format!("registry.example/web@{D2}"),
        format!("mirror.example:5000/web@{D3}"),
    ]);
    let got = parse(&report).unwrap();
    assert_eq!(got.image_digest.as_deref(), Some(D2));
    assert_eq!(got.image_digests, [D2, D3, D1]);

    // No RepoDigests (a local image): ImageID.
    report["Metadata"]["RepoDigests"] = Value::Null;
    assert_eq!(parse(&report).unwrap().image_digest.as_deref(), Some(D1));

    // An ImageID that is not a sha256 digest gives no digest at all.
    report["Metadata"]["ImageID"] = json!("sha256:055936d3920576da");
    let got = parse(&report).unwrap();
    assert_eq!(got.image_digest, None);
    assert!(got.image_digests.is_empty());
}

#[test]
fn scan_grype_same_id_in_two_packages_counts_twice_same_package_once() {
    let report = parse(&grype(json!([
        grype_match("CVE-2020-12413", "nss", "3.79.0", "Low"),
        grype_match("CVE-2020-12413", "nspr", "4.34.0", "Low"),
        // The same package found twice (two catalogers): one finding.
        grype_match("CVE-2020-12413", "nss", "3.79.0", "Low"),
    ])))
    .unwrap();
    assert_eq!(counts_array(&report.counts), [0, 0, 0, 2, 0]);
    assert_eq!(report.listed, 3);
    // manifestDigest, imageID, repoDigests, in that order.
    assert_eq!(report.image_digest.as_deref(), Some(D2));
    assert_eq!(report.image_digests, [D2, D1, D3]);
    assert_eq!(
        report.image_name.as_deref(),
        Some("registry.example/web:1.4")
    );
}

#[test]
fn scan_unknown_format_says_what_was_expected() {
    let err = parse_report(br#"{"bomFormat": "CycloneDX", "components": []}"#).unwrap_err();
    assert!(matches!(err, ScanError::UnknownFormat { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(msg.contains("`bomFormat`"), "{msg}");
    assert!(msg.contains(EXPECTED_FORMATS), "{msg}");

    // Part of a Grype report is not a Grype report.
    let err = parse_report(br#"{"matches": [], "source": {}}"#).unwrap_err();
    assert!(err.to_string().contains("not `descriptor`"), "{err}");

    for (input, found) in [
        (&br#"[1, 2]"#[..], "an array"),
        (b"42", "a number"),
        (b"\"trivy\"", "a string"),
        (b"null", "null"),
        (b"{}", "an empty object"),
    ] {
        let err = parse_report(input).unwrap_err();
        assert_eq!(
            err,
            ScanError::UnknownFormat {
                found: found.to_owned()
            }
        );
    }
}

#[test]
fn scan_empty_file() {
    for input in [&b""[..], b"  \n\t ", b"\xEF\xBB\xBF"] {
        let err = parse_report(input).unwrap_err();
        assert_eq!(err, ScanError::Empty);
        assert!(err.to_string().contains(EXPECTED_FORMATS));
    }
}

#[test]
fn scan_trivy_schema_version_1_is_refused() {
    let mut report = trivy(json!([]));
    report["SchemaVersion"] = json!(1);
    let err = parse(&report).unwrap_err();
    assert_eq!(
        err,
        ScanError::UnsupportedTrivySchema {
            found: "1".to_owned()
        }
    );
    assert!(err.to_string().contains("only SchemaVersion 2"), "{err}");

    report["SchemaVersion"] = json!(2.0);
    let err = parse(&report).unwrap_err();
    assert_eq!(
        err,
        ScanError::UnsupportedTrivySchema {
            found: "2.0".to_owned()
        }
    );

    report["SchemaVersion"] = json!("2");
    let err = parse(&report).unwrap_err();
    assert!(
        matches!(&err, ScanError::Field { field, .. } if field == "SchemaVersion"),
        "{err:?}"
    );

    // Trivy before 0.20: a bare array of results.
    let legacy = json!([{"Target": "alpine:3.9 (alpine 3.9.4)", "Type": "alpine",
                         "Vulnerabilities": [trivy_vuln("CVE-1", "p", "1", "HIGH")]}]);
    let err = parse(&legacy).unwrap_err();
    assert!(
        matches!(err, ScanError::UnsupportedTrivySchema { .. }),
        "{err:?}"
    );
}

#[test]
fn scan_trivy_needs_more_than_a_schema_version() {
    // Fail closed: this must not read as a clean image.
    let err = parse_report(br#"{"SchemaVersion": 2}"#).unwrap_err();
    assert!(matches!(err, ScanError::UnknownFormat { .. }), "{err:?}");

    // But a real report of an image with nothing found has no `Results`.
    let clean = json!({"SchemaVersion": 2, "ArtifactName": "scratch-app",
                       "ArtifactType": "container_image", "Metadata": {}});
    let report = parse(&clean).unwrap();
    assert_eq!(report.counts, SeverityCounts::default());
    assert_eq!(report.scanned_at, None);
}

#[test]
fn scan_not_json_reports_line_and_column() {
    let err = parse_report(b"{\n  \"SchemaVersion\": 2,\n  oops\n}").unwrap_err();
    match &err {
        ScanError::NotJson { line, column, .. } => assert_eq!((*line, *column), (3, 3)),
        other => panic!("{other:?}"),
    }
    assert!(err.to_string().contains("line 3, column 3"), "{err}");

    // Trailing garbage after a complete report.
    let mut bytes = trivy(json!([])).to_string().into_bytes();
    bytes.extend_from_slice(b"\n{}");
    assert!(matches!(
        parse_report(&bytes),
        Err(ScanError::NotJson { .. })
    ));

    // UTF-16 (PowerShell `>`): says so.
    let err = parse_report(b"\xFF\xFE{\0}\0").unwrap_err();
    assert!(err.to_string().contains("UTF-16"), "{err}");
}

#[test]
fn scan_wrong_field_type_names_the_field() {
    let cases: [(Value, Scanner, &str); 7] = [
        (
            trivy(json!([{"Target": "t", "Vulnerabilities": [
                trivy_vuln("CVE-1", "p", "1", "LOW"),
                {"VulnerabilityID": "CVE-2", "PkgName": "p", "Severity": 3},
            ]}])),
            Scanner::Trivy,
            "Results[0].Vulnerabilities[1].Severity",
        ),
        (
            trivy(json!([{"Target": "t", "Vulnerabilities": {"CVE-1": {}}}])),
            Scanner::Trivy,
            "Results[0].Vulnerabilities",
        ),
        (trivy(json!({})), Scanner::Trivy, "Results"),
        (
            trivy(json!([{"Target": "t", "Vulnerabilities": [{"PkgName": "p"}]}])),
            Scanner::Trivy,
            "Results[0].Vulnerabilities[0].VulnerabilityID",
        ),
        (
            grype(json!([grype_match("CVE-1", "p", "1", "Low"), "CVE-2"])),
            Scanner::Grype,
            "matches[1]",
        ),
        (
            grype(json!([{"vulnerability": {"id": "CVE-1"}}])),
            Scanner::Grype,
            "matches[0].artifact",
        ),
        (grype(Value::Null), Scanner::Grype, "matches"),
    ];
    for (report, scanner, path) in cases {
        let err = parse(&report).unwrap_err();
        match &err {
            ScanError::Field {
                scanner: s, field, ..
            } => {
                assert_eq!((*s, field.as_str()), (scanner, path), "{err}");
            }
            other => panic!("{path}: {other:?}"),
        }
        assert!(err.to_string().contains(&format!("`{path}`")), "{err}");
    }

    let mut bad_digests = trivy(json!([]));
    bad_digests["Metadata"]["RepoDigests"] = json!("registry.example/web@sha256:00");
    let err = parse(&bad_digests).unwrap_err();
    assert_eq!(
        err.to_string(),
        "Trivy report: `Metadata.RepoDigests` should be an array, found a string"
    );
}

#[test]
fn scan_duplicate_keys_are_refused() {
    let dup_top = br#"{"SchemaVersion": 2, "ArtifactType": "container_image",
        "Results": [{"Vulnerabilities": [{"VulnerabilityID": "CVE-1", "Severity": "CRITICAL"}]}],
        "Results": []}"#;
    let err = parse_report(dup_top).unwrap_err();
    assert!(
        matches!(&err, ScanError::NotJson { message, .. } if message.contains("duplicate")),
        "{err:?}"
    );

    let dup_inner = br#"{"SchemaVersion": 2, "ArtifactType": "container_image",
        "Results": [{"Vulnerabilities": [{"VulnerabilityID": "CVE-1", "Severity": "CRITICAL", "Severity": "LOW"}]}]}"#;
    assert!(matches!(
        parse_report(dup_inner),
        Err(ScanError::NotJson { .. })
    ));
}

#[test]
fn scan_grype_non_image_sources() {
    let mut report = grype(json!([grype_match("CVE-1", "p", "1", "High")]));
    report["source"] = json!({"type": "directory", "target": "/src"});
    report["descriptor"]["timestamp"] = json!("");
    let got = parse(&report).unwrap();
    assert_eq!(counts_array(&got.counts), [0, 1, 0, 0, 0]);
    assert_eq!(
        (got.image_digest, got.image_name, got.scanned_at),
        (None, None, None)
    );

    report["source"] = json!({"type": "directory", "target": {"path": "/src"}});
    assert!(parse(&report).unwrap().image_digest.is_none());

    report["source"]["target"] = json!(7);
    let err = parse(&report).unwrap_err();
    assert_eq!(
        err.to_string(),
        "Grype report: `source.target` should be an object or a string, found a number"
    );
}

#[test]
fn scan_bom_is_tolerated_and_hash_covers_it() {
    let body =
        trivy(json!([{"Target": "t", "Vulnerabilities": [trivy_vuln("CVE-1", "p", "1", "HIGH")]}]))
            .to_string();
    let plain = parse_report(body.as_bytes()).unwrap();
    let mut with_bom = b"\xEF\xBB\xBF".to_vec();
    with_bom.extend_from_slice(body.as_bytes());
    let bom = parse_report(&with_bom).unwrap();
    assert_eq!(plain.counts, bom.counts);
    assert_ne!(plain.report_sha256, bom.report_sha256);
}

#[test]
fn scan_scanned_at_is_normalised_or_dropped() {
    for (created, want) in [
        (
            "2021-08-25T12:20:30.000000005Z",
            Some("2021-08-25T12:20:30Z"),
        ),
        ("2026-01-01T00:30:00+01:00", Some("2025-12-31T23:30:00Z")),
        ("2026-01-01", None),
        ("yesterday", None),
        ("9999-12-31T23:59:59-23:59", None),
    ] {
        let mut report = trivy(json!([]));
        report["CreatedAt"] = json!(created);
        assert_eq!(
            parse(&report).unwrap().scanned_at.as_deref(),
            want,
            "{created}"
        );
    }
}

#[test]
fn scan_to_vulns_fills_the_claim() {
    let report = parse(&grype(json!([
        grype_match("CVE-1", "p", "1", "Critical"),
        grype_match("CVE-2", "p", "1", "Medium"),
    ])))
    .unwrap();
    let vulns = report.to_vulns();
    assert_eq!(
        (
            vulns.critical,
            vulns.high,
            vulns.medium,
            vulns.low,
            vulns.unknown
        ),
        (1, 0, 1, 0, 0)
    );
    assert_eq!(vulns.scanner, "grype");
    assert_eq!(vulns.report, report.report_sha256);
    assert_eq!(vulns.scanned_at.as_deref(), Some("2026-11-20T10:00:00Z"));
    assert_eq!(Scanner::Trivy.as_str(), "trivy");
}

#[test]
fn scan_refuses_oversized_input_before_reading_it() {
    // `vec![0; n]` is lazily zeroed memory; nothing touches it.
    let big = vec![0u8; MAX_REPORT_BYTES + 1];
    let err = parse_report(&big).unwrap_err();
    assert_eq!(
        err,
        ScanError::TooLarge {
            size: MAX_REPORT_BYTES + 1,
            limit: MAX_REPORT_BYTES
        }
    );
}

#[test]
fn scan_deep_nesting_is_an_error_not_a_crash() {
    let deep = "[".repeat(200_000);
    assert!(matches!(
        parse_report(deep.as_bytes()),
        Err(ScanError::NotJson { .. })
    ));

    // Deep nesting inside a skipped field is skipped without recursion.
    let nested = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    let text = format!(
        r#"{{"SchemaVersion": 2, "ArtifactType": "container_image", "Results": [{{"Junk": {nested}}}]}}"#
    );
    let _ = parse_report(text.as_bytes());
}

// ---------------------------------------------------------------------------
// Properties: no input makes the reader panic.

/// Keys from both formats, so random objects often reach the deep paths.
const KEYS: &[&str] = &[
    "SchemaVersion",
    "ArtifactName",
    "ArtifactType",
    "CreatedAt",
    "Metadata",
    "ImageID",
    "RepoDigests",
    "Results",
    "Target",
    "Vulnerabilities",
    "VulnerabilityID",
    "PkgName",
    "InstalledVersion",
    "Severity",
    "matches",
    "source",
    "descriptor",
    "target",
    "type",
    "vulnerability",
    "artifact",
    "id",
    "name",
    "version",
    "severity",
    "timestamp",
    "userInput",
    "imageID",
    "manifestDigest",
    "repoDigests",
    "x",
];

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        (0u64..4).prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        prop::sample::select(vec![
            "",
            "CRITICAL",
            "high",
            "Negligible",
            "bogus",
            "CVE-1",
            "2026-11-20T10:00:00Z",
            D1,
            "r@sha256:2222222222222222222222222222222222222222222222222222222222222222",
        ])
        .prop_map(Value::from),
        ".{0,12}".prop_map(Value::from),
    ];
    leaf.prop_recursive(5, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::vec((prop::sample::select(KEYS), inner), 0..7).prop_map(|kv| {
                Value::Object(kv.into_iter().map(|(k, v)| (k.to_owned(), v)).collect())
            }),
        ]
    })
}

/// Checks the invariants of a successful read.
fn check(bytes: &[u8]) {
    if let Ok(report) = parse_report(bytes) {
        assert!(report.counts.total() <= report.listed);
        assert!(is_sha256_digest(&report.report_sha256));
        assert!(report.image_digests.iter().all(|d| is_sha256_digest(d)));
        assert_eq!(report.image_digest.as_ref(), report.image_digests.first());
    }
}

/// A string field: usually a plausible value, sometimes anything at all.
fn text() -> impl Strategy<Value = Value> {
    prop_oneof![
        12 => prop::sample::select(vec![
            "", "CRITICAL", "high", "Medium", "LOW", "Negligible", "unknown", "bogus",
            "CVE-1", "CVE-2", "p", "q", "1.0", "2026-11-20T10:00:00Z", D1, D2,
            "r@sha256:2222222222222222222222222222222222222222222222222222222222222222",
        ])
        .prop_map(Value::from),
        1 => json_value(),
    ]
}

/// An object with each of the given keys present most of the time, each a
/// [`text`] value.
fn record(keys: &'static [&'static str]) -> impl Strategy<Value = Value> {
    let fields: Vec<_> = keys
        .iter()
        .map(|_| prop::option::weighted(0.9, text()))
        .collect();
    fields.prop_map(move |values| {
        Value::Object(
            keys.iter()
                .zip(values)
                .filter_map(|(k, v)| Some(((*k).to_owned(), v?)))
                .collect(),
        )
    })
}

/// Trivy-shaped documents with plausible and implausible values mixed.
fn trivy_like() -> impl Strategy<Value = Value> {
    let vuln = record(&[
        "VulnerabilityID",
        "PkgName",
        "InstalledVersion",
        "Severity",
        "x",
    ]);
    let result = prop::collection::vec(vuln, 0..5).prop_map(|v| json!({"Vulnerabilities": v}));
    (
        prop_oneof![4 => Just(json!(2)), 1 => json_value()],
        prop::collection::vec(result, 0..4),
        prop::collection::vec(text(), 0..3),
        text(),
        text(),
    )
        .prop_map(|(version, results, repo_digests, image_id, created)| {
            json!({"SchemaVersion": version, "ArtifactType": "container_image", "Results": results,
                   "Metadata": {"RepoDigests": repo_digests, "ImageID": image_id},
                   "CreatedAt": created})
        })
}

/// Grype-shaped documents with plausible and implausible values mixed.
fn grype_like() -> impl Strategy<Value = Value> {
    let found = (
        record(&["id", "severity", "x"]),
        record(&["name", "version", "x"]),
    )
        .prop_map(|(v, a)| json!({"vulnerability": v, "artifact": a}));
    (
        prop::collection::vec(found, 0..6),
        record(&["userInput", "imageID", "manifestDigest", "x"]),
        prop::collection::vec(text(), 0..3),
        text(),
    )
        .prop_map(|(matches, mut target, repo_digests, timestamp)| {
            if let Value::Object(t) = &mut target {
                t.insert("repoDigests".to_owned(), Value::from(repo_digests));
            }
            json!({"matches": matches, "source": {"type": "image", "target": target},
                   "descriptor": {"timestamp": timestamp}})
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn scan_arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        check(&bytes);
    }

    #[test]
    fn scan_arbitrary_json_never_panics(value in json_value()) {
        check(value.to_string().as_bytes());
    }

    #[test]
    fn scan_report_shaped_json_never_panics(doc in prop_oneof![trivy_like(), grype_like()]) {
        check(doc.to_string().as_bytes());
    }

    #[test]
    fn scan_truncated_reports_never_panic(cut in 0usize..2000) {
        let doc = grype(json!([grype_match("CVE-1", "p", "1", "High")])).to_string();
        let bytes = doc.as_bytes();
        check(&bytes[..cut.min(bytes.len())]);
    }
}
