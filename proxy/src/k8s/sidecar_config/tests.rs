use std::path::Path;

use serde_json::Value as Json;

use super::*;
use crate::config::{IdentitySource, ProxyConfig};
use crate::identity::ca::{CA_CERT_FILE, Ca, KeyAlg};
use crate::inject::{CONFIG_DIR, CONFIG_PATH};

const POLICY: &str = "\
# who may call whom
version: 1
default: deny
rules:
  - name: shop-reads-api
    action: allow
    from: { id: { glob: \"spiffe://prod.example/ns/shop/sa/*\" } }
    to: { labels.app: api }
    http: { methods: [GET], paths: [\"/v1/**\"] }
";

fn ca_pem(trust_domain: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    Ca::init(dir.path(), trust_domain, KeyAlg::EcdsaP256).unwrap();
    std::fs::read_to_string(dir.path().join(CA_CERT_FILE)).unwrap()
}

fn inputs<'a>(bundle: &'a str, trust_domains: &'a [String]) -> Inputs<'a> {
    Inputs {
        namespace: "shop",
        authority_url: "https://appid-authority.appid-system:15170",
        trust_domains,
        policy: ("policy.yaml", POLICY),
        bundle: ("ca.pem", bundle.as_bytes()),
    }
}

/// The sidecar's own config loader, on the generated `proxy.yaml`: what
/// the pods get must load as it is.
fn load(proxy: &str) -> ProxyConfig {
    ProxyConfig::from_yaml(KEY_CONFIG, Path::new(CONFIG_DIR), proxy)
        .unwrap_or_else(|e| panic!("{e}\n{proxy}"))
}

#[test]
fn the_config_map_holds_what_injected_pods_mount() {
    let bundle = ca_pem("prod.example");
    let out = config_map(&inputs(&bundle, &[])).unwrap();
    assert_eq!(out.trust_domains, ["prod.example"]);
    assert!(out.warnings.is_empty());
    let doc: Json = serde_saphyr::from_str(&out.yaml).unwrap();
    assert_eq!(doc["kind"], "ConfigMap");
    assert_eq!(doc["metadata"]["name"], CONFIG_MAP);
    assert_eq!(doc["metadata"]["namespace"], "shop");
    // The files arrive byte for byte, under the names the pod reads.
    assert_eq!(doc["data"][KEY_POLICY], POLICY);
    assert_eq!(doc["data"][KEY_BUNDLE], bundle.as_str());
    assert_eq!(format!("{CONFIG_DIR}/{KEY_CONFIG}"), CONFIG_PATH);
    assert_eq!(format!("{CONFIG_DIR}/{KEY_POLICY}"), POLICY_PATH);
    assert_eq!(format!("{CONFIG_DIR}/{KEY_BUNDLE}"), BUNDLE_PATH);
    assert_eq!(doc["data"].as_object().unwrap().len(), 3, "{}", out.yaml);

    let proxy = doc["data"][KEY_CONFIG].as_str().unwrap();
    assert_eq!(
        proxy,
        proxy_yaml(
            "shop",
            "https://appid-authority.appid-system:15170",
            &out.trust_domains
        )
    );
    let raw: Json = serde_saphyr::from_str(proxy).unwrap();
    assert_eq!(raw["health"], "[::]:15191");
    let config = load(proxy);
    assert!(
        config.admin.ip().is_loopback(),
        "the admin API stays on loopback"
    );
    assert_eq!(config.admin.port(), ADMIN_PORT);
    assert_eq!(config.policy, Path::new(POLICY_PATH));
    assert_eq!(config.trust_domains, ["prod.example"]);
    assert_eq!(config.inbound.len(), 2);
    assert!(
        config
            .inbound
            .iter()
            .all(|l| l.forward.is_none() && l.listen.port() == INBOUND_PORT)
    );
    assert!(
        config
            .outbound
            .iter()
            .all(|l| l.upstream.is_none() && l.listen.ip().is_loopback())
    );
    match &config.identity {
        IdentitySource::Authority {
            urls,
            bundle,
            join_token_file,
            k8s_token_file,
            state_dir,
            cloud,
            ..
        } => {
            assert_eq!(urls, &["https://appid-authority.appid-system:15170"]);
            assert_eq!(bundle, Path::new(BUNDLE_PATH));
            assert_eq!(k8s_token_file.as_deref(), Some(Path::new(TOKEN_PATH)));
            assert_eq!(state_dir.as_deref(), Some(Path::new(STATE_DIR)));
            assert!(join_token_file.is_none() && cloud.is_none());
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        default_authority_url(),
        "https://appid-authority.appid-system:15170"
    );
}

#[test]
fn trust_domains_come_from_the_bundle_or_the_flag() {
    let bundle = format!("{}{}", ca_pem("prod.example"), ca_pem("partner.example"));
    let out = config_map(&inputs(&bundle, &[])).unwrap();
    assert_eq!(out.trust_domains, ["prod.example", "partner.example"]);
    assert!(
        out.yaml
            .contains("trust_domains: [\"prod.example\", \"partner.example\"]")
    );

    let other = ["staging.example".to_owned()];
    let out = config_map(&inputs(&bundle, &other)).unwrap();
    assert_eq!(out.trust_domains, other);
    assert_eq!(out.warnings.len(), 1);
    assert!(
        out.warnings[0].contains("staging.example") && out.warnings[0].contains("prod.example")
    );

    let bad = ["Not A Domain".to_owned()];
    let err = config_map(&inputs(&bundle, &bad)).unwrap_err();
    assert!(
        err.to_string().starts_with("--trust-domain `Not A Domain`"),
        "{err}"
    );
}

#[test]
fn bad_inputs_name_the_flag_or_file() {
    let bundle = ca_pem("prod.example");
    let mut i = inputs(&bundle, &[]);
    i.namespace = "Shop";
    assert!(
        config_map(&i)
            .unwrap_err()
            .to_string()
            .starts_with("--namespace: `Shop`")
    );

    for url in [
        "http://a:15170",
        "https://",
        "https://user@a",
        "https://a b",
    ] {
        let mut i = inputs(&bundle, &[]);
        i.authority_url = url;
        let err = config_map(&i).unwrap_err().to_string();
        assert!(err.starts_with("--authority-url"), "{url}: {err}");
    }

    let mut i = inputs(&bundle, &[]);
    i.policy = (
        "my-policy.yaml",
        "version: 1\nrules:\n  - name: x\n    action: alow\n",
    );
    let err = config_map(&i).unwrap_err().to_string();
    assert!(
        err.starts_with("my-policy.yaml: not a valid policy"),
        "{err}"
    );
    assert!(err.contains("alow"), "{err}");

    for (text, needle) in [
        ("not pem at all", "ca.pem"),
        (
            "-----BEGIN CERTIFICATE-----\nnot base64!\n-----END CERTIFICATE-----\n",
            "ca.pem",
        ),
    ] {
        let mut i = inputs(text, &[]);
        i.bundle = ("ca.pem", text.as_bytes());
        let err = config_map(&i).unwrap_err().to_string();
        assert!(err.starts_with(needle), "{err}");
    }
    let mut i = inputs(&bundle, &[]);
    i.bundle = ("ca.pem", b"\xff\xfe");
    assert!(config_map(&i).unwrap_err().to_string().contains("PEM"));

    // A policy big enough to overflow a ConfigMap.
    let big = format!("{POLICY}#{}\n", "x".repeat(1 << 20));
    let mut i = inputs(&bundle, &[]);
    i.policy = ("policy.yaml", &big);
    assert!(matches!(
        config_map(&i),
        Err(ConfigMapError::TooLarge { .. })
    ));
}

#[test]
fn a_certificate_without_a_trust_domain_needs_the_flag() {
    let params = rcgen::CertificateParams::new(vec!["example.com".to_owned()]).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let pem = params.self_signed(&key).unwrap().pem();
    let err = config_map(&inputs(&pem, &[])).unwrap_err().to_string();
    assert!(
        err.starts_with("ca.pem: ") && err.contains("--trust-domain"),
        "{err}"
    );
    let td = ["prod.example".to_owned()];
    assert_eq!(config_map(&inputs(&pem, &td)).unwrap().trust_domains, td);
}
