//! Grype JSON (`grype -o json`).
//!
//! The fields read, and why:
//! - `matches[]`: `vulnerability.id`, `vulnerability.severity`,
//!   `artifact.name`, `artifact.version`. Grype writes one match per
//!   (vulnerability, package): one CVE in six packages is six findings, and a
//!   GHSA that aliases a CVE (`relatedVulnerabilities`) is a finding of its
//!   own, as Grype itself counts them. The same (ID, name, version) listed
//!   twice (e.g. the package found by two catalogers) counts once.
//! - `source.target` (an object for images; a string such as `"unknown"`
//!   or a path for other sources): `manifestDigest`, `imageID` and
//!   `repoDigests[]` for the image digest, `userInput` for its name.
//! - `descriptor.timestamp` for the scan time (`""` in Grype's own test
//!   snapshots, which means "no time").
//!
//! `ignoredMatches` are matches the operator's Grype configuration chose to
//! ignore; they are not findings and are skipped unread.

use serde::Deserialize;
use serde::de::MapAccess;
use serde::de::value::MapAccessDeserializer;

use super::shape::{Shaped, Slot, shaped_object};
use super::{
    Digests, Findings, Listed, ScanError, ScanReport, Scanner, element, non_empty, normalize_time,
    optional, required,
};

const GRYPE: Scanner = Scanner::Grype;

/// The Grype top-level keys that identify the format (all three needed).
const KEYS: [&str; 3] = ["matches", "source", "descriptor"];

#[derive(Default)]
pub(super) struct TopFields {
    matches: Option<Slot<Vec<Slot<Match>>>>,
    source: Option<Slot<Source>>,
    descriptor: Option<Slot<Descriptor>>,
}

#[derive(Deserialize)]
struct Match {
    #[serde(default)]
    vulnerability: Option<Slot<Vulnerability>>,
    #[serde(default)]
    artifact: Option<Slot<Artifact>>,
}

#[derive(Deserialize)]
struct Vulnerability {
    #[serde(default)]
    id: Option<Slot<String>>,
    #[serde(default)]
    severity: Option<Slot<String>>,
}

#[derive(Deserialize)]
struct Artifact {
    #[serde(default)]
    name: Option<Slot<String>>,
    #[serde(default)]
    version: Option<Slot<String>>,
}

#[derive(Deserialize)]
struct Source {
    #[serde(default)]
    target: Option<Slot<Target>>,
}

#[derive(Deserialize)]
struct Descriptor {
    #[serde(default)]
    timestamp: Option<Slot<String>>,
}

/// `source.target`: an object for images (and, in newer Grype, directories
/// and files), a plain string for other sources.
enum Target {
    Object(TargetObject),
    Text,
}

#[derive(Deserialize)]
struct TargetObject {
    #[serde(rename = "userInput", default)]
    user_input: Option<Slot<String>>,
    #[serde(rename = "imageID", default)]
    image_id: Option<Slot<String>>,
    #[serde(rename = "manifestDigest", default)]
    manifest_digest: Option<Slot<String>>,
    #[serde(rename = "repoDigests", default)]
    repo_digests: Option<Slot<Vec<Slot<String>>>>,
}

shaped_object!(
    Match,
    Vulnerability,
    Artifact,
    Source,
    Descriptor,
    TargetObject
);

impl Shaped for Target {
    const EXPECTED: &'static str = "an object or a string";
    fn from_str(_: &str) -> Option<Self> {
        Some(Target::Text)
    }
    fn from_map<'de, A: MapAccess<'de>>(map: A) -> Result<Option<Self>, A::Error> {
        TargetObject::deserialize(MapAccessDeserializer::new(map)).map(|t| Some(Target::Object(t)))
    }
}

impl TopFields {
    /// Reads the value of `key` if it is a Grype top-level key.
    pub(super) fn read_field<'de, A: MapAccess<'de>>(
        &mut self,
        key: &str,
        map: &mut A,
    ) -> Result<bool, A::Error> {
        match key {
            "matches" => self.matches = Some(map.next_value()?),
            "source" => self.source = Some(map.next_value()?),
            "descriptor" => self.descriptor = Some(map.next_value()?),
            _ => return Ok(false),
        }
        Ok(true)
    }

    /// A Grype report has all three of `matches`, `source` and `descriptor`.
    pub(super) fn is_present(&self) -> bool {
        self.present().iter().all(|&p| p)
    }

    fn present(&self) -> [bool; 3] {
        [
            self.matches.is_some(),
            self.source.is_some(),
            self.descriptor.is_some(),
        ]
    }

    /// The Grype keys present, for messages.
    pub(super) fn present_keys(&self) -> impl Iterator<Item = &'static str> {
        KEYS.into_iter()
            .zip(self.present())
            .filter_map(|(key, present)| present.then_some(key))
    }

    /// The Grype keys missing, for messages.
    pub(super) fn missing_keys(&self) -> Vec<&'static str> {
        KEYS.into_iter()
            .zip(self.present())
            .filter_map(|(key, present)| (!present).then_some(key))
            .collect()
    }

    pub(super) fn into_report(self) -> Result<ScanReport, ScanError> {
        let mut findings = Findings::default();
        let matches = required(self.matches, GRYPE, || "matches".to_owned())?;
        for (m, found) in matches.into_iter().enumerate() {
            let at = |field: &str| format!("matches[{m}]{field}");
            let found = element(found, GRYPE, || at(""))?;
            let vuln = required(found.vulnerability, GRYPE, || at(".vulnerability"))?;
            let artifact = required(found.artifact, GRYPE, || at(".artifact"))?;
            let listed = Listed {
                id: required(vuln.id, GRYPE, || at(".vulnerability.id"))?,
                package: optional(artifact.name, GRYPE, || at(".artifact.name"))?,
                version: optional(artifact.version, GRYPE, || at(".artifact.version"))?,
                severity: optional(vuln.severity, GRYPE, || at(".vulnerability.severity"))?,
            };
            findings.add_listed(GRYPE, || at(".vulnerability.id"), listed)?;
        }

        let mut digests = Digests::default();
        let mut image_name = None;
        let source = required(self.source, GRYPE, || "source".to_owned())?;
        let target = optional(source.target, GRYPE, || "source.target".to_owned())?;
        if let Some(Target::Object(target)) = target {
            let field = |name: &str| format!("source.target.{name}");
            if let Some(d) = optional(target.manifest_digest, GRYPE, || field("manifestDigest"))? {
                digests.add(&d);
            }
            if let Some(d) = optional(target.image_id, GRYPE, || field("imageID"))? {
                digests.add(&d);
            }
            let repo_digests =
                optional(target.repo_digests, GRYPE, || field("repoDigests"))?.unwrap_or_default();
            for (i, d) in repo_digests.into_iter().enumerate() {
                let d = element(d, GRYPE, || format!("source.target.repoDigests[{i}]"))?;
                digests.add_repo_digest(&d);
            }
            image_name = optional(target.user_input, GRYPE, || field("userInput"))?;
        }

        let descriptor = required(self.descriptor, GRYPE, || "descriptor".to_owned())?;
        let timestamp = optional(descriptor.timestamp, GRYPE, || {
            "descriptor.timestamp".to_owned()
        })?;

        Ok(ScanReport {
            scanner: GRYPE,
            counts: findings.counts(),
            listed: findings.listed,
            image_digest: digests.0.first().cloned(),
            image_digests: digests.0,
            image_name: non_empty(image_name),
            scanned_at: timestamp.as_deref().and_then(normalize_time),
            report_sha256: String::new(),
        })
    }
}
