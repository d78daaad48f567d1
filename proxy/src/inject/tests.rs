use std::path::{Path, PathBuf};

use proptest::prelude::*;
use serde_json::Value as Json;

use super::*;

fn opts() -> InjectOptions {
    InjectOptions::default()
}

fn run(input: &str) -> InjectOutput {
    inject(input, &opts()).unwrap_or_else(|e| panic!("inject failed: {e}\n{input}"))
}

/// Injects, checks that injecting again changes nothing, returns the first
/// output.
fn run_twice(input: &str) -> InjectOutput {
    let once = run(input);
    let twice = run(&once.yaml);
    assert_eq!(
        twice.yaml, once.yaml,
        "not idempotent; first output:\n{}",
        once.yaml
    );
    assert_eq!(twice.injected, once.injected);
    assert_eq!(twice.skipped, once.skipped);
    once
}

/// The warnings other than the one per container that may get around
/// capture (which every container of `manifest()` gets: it sets no
/// securityContext).
fn not_about_capture(out: &InjectOutput) -> Vec<&str> {
    out.warnings
        .iter()
        .map(String::as_str)
        .filter(|w| !w.contains(CAPTURE_WARNING))
        .collect()
}

/// What the warnings about a container that may get around capture say.
const CAPTURE_WARNING: &str = "may get around capture";

/// Every non-empty document, as plain data (an independent parser: serde-saphyr).
fn docs(yaml: &str) -> Vec<Json> {
    serde_saphyr::from_multiple::<Json>(yaml)
        .unwrap_or_else(|e| panic!("output is not valid YAML: {e}\n{yaml}"))
}

const WORKLOADS: [&str; 7] = [
    "Pod",
    "Deployment",
    "StatefulSet",
    "DaemonSet",
    "ReplicaSet",
    "Job",
    "CronJob",
];

fn pod_spec_mut(doc: &mut Json) -> Option<&mut Json> {
    let kind = doc.get("kind")?.as_str()?.to_owned();
    match kind.as_str() {
        "Pod" => doc.get_mut("spec"),
        "Deployment" | "StatefulSet" | "DaemonSet" | "ReplicaSet" | "Job" => {
            doc.get_mut("spec")?.get_mut("template")?.get_mut("spec")
        }
        "CronJob" => doc
            .get_mut("spec")?
            .get_mut("jobTemplate")?
            .get_mut("spec")?
            .get_mut("template")?
            .get_mut("spec"),
        _ => None,
    }
}

fn pod_spec(doc: &Json) -> Option<Json> {
    pod_spec_mut(&mut doc.clone()).cloned()
}

fn names(list: Option<&Json>) -> Vec<String> {
    list.and_then(Json::as_array)
        .map(|items| {
            items
                .iter()
                .map(|i| i["name"].as_str().unwrap_or("").to_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// One `appid-init` then one `appid-proxy` first in `initContainers`,
/// each volume of ours once.
fn assert_injected(spec: &Json) {
    let inits = names(spec.get("initContainers"));
    assert!(inits.len() >= 2, "initContainers: {inits:?}");
    assert_eq!(inits[0], INIT_CONTAINER, "{inits:?}");
    assert_eq!(inits[1], PROXY_CONTAINER, "{inits:?}");
    assert_eq!(inits.iter().filter(|n| n.starts_with("appid-")).count(), 2);
    let proxy = &spec["initContainers"][1];
    assert_eq!(proxy["restartPolicy"], "Always");
    assert_eq!(proxy["securityContext"]["runAsUser"], 1337);
    assert_eq!(proxy["securityContext"]["runAsGroup"], 1337);
    assert_eq!(proxy["securityContext"]["runAsNonRoot"], true);
    assert_eq!(
        proxy["args"],
        serde_json::json!(["proxy", "--config", "/etc/appid/proxy.yaml"])
    );
    let init = &spec["initContainers"][0];
    assert_eq!(init["securityContext"]["runAsUser"], 0);
    assert_eq!(init["securityContext"]["privileged"], false);
    assert_eq!(
        init["securityContext"]["capabilities"],
        serde_json::json!({"add": ["NET_ADMIN", "NET_RAW"], "drop": ["ALL"]})
    );
    let volumes = names(spec.get("volumes"));
    for ours in [VOLUME_CONFIG, VOLUME_IDENTITY, VOLUME_RUN] {
        assert_eq!(
            volumes.iter().filter(|n| *n == ours).count(),
            1,
            "{volumes:?}"
        );
    }
    assert!(
        names(spec.get("containers"))
            .iter()
            .all(|n| !n.starts_with("appid-"))
    );
}

/// The pod template (the Pod itself for a Pod).
fn template_mut(doc: &mut Json) -> Option<&mut Json> {
    let kind = doc.get("kind")?.as_str()?.to_owned();
    match kind.as_str() {
        "Pod" => Some(doc),
        "CronJob" => doc
            .get_mut("spec")?
            .get_mut("jobTemplate")?
            .get_mut("spec")?
            .get_mut("template"),
        _ => doc.get_mut("spec")?.get_mut("template"),
    }
}

/// The pod template's annotations (empty when there are none).
fn pod_annotations(doc: &Json) -> serde_json::Map<String, Json> {
    template_mut(&mut doc.clone())
        .and_then(|t| t.get("metadata"))
        .and_then(|m| m.get("annotations"))
        .and_then(Json::as_object)
        .cloned()
        .unwrap_or_default()
}

/// `APPID_APP_PROBES` of the injected sidecar, parsed (empty without).
fn app_probes(spec: &Json) -> serde_json::Map<String, Json> {
    spec["initContainers"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|c| c["name"] == PROXY_CONTAINER)
        .flat_map(|c| c["env"].as_array().cloned().unwrap_or_default())
        .find(|e| e["name"] == APP_PROBES_ENV)
        .map(|e| {
            serde_json::from_str(e["value"].as_str().unwrap()).expect("APPID_APP_PROBES is JSON")
        })
        .unwrap_or_default()
}

/// Puts the original probe handlers back, from `APPID_APP_PROBES`.
fn unrewrite_probes(spec: &mut Json) {
    let targets = app_probes(spec);
    for list in ["containers", "initContainers"] {
        let Some(items) = spec.get_mut(list).and_then(Json::as_array_mut) else {
            continue;
        };
        for container in items {
            for key in ["livenessProbe", "readinessProbe", "startupProbe"] {
                let Some(probe) = container.get_mut(key).and_then(Json::as_object_mut) else {
                    continue;
                };
                let Some(path) = probe
                    .get("httpGet")
                    .and_then(|g| g["path"].as_str())
                    .filter(|p| p.starts_with("/app-health/"))
                    .map(str::to_owned)
                else {
                    continue;
                };
                let target = targets
                    .get(&path)
                    .unwrap_or_else(|| panic!("no target for {path}"));
                probe.remove("httpGet");
                if let Some(get) = target.get("httpGet") {
                    let mut get = get.as_object().unwrap().clone();
                    if get.get("scheme").is_some_and(|s| s == "HTTP") {
                        get.remove("scheme");
                    }
                    probe.insert("httpGet".into(), Json::Object(get));
                } else {
                    probe.insert("tcpSocket".into(), target["tcpSocket"].clone());
                }
            }
        }
    }
}

/// The status and Prometheus annotations are on the pod template.
fn assert_annotated(doc: &Json) {
    let annotations = pod_annotations(doc);
    let status: Json = serde_json::from_str(annotations[ANNOTATION_STATUS].as_str().unwrap())
        .expect("the status is JSON");
    assert_eq!(
        status,
        serde_json::json!({"version": env!("CARGO_PKG_VERSION"),
            "initContainers": ["appid-init", "appid-proxy"],
            "volumes": ["appid-config", "appid-identity", "appid-run"]})
    );
    for (k, v) in PROMETHEUS_ANNOTATIONS {
        assert_eq!(annotations[k], v, "{k}");
    }
}

/// The document minus what injection adds: our init containers and
/// volumes, our pod annotations, and the probe rewrites (undone from
/// `APPID_APP_PROBES`).
fn strip(mut doc: Json) -> Json {
    if let Some(spec) = pod_spec_mut(&mut doc) {
        unrewrite_probes(spec);
    }
    if let Some(spec) = pod_spec_mut(&mut doc).and_then(Json::as_object_mut) {
        for key in ["initContainers", "volumes"] {
            if let Some(list) = spec.get_mut(key).and_then(Json::as_array_mut) {
                list.retain(|i| !i["name"].as_str().unwrap_or("").starts_with("appid-"));
                if list.is_empty() {
                    spec.remove(key);
                }
            }
        }
    }
    if let Some(template) = template_mut(&mut doc).and_then(Json::as_object_mut)
        && let Some(meta) = template.get_mut("metadata").and_then(Json::as_object_mut)
    {
        if let Some(annotations) = meta.get_mut("annotations").and_then(Json::as_object_mut) {
            annotations.remove(ANNOTATION_STATUS);
            for (k, v) in PROMETHEUS_ANNOTATIONS {
                if annotations.get(k).is_some_and(|x| x == v) {
                    annotations.remove(k);
                }
            }
            if annotations.is_empty() {
                meta.remove("annotations");
            }
        }
        if meta.is_empty() {
            template.remove("metadata");
        }
    }
    doc
}

fn init_args(spec: &Json) -> Vec<String> {
    spec["initContainers"][0]["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap().to_owned())
        .collect()
}

/// Each document's own text and kind, by the same parser the injector uses.
fn doc_texts(yaml: &str) -> Vec<(String, String)> {
    tree::parse(yaml)
        .unwrap()
        .into_iter()
        .map(|d| {
            let kind = d
                .root
                .get_all("kind")
                .next()
                .and_then(|(_, v)| v.scalar())
                .unwrap_or("")
                .to_owned();
            let text = yaml.get(d.root.start..d.root.end).unwrap_or("").to_owned();
            (kind, text)
        })
        .collect()
}

/// The input's lines appear in the output, in order (injection only adds
/// lines on a first run).
fn assert_lines_kept(input: &str, output: &str) {
    let handlers = probe_handler_lines(input);
    let mut out = output.lines();
    for (i, line) in input.lines().enumerate() {
        if handlers.contains(&i) {
            continue;
        }
        // A flow mapping on one line may get entries added at its end.
        let extended = |o: &str| {
            line.strip_suffix('}')
                .is_some_and(|head| o.starts_with(head) && o.ends_with('}'))
        };
        assert!(
            out.any(|o| o == line || extended(o)),
            "input line {line:?} is missing or out of order in:\n{output}"
        );
    }
}

/// The lines of block `httpGet:`/`tcpSocket:` probe handlers (which the
/// probe rewrite replaces), by index.
fn probe_handler_lines(input: &str) -> std::collections::HashSet<usize> {
    let indent = |l: &str| l.len() - l.trim_start().len();
    let lines: Vec<&str> = input.lines().collect();
    let mut found = std::collections::HashSet::new();
    for (i, line) in lines.iter().enumerate() {
        let t = line.trim();
        if t != "httpGet:" && t != "tcpSocket:" {
            continue;
        }
        found.insert(i);
        for (j, next) in lines.iter().enumerate().skip(i + 1) {
            if next.trim().is_empty() || indent(next) <= indent(line) {
                break;
            }
            found.insert(j);
        }
    }
    found
}

fn fixtures_dir() -> Option<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/fixtures/k8s");
    if dir.is_dir() {
        return Some(dir);
    }
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("fixtures {} are missing (CI=true)", dir.display());
    }
    eprintln!("skipped: fixtures {} are missing", dir.display());
    None
}

#[test]
fn every_fixture_manifest() {
    let Some(dir) = fixtures_dir() else { return };
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml" || e == "yml"))
        .collect();
    files.sort();
    assert!(files.len() >= 3, "{files:?}");
    let mut workloads_seen = 0;
    for file in &files {
        let input = std::fs::read_to_string(file).unwrap();
        let out = run_twice(&input);
        let name = file.display();
        // Besides the one per container that is not hardened against
        // getting around capture, only gRPC probes are worth a warning in
        // these manifests: one per container and port.
        let before = docs(&input);
        let mut unhardened: Vec<String> = before
            .iter()
            .filter_map(pod_spec)
            .flat_map(|spec| unhardened_containers(&spec))
            .collect();
        let mut warned: Vec<String> = out
            .warnings
            .iter()
            .filter(|w| w.contains(CAPTURE_WARNING))
            .map(|w| w.split('`').nth(1).unwrap_or_default().to_owned())
            .collect();
        unhardened.sort();
        warned.sort();
        assert_eq!(warned, unhardened, "{name}: {:?}", out.warnings);
        let grpc_containers = input.matches("grpc:").count() / 2;
        let others = not_about_capture(&out);
        assert_eq!(others.len(), grpc_containers, "{name}: {:?}", out.warnings);
        for w in others {
            assert!(
                w.contains("livenessProbe and readinessProbe: gRPC probes")
                    && w.contains("appid.dev/exclude-inbound-ports"),
                "{w}"
            );
        }
        assert_eq!(out.skipped, 0, "{name}");

        let after = docs(&out.yaml);
        assert_eq!(before.len(), after.len(), "{name}");
        let workloads = before
            .iter()
            .filter(|d| WORKLOADS.contains(&d["kind"].as_str().unwrap_or("")))
            .count();
        assert!(workloads > 0, "{name}");
        assert_eq!(out.injected, workloads, "{name}");
        workloads_seen += workloads;
        for (b, a) in before.iter().zip(&after) {
            if let Some(spec) = pod_spec(a) {
                assert_injected(&spec);
                assert_annotated(a);
                // The pod's own init containers come after ours, in order.
                let mine = names(pod_spec(b).unwrap().get("initContainers"));
                assert_eq!(names(spec.get("initContainers"))[2..], mine[..], "{name}");
            }
            // Everything that was there is still there, and nothing else
            // changed.
            assert_eq!(&strip(a.clone()), b, "{name}");
        }

        // Other kinds: byte for byte the same document text.
        let (tb, ta) = (doc_texts(&input), doc_texts(&out.yaml));
        assert_eq!(tb.len(), ta.len(), "{name}");
        for ((kind, text_b), (_, text_a)) in tb.iter().zip(&ta) {
            if !WORKLOADS.contains(&kind.as_str()) {
                assert_eq!(text_b, text_a, "{name}: a {kind} changed");
            }
        }
        assert_lines_kept(&input, &out.yaml);
    }
    // microservices-demo: 12 Deployments; zookeeper: 1 StatefulSet;
    // shared-volume: 1 Pod.
    assert!(workloads_seen >= 14, "{workloads_seen}");
}

/// The names of a pod spec's containers (init containers included) that
/// do not set all of: a non-zero runAsUser (theirs or the pod's),
/// allowPrivilegeEscalation: false, capabilities.drop: [ALL], and no
/// added capabilities or privileged: the ones `inject` warns about.
fn unhardened_containers(spec: &Json) -> Vec<String> {
    let pod_user = &spec["securityContext"]["runAsUser"];
    let mut names = Vec::new();
    for list in ["initContainers", "containers"] {
        for container in spec[list].as_array().into_iter().flatten() {
            let own = &container["securityContext"];
            let user = if own["runAsUser"].is_null() {
                pod_user
            } else {
                &own["runAsUser"]
            };
            let drops_all = own["capabilities"]["drop"]
                .as_array()
                .is_some_and(|d| d.iter().any(|c| c == "ALL"));
            let hardened = user.as_i64().is_some_and(|u| u != 0)
                && own["allowPrivilegeEscalation"] == false
                && drops_all
                && own["capabilities"]["add"].is_null()
                && own["privileged"] != true;
            if !hardened {
                names.push(container["name"].as_str().unwrap_or_default().to_owned());
            }
        }
    }
    names
}

/// A minimal manifest of `kind`: the pod spec's `containers` list is
/// indentless, as `kubectl` writes it.
fn manifest(kind: &str) -> String {
    // The pod spec at `col`.
    let pod = |col: usize| {
        let pad = " ".repeat(col);
        format!("{pad}containers:\n{pad}- name: app\n{pad}  image: example/app:1\n")
    };
    match kind {
        "Pod" => format!(
            "apiVersion: v1\nkind: Pod\nmetadata:\n  name: p\nspec:\n{}",
            pod(2)
        ),
        "CronJob" => format!(
            "apiVersion: batch/v1\nkind: CronJob\nmetadata:\n  name: c\nspec:\n  schedule: \"*/5 * * * *\"\n  jobTemplate:\n    spec:\n      template:\n        spec:\n{}          restartPolicy: OnFailure\n",
            pod(10)
        ),
        _ => {
            let api = if kind == "Job" { "batch/v1" } else { "apps/v1" };
            format!(
                "apiVersion: {api}\nkind: {kind}\nmetadata:\n  name: w\nspec:\n  template:\n    metadata:\n      labels: {{app: w}}\n    spec:\n{}",
                pod(6)
            )
        }
    }
}

#[test]
fn each_workload_kind() {
    for kind in WORKLOADS {
        let input = manifest(kind);
        let out = run_twice(&input);
        assert_eq!((out.injected, out.skipped), (1, 0), "{kind}");
        let doc = &docs(&out.yaml)[0];
        let spec = pod_spec(doc).unwrap_or_else(|| panic!("{kind}:\n{}", out.yaml));
        assert_injected(&spec);
        assert_eq!(strip(doc.clone()), docs(&input)[0], "{kind}");
        assert_eq!(names(spec.get("containers")), ["app"]);
    }
}

#[test]
fn generated_containers_in_full() {
    let out = run(&manifest("Pod"));
    let spec = pod_spec(&docs(&out.yaml)[0]).unwrap();
    assert_eq!(
        init_args(&spec),
        [
            "redirect",
            "install",
            "--proxy-uid",
            "1337",
            "--inbound-port",
            "15106",
            "--outbound-port",
            "15101"
        ]
    );
    let init = &spec["initContainers"][0];
    let proxy = &spec["initContainers"][1];
    let image = format!("appid/appid:{}", env!("CARGO_PKG_VERSION"));
    assert_eq!(init["image"], image.as_str());
    assert_eq!(proxy["image"], image.as_str());
    assert_eq!(
        init["securityContext"],
        serde_json::json!({
            "runAsUser": 0, "runAsNonRoot": false, "privileged": false,
            "allowPrivilegeEscalation": false, "readOnlyRootFilesystem": true,
            "capabilities": {"add": ["NET_ADMIN", "NET_RAW"], "drop": ["ALL"]}
        })
    );
    assert_eq!(
        proxy["securityContext"],
        serde_json::json!({
            "runAsUser": 1337, "runAsGroup": 1337, "runAsNonRoot": true, "privileged": false,
            "allowPrivilegeEscalation": false, "readOnlyRootFilesystem": true,
            "capabilities": {"drop": ["ALL"]}, "seccompProfile": {"type": "RuntimeDefault"}
        })
    );
    assert_eq!(
        proxy["ports"],
        serde_json::json!([{"name": "appid-health", "containerPort": 15191, "protocol": "TCP"}])
    );
    for (probe, path, period, failures) in [
        ("startupProbe", "/ready", 1, 120),
        ("readinessProbe", "/ready", 5, 3),
        ("livenessProbe", "/live", 10, 3),
    ] {
        assert_eq!(
            proxy[probe],
            serde_json::json!({"httpGet": {"path": path, "port": 15191}, "periodSeconds": period,
                "timeoutSeconds": 3, "failureThreshold": failures}),
            "{probe}"
        );
    }
    assert!(proxy.get("env").is_none(), "no app probes, no env");
    assert_eq!(
        proxy["resources"],
        serde_json::json!({"requests": {"cpu": "10m", "memory": "32Mi"}, "limits": {"memory": "128Mi"}})
    );
    assert_eq!(
        proxy["volumeMounts"],
        serde_json::json!([
            {"name": "appid-config", "mountPath": "/etc/appid", "readOnly": true},
            {"name": "appid-identity", "mountPath": "/var/run/appid/identity", "readOnly": true},
            {"name": "appid-run", "mountPath": "/var/run/appid/run"}
        ])
    );
    assert_eq!(
        spec["volumes"],
        serde_json::json!([
            {"name": "appid-config", "configMap": {"name": "appid-sidecar"}},
            {"name": "appid-identity", "projected": {"sources": [{"serviceAccountToken":
                {"audience": "appid-authority", "expirationSeconds": 3600, "path": "token"}}]}},
            {"name": "appid-run", "emptyDir": {}}
        ])
    );

    let custom = InjectOptions {
        image: "registry.example/appid@sha256:abc".into(),
    };
    let out = inject(&manifest("Pod"), &custom).unwrap();
    let spec = pod_spec(&docs(&out.yaml)[0]).unwrap();
    assert_eq!(
        spec["initContainers"][1]["image"],
        "registry.example/appid@sha256:abc"
    );
    for bad in ["", "a b", "x\ny"] {
        let err = inject("", &InjectOptions { image: bad.into() }).unwrap_err();
        assert!(matches!(err, InjectError::Image { .. }), "{bad:?}");
    }
}

#[test]
fn inject_false_on_workload_or_template() {
    let on_workload = manifest("Deployment").replace(
        "metadata:\n  name: w\n",
        "metadata:\n  name: w\n  annotations:\n    appid.dev/inject: \"false\"\n",
    );
    let on_template = manifest("Deployment").replace(
        "      labels: {app: w}\n",
        "      labels: {app: w}\n      annotations:\n        appid.dev/inject: \"false\"\n",
    );
    for input in [&on_workload, &on_template] {
        assert_ne!(input, &manifest("Deployment"));
        let out = run(input);
        assert_eq!(out.yaml, *input);
        assert_eq!((out.injected, out.skipped), (0, 1));
        assert!(out.warnings.is_empty());
    }
    let yes = on_template.replace("\"false\"", "\"true\"");
    assert_eq!(run(&yes).injected, 1);
    let err = inject(&on_template.replace("\"false\"", "nope"), &opts()).unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("appid.dev/inject") && text.contains("nope"),
        "{text}"
    );
}

#[test]
fn exclude_port_annotations_reach_the_init_container() {
    let input = manifest("Deployment").replace(
        "      labels: {app: w}\n",
        "      labels: {app: w}\n      annotations:\n        appid.dev/exclude-inbound-ports: \"22, 8081,22\"\n        appid.dev/exclude-outbound-ports: '5432'\n",
    );
    let out = run_twice(&input);
    let args = init_args(&pod_spec(&docs(&out.yaml)[0]).unwrap());
    let tail = &args[8..];
    assert_eq!(
        tail,
        [
            "--exclude-inbound-ports",
            "22,8081",
            "--exclude-outbound-ports",
            "5432"
        ]
    );

    // The pod template's annotation wins over the workload's.
    let both = input.replace(
        "metadata:\n  name: w\n",
        "metadata:\n  name: w\n  annotations:\n    appid.dev/exclude-inbound-ports: \"9999\"\n",
    );
    let args = init_args(&pod_spec(&docs(&run(&both).yaml)[0]).unwrap());
    assert!(args.contains(&"22,8081".to_owned()), "{args:?}");

    // Changing the annotation and re-running updates the init container.
    let changed = out.yaml.replace("\"22, 8081,22\"", "\"80\"");
    let again = run_twice(&changed);
    let spec = pod_spec(&docs(&again.yaml)[0]).unwrap();
    assert_injected(&spec);
    assert_eq!(&init_args(&spec)[8..10], ["--exclude-inbound-ports", "80"]);
}

#[test]
fn bad_annotation_names_document_object_and_annotation() {
    let input = format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: s}}\n---\n{}",
        manifest("Deployment").replace(
            "metadata:\n  name: w\n",
            "metadata:\n  name: w\n  annotations:\n    appid.dev/exclude-outbound-ports: \"443,https\"\n",
        )
    );
    let err = inject(&input, &opts()).unwrap_err();
    let text = err.to_string();
    for needle in [
        "document 2",
        "Deployment \"w\"",
        "appid.dev/exclude-outbound-ports",
        "`https` is not a port",
        "line 10",
    ] {
        assert!(text.contains(needle), "{needle:?} not in {text}");
    }
    match err {
        InjectError::Annotation {
            location,
            annotation,
            ..
        } => {
            assert_eq!(location.document, 2);
            assert_eq!(annotation, ANNOTATION_EXCLUDE_OUTBOUND);
        }
        other => panic!("{other:?}"),
    }
    for bad in ["0", "65536", "-1", "1,,2", "+80", "80-90"] {
        let input = manifest("Pod").replace(
            "metadata:\n  name: p\n",
            &format!("metadata:\n  name: p\n  annotations:\n    appid.dev/exclude-inbound-ports: \"{bad}\"\n"),
        );
        let err = inject(&input, &opts()).unwrap_err();
        assert!(
            err.to_string().contains("document 1 (Pod \"p\")"),
            "{bad}: {err}"
        );
    }
    assert_eq!(parse_ports(" 22 , 8081 ").unwrap(), [22, 8081]);
    assert_eq!(parse_ports("").unwrap(), Vec::<u16>::new());
}

#[test]
fn host_network_pods_are_skipped_with_a_warning() {
    let input =
        manifest("DaemonSet").replace("    spec:\n", "    spec:\n      hostNetwork: true\n");
    let out = run(&input);
    assert_eq!(out.yaml, input);
    assert_eq!((out.injected, out.skipped), (0, 1));
    assert_eq!(out.warnings.len(), 1);
    assert!(
        out.warnings[0].contains("hostNetwork"),
        "{:?}",
        out.warnings
    );
    assert!(
        out.warnings[0].contains("DaemonSet \"w\""),
        "{:?}",
        out.warnings
    );
}

/// A container that runs as the sidecar's uid (1337), by its own
/// `runAsUser` or the pod's, would bypass the redirect: refused, naming
/// the container and the line; another uid, or a container that overrides
/// the pod's 1337, is injected.
#[test]
fn a_container_running_as_the_sidecars_uid_is_refused() {
    let pod = manifest("Pod");
    let own = pod.replace(
        "    image: example/app:1\n",
        "    image: example/app:1\n    securityContext:\n      runAsUser: 1337\n",
    );
    let err = inject(&own, &opts()).unwrap_err().to_string();
    assert!(err.contains("line 10"), "{err}");
    assert!(err.contains("container `app` runs as uid 1337"), "{err}");
    let inherited = pod.replace(
        "spec:\n",
        "spec:\n  securityContext:\n    runAsUser: 1337\n",
    );
    let err = inject(&inherited, &opts()).unwrap_err().to_string();
    assert!(err.contains("line 7"), "{err}");
    let overridden = inherited.replace(
        "    image: example/app:1\n",
        "    image: example/app:1\n    securityContext:\n      runAsUser: 1000\n",
    );
    assert_eq!(run(&overridden).injected, 1);
    let other = own.replace("runAsUser: 1337", "runAsUser: 13370");
    assert_eq!(run(&other).injected, 1);
}

const COMMENTED: &str = "\
# Leading comment
---
# A service
apiVersion: v1
kind: Service   # trailing
metadata:
  name: web
spec:
  ports: [{port: 80}]  # flow
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web # the name
  labels:
    app: 'web'
spec:
  replicas: 2
  template:
    metadata:
      labels:
        app: \"web\"
    spec:
      # Runs as an unprivileged user.
      securityContext:
        runAsUser: 1000

      # The app.
      containers:
        # first container
        - name: web
          image: example/web:1 # pinned
          args:
            - --port=8080
          env:
            - name: A
              value: \"1\"
            # - name: B
            #   value: \"2\"
        # second container
        - name: side
          image: example/side:1
      # the end of the pod spec
...
---
# only a comment
---
";

#[test]
fn multi_document_with_comments() {
    let out = run_twice(COMMENTED);
    assert_eq!((out.injected, out.skipped), (1, 0));
    assert_lines_kept(COMMENTED, &out.yaml);
    let (tb, ta) = (doc_texts(COMMENTED), doc_texts(&out.yaml));
    assert_eq!(tb.len(), ta.len());
    assert_eq!(tb[0], ta[0], "the Service changed");
    // Start and end of the text are untouched.
    assert!(
        out.yaml
            .starts_with("# Leading comment\n---\n# A service\n")
    );
    assert!(
        out.yaml
            .ends_with("      # the end of the pod spec\n...\n---\n# only a comment\n---\n")
    );
    // New keys go before `containers` and its comments, in the list style
    // of `containers` (dashes two columns in).
    let at = out
        .yaml
        .find("      volumes:\n        - name: appid-config\n")
        .unwrap();
    let init = out
        .yaml
        .find("      initContainers:\n        - name: appid-init\n")
        .unwrap();
    let app = out
        .yaml
        .find("      # The app.\n      containers:\n")
        .unwrap();
    assert!(at < init && init < app, "{}", out.yaml);
    assert!(
        out.yaml.contains("\n\n      volumes:"),
        "blank line kept above"
    );
    let before = docs(COMMENTED);
    let after = docs(&out.yaml);
    assert_eq!(strip(after[1].clone()), before[1]);
}

#[test]
fn empty_documents_and_separators_survive() {
    let input = format!("---\n---\n{}---\n\n---\n...\n", manifest("Pod"));
    let out = run_twice(&input);
    assert_eq!(out.injected, 1);
    assert!(out.yaml.starts_with("---\n---\napiVersion: v1\n"));
    assert!(out.yaml.ends_with("---\n\n---\n...\n"));
    for empty in ["", "\n", "---\n", "# nothing\n", "---\n...\n---\n"] {
        let out = run(empty);
        assert_eq!(out.yaml, empty);
        assert_eq!((out.injected, out.skipped), (0, 0));
    }
}

#[test]
fn invalid_yaml_is_an_error_with_line_and_column() {
    let input = "apiVersion: v1\nkind: Pod\nspec:\n  containers: [\n";
    match inject(input, &opts()).unwrap_err() {
        InjectError::Syntax { line, column, .. } => {
            assert!(line >= 4, "line {line}");
            assert!(column >= 1);
        }
        other => panic!("{other:?}"),
    }
    let input = "a: b\n c: d\n";
    let err = inject(input, &opts()).unwrap_err();
    assert!(err.to_string().starts_with("line 2, column "), "{err}");
    let dup = "apiVersion: v1\nkind: Pod\nkind: Pod\nspec: {}\n";
    let err = inject(dup, &opts()).unwrap_err();
    assert!(err.to_string().contains("duplicate key `kind`"), "{err}");
    assert!(err.to_string().contains("line 3"), "{err}");
}

#[test]
fn other_kinds_and_lookalikes_pass_through() {
    let input = "\
apiVersion: v1
kind: ConfigMap
metadata: {name: c}
data:
  spec: |
    containers: []
---
apiVersion: batch.volcano.sh/v1alpha1
kind: Job
metadata: {name: v}
spec:
  template:
    spec:
      containers: [{name: a}]
---
- just
- a list
---
plain scalar
";
    let out = run(input);
    assert_eq!(out.yaml, input);
    assert_eq!((out.injected, out.skipped), (0, 0));
    assert_eq!(out.warnings.len(), 1, "{:?}", out.warnings);
    assert!(out.warnings[0].contains("batch.volcano.sh/v1alpha1"));
}

#[test]
fn list_items_are_injected() {
    let pod = manifest("Pod");
    let item: String = pod
        .lines()
        .enumerate()
        .map(|(i, l)| format!("{}{l}\n", if i == 0 { "- " } else { "  " }))
        .collect();
    let input = format!(
        "apiVersion: v1\nkind: List\nitems:\n{item}- apiVersion: v1\n  kind: Service\n  metadata: {{name: s}}\n"
    );
    let out = run_twice(&input);
    assert_eq!(out.injected, 1);
    let doc = &docs(&out.yaml)[0];
    let mut first = doc["items"][0].clone();
    assert_injected(pod_spec_mut(&mut first).unwrap());
    assert_eq!(doc["items"][1], docs(&input)[0]["items"][1]);
}

#[test]
fn flow_and_json_manifests() {
    let json = r#"{
  "apiVersion": "apps/v1",
  "kind": "Deployment",
  "metadata": {"name": "j"},
  "spec": {
    "template": {
      "spec": {
        "containers": [{"name": "app", "image": "x"}],
        "volumes": [{"name": "data", "emptyDir": {}}]
      }
    }
  }
}
"#;
    let out = run_twice(json);
    assert_eq!(out.injected, 1);
    let doc = &docs(&out.yaml)[0];
    assert_injected(&pod_spec(doc).unwrap());
    assert_eq!(strip(doc.clone()), docs(json)[0]);
    // Still JSON.
    let parsed: Json = serde_json::from_str(&out.yaml).unwrap();
    assert_eq!(&parsed, doc);

    for variant in [
        "spec:\n  initContainers: []\n  volumes: ~\n  containers: [{name: app}]\n",
        "spec:\n  initContainers:\n  volumes: []\n  containers: [{name: app}]\n",
        "spec: {initContainers: [], containers: [{name: app}]}\n",
        "spec: {initContainers: [{name: x}, {name: appid-proxy}], containers: [{name: app}]}\n",
    ] {
        let input = format!("apiVersion: v1\nkind: Pod\nmetadata: {{name: f}}\n{variant}");
        let out = run_twice(&input);
        assert_eq!(out.injected, 1, "{input}");
        let doc = &docs(&out.yaml)[0];
        assert_injected(&pod_spec(doc).unwrap());
        let mut expected = strip(docs(&input)[0].clone());
        if let Some(spec) = expected["spec"].as_object_mut() {
            spec.retain(|_, v| !v.is_null());
        }
        assert_eq!(strip(doc.clone()), expected, "{}", out.yaml);
    }
}

#[test]
fn earlier_copies_are_replaced_wherever_they_are() {
    let input = "\
apiVersion: v1
kind: Pod
metadata: {name: p}
spec:
  initContainers:
  - name: setup
    image: busybox
  - name: appid-proxy
    image: old
  - name: later
    image: busybox
  - name: appid-init
    image: old
  containers:
  - name: app
    image: x
  volumes:
  - name: data
    emptyDir: {}
  - name: appid-run
    emptyDir: {medium: Memory}
";
    let out = run_twice(input);
    let spec = pod_spec(&docs(&out.yaml)[0]).unwrap();
    assert_injected(&spec);
    assert_eq!(
        names(spec.get("initContainers")),
        ["appid-init", "appid-proxy", "setup", "later"]
    );
    assert_eq!(
        names(spec.get("volumes")),
        ["appid-config", "appid-identity", "appid-run", "data"]
    );
    assert!(!out.yaml.contains("image: old"));
}

#[test]
fn list_style_follows_the_manifest() {
    // Indentless (`- ` at the key's column) stays indentless.
    let out = run(&manifest("Pod"));
    assert!(
        out.yaml
            .contains("\n  initContainers:\n  - name: appid-init\n"),
        "{}",
        out.yaml
    );
    assert!(
        out.yaml
            .contains("\n    volumeMounts:\n    - name: appid-run\n"),
        "{}",
        out.yaml
    );
    // Indented stays indented.
    let input = manifest("Pod").replace("  - name: app\n    image", "    - name: app\n      image");
    let out = run_twice(&input);
    assert!(
        out.yaml
            .contains("\n  initContainers:\n    - name: appid-init\n"),
        "{}",
        out.yaml
    );
    assert!(
        out.yaml
            .contains("\n      volumeMounts:\n        - name: appid-run\n"),
        "{}",
        out.yaml
    );
}

#[test]
fn crlf_line_endings_are_kept() {
    let input = manifest("Deployment").replace('\n', "\r\n");
    let out = run_twice(&input);
    assert_eq!(out.injected, 1);
    assert!(
        !out.yaml.replace("\r\n", "").contains('\n'),
        "a bare LF slipped in"
    );
    assert_injected(&pod_spec(&docs(&out.yaml)[0]).unwrap());
}

#[test]
fn aliases_and_merge_keys_are_not_edited_through() {
    let input = "\
apiVersion: v1
kind: Pod
metadata: {name: a}
spec:
  initContainers: &shared
  - name: x
  containers: *shared
---
apiVersion: v1
kind: Pod
metadata: {name: b}
spec:
  <<: {hostname: h}
  containers: [{name: app}]
---
apiVersion: v1
kind: Pod
metadata: {name: c}
spec:
  initContainers:
  - &setup
    name: setup
  containers:
  - *setup
";
    let out = run(input);
    assert_eq!(out.yaml, input);
    assert_eq!((out.injected, out.skipped), (0, 3));
    assert_eq!(out.warnings.len(), 3, "{:?}", out.warnings);
    // The checks for ways around capture do not read through aliases
    // either: an aliased container could be anything.
    assert!(
        out.warnings[2].contains("line 24: containers[0] is a YAML alias"),
        "{:?}",
        out.warnings
    );
}

#[test]
fn anchored_and_odd_but_valid_layouts() {
    let input = "\
apiVersion: v1
kind: Pod
metadata: {name: odd}
spec:
  initContainers:
  # the setup step
  -
    name: setup
    command:
    - sh
    - -c
    - |
      echo hi
      # not a comment

  - &second
    name: second
  containers:
  - name: app
  extra: |+
    # keep


";
    let out = run_twice(input);
    assert_eq!(out.injected, 1, "{:?}", out.warnings);
    let before = docs(input);
    let after = docs(&out.yaml);
    assert_injected(&pod_spec(&after[0]).unwrap());
    assert_eq!(strip(after[0].clone()), before[0]);
    assert_lines_kept(input, &out.yaml);
}

/// A random but valid Kubernetes-ish manifest, in a random layout.
fn arb_manifest() -> impl Strategy<Value = String> {
    let kind = prop::sample::select(WORKLOADS.to_vec());
    let offset = prop::sample::select(vec![0usize, 2, 4]);
    let init = prop::collection::vec(
        prop::sample::select(vec!["setup", "appid-init", "appid-proxy", "migrate"]),
        0..4,
    );
    let vols = prop::collection::vec(
        prop::sample::select(vec!["data", "appid-run", "appid-config", "cache"]),
        0..4,
    );
    let style = prop::sample::select(vec!["block", "flow", "absent", "null"]);
    let comments = any::<bool>();
    let probe = prop::sample::select(vec!["none", "http", "http-flow", "tcp", "exec"]);
    (kind, offset, init, vols, style.clone(), style, comments, probe).prop_map(
        |(kind, offset, init, vols, istyle, vstyle, comments, probe)| {
            let base = manifest(kind);
            // Find the pod spec's `containers:` line and its indentation.
            let line = base
                .lines()
                .find(|l| l.trim_start().starts_with("containers:"))
                .unwrap()
                .to_owned();
            let col = line.len() - line.trim_start().len();
            let pad = " ".repeat(col);
            let dash = " ".repeat(col + offset);
            let list = |key: &str, names: &[&str], style: &str| -> String {
                let c = if comments {
                    format!("{pad}# about {key}\n")
                } else {
                    String::new()
                };
                match style {
                    "absent" => String::new(),
                    "null" => format!("{c}{pad}{key}:\n"),
                    "flow" => {
                        let items: Vec<String> = names
                            .iter()
                            .map(|n| format!("{{name: {n}, image: i}}"))
                            .collect();
                        format!("{c}{pad}{key}: [{}]\n", items.join(", "))
                    }
                    _ if names.is_empty() => format!("{c}{pad}{key}: []\n"),
                    _ => {
                        let mut s = format!("{c}{pad}{key}:\n");
                        for n in names {
                            if comments {
                                s.push_str(&format!("{dash}# {n}\n"));
                            }
                            s.push_str(&format!(
                                "{dash}- name: {n} # trailing\n{dash}  image: i\n"
                            ));
                        }
                        s
                    }
                }
            };
            let extra = format!(
                "{}{}",
                list("initContainers", &init, istyle),
                list("volumes", &vols, vstyle)
            );
            let source = format!("{line}\n{pad}- name: app\n{pad}  image: example/app:1\n");
            assert!(base.contains(&source), "{base}");
            let p = format!("{dash}  ");
            let probe = match probe {
                "http" => format!(
                    "{p}livenessProbe:\n{p}  periodSeconds: 3\n{p}  httpGet:\n{p}    path: /h\n{p}    port: 8080\n"
                ),
                "http-flow" => format!("{p}readinessProbe: {{httpGet: {{path: /r, port: 8080}}}}\n"),
                "tcp" => format!("{p}startupProbe:\n{p}  tcpSocket: {{port: 5432}}\n{p}  timeoutSeconds: 2\n"),
                "exec" => format!("{p}livenessProbe:\n{p}  exec:\n{p}    command: [true]\n"),
                _ => String::new(),
            };
            let target = format!(
                "{extra}{line}\n{dash}- name: app\n{dash}  image: example/app:1\n{probe}"
            );
            base.replacen(&source, &target, 1)
        },
    )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, .. ProptestConfig::default() })]

    #[test]
    fn arbitrary_text_never_panics(input in any::<String>()) {
        let _ = inject(&input, &opts());
    }

    #[test]
    fn yaml_like_text_never_panics(parts in prop::collection::vec(prop::sample::select(vec![
        "kind: Pod\n", "kind: Deployment\n", "spec:\n", "  template:\n", "    spec:\n", "  containers:\n",
        "  - name: a\n", "- name: appid-proxy\n", "  initContainers: []\n", "  initContainers:\n",
        "  volumes:\n", "    - name: appid-run\n", "---\n", "# c\n", "  hostNetwork: true\n",
        "metadata:\n", "  annotations:\n", "    appid.dev/inject: \"false\"\n", "  - &a x\n", "  - *a\n",
        "{", "}", "[", "]", ", ", ": ", "\t", "\r\n", "|\n", "  ", "\"", "'", "...\n",
    ]), 0..40)) {
        let input: String = parts.concat();
        if let Ok(out) = inject(&input, &opts()) {
            // Whatever was accepted once is accepted again, unchanged.
            let again = inject(&out.yaml, &opts()).expect("output rejected");
            prop_assert_eq!(again.yaml, out.yaml);
        }
    }

    #[test]
    fn random_manifests_inject_once_and_keep_everything(input in arb_manifest()) {
        let out = run_twice(&input);
        prop_assert_eq!(out.injected, 1, "{:?}\n{}", out.warnings, input);
        let before = docs(&input);
        let after = docs(&out.yaml);
        assert_injected(&pod_spec(&after[0]).unwrap());
        assert_annotated(&after[0]);
        let rewritable = input.matches("httpGet").count() + input.matches("tcpSocket").count();
        prop_assert_eq!(app_probes(&pod_spec(&after[0]).unwrap()).len(), rewritable);
        let mut expected = strip(before[0].clone());
        if let Some(spec) = pod_spec_mut(&mut expected).and_then(Json::as_object_mut) {
            spec.retain(|_, v| !v.is_null());
        }
        prop_assert_eq!(strip(after[0].clone()), expected, "{}\n=>\n{}", input, out.yaml);
    }
}

mod annotation_cases;
mod capture_cases;
mod probe_cases;
