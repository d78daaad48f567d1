//! Pods whose containers could get around capture (see `bypass.rs`), and
//! `hostNetwork`: the fields read as Kubernetes reads YAML (`yaml11.rs`).

use super::*;

/// The test Pod with `lines` as its app container's securityContext
/// (`runAsUser` then on line 10).
fn app_context(lines: &str) -> String {
    let context: String = lines.lines().map(|l| format!("      {l}\n")).collect();
    manifest("Pod").replace(
        "    image: example/app:1\n",
        &format!("    image: example/app:1\n    securityContext:\n{context}"),
    )
}

/// `pod` with `lines` as the pod's securityContext (`runAsUser` then on
/// line 7).
fn pod_context(pod: &str, lines: &str) -> String {
    let context: String = lines.lines().map(|l| format!("    {l}\n")).collect();
    pod.replacen(
        "spec:\n",
        &format!("spec:\n  securityContext:\n{context}"),
        1,
    )
}

/// What a container needs for no warning.
const HARDENED: &str =
    "runAsUser: 1000\nallowPrivilegeEscalation: false\ncapabilities:\n  drop: [ALL]\n";

fn capture_warnings(out: &InjectOutput) -> Vec<&str> {
    out.warnings
        .iter()
        .map(String::as_str)
        .filter(|w| w.contains(CAPTURE_WARNING))
        .collect()
}

/// Left as it is, counted as skipped, with one warning that says `why`.
fn assert_skipped(input: &str, why: &[&str]) {
    let out = run(input);
    assert_eq!(out.yaml, input);
    assert_eq!((out.injected, out.skipped), (0, 1), "{input}");
    assert_eq!(out.warnings.len(), 1, "{:?}", out.warnings);
    for needle in why {
        assert!(
            out.warnings[0].contains(needle),
            "{needle:?} not in {}",
            out.warnings[0]
        );
    }
}

/// Kubernetes reads YAML 1.1 (go-yaml v2 under sigs.k8s.io/yaml): each of
/// these is the integer 1337, so each container runs as the sidecar's uid,
/// whose traffic the redirect never captures. Refused as plain `1337` is,
/// in the container's securityContext or the pod's; other uids, however
/// spelled, are injected.
#[test]
fn every_spelling_of_the_sidecars_uid_is_refused() {
    let spellings = [
        "1337",
        "0x539",
        "02471",
        "0b10100111001",
        "1_337",
        "+1337",
        "0o2471",
        "1337.0",
        "1.337e3",
    ];
    for spelling in spellings {
        let own = app_context(&format!("runAsUser: {spelling}"));
        let inherited = pod_context(&manifest("Pod"), &format!("runAsUser: {spelling}"));
        for (input, line) in [(own, 10), (inherited, 7)] {
            let err = inject(&input, &opts())
                .expect_err(&format!(
                    "runAsUser: {spelling} (1337 to Kubernetes) was injected"
                ))
                .to_string();
            assert!(err.contains(&format!("line {line}:")), "{err}");
            assert!(err.contains("container `app` runs as uid 1337"), "{err}");
            if spelling != "1337" {
                assert!(err.contains(&format!("(runAsUser: {spelling})")), "{err}");
            }
        }
    }
    for other in ["13370", "0x53a", "2471", "1_338", "1337.5e1"] {
        let out = run(&app_context(&format!("runAsUser: {other}")));
        assert_eq!(out.injected, 1, "runAsUser: {other}");
    }
}

/// A quoted uid is a string, which Kubernetes refuses for an integer
/// field: refused here too, naming the field and line, rather than read
/// as a number the API server never sees.
#[test]
fn a_quoted_uid_is_refused_as_kubernetes_refuses_it() {
    for quoted in ["\"1337\"", "'1000'"] {
        let err = inject(&app_context(&format!("runAsUser: {quoted}")), &opts())
            .unwrap_err()
            .to_string();
        for needle in [
            "line 10:",
            "container `app`'s securityContext.runAsUser",
            "is not an integer as Kubernetes reads YAML (quoted, it is a string)",
        ] {
            assert!(err.contains(needle), "{needle:?} not in {err}");
        }
    }
}

/// An alias (to an anchored 1337 elsewhere), a tag (`!!int "1337"` is
/// 1337) or a merge key in the securityContext: the injector does not
/// resolve them, so the workload is skipped with a warning, as it is for an
/// alias it cannot edit through. An anchored value is read.
#[test]
fn an_aliased_tagged_or_merged_uid_skips_the_workload() {
    let aliased = app_context("runAsUser: *u").replace(
        "spec:\n",
        "spec:\n  terminationGracePeriodSeconds: &u 1337\n",
    );
    assert_skipped(
        &aliased,
        &[
            "Pod \"p\"",
            "line 11:",
            "securityContext.runAsUser is a YAML alias",
        ],
    );
    assert_skipped(
        &app_context("runAsUser: !!int \"1337\""),
        &["line 10:", "securityContext.runAsUser is a YAML tag"],
    );
    assert_skipped(
        &app_context("<<: {runAsUser: 1337}"),
        &["line 10:", "securityContext uses a YAML merge key"],
    );
    let whole = manifest("Pod")
        .replace(
            "spec:\n",
            "spec:\n  securityContext: &sc {runAsUser: 1337}\n",
        )
        .replace(
            "    image: example/app:1\n",
            "    image: example/app:1\n    securityContext: *sc\n",
        );
    assert_skipped(
        &whole,
        &[
            "line 10:",
            "container `app`'s securityContext is a YAML alias",
        ],
    );
    assert!(inject(&app_context("runAsUser: &u 0x539"), &opts()).is_err());
}

/// `hostNetwork: yes` (`on`, `Y`, ...) is `true` to Kubernetes
/// (kubernetes/kubernetes#34146): skipped as `true` is, else `appid-init`
/// would rewrite the node's nat table. Quoted, it is a string, which
/// Kubernetes refuses: so does the injector. An alias or tag: skipped.
#[test]
fn host_network_is_read_as_kubernetes_reads_it() {
    let host = |value: &str| {
        manifest("Pod").replace("spec:\n", &format!("spec:\n  hostNetwork: {value}\n"))
    };
    for spelling in [
        "true", "True", "TRUE", "yes", "Yes", "YES", "on", "On", "ON", "y", "Y",
    ] {
        let mut why = vec!["hostNetwork: true", "node's traffic"];
        let written = format!("written `{spelling}`");
        if spelling != "true" {
            why.push(&written);
        }
        assert_skipped(&host(spelling), &why);
    }
    for not_host in ["false", "no", "off", "N", "OFF", "~"] {
        assert_eq!(run(&host(not_host)).injected, 1, "hostNetwork: {not_host}");
    }
    for quoted in ["\"yes\"", "'true'"] {
        let err = inject(&host(quoted), &opts()).unwrap_err().to_string();
        assert!(
            err.contains("line 6:")
                && err.contains("hostNetwork")
                && err.contains("not true or false"),
            "{err}"
        );
    }
    let aliased = host("*h").replace("name: p\n", "name: p\n  labels: {x: &h yes}\n");
    assert_skipped(&aliased, &["hostNetwork is a YAML alias"]);
    assert_skipped(&host("!!bool \"true\""), &["hostNetwork is a YAML tag"]);
}

/// A container that may run as root (it can setuid(1337) and leave
/// capture), keeps NET_RAW (raw sockets send below the redirect) or adds
/// NET_ADMIN (it can delete the rules) gets one warning, listing what it
/// lacks or has; a hardened one gets none. The container's fields win
/// over the pod's.
#[test]
fn containers_that_may_get_around_capture_are_warned_about() {
    let cases: &[(&str, &[&str], &[&str])] = &[
        (
            "runAsUser: 0",
            &[
                ": runs as root (runAsUser: 0), allowPrivilegeEscalation not false, \
                 SETUID, SETGID and NET_RAW not dropped",
                "a root process can setuid(1337)",
                "NET_RAW sends raw packets",
            ],
            &["NET_ADMIN can"],
        ),
        (
            "runAsNonRoot: true\nallowPrivilegeEscalation: false\ncapabilities:\n  drop: [ALL]",
            &[": its uid left to the image (no runAsUser) (that may be uid 1337"],
            &["root process", "not dropped"],
        ),
        (
            "runAsUser: 1000\nallowPrivilegeEscalation: no\ncapabilities:\n  drop: [SETUID, CAP_SETGID]",
            &[": NET_RAW not dropped (NET_RAW sends raw packets below it)"],
            &["allowPrivilegeEscalation not", "root"],
        ),
        (
            &format!("{HARDENED}  add: [NET_ADMIN]"),
            &[": NET_ADMIN added (NET_ADMIN can delete its rules); drop privileged"],
            &["not dropped", "root"],
        ),
        (
            &format!("{HARDENED}  add: [cap_sys_admin, SETUID]"),
            &[": SETUID not dropped, SYS_ADMIN added (a root process"],
            &["NET_RAW"],
        ),
        (
            "runAsUser: 1000\nallowPrivilegeEscalation: false\ncapabilities:\n  add: [ALL]",
            &["SETUID, SETGID and NET_RAW not dropped, NET_ADMIN and SYS_ADMIN added"],
            &["allowPrivilegeEscalation not"],
        ),
        (
            &format!("{HARDENED}privileged: true"),
            &[": privileged: true (NET_ADMIN can delete its rules)"],
            &["not dropped", "allowPrivilegeEscalation not"],
        ),
    ];
    for (context, present, absent) in cases {
        let out = run(&app_context(context));
        assert_eq!(out.injected, 1);
        let warnings = capture_warnings(&out);
        assert_eq!(warnings.len(), 1, "{context}: {:?}", out.warnings);
        assert!(
            warnings[0]
                .starts_with("document 1 (Pod \"p\"): container `app` may get around capture: ")
        );
        for needle in *present {
            assert!(
                warnings[0].contains(needle),
                "{context}: {needle:?} not in {}",
                warnings[0]
            );
        }
        for needle in *absent {
            assert!(
                !warnings[0].contains(needle),
                "{context}: {needle:?} in {}",
                warnings[0]
            );
        }
    }
    for quiet in [
        app_context(HARDENED),
        app_context(&HARDENED.replace("[ALL]", "[all]")),
        pod_context(
            &app_context(&HARDENED.replace("runAsUser: 1000\n", "")),
            "runAsUser: 1000",
        ),
    ] {
        let out = run(&quiet);
        assert!(
            capture_warnings(&out).is_empty(),
            "{quiet}: {:?}",
            out.warnings
        );
    }
    // The container's runAsUser over the pod's.
    let root = pod_context(
        &app_context(&HARDENED.replace("1000", "0")),
        "runAsUser: 1000",
    );
    let out = run(&root);
    assert!(
        capture_warnings(&out)[0].contains(": runs as root (runAsUser: 0) ("),
        "{:?}",
        out.warnings
    );
}

/// One line per container of the pod's, init containers included, never
/// for appid's own (`appid-init` runs as root with NET_ADMIN, by design),
/// on re-injection too; the full text for a container with no
/// securityContext, the usual case.
#[test]
fn one_warning_per_container_and_none_for_appids_own() {
    let input = "\
apiVersion: apps/v1
kind: Deployment
metadata: {name: web}
spec:
  template:
    spec:
      initContainers:
      - name: migrate
        image: example/migrate:1
      containers:
      - name: app
        image: example/app:1
        securityContext: {runAsUser: 1000, allowPrivilegeEscalation: false, capabilities: {drop: [ALL]}}
      - name: cache
        image: example/cache:1
";
    let out = run_twice(input);
    let warnings = capture_warnings(&out);
    assert_eq!(
        warnings,
        [
            "document 1 (Deployment \"web\"): container `migrate` may get around capture: may run \
             as root (no runAsUser or runAsNonRoot: true), allowPrivilegeEscalation not \
             false, SETUID, SETGID and NET_RAW not dropped (a root process can setuid(1337) and \
             leave capture; NET_RAW sends raw packets below it); set runAsNonRoot: true, a \
             runAsUser, allowPrivilegeEscalation: false and capabilities.drop: [ALL] in its \
             securityContext",
            &out.warnings[1],
        ]
    );
    assert!(
        warnings[1].contains("container `cache` may get around capture"),
        "{warnings:?}"
    );
    let again = run(&out.yaml);
    assert_eq!(again.warnings, out.warnings);
}
