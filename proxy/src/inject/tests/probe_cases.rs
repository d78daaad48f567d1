//! Probe rewriting, through `inject` as a whole.

use serde_json::json;

use super::*;

const PROBED: &str = "\
apiVersion: apps/v1
kind: Deployment
metadata:
  name: w
spec:
  template:
    metadata:
      labels: {app: w}
    spec:
      containers:
      - name: web
        image: example/web:1
        ports:
        - name: http
          containerPort: 8080
        livenessProbe:
          initialDelaySeconds: 3
          httpGet:
            # the app's own health page
            path: /healthz
            port: http
            scheme: HTTPS
            httpHeaders:
            - name: X-Probe
              value: \"yes\"
          periodSeconds: 7
        readinessProbe:
          tcpSocket:
            port: 8080
          timeoutSeconds: 5
          failureThreshold: 4
        startupProbe:
          exec:
            command: [cat, /tmp/started]
      - name: worker
        image: example/worker:1
        livenessProbe:
          httpGet: {path: /h, port: metrics}
        readinessProbe:
          grpc:
            port: 9090
";

fn container<'j>(spec: &'j Json, name: &str) -> &'j Json {
    spec["containers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no container {name}"))
}

#[test]
fn http_and_tcp_probes_go_through_the_sidecar() {
    let out = run_twice(PROBED);
    assert_eq!(out.injected, 1);
    let doc = &docs(&out.yaml)[0];
    let spec = pod_spec(doc).unwrap();
    let web = container(&spec, "web");
    assert_eq!(
        web["livenessProbe"],
        json!({"initialDelaySeconds": 3, "periodSeconds": 7,
            "httpGet": {"path": "/app-health/web/livez", "port": 15191}})
    );
    assert_eq!(
        web["readinessProbe"],
        json!({"timeoutSeconds": 5, "failureThreshold": 4,
            "httpGet": {"path": "/app-health/web/readyz", "port": 15191}})
    );
    assert_eq!(
        web["startupProbe"],
        json!({"exec": {"command": ["cat", "/tmp/started"]}})
    );
    assert_eq!(
        Json::Object(app_probes(&spec)),
        json!({
            "/app-health/web/livez": {"httpGet": {"path": "/healthz", "port": 8080, "scheme": "HTTPS",
                "httpHeaders": [{"name": "X-Probe", "value": "yes"}]}, "timeoutSeconds": 1},
            "/app-health/web/readyz": {"tcpSocket": {"port": 8080}, "timeoutSeconds": 5}
        })
    );
    // The rewritten handler keeps the original's indentation; the env
    // value is one line of JSON in single quotes.
    assert!(
        out.yaml.contains(
            "          initialDelaySeconds: 3\n          httpGet:\n            path: /app-health/web/livez\n            port: 15191\n          periodSeconds: 7\n"
        ),
        "{}",
        out.yaml
    );
    assert!(
        out.yaml.contains("value: '{\"/app-health/web/livez\":"),
        "{}",
        out.yaml
    );

    // worker: an unknown named port and a gRPC probe stay, with warnings
    // naming the workload, the container and the probe.
    let worker = container(&spec, "worker");
    assert_eq!(
        worker["livenessProbe"],
        json!({"httpGet": {"path": "/h", "port": "metrics"}})
    );
    assert_eq!(worker["readinessProbe"], json!({"grpc": {"port": 9090}}));
    let warnings = not_about_capture(&out);
    assert_eq!(warnings.len(), 2, "{:?}", out.warnings);
    let [unresolved, grpc] = &warnings[..] else {
        unreachable!()
    };
    for needle in [
        "Deployment \"w\"",
        "container \"worker\" livenessProbe",
        "`metrics`",
        "left as it is",
    ] {
        assert!(
            unresolved.contains(needle),
            "{needle:?} not in {unresolved}"
        );
    }
    for needle in [
        "Deployment \"w\"",
        "container \"worker\" readinessProbe",
        "gRPC",
        "9090",
        "exclude-inbound-ports",
    ] {
        assert!(grpc.contains(needle), "{needle:?} not in {grpc}");
    }
    // The named port is resolved (the env needs a number).
    let resolved = PROBED.replace("            port: http\n", "            port: 8080\n");
    assert_eq!(strip(doc.clone()), docs(&resolved)[0]);
    assert_lines_kept(PROBED, &out.yaml);
}

#[test]
fn crlf_manifests_stay_crlf() {
    let input = PROBED.replace('\n', "\r\n");
    let out = run_twice(&input);
    assert!(
        !out.yaml.replace("\r\n", "").contains('\n'),
        "a bare LF slipped in"
    );
    let spec = pod_spec(&docs(&out.yaml)[0]).unwrap();
    assert_eq!(app_probes(&spec).len(), 2);
    assert_annotated(&docs(&out.yaml)[0]);
}

#[test]
fn flow_probes_and_json_manifests_stay_flow() {
    let input = "\
apiVersion: v1
kind: Pod
metadata: {name: p}
spec:
  containers:
  - {name: app, image: x, livenessProbe: {httpGet: {path: /h, port: 80}, periodSeconds: 3}}
";
    let out = run_twice(input);
    let spec = pod_spec(&docs(&out.yaml)[0]).unwrap();
    assert_eq!(
        spec["containers"][0]["livenessProbe"],
        json!({"httpGet": {"path": "/app-health/app/livez", "port": 15191}, "periodSeconds": 3})
    );
    assert!(
        out.yaml.contains("livenessProbe: {\"httpGet\": {\"path\": \"/app-health/app/livez\", \"port\": 15191}, periodSeconds: 3}"),
        "{}",
        out.yaml
    );

    let json_input = r#"{"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "j"},
 "spec": {"containers": [{"name": "app", "image": "x",
   "readinessProbe": {"tcpSocket": {"port": 5432}, "timeoutSeconds": 2}}]}}
"#;
    let out = run_twice(json_input);
    let parsed: Json = serde_json::from_str(&out.yaml).expect("still JSON");
    let spec = pod_spec(&parsed).unwrap();
    assert_eq!(
        spec["containers"][0]["readinessProbe"],
        json!({"httpGet": {"path": "/app-health/app/readyz", "port": 15191}, "timeoutSeconds": 2})
    );
    assert_eq!(
        app_probes(&spec)["/app-health/app/readyz"],
        json!({"tcpSocket": {"port": 5432}, "timeoutSeconds": 2})
    );
    assert_eq!(strip(parsed), docs(json_input)[0]);
}

/// Adds `appid.dev/rewrite-probes: "<value>"` to the pod template.
fn with_annotation(yaml: &str, value: &str) -> String {
    let line = format!("        appid.dev/rewrite-probes: \"{value}\"\n");
    let out = if yaml.contains("      annotations:\n") {
        yaml.replacen(
            "      annotations:\n",
            &format!("      annotations:\n{line}"),
            1,
        )
    } else {
        yaml.replacen(
            "      labels: {app: w}\n",
            &format!("      labels: {{app: w}}\n      annotations:\n{line}"),
            1,
        )
    };
    assert_ne!(out, yaml);
    out
}

#[test]
fn rewrite_probes_false_leaves_them_or_puts_them_back() {
    // Off from the start: the probes are the app's, no env.
    let off = with_annotation(PROBED, "false");
    let out = run_twice(&off);
    let spec = pod_spec(&docs(&out.yaml)[0]).unwrap();
    assert_eq!(
        spec["containers"],
        docs(&off)[0]["spec"]["template"]["spec"]["containers"]
    );
    assert!(app_probes(&spec).is_empty());
    assert!(!out.yaml.contains(APP_PROBES_ENV));

    // Turned off after injection: the probes are restored from the env.
    let injected = run(PROBED).yaml;
    let turned_off = with_annotation(&injected, "False");
    let out = run_twice(&turned_off);
    let doc = &docs(&out.yaml)[0];
    let spec = pod_spec(doc).unwrap();
    assert!(app_probes(&spec).is_empty(), "{}", out.yaml);
    let web = container(&spec, "web");
    assert_eq!(
        web["livenessProbe"]["httpGet"],
        json!({"path": "/healthz", "port": 8080, "scheme": "HTTPS",
            "httpHeaders": [{"name": "X-Probe", "value": "yes"}]})
    );
    assert_eq!(web["readinessProbe"]["tcpSocket"], json!({"port": 8080}));
    assert_eq!(web["readinessProbe"]["timeoutSeconds"], 5);
    // And back on: the same targets as injecting the original.
    let back_on = out.yaml.replace(
        "appid.dev/rewrite-probes: \"False\"",
        "appid.dev/rewrite-probes: \"true\"",
    );
    assert_ne!(back_on, out.yaml);
    let again = run_twice(&back_on);
    assert_eq!(
        app_probes(&pod_spec(&docs(&again.yaml)[0]).unwrap()),
        app_probes(&pod_spec(&docs(&injected)[0]).unwrap())
    );

    let bad = with_annotation(PROBED, "nah");
    let err = inject(&bad, &opts()).unwrap_err().to_string();
    assert!(
        err.contains(ANNOTATION_REWRITE_PROBES) && err.contains("nah"),
        "{err}"
    );
}

#[test]
fn reinjection_follows_edits_of_the_injected_manifest() {
    let injected = run(PROBED).yaml;
    // A new timeout reaches the env.
    let slower = injected.replace(
        "          timeoutSeconds: 5\n",
        "          timeoutSeconds: 9\n",
    );
    assert_ne!(slower, injected);
    let spec = pod_spec(&docs(&run_twice(&slower).yaml)[0]).unwrap();
    assert_eq!(
        app_probes(&spec)["/app-health/web/readyz"]["timeoutSeconds"],
        9
    );

    // A renamed container: paths and keys follow the new name.
    let renamed = injected.replace("      - name: web\n", "      - name: api\n");
    assert_ne!(renamed, injected);
    let out = run_twice(&renamed);
    let spec = pod_spec(&docs(&out.yaml)[0]).unwrap();
    assert_eq!(
        container(&spec, "api")["livenessProbe"]["httpGet"]["path"],
        "/app-health/api/livez"
    );
    let keys: Vec<String> = app_probes(&spec).keys().cloned().collect();
    assert_eq!(keys, ["/app-health/api/livez", "/app-health/api/readyz"]);
    assert!(!out.yaml.contains("/app-health/web/"), "{}", out.yaml);
}

#[test]
fn a_lost_original_is_warned_and_the_probe_left() {
    let injected = run(PROBED).yaml;
    let start = injected
        .find("        env:\n        - name: APPID_APP_PROBES")
        .expect("env");
    let end = start + injected[start..].find("        startupProbe:").unwrap();
    let lost = format!("{}{}", &injected[..start], &injected[end..]);
    let out = run(&lost);
    let web_warnings: Vec<_> = out
        .warnings
        .iter()
        .filter(|w| w.contains("\"web\""))
        .collect();
    assert_eq!(web_warnings.len(), 2, "{:?}", out.warnings);
    assert!(web_warnings[0].contains("no target"), "{}", web_warnings[0]);
    let spec = pod_spec(&docs(&out.yaml)[0]).unwrap();
    assert_eq!(
        container(&spec, "web")["livenessProbe"]["httpGet"]["path"],
        "/app-health/web/livez"
    );
    assert!(app_probes(&spec).is_empty());

    let garbled = injected.replacen("value: '{\"/app-health/", "value: '{\"/app-health/\"", 1);
    let out = run(&garbled);
    assert!(
        out.warnings.iter().any(|w| w.contains("not a JSON object")),
        "{:?}",
        out.warnings
    );
}

/// A probe of another host is kubelet's: it dials that host from the node.
/// Run by the sidecar it would make the health port, which anyone who can
/// reach the pod may ask, a proxy to that host, outside capture and policy.
#[test]
fn a_probe_of_another_host_is_left_alone() {
    for probe in [
        "tcpSocket: {host: db.example, port: 5432}",
        "httpGet: {host: status.example, path: /ok, port: 8080}",
        "httpGet: {host: 169.254.169.254, path: /latest/meta-data/iam/security-credentials/, port: 80}",
    ] {
        let input = manifest("Pod").replace(
            "    image: example/app:1\n",
            &format!("    image: example/app:1\n    livenessProbe:\n      {probe}\n"),
        );
        let out = run_twice(&input);
        assert!(
            not_about_capture(&out).is_empty(),
            "{probe}: {:?}",
            out.warnings
        );
        let spec = pod_spec(&docs(&out.yaml)[0]).unwrap();
        assert_eq!(
            spec["containers"][0]["livenessProbe"],
            docs(&input)[0]["spec"]["containers"][0]["livenessProbe"],
            "{probe}"
        );
        assert!(app_probes(&spec).is_empty(), "{probe}");
    }
}

/// A port is read as Kubernetes reads it (YAML 1.1): `0x1F90` is 8080.
#[test]
fn a_port_number_in_another_spelling_is_the_number() {
    let input = manifest("Pod").replace(
        "    image: example/app:1\n",
        "    image: example/app:1\n    livenessProbe:\n      tcpSocket: {port: 0x1F90}\n",
    );
    let out = run_twice(&input);
    assert!(not_about_capture(&out).is_empty(), "{:?}", out.warnings);
    let spec = pod_spec(&docs(&out.yaml)[0]).unwrap();
    assert_eq!(
        Json::Object(app_probes(&spec)),
        json!({"/app-health/app/livez": {"tcpSocket": {"port": 8080}, "timeoutSeconds": 1}})
    );
}

#[test]
fn native_sidecars_of_the_app_are_rewritten_too() {
    let input = "\
apiVersion: v1
kind: Pod
metadata:
  name: p
spec:
  initContainers:
  - name: logs
    image: example/logs:1
    restartPolicy: Always
    readinessProbe:
      tcpSocket: {port: 24224}
  containers:
  - name: app
    image: example/app:1
";
    let out = run_twice(input);
    let spec = pod_spec(&docs(&out.yaml)[0]).unwrap();
    assert_eq!(
        spec["initContainers"][2]["readinessProbe"],
        json!({"httpGet": {"path": "/app-health/logs/readyz", "port": 15191}})
    );
    assert_eq!(
        Json::Object(app_probes(&spec)),
        json!({"/app-health/logs/readyz": {"tcpSocket": {"port": 24224}, "timeoutSeconds": 1}})
    );
    assert_eq!(strip(docs(&out.yaml)[0].clone()), docs(input)[0]);
}

#[test]
fn a_probe_the_sidecar_could_not_run_is_left_alone_with_a_warning() {
    // A timeout over the sidecar's cap: rewriting this probe would stop
    // the sidecar at start.
    let input = manifest("Pod").replace(
        "    image: example/app:1\n",
        "    image: example/app:1\n    readinessProbe:\n      httpGet: {path: /ok, port: 8080}\n      timeoutSeconds: 301\n",
    );
    let out = run_twice(&input);
    assert!(
        out.warnings
            .iter()
            .any(|w| w.contains("could not run it") && w.contains("timeoutSeconds")),
        "{:?}",
        out.warnings
    );
    let spec = pod_spec(&docs(&out.yaml)[0]).unwrap();
    assert_eq!(
        spec["containers"][0]["readinessProbe"]["httpGet"]["path"],
        "/ok"
    );
    assert!(app_probes(&spec).is_empty());
}
