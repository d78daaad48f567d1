//! The pod template's annotations, through `inject` as a whole.

use super::*;

/// Injects (twice, checking idempotency), checks that the status and
/// Prometheus annotations are there and that nothing else changed; returns
/// the output.
fn annotated(input: &str) -> InjectOutput {
    let out = run_twice(input);
    assert_eq!(out.injected, 1, "{:?}\n{input}", out.warnings);
    let doc = &docs(&out.yaml)[0];
    assert_annotated(doc);
    assert_eq!(strip(doc.clone()), docs(input)[0], "{}", out.yaml);
    out
}

#[test]
fn a_template_without_metadata_gets_one_before_spec() {
    let input = "\
apiVersion: batch/v1
kind: Job
metadata:
  name: j
spec:
  template:
    # the pod
    spec:
      restartPolicy: Never
      containers:
      - name: app
        image: x
";
    let out = annotated(input);
    assert!(
        out.yaml.contains(
            "  template:\n    metadata:\n      annotations:\n        appid.dev/status: '{\"version\":"
        ),
        "{}",
        out.yaml
    );
    assert!(
        out.yaml
            .contains("        prometheus.io/path: \"/metrics\"\n    # the pod\n    spec:\n"),
        "{}",
        out.yaml
    );
}

#[test]
fn null_empty_and_flow_annotations() {
    for (metadata, kept) in [
        ("      labels: {app: w}\n      annotations:\n", None),
        (
            "      labels: {app: w}\n      annotations: ~ # none\n",
            None,
        ),
        ("      labels: {app: w}\n      annotations: {}\n", None),
        (
            "      labels: {app: w}\n      annotations: {team: a}\n",
            Some("team"),
        ),
        (
            "      labels: {app: w}\n      annotations:\n        team: a # ours\n",
            Some("team"),
        ),
        ("      {labels: {app: w}}\n", None),
        (
            "      {labels: {app: w}, annotations: {team: a}}\n",
            Some("team"),
        ),
    ] {
        let input = manifest("Deployment").replace("      labels: {app: w}\n", metadata);
        let out = if kept.is_some() {
            annotated(&input)
        } else {
            // Null and empty annotations come back as a mapping.
            let out = run_twice(&input);
            assert_annotated(&docs(&out.yaml)[0]);
            out
        };
        let annotations = pod_annotations(&docs(&out.yaml)[0]);
        if let Some(key) = kept {
            assert_eq!(annotations[key], "a", "{}", out.yaml);
        }
        assert_eq!(
            annotations.len(),
            4 + usize::from(kept.is_some()),
            "{}",
            out.yaml
        );
    }
    // A Pod's own flow metadata.
    let input = manifest("Pod").replace("metadata:\n  name: p\n", "metadata: {name: p}\n");
    let out = annotated(&input);
    assert!(
        out.yaml
            .contains("metadata: {name: p, \"annotations\": {\"appid.dev/status\": \"{\\\"version"),
        "{}",
        out.yaml
    );
}

#[test]
fn the_pods_own_prometheus_annotations_win() {
    let input = manifest("Deployment").replace(
        "      labels: {app: w}\n",
        "      labels: {app: w}\n      annotations:\n        prometheus.io/scrape: 'true'\n        prometheus.io/port: \"8080\"\n",
    );
    let out = run_twice(&input);
    let annotations = pod_annotations(&docs(&out.yaml)[0]);
    assert_eq!(annotations["prometheus.io/port"], "8080");
    assert!(annotations.get("prometheus.io/path").is_none());
    assert!(annotations.contains_key(ANNOTATION_STATUS));
    let warnings = not_about_capture(&out);
    assert_eq!(warnings.len(), 1, "{:?}", out.warnings);
    for needle in [
        "Deployment \"w\"",
        "prometheus.io/port: \"8080\"",
        "15191",
        "not scraped",
    ] {
        assert!(
            warnings[0].contains(needle),
            "{needle:?} not in {}",
            warnings[0]
        );
    }
    assert!(
        out.yaml.contains("        prometheus.io/scrape: 'true'\n"),
        "kept as written"
    );

    // Exactly ours, however quoted: nothing to say, nothing rewritten.
    let ours = manifest("Deployment").replace(
        "      labels: {app: w}\n",
        "      labels: {app: w}\n      annotations:\n        prometheus.io/path: /metrics\n        prometheus.io/port: '15191'\n        prometheus.io/scrape: \"true\"\n",
    );
    let out = run_twice(&ours);
    assert_annotated(&docs(&out.yaml)[0]);
    assert!(not_about_capture(&out).is_empty(), "{:?}", out.warnings);
    assert!(
        out.yaml.contains(
            "        prometheus.io/path: /metrics\n        prometheus.io/port: '15191'\n"
        )
    );
}

#[test]
fn an_old_status_is_replaced_in_place() {
    let injected = run(&manifest("Deployment")).yaml;
    let status = spec::status();
    let old = injected.replace(&status, r#"{"version":"0.0.1"}"#);
    assert_ne!(old, injected);
    assert_eq!(run(&old).yaml, injected);
    // The annotations sit right after the labels, in this order.
    assert!(
        injected.contains(&format!(
            "      labels: {{app: w}}\n      annotations:\n        appid.dev/status: '{status}'\n        prometheus.io/scrape: \"true\"\n        prometheus.io/port: \"15191\"\n        prometheus.io/path: \"/metrics\"\n    spec:\n"
        )),
        "{injected}"
    );
}
