use serde_json::{Value as Json, json};

use super::*;
use crate::identity::ca::{CA_CERT_FILE, CA_KEY_FILE};

fn options(td: &str) -> Options<'_> {
    Options {
        trust_domain: td,
        ..Options::default()
    }
}

/// A YAML list of strings (a container's `args`).
fn strings(list: &Json) -> Vec<&str> {
    list.as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect()
}

fn docs(yaml: &str) -> Vec<Json> {
    serde_saphyr::from_multiple::<Json>(yaml).unwrap_or_else(|e| panic!("{e}\n{yaml}"))
}

fn find<'j>(list: &'j Json, name: &str) -> &'j Json {
    list.as_array()
        .unwrap()
        .iter()
        .find(|i| i["name"] == name)
        .unwrap_or_else(|| panic!("no {name} in {list}"))
}

#[test]
fn the_authority_deployment() {
    let yaml = manifests(&options("prod.example")).unwrap();
    let docs = docs(&yaml);
    let kinds: Vec<&str> = docs.iter().map(|d| d["kind"].as_str().unwrap()).collect();
    assert_eq!(
        kinds,
        ["Namespace", "ServiceAccount", "Service", "StatefulSet"]
    );
    for doc in &docs[1..] {
        assert_eq!(doc["metadata"]["namespace"], DEFAULT_NAMESPACE);
        assert_eq!(doc["metadata"]["name"], NAME);
    }
    assert_eq!(docs[0]["metadata"]["name"], DEFAULT_NAMESPACE);
    assert_eq!(docs[1]["automountServiceAccountToken"], false);

    let service = &docs[2]["spec"];
    assert_eq!(service["ports"][0]["port"], AUTHORITY_PORT);
    let set = &docs[3]["spec"];
    assert_eq!(set["replicas"], 1);
    assert_eq!(set["serviceName"], NAME);
    assert_eq!(service["selector"], set["selector"]["matchLabels"]);
    let pod = &set["template"];
    assert_eq!(pod["metadata"]["annotations"]["appid.dev/inject"], "false");
    assert_eq!(
        pod["metadata"]["annotations"]["appid.dev/trust-domain"],
        "prod.example"
    );
    for (k, v) in set["selector"]["matchLabels"].as_object().unwrap() {
        assert_eq!(&pod["metadata"]["labels"][k], v);
    }
    let spec = &pod["spec"];
    assert_eq!(spec["automountServiceAccountToken"], false);
    assert_eq!(spec["securityContext"]["fsGroup"], PROXY_UID);
    let container = &spec["containers"][0];
    assert_eq!(container["image"], default_image());
    let args = strings(&container["args"]);
    assert_eq!(
        args,
        [
            "authority",
            "serve",
            "--dir",
            STATE_DIR,
            "--listen",
            "0.0.0.0:15170",
            "--k8s-jwks",
            "/etc/appid-k8s/jwks.json",
            "--k8s-issuer",
            DEFAULT_ISSUER,
            "--k8s-audience",
            TOKEN_AUDIENCE,
        ]
    );
    // The real command line parses them.
    crate::cli::parses(&args).unwrap();
    assert_eq!(
        find(&container["ports"], "authority")["containerPort"],
        AUTHORITY_PORT
    );
    assert_eq!(
        container["readinessProbe"]["httpGet"],
        json!({"path": "/healthz", "port": "authority", "scheme": "HTTPS"})
    );

    // The state volume is the authority's --dir; the CA's two files are
    // mounted into it under the names the authority reads.
    let mounts = &container["volumeMounts"];
    let state = mounts
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == "state")
        .unwrap();
    assert_eq!(state["mountPath"], STATE_DIR);
    let ca: Vec<(&str, &str)> = mounts
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["name"] == "ca")
        .map(|m| {
            (
                m["mountPath"].as_str().unwrap(),
                m["subPath"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        ca,
        [
            (format!("{STATE_DIR}/{CA_CERT_FILE}").as_str(), CA_CERT_FILE),
            (format!("{STATE_DIR}/{CA_KEY_FILE}").as_str(), CA_KEY_FILE)
        ]
    );
    let jwks = mounts
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == "jwks")
        .unwrap();
    assert_eq!(
        format!("{}/jwks.json", jwks["mountPath"].as_str().unwrap()),
        args[7]
    );
    assert_eq!(
        find(&spec["volumes"], "ca")["secret"],
        json!({"secretName": CA_SECRET, "defaultMode": 0o440})
    );
    assert_eq!(
        find(&spec["volumes"], "jwks")["configMap"]["name"],
        JWKS_CONFIG_MAP
    );
    let claim = &set["volumeClaimTemplates"][0];
    assert_eq!(claim["metadata"]["name"], "state");
    assert_eq!(claim["spec"]["resources"]["requests"]["storage"], "1Gi");
    assert!(claim["spec"].get("storageClassName").is_none());

    // The header says how to make the Secret and the ConfigMap.
    for needle in [
        "appid authority init --trust-domain prod.example",
        "create secret generic appid-ca",
        "--from-file=ca.pem=ca/ca.pem --from-file=ca.key=ca/ca.key",
        "kubectl get --raw /openid/v1/jwks",
        "create configmap appid-k8s-jwks --from-file=jwks.json=",
        "no RBAC",
    ] {
        assert!(yaml.contains(needle), "{needle:?} not in the header");
    }
}

#[test]
fn options_reach_the_manifests() {
    let yaml = manifests(&Options {
        trust_domain: "prod.example",
        namespace: "security",
        image: "registry.example/appid:2.0",
        k8s_issuer: "https://oidc.eks.eu-west-1.amazonaws.com/id/ABC",
        storage: "500Mi",
        storage_class: Some("fast-ssd"),
        pod_lookup: false,
        trust_labels: &[],
        database_secret: None,
        replicas: 1,
    })
    .unwrap();
    let docs = docs(&yaml);
    assert_eq!(docs[0]["metadata"]["name"], "security");
    let set = &docs[3]["spec"];
    let container = &set["template"]["spec"]["containers"][0];
    assert_eq!(container["image"], "registry.example/appid:2.0");
    assert_eq!(
        container["args"][9],
        "https://oidc.eks.eu-west-1.amazonaws.com/id/ABC"
    );
    let claim = &set["volumeClaimTemplates"][0]["spec"];
    assert_eq!(claim["storageClassName"], "fast-ssd");
    assert_eq!(claim["resources"]["requests"]["storage"], "500Mi");
}

#[test]
fn the_pod_lookup_gets_a_token_and_may_only_get_pods() {
    let keys = ["app".to_owned(), "app.kubernetes.io/version".to_owned()];
    let yaml = manifests(&Options {
        pod_lookup: true,
        trust_labels: &keys,
        ..options("prod.example")
    })
    .unwrap();
    let docs = docs(&yaml);
    let kinds: Vec<&str> = docs.iter().map(|d| d["kind"].as_str().unwrap()).collect();
    assert_eq!(
        kinds,
        [
            "Namespace",
            "ServiceAccount",
            "Service",
            "StatefulSet",
            "ClusterRole",
            "ClusterRoleBinding"
        ]
    );
    assert_eq!(docs[1]["automountServiceAccountToken"], true);
    let spec = &docs[3]["spec"]["template"]["spec"];
    assert_eq!(spec["automountServiceAccountToken"], true);
    let args = strings(&spec["containers"][0]["args"]);
    let tail = &args[args.len() - 4..];
    assert_eq!(
        tail,
        [
            "--k8s-api",
            "https://kubernetes.default.svc",
            "--k8s-trust-labels",
            "app,app.kubernetes.io/version"
        ]
    );
    // appid's image by tag: its containers are told by name (the
    // authority warns); by digest, by that digest too.
    assert!(!args.contains(&"--k8s-appid-digests"), "{args:?}");
    let digest = format!("sha256:{}", "1".repeat(64));
    let pinned = manifests(&Options {
        pod_lookup: true,
        image: &format!("registry.example/appid@{digest}"),
        ..options("prod.example")
    })
    .unwrap();
    let docs_pinned = self::docs(&pinned);
    let args = strings(&docs_pinned[3]["spec"]["template"]["spec"]["containers"][0]["args"]);
    assert_eq!(
        args[args.len() - 2..],
        ["--k8s-appid-digests", digest.as_str()]
    );
    crate::cli::parses(&args).unwrap();
    let role = &docs[4];
    assert_eq!(
        role["rules"],
        json!([{"apiGroups": [""], "resources": ["pods"], "verbs": ["get"]}])
    );
    let binding = &docs[5];
    assert_eq!(binding["roleRef"]["name"], role["metadata"]["name"]);
    assert_eq!(
        binding["subjects"],
        json!([{"kind": "ServiceAccount", "name": NAME, "namespace": DEFAULT_NAMESPACE}])
    );
    assert!(yaml.contains("may only `get` pods"), "{yaml}");

    // Without the lookup: no token, no RBAC, no --k8s-api.
    let plain = manifests(&options("prod.example")).unwrap();
    assert!(!plain.contains("ClusterRole") && !plain.contains("--k8s-api\n"));
    // Labels come from the API server: not without the lookup; and they
    // must be label keys.
    let err = manifests(&Options {
        trust_labels: &keys,
        ..options("prod.example")
    })
    .unwrap_err();
    assert_eq!(err.flag, "--k8s-trust-labels");
    let bad = ["Bad Key".to_owned()];
    let err = manifests(&Options {
        pod_lookup: true,
        trust_labels: &bad,
        ..options("prod.example")
    })
    .unwrap_err();
    assert_eq!(err.flag, "--k8s-trust-labels", "{err}");
}

#[test]
fn bad_options_name_the_flag() {
    let base = options("prod.example");
    for (options, flag) in [
        (options("Prod Example"), "--trust-domain"),
        (
            Options {
                namespace: "Appid",
                ..base.clone()
            },
            "--namespace",
        ),
        (
            Options {
                image: "a b",
                ..base.clone()
            },
            "--image",
        ),
        (
            Options {
                k8s_issuer: "http://kubernetes",
                ..base.clone()
            },
            "--k8s-issuer",
        ),
        (
            Options {
                storage: "lots",
                ..base.clone()
            },
            "--storage",
        ),
        (
            Options {
                storage: "1GB",
                ..base.clone()
            },
            "--storage",
        ),
        (
            Options {
                storage_class: Some("Fast_SSD"),
                ..base.clone()
            },
            "--storage-class",
        ),
    ] {
        let err = manifests(&options).unwrap_err();
        assert_eq!(err.flag, flag, "{err}");
        assert!(err.to_string().starts_with(flag), "{err}");
    }
    for good in ["1Gi", "10G", "1.5Gi", "512", "100k"] {
        assert!(is_quantity(good), "{good}");
    }
}

#[test]
fn with_a_database_secret_the_authority_is_a_deployment_of_stateless_replicas() {
    let yaml = manifests(&Options {
        database_secret: Some("appid-db"),
        replicas: 3,
        ..options("prod.example")
    })
    .unwrap();
    let docs = docs(&yaml);
    let kinds: Vec<&str> = docs.iter().map(|d| d["kind"].as_str().unwrap()).collect();
    assert_eq!(
        kinds,
        ["Namespace", "ServiceAccount", "Service", "Deployment"]
    );
    let spec = &docs[3]["spec"];
    assert_eq!(spec["replicas"], 3);
    assert!(spec.get("volumeClaimTemplates").is_none(), "no volume");
    assert!(spec.get("serviceName").is_none());
    let pod = &spec["template"]["spec"];
    assert_eq!(
        pod["topologySpreadConstraints"][0]["topologyKey"],
        "topology.kubernetes.io/zone"
    );
    let container = &pod["containers"][0];
    let env = find(&container["env"], "APPID_AUTHORITY_DATABASE");
    assert_eq!(
        env["valueFrom"]["secretKeyRef"],
        json!({"name": "appid-db", "key": "url"})
    );
    let args = strings(&container["args"]);
    assert_eq!(&args[2..4], ["--dir", CA_DIR]);
    assert_eq!(&args[args.len() - 2..], ["--audit-log", "/dev/stdout"]);
    crate::cli::parses(&args).unwrap();
    // The whole CA Secret is the directory, so its updates reach the pods.
    let ca = find(&container["volumeMounts"], "ca");
    assert_eq!(ca["mountPath"], CA_DIR);
    assert!(ca.get("subPath").is_none());
    assert!(yaml.contains("rollout restart deployment/appid-authority"));
    assert!(yaml.contains("exec deploy/appid-authority"));

    // Several replicas need PostgreSQL.
    let err = manifests(&Options {
        replicas: 2,
        ..options("prod.example")
    })
    .unwrap_err();
    assert_eq!(err.flag, "--replicas");
}
