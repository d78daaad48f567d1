//! `appid inject config`: the namespace's `ConfigMap appid-sidecar`, which
//! every pod `appid inject` prepared mounts at `/etc/appid`.
//!
//! It holds three files: `proxy.yaml`, the sidecar configuration (written
//! here, to match the paths and ports injection uses: transparent inbound
//! and outbound listeners for both address families, the admin API on
//! loopback, the health listener on the pod IP, identity from the authority
//! with the pod's projected service-account token, state in the `emptyDir`);
//! `policy.yaml`, the user's policy, checked with the same engine the
//! sidecar runs before anything is printed; and `ca.pem`, the trust bundle,
//! checked to be PEM certificates. The trust domains default to the ones the
//! bundle's CAs name (their `spiffe://<td>` URI SAN).

use std::path::Path;

use appid_policy::policy::Policy;

use super::yaml::{block, quote};
use crate::identity::{ca, files, spiffe};
use crate::inject::{
    ADMIN_PORT, AUTHORITY_PORT, BUNDLE_PATH, CONFIG_MAP, HEALTH_PORT, INBOUND_PORT, OUTBOUND_PORT,
    POLICY_PATH, STATE_DIR, TOKEN_PATH,
};

/// The ConfigMap's keys: file names under `/etc/appid`.
pub const KEY_CONFIG: &str = "proxy.yaml";
pub const KEY_POLICY: &str = "policy.yaml";
pub const KEY_BUNDLE: &str = "ca.pem";

/// Kubernetes keeps a ConfigMap in at most 1 MiB.
const MAX_CONFIG_MAP_BYTES: usize = 1 << 20;

/// The authority's address inside the cluster, as `appid authority
/// manifests` deploys it by default.
pub fn default_authority_url() -> String {
    format!(
        "https://{}.{}:{AUTHORITY_PORT}",
        super::authority::NAME,
        super::authority::DEFAULT_NAMESPACE
    )
}

/// What the ConfigMap is made of.
#[derive(Debug, Clone)]
pub struct Inputs<'a> {
    pub namespace: &'a str,
    pub authority_url: &'a str,
    /// Empty: the trust domains the bundle's CAs name.
    pub trust_domains: &'a [String],
    /// The policy file's name (for messages) and text.
    pub policy: (&'a str, &'a str),
    /// The bundle file's name (for messages) and bytes.
    pub bundle: (&'a str, &'a [u8]),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Output {
    pub yaml: String,
    /// The trust domains the sidecars accept.
    pub trust_domains: Vec<String>,
    /// Things worth a look that do not stop the output.
    pub warnings: Vec<String>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigMapError {
    #[error("--namespace: {0}")]
    Namespace(String),
    #[error("--authority-url `{url}`: {reason}")]
    Url { url: String, reason: String },
    #[error("--trust-domain `{domain}`: {reason}")]
    TrustDomain { domain: String, reason: String },
    #[error("{file}: not a valid policy (nothing was printed):\n{errors}")]
    Policy { file: String, errors: String },
    #[error("{file}: {reason}")]
    Bundle { file: String, reason: String },
    #[error(
        "the ConfigMap would be {size} bytes, more than the 1 MiB Kubernetes stores; make the policy smaller"
    )]
    TooLarge { size: usize },
}

/// The ConfigMap, checked.
pub fn config_map(inputs: &Inputs<'_>) -> Result<Output, ConfigMapError> {
    super::check_namespace(inputs.namespace).map_err(ConfigMapError::Namespace)?;
    check_url(inputs.authority_url).map_err(|reason| ConfigMapError::Url {
        url: inputs.authority_url.escape_debug().to_string(),
        reason,
    })?;
    let (policy_file, policy) = inputs.policy;
    Policy::load(policy_file, policy).map_err(|errors| ConfigMapError::Policy {
        file: policy_file.to_owned(),
        errors: errors.to_string(),
    })?;
    let (bundle_file, bundle_bytes) = inputs.bundle;
    let bad_bundle = |reason: String| ConfigMapError::Bundle {
        file: bundle_file.to_owned(),
        reason,
    };
    let bundle =
        std::str::from_utf8(bundle_bytes).map_err(|_| bad_bundle("not a PEM text file".into()))?;
    let certs = files::parse_certs(Path::new(bundle_file), bundle_bytes)
        .map_err(|e| bad_bundle(format!("{e}; give the CA's ca.pem")))?;
    let named: Vec<String> = certs
        .iter()
        .filter_map(|der| ca::trust_domain_of_root(Path::new(bundle_file), der).ok())
        .fold(Vec::new(), |mut all, td| {
            if !all.contains(&td) {
                all.push(td);
            }
            all
        });

    let mut warnings = Vec::new();
    let trust_domains = if inputs.trust_domains.is_empty() {
        if named.is_empty() {
            return Err(bad_bundle(
                "no certificate in it names a trust domain (a spiffe://<td> URI SAN); \
                 give --trust-domain"
                    .into(),
            ));
        }
        named
    } else {
        for domain in inputs.trust_domains {
            spiffe::validate_trust_domain(domain).map_err(|e| ConfigMapError::TrustDomain {
                domain: domain.escape_debug().to_string(),
                reason: e.to_string(),
            })?;
            if !named.is_empty() && !named.contains(domain) {
                warnings.push(format!(
                    "--trust-domain {domain}: no CA in {bundle_file} is for it (they are for {}); \
                     peers of that domain will not verify",
                    named.join(", ")
                ));
            }
        }
        inputs.trust_domains.to_vec()
    };

    let proxy = proxy_yaml(inputs.namespace, inputs.authority_url, &trust_domains);
    let yaml = format!(
        "# appid: the sidecar configuration of namespace {ns}, mounted at /etc/appid by\n\
         # every pod `appid inject` prepared. Generated by `appid inject config`\n\
         # (appid {version}); after a change, restart the pods (`kubectl rollout restart`).\n\
         apiVersion: v1\n\
         kind: ConfigMap\n\
         metadata:\n  \
           name: {CONFIG_MAP}\n  \
           namespace: {ns}\n  \
           labels:\n    \
             app.kubernetes.io/name: appid\n    \
             app.kubernetes.io/component: sidecar-config\n    \
             app.kubernetes.io/managed-by: appid\n\
         data:\n  \
           {KEY_CONFIG}: {proxy}\n  \
           {KEY_POLICY}: {policy}\n  \
           {KEY_BUNDLE}: {bundle}\n",
        ns = inputs.namespace,
        version = env!("CARGO_PKG_VERSION"),
        proxy = block(&proxy, 2),
        policy = block(policy, 2),
        bundle = block(bundle, 2),
    );
    if yaml.len() > MAX_CONFIG_MAP_BYTES {
        return Err(ConfigMapError::TooLarge { size: yaml.len() });
    }
    Ok(Output {
        yaml,
        trust_domains,
        warnings,
    })
}

/// The sidecar configuration of the injected pods.
pub fn proxy_yaml(namespace: &str, authority_url: &str, trust_domains: &[String]) -> String {
    let domains: Vec<String> = trust_domains.iter().map(|d| quote(d)).collect();
    format!(
        "# The appid sidecar of the pods of namespace {namespace} (see `appid inject`).\n\
         identity:\n  \
           authority:\n    \
             url: {url}\n    \
             bundle: {BUNDLE_PATH}\n    \
             # the pod's projected service-account token (audience appid-authority)\n    \
             k8s_token_file: {TOKEN_PATH}\n    \
             # an emptyDir: a restarted sidecar renews with the identity kept here\n    \
             state_dir: {STATE_DIR}\n\
         trust_domains: [{domains}]\n\
         policy: {POLICY_PATH}\n\
         # Transparent: the redirect sends the pod's traffic here, both address families.\n\
         inbound:\n  \
           - listen: \"0.0.0.0:{INBOUND_PORT}\"\n  \
           - listen: \"[::]:{INBOUND_PORT}\"\n\
         outbound:\n  \
           - listen: \"127.0.0.1:{OUTBOUND_PORT}\"\n  \
           - listen: \"[::1]:{OUTBOUND_PORT}\"\n\
         admin: \"127.0.0.1:{ADMIN_PORT}\"\n\
         # kubelet's probes (/live, /ready, the app's /app-health/...) and Prometheus (/metrics)\n\
         health: \"[::]:{HEALTH_PORT}\"\n\
         audit_log: \"-\"\n",
        url = quote(authority_url),
        domains = domains.join(", "),
    )
}

fn check_url(url: &str) -> Result<(), String> {
    let example = "write e.g. https://appid-authority.appid-system:15170";
    let Some(rest) = url.strip_prefix("https://") else {
        return Err(format!(
            "not an https:// URL (the authority serves TLS only); {example}"
        ));
    };
    let host = rest.split(['/', '?', '#']).next().unwrap_or("");
    if host.is_empty()
        || host.contains('@')
        || url.chars().any(|c| c.is_whitespace() || c.is_control())
    {
        return Err(format!("not a usable URL; {example}"));
    }
    Ok(())
}

#[cfg(test)]
mod tests;
