//! Transparent capture: the nat-table rules that send a host's (or pod's)
//! TCP through the sidecar.
//!
//! Design bias: *the rule set is data, applied in one transaction*. This
//! module is pure: it turns [`RedirectOptions`] into the exact
//! `iptables-restore` input (golden-tested, printed by `--dry-run`), and
//! reads `iptables-save` output to find what is ours. [`apply`] feeds the
//! scripts to `iptables-restore --noflush`, so an install either happens
//! whole or not at all, and it is idempotent by construction: every install
//! first deletes our jump rules and re-declares (thus flushes) our chains.
//! Nothing that is not ours is ever touched: our chains are named `APPID_*`
//! and every rule carries an `appid:` comment.
//!
//! ```text
//!  peer ──► PREROUTING ─► APPID_INBOUND ─┬─ health/authority/excluded port ─► RETURN
//!                                        └─► APPID_IN_REDIRECT ─► REDIRECT :15106
//!  app ───► OUTPUT ─────► APPID_OUTPUT ──┬─ proxy uid/gid, loopback,
//!                                        │  excluded port/CIDR ─► RETURN
//!                                        └─► APPID_REDIRECT ─┬─ a service's uid/user/cgroup
//!                                                            │    ─► REDIRECT :<its outbound>
//!                                                            └─► REDIRECT :15101
//! ```
//!
//! With several services on one host (`services:` in the sidecar config,
//! read by `--services-from`), each service's sockets — told apart by the
//! kernel, by owner uid (`-m owner`) or cgroup v2 path (`-m cgroup`) — go
//! to that service's own outbound listener, so the sidecar calls out with
//! that service's identity; everything else goes to the sidecar's.

pub mod iptables;

use std::fmt::Write as _;

use ipnet::IpNet;

/// The chains we own, in the order they are declared.
pub const CHAINS: [&str; 4] = [
    "APPID_INBOUND",
    "APPID_IN_REDIRECT",
    "APPID_OUTPUT",
    "APPID_REDIRECT",
];

/// Every chain name we own starts with this.
pub const CHAIN_PREFIX: &str = "APPID_";

/// What to capture and what to leave alone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedirectOptions {
    /// The sidecar's uid: its own connections are never redirected.
    pub proxy_uid: u32,
    /// Optionally also the sidecar's gid.
    pub proxy_gid: Option<u32>,
    /// Where inbound TCP is redirected (the sidecar's transparent inbound).
    pub inbound_port: u16,
    /// Where outbound TCP is redirected (the sidecar's transparent outbound).
    pub outbound_port: u16,
    /// The health port, which the sidecar serves itself on the pod IP
    /// (never captured inbound: kubelet must reach it, not the app).
    pub health_port: u16,
    /// The port of an authority on this host, if one runs here: never
    /// captured inbound, so sidecars reach it directly (outbound it is
    /// captured like any port). None by default: a port left uncaptured
    /// where nothing of appid's listens is one the app may take, and reach
    /// from anywhere with no decision and no audit line.
    pub authority_port: Option<u16>,
    pub exclude_inbound_ports: Vec<u16>,
    pub exclude_outbound_ports: Vec<u16>,
    pub exclude_outbound_cidrs: Vec<IpNet>,
    /// Services whose sockets go to their own outbound listener.
    pub services: Vec<ServiceRedirect>,
}

/// One service's outbound capture: its owner's TCP to its listener.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceRedirect {
    pub name: String,
    pub owner: crate::config::Owner,
    pub port: u16,
}

impl ServiceRedirect {
    /// The services of a sidecar config that have an outbound listener.
    pub fn from_config(config: &crate::config::ProxyConfig) -> Vec<ServiceRedirect> {
        config
            .services
            .iter()
            .filter_map(|s| {
                let out = s.outbound.as_ref()?;
                Some(ServiceRedirect {
                    name: s.name.clone(),
                    owner: out.owner.clone(),
                    port: out.listen.port(),
                })
            })
            .collect()
    }

    /// The iptables match for the service's sockets.
    fn matcher(&self) -> String {
        use crate::config::Owner;
        match &self.owner {
            Owner::Uid(uid) => format!("-m owner --uid-owner {uid}"),
            Owner::User(user) => format!("-m owner --uid-owner {user}"),
            Owner::Cgroup(path) => format!("-m cgroup --path {path}"),
        }
    }
}

impl Default for RedirectOptions {
    fn default() -> Self {
        RedirectOptions {
            proxy_uid: 1337,
            proxy_gid: None,
            inbound_port: 15106,
            outbound_port: 15101,
            health_port: crate::config::DEFAULT_HEALTH_PORT,
            authority_port: None,
            exclude_inbound_ports: Vec::new(),
            exclude_outbound_ports: Vec::new(),
            exclude_outbound_cidrs: Vec::new(),
            services: Vec::new(),
        }
    }
}

/// IPv4 (`iptables`) or IPv6 (`ip6tables`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    pub fn as_str(self) -> &'static str {
        match self {
            Family::V4 => "ipv4",
            Family::V6 => "ipv6",
        }
    }

    fn loopback(self) -> &'static str {
        match self {
            Family::V4 => "127.0.0.0/8",
            Family::V6 => "::1/128",
        }
    }
}

/// One rule: `-A <chain> <spec> -m comment --comment "appid: <comment>"`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    pub chain: &'static str,
    /// Match and target, e.g. `-p tcp --dport 22 -j RETURN`.
    pub spec: String,
    pub comment: String,
}

impl Rule {
    fn new(chain: &'static str, spec: impl Into<String>, comment: impl Into<String>) -> Rule {
        Rule {
            chain,
            spec: spec.into(),
            comment: comment.into(),
        }
    }

    /// The `iptables-restore` line, in the order `iptables-save` prints it
    /// (matches, comment, target), so saved and generated rules read alike.
    pub fn line(&self) -> String {
        let (matches, target) = self
            .spec
            .split_once(" -j ")
            .map_or(("", self.spec.as_str()), |(m, t)| (m, t));
        let matches = if matches.is_empty() {
            String::new()
        } else {
            format!("{matches} ")
        };
        format!(
            "-A {} {matches}-m comment --comment \"appid: {}\" -j {target}",
            self.chain, self.comment
        )
    }
}

/// The rule set for one address family.
pub fn rules(options: &RedirectOptions, family: Family) -> Vec<Rule> {
    let mut rules = vec![
        Rule::new("PREROUTING", "-p tcp -j APPID_INBOUND", "inbound capture"),
        Rule::new("OUTPUT", "-p tcp -j APPID_OUTPUT", "outbound capture"),
    ];

    // Inbound: everything to the app, except the ports that must stay
    // direct, each one held by appid itself (the admin API listens on
    // loopback only, which PREROUTING never sees: no rule for it).
    let mut inbound_exclusions = vec![(options.health_port, "health port")];
    inbound_exclusions.extend(options.authority_port.map(|p| (p, "authority port")));
    inbound_exclusions.extend(
        options
            .exclude_inbound_ports
            .iter()
            .map(|&p| (p, "excluded inbound port")),
    );
    for (port, why) in dedup_ports(inbound_exclusions) {
        rules.push(Rule::new(
            "APPID_INBOUND",
            format!("-p tcp --dport {port} -j RETURN"),
            why,
        ));
    }
    rules.push(Rule::new(
        "APPID_INBOUND",
        "-p tcp -j APPID_IN_REDIRECT",
        "to the sidecar inbound",
    ));
    rules.push(Rule::new(
        "APPID_IN_REDIRECT",
        format!("-p tcp -j REDIRECT --to-ports {}", options.inbound_port),
        "inbound redirect",
    ));

    // Outbound: the sidecar's own traffic and local traffic go direct.
    rules.push(Rule::new(
        "APPID_OUTPUT",
        format!("-m owner --uid-owner {} -j RETURN", options.proxy_uid),
        "sidecar own traffic (uid)",
    ));
    if let Some(gid) = options.proxy_gid {
        rules.push(Rule::new(
            "APPID_OUTPUT",
            format!("-m owner --gid-owner {gid} -j RETURN"),
            "sidecar own traffic (gid)",
        ));
    }
    rules.push(Rule::new(
        "APPID_OUTPUT",
        format!("-d {} -j RETURN", family.loopback()),
        "loopback",
    ));
    // The metadata API stays captured whatever is excluded below: excluding
    // port 80, or 169.254.0.0/16 for a node-local DNS cache, must not hand
    // the app the instance's credentials undecided and unaudited.
    for address in appid_policy::policy::metadata_api_addresses() {
        let (v4, prefix) = match address {
            std::net::IpAddr::V4(_) => (true, 32),
            std::net::IpAddr::V6(_) => (false, 128),
        };
        if v4 == (family == Family::V4) {
            rules.push(Rule::new(
                "APPID_OUTPUT",
                format!("-d {address}/{prefix} -p tcp -j APPID_REDIRECT"),
                "metadata API, captured whatever is excluded",
            ));
        }
    }
    // The authority's port is excluded inbound only (an authority on this
    // host answers sidecars itself). Outbound it is not: the sidecar reaches
    // the authority as uid 1337 already, and a RETURN by port alone let the
    // app reach any address on that port with no decision and no audit line.
    let outbound_exclusions = options
        .exclude_outbound_ports
        .iter()
        .map(|&p| (p, "excluded outbound port"))
        .collect();
    for (port, why) in dedup_ports(outbound_exclusions) {
        rules.push(Rule::new(
            "APPID_OUTPUT",
            format!("-p tcp --dport {port} -j RETURN"),
            why,
        ));
    }
    for cidr in &options.exclude_outbound_cidrs {
        let matches_family = matches!(
            (cidr, family),
            (IpNet::V4(_), Family::V4) | (IpNet::V6(_), Family::V6)
        );
        if matches_family {
            rules.push(Rule::new(
                "APPID_OUTPUT",
                format!("-d {cidr} -j RETURN"),
                "excluded outbound CIDR",
            ));
        }
    }
    rules.push(Rule::new(
        "APPID_OUTPUT",
        "-p tcp -j APPID_REDIRECT",
        "to the sidecar outbound",
    ));
    for service in &options.services {
        rules.push(Rule::new(
            "APPID_REDIRECT",
            format!(
                "-p tcp {} -j REDIRECT --to-ports {}",
                service.matcher(),
                service.port
            ),
            format!("service {}", service.name),
        ));
    }
    rules.push(Rule::new(
        "APPID_REDIRECT",
        format!("-p tcp -j REDIRECT --to-ports {}", options.outbound_port),
        "outbound redirect",
    ));
    rules
}

/// Keeps the first reason for each port, in order.
fn dedup_ports(ports: Vec<(u16, &'static str)>) -> Vec<(u16, &'static str)> {
    let mut seen = Vec::with_capacity(ports.len());
    for (port, why) in ports {
        if !seen.iter().any(|&(p, _)| p == port) {
            seen.push((port, why));
        }
    }
    seen
}

/// What of ours an `iptables-save` dump of the nat table contains.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Installed {
    /// Rules in built-in chains that jump to our chains, as saved (`-A ...`).
    pub jumps: Vec<String>,
    /// Our chains that exist.
    pub chains: Vec<String>,
    /// Every line of ours (chain declarations and rules), for `show`.
    pub lines: Vec<String>,
}

impl Installed {
    pub fn is_empty(&self) -> bool {
        self.jumps.is_empty() && self.chains.is_empty()
    }
}

/// Finds our chains and rules in `iptables-save` output (any tables; only
/// the nat table is read).
pub fn installed(save: &str) -> Installed {
    let mut found = Installed::default();
    let mut in_nat = false;
    for line in save.lines() {
        let line = line.trim_end();
        if let Some(table) = line.strip_prefix('*') {
            in_nat = table == "nat";
            continue;
        }
        if !in_nat {
            continue;
        }
        if let Some(declaration) = line.strip_prefix(':') {
            let chain = declaration.split_whitespace().next().unwrap_or("");
            if chain.starts_with(CHAIN_PREFIX) {
                found.chains.push(chain.to_string());
                found.lines.push(line.to_string());
            }
        } else if let Some(rule) = line.strip_prefix("-A ") {
            let chain = rule.split_whitespace().next().unwrap_or("");
            if chain.starts_with(CHAIN_PREFIX) {
                found.lines.push(line.to_string());
            } else if rule
                .split_whitespace()
                .collect::<Vec<_>>()
                .windows(2)
                .any(|w| w[0] == "-j" && w[1].starts_with(CHAIN_PREFIX))
            {
                found.jumps.push(line.to_string());
                found.lines.push(line.to_string());
            }
        }
    }
    found
}

/// Appends the commands that remove everything of ours listed in `existing`.
fn write_removal(script: &mut String, existing: &Installed, keep_declared: bool) {
    for jump in &existing.jumps {
        let _ = writeln!(script, "-D {}", &jump[3..]);
    }
    for chain in &existing.chains {
        // A chain we re-declare below is flushed by the declaration itself.
        if !(keep_declared && CHAINS.contains(&chain.as_str())) {
            let _ = writeln!(script, "-F {chain}");
        }
    }
    for chain in &existing.chains {
        if !(keep_declared && CHAINS.contains(&chain.as_str())) {
            let _ = writeln!(script, "-X {chain}");
        }
    }
}

/// The `iptables-restore --noflush` input that installs the rule set,
/// replacing whatever of ours `existing` shows.
pub fn install_script(options: &RedirectOptions, family: Family, existing: &Installed) -> String {
    let mut script = String::from("*nat\n");
    for chain in CHAINS {
        let _ = writeln!(script, ":{chain} - [0:0]");
    }
    write_removal(&mut script, existing, true);
    for rule in rules(options, family) {
        script.push_str(&rule.line());
        script.push('\n');
    }
    script.push_str("COMMIT\n");
    script
}

/// The `iptables-restore --noflush` input that removes everything of ours,
/// or `None` when nothing is installed.
pub fn remove_script(existing: &Installed) -> Option<String> {
    if existing.is_empty() {
        return None;
    }
    let mut script = String::from("*nat\n");
    write_removal(&mut script, existing, false);
    script.push_str("COMMIT\n");
    Some(script)
}

pub use iptables::{
    Backend, RedirectError, apply_install, apply_remove, available_families, kernel_has_ipv6,
    missing_ipv6_tool, show,
};

#[cfg(test)]
mod tests {
    use super::*;

    fn golden(name: &str, actual: &str) {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("src/redirect/golden")
            .join(name);
        if std::env::var_os("UPDATE_GOLDEN").is_some() {
            std::fs::write(&path, actual).unwrap();
        }
        let expected = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("{}: {e} (run with UPDATE_GOLDEN=1)", path.display()));
        assert_eq!(actual, expected, "golden file {}", path.display());
    }

    fn full_options() -> RedirectOptions {
        RedirectOptions {
            proxy_gid: Some(1337),
            authority_port: Some(15170),
            exclude_inbound_ports: vec![22, 15190],
            exclude_outbound_ports: vec![5432],
            exclude_outbound_cidrs: vec![
                "10.96.0.0/12".parse().unwrap(),
                "fd00::/8".parse().unwrap(),
            ],
            services: vec![
                ServiceRedirect {
                    name: "billing".into(),
                    owner: crate::config::Owner::Uid(1001),
                    port: 15111,
                },
                ServiceRedirect {
                    name: "reports".into(),
                    owner: crate::config::Owner::User("reports".into()),
                    port: 15112,
                },
                ServiceRedirect {
                    name: "batch".into(),
                    owner: crate::config::Owner::Cgroup("/system.slice/batch.service".into()),
                    port: 15113,
                },
            ],
            ..RedirectOptions::default()
        }
    }

    /// An inbound port left uncaptured is one the app may listen on, reached
    /// from anywhere with no decision and no audit line: by default only
    /// the health port, which the sidecar holds. The admin API listens on
    /// loopback (PREROUTING never sees it), and no authority runs beside a
    /// workload unless `--authority-port` says so.
    #[test]
    fn only_ports_appid_holds_are_left_uncaptured_inbound() {
        let uncaptured = |options: &RedirectOptions| -> Vec<String> {
            rules(options, Family::V4)
                .iter()
                .filter(|r| r.chain == "APPID_INBOUND" && r.spec.ends_with("-j RETURN"))
                .map(|r| r.spec.clone())
                .collect()
        };
        assert_eq!(
            uncaptured(&RedirectOptions::default()),
            ["-p tcp --dport 15191 -j RETURN"]
        );
        let with_authority = RedirectOptions {
            authority_port: Some(15170),
            ..RedirectOptions::default()
        };
        assert_eq!(
            uncaptured(&with_authority),
            [
                "-p tcp --dport 15191 -j RETURN",
                "-p tcp --dport 15170 -j RETURN"
            ]
        );
    }

    #[test]
    fn default_rule_sets_match_golden_files() {
        let none = Installed::default();
        golden(
            "default-v4.rules",
            &install_script(&RedirectOptions::default(), Family::V4, &none),
        );
        golden(
            "default-v6.rules",
            &install_script(&RedirectOptions::default(), Family::V6, &none),
        );
    }

    #[test]
    fn full_rule_sets_match_golden_files() {
        let none = Installed::default();
        golden(
            "full-v4.rules",
            &install_script(&full_options(), Family::V4, &none),
        );
        golden(
            "full-v6.rules",
            &install_script(&full_options(), Family::V6, &none),
        );
    }

    const SAVED: &str = "# Generated by iptables-save\n*filter\n:INPUT ACCEPT [0:0]\n-A INPUT -j APPID_FAKE\nCOMMIT\n*nat\n:PREROUTING ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n:APPID_INBOUND - [0:0]\n:APPID_OUTPUT - [0:0]\n:OTHER - [0:0]\n-A PREROUTING -p tcp -m comment --comment \"appid: inbound capture\" -j APPID_INBOUND\n-A OUTPUT -p tcp -m comment --comment \"appid: outbound capture\" -j APPID_OUTPUT\n-A OUTPUT -p udp -j OTHER\n-A APPID_INBOUND -p tcp -j RETURN\nCOMMIT\n";

    #[test]
    fn finds_only_our_nat_rules() {
        let found = installed(SAVED);
        assert_eq!(found.chains, vec!["APPID_INBOUND", "APPID_OUTPUT"]);
        assert_eq!(found.jumps.len(), 2);
        assert!(found.lines.iter().all(|l| l.contains("APPID_")));
        assert!(!found.lines.iter().any(|l| l.contains("OTHER")));
    }

    #[test]
    fn removal_deletes_jumps_then_chains_and_nothing_else() {
        let script = remove_script(&installed(SAVED)).unwrap();
        assert_eq!(
            script,
            "*nat\n\
             -D PREROUTING -p tcp -m comment --comment \"appid: inbound capture\" -j APPID_INBOUND\n\
             -D OUTPUT -p tcp -m comment --comment \"appid: outbound capture\" -j APPID_OUTPUT\n\
             -F APPID_INBOUND\n-F APPID_OUTPUT\n-X APPID_INBOUND\n-X APPID_OUTPUT\nCOMMIT\n"
        );
        assert_eq!(remove_script(&Installed::default()), None);
    }

    #[test]
    fn reinstall_deletes_old_jumps_and_unknown_chains_of_ours() {
        let mut existing = installed(SAVED);
        existing.chains.push("APPID_OLD".into());
        let script = install_script(&RedirectOptions::default(), Family::V4, &existing);
        assert!(script.contains("-D PREROUTING -p tcp -m comment --comment \"appid: inbound capture\" -j APPID_INBOUND\n"));
        assert!(script.contains("-F APPID_OLD\n") && script.contains("-X APPID_OLD\n"));
        assert!(
            !script.contains("-X APPID_INBOUND"),
            "re-declared, not deleted"
        );
        // Exactly one jump per built-in chain gets added back.
        assert_eq!(script.matches("-A PREROUTING").count(), 1);
        assert_eq!(script.matches("-A OUTPUT").count(), 1);
    }

    #[test]
    fn the_health_port_is_never_captured_inbound() {
        let inbound_returns = |options: &RedirectOptions| -> Vec<String> {
            rules(options, Family::V4)
                .into_iter()
                .filter(|r| r.chain == "APPID_INBOUND" && r.spec.ends_with("-j RETURN"))
                .map(|r| format!("{} ({})", r.spec, r.comment))
                .collect()
        };
        let default = inbound_returns(&RedirectOptions::default());
        assert!(
            default.contains(&"-p tcp --dport 15191 -j RETURN (health port)".to_owned()),
            "{default:?}"
        );
        let moved = inbound_returns(&RedirectOptions {
            health_port: 16000,
            ..RedirectOptions::default()
        });
        assert!(
            moved.contains(&"-p tcp --dport 16000 -j RETURN (health port)".to_owned()),
            "{moved:?}"
        );
        assert!(!moved.iter().any(|r| r.contains("15191")), "{moved:?}");
        // Outbound, the app may still call other pods' health ports through
        // the sidecar: only the inbound side is excluded.
        assert!(
            !rules(&RedirectOptions::default(), Family::V4)
                .iter()
                .any(|r| r.chain == "APPID_OUTPUT" && r.spec.contains("15191"))
        );
    }

    #[test]
    fn cidrs_go_to_their_family_and_ports_dedup() {
        let v4 = rules(&full_options(), Family::V4);
        let v6 = rules(&full_options(), Family::V6);
        assert!(v4.iter().any(|r| r.spec.contains("10.96.0.0/12")));
        assert!(!v4.iter().any(|r| r.spec.contains("fd00::/8")));
        assert!(v6.iter().any(|r| r.spec.contains("fd00::/8")));
        // 15190 is both the admin port and listed explicitly: one rule.
        assert_eq!(
            v4.iter()
                .filter(|r| r.spec.contains("--dport 15190"))
                .count(),
            1
        );
    }
}
