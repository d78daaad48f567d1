//! `appid redirect` against real iptables, inside throwaway network
//! namespaces (root required).
//!
//! Without root (or without `ip`/`iptables`) the tests skip with a printed
//! reason; under `CI=true` a skip is a failure, because CI runs as root.

#[path = "support/mod.rs"]
mod support;

use std::process::Command;

use support::netns::{Netns, should_run, text};

fn appid_path() -> &'static str {
    env!("CARGO_BIN_EXE_appid")
}

/// The rule sets of `ns`, without the timestamped comment lines.
fn saved(ns: &Netns) -> (String, String) {
    let strip = |s: String| {
        s.lines()
            .filter(|l| !l.starts_with('#'))
            .collect::<Vec<_>>()
            .join("\n")
    };
    (
        strip(ns.sh("iptables-save")),
        strip(ns.sh("ip6tables-save")),
    )
}

#[test]
fn install_twice_then_remove_leaves_iptables_exactly_as_before() {
    if !should_run() {
        return;
    }
    let ns = Netns::new("redirect");
    // Someone else's rules, in the same table and chains we use.
    ns.sh("iptables -t nat -A OUTPUT -p udp --dport 53 -m comment --comment dns -j RETURN");
    ns.sh("iptables -t nat -N OTHER && iptables -t nat -A PREROUTING -p tcp --dport 80 -j OTHER");
    ns.sh("ip6tables -t nat -A OUTPUT -p udp --dport 53 -j RETURN");
    ns.sh("iptables -t filter -A INPUT -p tcp --dport 22 -j ACCEPT");
    let before = saved(&ns);

    let install = [
        "redirect",
        "install",
        "--proxy-uid",
        "1337",
        "--exclude-inbound-ports",
        "22",
        "--exclude-outbound-cidrs",
        "10.96.0.0/12,fd00::/8",
    ];
    for _ in 0..2 {
        let out = ns.run(appid_path(), &install);
        assert!(out.status.success(), "install: {}", text(&out.stderr));
    }
    let (v4, v6) = saved(&ns);
    // Installed once: exactly one jump from each built-in chain.
    assert_eq!(v4.matches("-j APPID_INBOUND").count(), 1, "{v4}");
    assert_eq!(v4.matches("-j APPID_OUTPUT").count(), 1, "{v4}");
    assert_eq!(v6.matches("-j APPID_OUTPUT").count(), 1, "{v6}");
    assert!(v4.contains("--uid-owner 1337"), "{v4}");
    assert!(
        v4.contains("10.96.0.0/12") && !v4.contains("fd00::/8"),
        "{v4}"
    );
    assert!(v6.contains("fd00::/8"), "{v6}");
    // Theirs untouched.
    assert!(
        v4.contains("--comment dns -j RETURN") && v4.contains("-j OTHER"),
        "{v4}"
    );

    let show = ns.run(appid_path(), &["redirect", "show"]);
    assert_eq!(show.status.code(), Some(0), "{}", text(&show.stderr));
    assert!(text(&show.stdout).contains("appid: outbound redirect"));

    let out = ns.run(appid_path(), &["redirect", "remove"]);
    assert!(out.status.success(), "remove: {}", text(&out.stderr));
    assert_eq!(saved(&ns), before);

    // Removing again is a no-op; show now reports nothing (exit 1).
    let out = ns.run(appid_path(), &["redirect", "remove"]);
    assert!(out.status.success(), "second remove: {}", text(&out.stderr));
    assert_eq!(saved(&ns), before);
    let show = ns.run(appid_path(), &["redirect", "show"]);
    assert_eq!(show.status.code(), Some(1));
}

#[test]
fn dry_run_prints_the_rules_and_changes_nothing() {
    if !should_run() {
        return;
    }
    let ns = Netns::new("redirect");
    ns.sh("iptables -t nat -A OUTPUT -p udp -j RETURN");
    let before = saved(&ns);
    let out = ns.run(
        appid_path(),
        &[
            "redirect",
            "install",
            "--dry-run",
            "--outbound-port",
            "15001",
        ],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let printed = text(&out.stdout);
    assert!(
        printed.contains("*nat") && printed.contains("--to-ports 15001"),
        "{printed}"
    );
    assert!(
        printed.contains("# ipv4") && printed.contains("COMMIT"),
        "{printed}"
    );
    assert_eq!(saved(&ns), before);
}

#[test]
fn the_health_port_is_left_to_the_sidecar() {
    if !should_run() {
        return;
    }
    let ns = Netns::new("redirect");
    // (iptables-save adds `-m tcp` before `--dport`.)
    let rule = |port: &str| {
        format!("--dport {port} -m comment --comment \"appid: health port\" -j RETURN")
    };
    let out = ns.run(appid_path(), &["redirect", "install", "--dry-run"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let printed = text(&out.stdout);
    assert!(printed.contains(&rule("15191")), "{printed}");

    let out = ns.run(
        appid_path(),
        &["redirect", "install", "--health-port", "16000"],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let (v4, v6) = saved(&ns);
    for saved in [&v4, &v6] {
        assert!(saved.contains(&rule("16000")), "{saved}");
        assert!(!saved.contains("15191"), "{saved}");
    }
}

/// Inbound, only ports appid holds stay uncaptured: an app could listen
/// on any other, reached from anywhere undecided. The admin API is on
/// loopback (no rule), an authority's port only with `--authority-port`.
#[test]
fn only_ports_appid_holds_stay_uncaptured_inbound() {
    if !should_run() {
        return;
    }
    let ns = Netns::new("redirect");
    let returned = |saved: &str| -> Vec<String> {
        saved
            .lines()
            .filter(|l| l.starts_with("-A APPID_INBOUND") && l.ends_with("-j RETURN"))
            .filter_map(|l| {
                l.split("--dport ")
                    .nth(1)?
                    .split(' ')
                    .next()
                    .map(str::to_owned)
            })
            .collect()
    };
    let out = ns.run(appid_path(), &["redirect", "install"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let (v4, v6) = saved(&ns);
    for saved in [&v4, &v6] {
        assert_eq!(returned(saved), ["15191"], "{saved}");
    }
    let out = ns.run(
        appid_path(),
        &["redirect", "install", "--authority-port", "15170"],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let (v4, v6) = saved(&ns);
    for saved in [&v4, &v6] {
        assert_eq!(returned(saved), ["15191", "15170"], "{saved}");
    }
}

#[test]
fn bad_flags_are_exit_2_with_one_line() {
    // Needs no root: flags are checked before iptables is touched.
    for (args, needle) in [
        (
            vec!["redirect", "install", "--exclude-inbound-ports", "22,x"],
            "not a port",
        ),
        (
            vec![
                "redirect",
                "install",
                "--exclude-outbound-cidrs",
                "10.0.0.0/33",
            ],
            "CIDR",
        ),
        (
            vec!["redirect", "install", "--health-port", "x"],
            "--health-port",
        ),
        (vec!["redirect", "sideways"], "sideways"),
    ] {
        let out = Command::new(appid_path()).args(&args).output().unwrap();
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(needle), "{args:?}: {stderr}");
        assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
    }
}
