//! Trivy JSON (`trivy image --format json`, `SchemaVersion` 2).
//!
//! The fields read, and why:
//! - `SchemaVersion`: must be 2. Trivy before 0.20 wrote a bare array of
//!   results; that and any other version are refused rather than guessed at.
//! - `Results[].Vulnerabilities[]`: `VulnerabilityID` (required), `PkgName`,
//!   `InstalledVersion` (Trivy omits them when empty) and `Severity`. A
//!   result with no findings has no `Vulnerabilities` key; `Results` itself
//!   is omitted when nothing was found at all.
//! - `Metadata.RepoDigests` (`repo@sha256:…`, null for a local image) and
//!   `Metadata.ImageID` (the config digest) for the image digest.
//! - `ArtifactName` for the image name, `CreatedAt` for the scan time.
//!
//! `Secrets`, `Misconfigurations` and `Licenses` are not vulnerabilities and
//! are skipped unread.

use serde::Deserialize;
use serde::de::{IgnoredAny, MapAccess};

use super::shape::{Kind, Num, Slot, shaped_object};
use super::{
    Digests, Findings, Listed, ScanError, ScanReport, Scanner, TRIVY_SCHEMA_VERSION, element,
    non_empty, normalize_time, optional, required,
};

const TRIVY: Scanner = Scanner::Trivy;

/// The Trivy top-level keys, in the order they are reported in messages.
const KEYS: [&str; 6] = [
    "SchemaVersion",
    "ArtifactName",
    "ArtifactType",
    "CreatedAt",
    "Metadata",
    "Results",
];

/// Trivy's top-level fields. `null` is kept as `Slot::Wrong(Kind::Null)` so
/// that a present-but-null key still counts as present for detection.
#[derive(Default)]
pub(super) struct TopFields {
    schema_version: Option<Slot<Num>>,
    artifact_name: Option<Slot<String>>,
    artifact_type: Option<Slot<String>>,
    created_at: Option<Slot<String>>,
    metadata: Option<Slot<Metadata>>,
    results: Option<Slot<Vec<Slot<TrivyResult>>>>,
}

#[derive(Deserialize)]
struct Metadata {
    #[serde(rename = "ImageID", default)]
    image_id: Option<Slot<String>>,
    #[serde(rename = "RepoDigests", default)]
    repo_digests: Option<Slot<Vec<Slot<String>>>>,
}

#[derive(Deserialize)]
struct TrivyResult {
    #[serde(rename = "Vulnerabilities", default)]
    vulnerabilities: Option<Slot<Vec<Slot<Vulnerability>>>>,
}

#[derive(Deserialize)]
struct Vulnerability {
    #[serde(rename = "VulnerabilityID", default)]
    id: Option<Slot<String>>,
    #[serde(rename = "PkgName", default)]
    package: Option<Slot<String>>,
    #[serde(rename = "InstalledVersion", default)]
    version: Option<Slot<String>>,
    #[serde(rename = "Severity", default)]
    severity: Option<Slot<String>>,
}

/// One element of the pre-0.20 array format, read only to recognise it.
#[derive(Deserialize)]
pub(super) struct LegacyResult {
    #[serde(rename = "Target", default)]
    target: Option<IgnoredAny>,
}

impl LegacyResult {
    pub(super) fn looks_like_trivy(&self) -> bool {
        self.target.is_some()
    }
}

shaped_object!(Metadata, TrivyResult, Vulnerability, LegacyResult);

impl TopFields {
    /// Reads the value of `key` if it is a Trivy top-level key.
    pub(super) fn read_field<'de, A: MapAccess<'de>>(
        &mut self,
        key: &str,
        map: &mut A,
    ) -> Result<bool, A::Error> {
        match key {
            "SchemaVersion" => self.schema_version = Some(map.next_value()?),
            "ArtifactName" => self.artifact_name = Some(map.next_value()?),
            "ArtifactType" => self.artifact_type = Some(map.next_value()?),
            "CreatedAt" => self.created_at = Some(map.next_value()?),
            "Metadata" => self.metadata = Some(map.next_value()?),
            "Results" => self.results = Some(map.next_value()?),
            _ => return Ok(false),
        }
        Ok(true)
    }

    /// A Trivy report is recognised by `SchemaVersion`, whatever its value:
    /// a wrong version is then reported as such, not as "unknown format".
    pub(super) fn is_present(&self) -> bool {
        self.schema_version.is_some()
    }

    /// The Trivy keys present, for messages.
    pub(super) fn present_keys(&self) -> impl Iterator<Item = &'static str> {
        let present = [
            self.schema_version.is_some(),
            self.artifact_name.is_some(),
            self.artifact_type.is_some(),
            self.created_at.is_some(),
            self.metadata.is_some(),
            self.results.is_some(),
        ];
        KEYS.into_iter()
            .zip(present)
            .filter_map(|(key, present)| present.then_some(key))
    }

    pub(super) fn into_report(self) -> Result<ScanReport, ScanError> {
        match self.schema_version {
            Some(Slot::Got(Num::U(TRIVY_SCHEMA_VERSION))) => {}
            Some(Slot::Got(other)) => {
                return Err(ScanError::UnsupportedTrivySchema {
                    found: other.to_string(),
                });
            }
            Some(Slot::Wrong(Kind::Null)) | None => {
                return Err(ScanError::UnsupportedTrivySchema {
                    found: "null".to_owned(),
                });
            }
            Some(Slot::Wrong(found)) => {
                return Err(ScanError::wrong(TRIVY, "SchemaVersion", "a number", found));
            }
        }
        // Fail closed: `{"SchemaVersion": 2}` alone must not read as a clean
        // image. Every real report has `ArtifactType`, and `Results` when
        // anything was scanned.
        if self.results.is_none() && self.artifact_type.is_none() {
            return Err(ScanError::UnknownFormat {
                found: "an object with `SchemaVersion` 2 but neither `Results` nor `ArtifactType`"
                    .to_owned(),
            });
        }
        optional(self.artifact_type, TRIVY, || "ArtifactType".to_owned())?;

        let mut findings = Findings::default();
        let results = optional(self.results, TRIVY, || "Results".to_owned())?.unwrap_or_default();
        for (r, result) in results.into_iter().enumerate() {
            let result = element(result, TRIVY, || format!("Results[{r}]"))?;
            let vulns = optional(result.vulnerabilities, TRIVY, || {
                format!("Results[{r}].Vulnerabilities")
            })?
            .unwrap_or_default();
            for (v, vuln) in vulns.into_iter().enumerate() {
                let at = |field: &str| format!("Results[{r}].Vulnerabilities[{v}]{field}");
                let vuln = element(vuln, TRIVY, || at(""))?;
                let listed = Listed {
                    id: required(vuln.id, TRIVY, || at(".VulnerabilityID"))?,
                    package: optional(vuln.package, TRIVY, || at(".PkgName"))?,
                    version: optional(vuln.version, TRIVY, || at(".InstalledVersion"))?,
                    severity: optional(vuln.severity, TRIVY, || at(".Severity"))?,
                };
                findings.add_listed(TRIVY, || at(".VulnerabilityID"), listed)?;
            }
        }

        let mut digests = Digests::default();
        if let Some(meta) = optional(self.metadata, TRIVY, || "Metadata".to_owned())? {
            let repo_digests = optional(meta.repo_digests, TRIVY, || {
                "Metadata.RepoDigests".to_owned()
            })?
            .unwrap_or_default();
            for (i, d) in repo_digests.into_iter().enumerate() {
                let d = element(d, TRIVY, || format!("Metadata.RepoDigests[{i}]"))?;
                digests.add_repo_digest(&d);
            }
            if let Some(id) = optional(meta.image_id, TRIVY, || "Metadata.ImageID".to_owned())? {
                digests.add(&id);
            }
        }

        let image_name = optional(self.artifact_name, TRIVY, || "ArtifactName".to_owned())?;
        let created_at = optional(self.created_at, TRIVY, || "CreatedAt".to_owned())?;

        Ok(ScanReport {
            scanner: TRIVY,
            counts: findings.counts(),
            listed: findings.listed,
            image_digest: digests.0.first().cloned(),
            image_digests: digests.0,
            image_name: non_empty(image_name),
            scanned_at: created_at.as_deref().and_then(normalize_time),
            report_sha256: String::new(),
        })
    }
}
