//! `services:` — several services on one host, each with an identity of
//! its own (Trireme's Linux-process mode).
//!
//! Design bias: *the kernel says who is calling, the config says who that
//! is*. A service is named here with what tells its connections apart:
//! outbound, the owner of the calling socket (a uid, a user, or a cgroup v2
//! path), which `appid redirect install --services-from` turns into an
//! `iptables -m owner`/`-m cgroup` rule sending that owner's TCP to the
//! service's own outbound listener; inbound, the app ports it listens on.
//! The sidecar never guesses: a connection on a service's listener or port
//! uses that service's certificate, everything else the sidecar's own
//! (`identity.authority`). Every service gets its certificate from the
//! authority with its own join token (and keeps it in
//! `<state_dir>/services/<name>/`), and may name the process whose
//! fingerprint it reports (`workload`, as `identity.authority.workload`).
//!
//! ```yaml
//! services:
//!   - name: billing
//!     join_token_file: billing.token
//!     workload: { pid_file: /run/billing.pid }
//!     inbound_ports: [8081]
//!     outbound: { listen: "127.0.0.1:15111", owner: { uid: 1001 } }
//! ```

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::Deserialize;
use serde_saphyr::Spanned;

use super::{Bound, Cx, RawWorkload, S, line_col};
use crate::sidecar::fingerprint::Workload;

/// A service's name: a DNS label (it names a directory and a metric label).
const NAME_EXAMPLE: &str = "`name: billing` (lowercase letters, digits and `-`, at most 63)";

/// One service on this host with its own identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceConfig {
    pub name: String,
    /// The one-time join token this service's identity is bootstrapped
    /// with (not needed once an identity is kept in the state directory).
    pub join_token_file: Option<PathBuf>,
    /// The process whose runtime fingerprint is reported for this service.
    pub workload: Option<Workload>,
    /// App ports this service listens on: inbound connections to them are
    /// served with its certificate.
    pub inbound_ports: Vec<u16>,
    /// Its outbound listener and whose sockets reach it.
    pub outbound: Option<ServiceOutbound>,
}

/// A service's transparent outbound listener.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceOutbound {
    pub listen: SocketAddr,
    pub owner: Owner,
}

/// Whose outbound TCP belongs to a service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Owner {
    /// Sockets of this uid (`iptables -m owner --uid-owner N`).
    Uid(u32),
    /// Sockets of this user, resolved by iptables when the rules are
    /// installed (`--uid-owner NAME`).
    User(String),
    /// Sockets of processes in this cgroup v2 path, relative to the cgroup
    /// root (`iptables -m cgroup --path /system.slice/billing.service`).
    Cgroup(String),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawService {
    name: Option<S>,
    join_token_file: Option<S>,
    workload: Option<Spanned<RawWorkload>>,
    inbound_ports: Option<Spanned<Vec<S>>>,
    outbound: Option<Spanned<RawServiceOutbound>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawServiceOutbound {
    listen: Option<S>,
    owner: Option<Spanned<RawOwner>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawOwner {
    uid: Option<S>,
    user: Option<S>,
    cgroup: Option<S>,
}

impl ServiceConfig {
    /// As shown on `/config`.
    pub fn effective_json(&self) -> serde_json::Value {
        serde_json::json!({
            "name": self.name,
            "join_token_file": self.join_token_file.as_ref().map(|p| p.display().to_string()),
            "workload": self.workload.as_ref().map(super::workload_json),
            "inbound_ports": self.inbound_ports,
            "outbound": self.outbound.as_ref().map(|o| serde_json::json!({
                "listen": o.listen.to_string(),
                "owner": match &o.owner {
                    Owner::Uid(uid) => serde_json::json!({"uid": uid}),
                    Owner::User(user) => serde_json::json!({"user": user}),
                    Owner::Cgroup(path) => serde_json::json!({"cgroup": path}),
                },
            })),
        })
    }
}

impl Cx<'_> {
    /// `services:`; `authority` says whether `identity.authority` is used
    /// (services get their certificates from it, so they need it).
    pub(super) fn services(
        &mut self,
        raw: &Spanned<Vec<Spanned<RawService>>>,
        authority: bool,
        bound: &mut Vec<Bound>,
    ) -> Option<Vec<ServiceConfig>> {
        if !authority && !raw.value.is_empty() {
            self.err(
                line_col(&raw.referenced),
                "services",
                "services get their certificates from the authority: use `identity: { authority: { url, bundle, ... } }`, \
                 or remove `services`",
            );
            return None;
        }
        let mut services = Vec::new();
        let mut ok = true;
        for (i, s) in raw.value.iter().enumerate() {
            match self.service(i, s, bound) {
                Some(service) => services.push(service),
                None => ok = false,
            }
        }
        // Names and inbound ports are each one service's.
        for (i, s) in services.iter().enumerate() {
            if services[..i].iter().any(|o| o.name == s.name) {
                self.err(
                    line_col(&raw.value[i].referenced),
                    &format!("services[{i}].name"),
                    format!("`{}` names two services: give each its own name", s.name),
                );
                ok = false;
            }
            for port in &s.inbound_ports {
                if let Some(other) = services[..i]
                    .iter()
                    .find(|o| o.inbound_ports.contains(port))
                {
                    self.err(
                        line_col(&raw.value[i].referenced),
                        &format!("services[{i}].inbound_ports"),
                        format!(
                            "port {port} is already service `{}`'s: one port is served by one service",
                            other.name
                        ),
                    );
                    ok = false;
                }
            }
        }
        ok.then_some(services)
    }

    fn service(
        &mut self,
        i: usize,
        raw: &Spanned<RawService>,
        bound: &mut Vec<Bound>,
    ) -> Option<ServiceConfig> {
        let field = format!("services[{i}]");
        let at = line_col(&raw.referenced);
        let s = &raw.value;
        let name = match &s.name {
            None => {
                self.err(
                    at,
                    &format!("{field}.name"),
                    format!("missing: write {NAME_EXAMPLE}"),
                );
                None
            }
            Some(n) => {
                let v = n.value.0.trim();
                let valid = !v.is_empty()
                    && v.len() <= 63
                    && !v.starts_with('-')
                    && !v.ends_with('-')
                    && v.bytes()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
                if valid {
                    Some(v.to_owned())
                } else {
                    self.err_at(
                        n,
                        &format!("{field}.name"),
                        format!("`{v}` is not a service name: write {NAME_EXAMPLE}"),
                    );
                    None
                }
            }
        };
        let join_token_file = match &s.join_token_file {
            None => Some(None),
            Some(t) => self.path(t, &format!("{field}.join_token_file")).map(Some),
        };
        let workload = match &s.workload {
            None => Some(None),
            Some(w) => self
                .workload(w.clone(), at, &format!("{field}.workload"))
                .map(Some),
        };
        let inbound_ports = match &s.inbound_ports {
            None => Some(Vec::new()),
            Some(list) => {
                let mut ports = Vec::new();
                let mut ok = true;
                for (j, p) in list.value.iter().enumerate() {
                    match self.number(
                        p,
                        &format!("{field}.inbound_ports[{j}]"),
                        1,
                        65535,
                        "`inbound_ports: [8080]`",
                    ) {
                        Some(n) => ports.push(n as u16),
                        None => ok = false,
                    }
                }
                ok.then_some(ports)
            }
        };
        let outbound = match &s.outbound {
            None => Some(None),
            Some(o) => self.service_outbound(&field, o, bound).map(Some),
        };
        let (inbound_ports, outbound) = (inbound_ports?, outbound?);
        if inbound_ports.is_empty() && outbound.is_none() {
            self.err(
                at,
                &field,
                "the service has neither `inbound_ports` nor `outbound`: no connection would ever use its \
                 identity; add `inbound_ports: [8080]` and/or `outbound: { listen: \"127.0.0.1:15111\", owner: { uid: 1001 } }`",
            );
            return None;
        }
        Some(ServiceConfig {
            name: name?,
            join_token_file: join_token_file?,
            workload: workload?,
            inbound_ports,
            outbound,
        })
    }

    fn service_outbound(
        &mut self,
        service: &str,
        raw: &Spanned<RawServiceOutbound>,
        bound: &mut Vec<Bound>,
    ) -> Option<ServiceOutbound> {
        let field = format!("{service}.outbound");
        let at = line_col(&raw.referenced);
        let listen = self.listen(&raw.value.listen, &raw.referenced, &field, bound);
        if let Some(addr) = listen
            && !addr.ip().is_loopback()
        {
            self.err(
                at,
                &format!("{field}.listen"),
                format!(
                    "`{addr}` is not a loopback address: the capture rules send the service's own connections \
                     here; write e.g. `listen: \"127.0.0.1:{}\"`",
                    addr.port()
                ),
            );
            return None;
        }
        let owner = match &raw.value.owner {
            None => {
                self.err(
                    at,
                    &format!("{field}.owner"),
                    "missing: say whose connections are this service's, e.g. `owner: { uid: 1001 }`, \
                     `owner: { user: billing }` or `owner: { cgroup: /system.slice/billing.service }`",
                );
                None
            }
            Some(o) => self.owner(&format!("{field}.owner"), o),
        };
        Some(ServiceOutbound {
            listen: listen?,
            owner: owner?,
        })
    }

    fn owner(&mut self, field: &str, raw: &Spanned<RawOwner>) -> Option<Owner> {
        const CHOICES: &str =
            "`uid: 1001`, `user: billing` or `cgroup: /system.slice/billing.service`";
        let at = line_col(&raw.referenced);
        let o = &raw.value;
        let given: Vec<(&str, &S)> = [("uid", &o.uid), ("user", &o.user), ("cgroup", &o.cgroup)]
            .into_iter()
            .filter_map(|(k, v)| Some((k, v.as_ref()?)))
            .collect();
        let (key, value) = match given.as_slice() {
            [one] => *one,
            [] => {
                self.err(at, field, format!("empty: write one of {CHOICES}"));
                return None;
            }
            _ => {
                self.err(
                    at,
                    field,
                    format!("more than one owner is given: keep one of {CHOICES}"),
                );
                return None;
            }
        };
        let text = value.value.0.trim();
        let here = format!("{field}.{key}");
        match key {
            "uid" => self
                .number(value, &here, 0, u64::from(u32::MAX - 1), "`uid: 1001`")
                .map(|n| Owner::Uid(n as u32)),
            "user" => {
                // What useradd accepts, so iptables can resolve it.
                let valid = !text.is_empty()
                    && text.len() <= 32
                    && !text.starts_with('-')
                    && text
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"_-.".contains(&b));
                if valid {
                    Some(Owner::User(text.to_owned()))
                } else {
                    self.err_at(
                        value,
                        &here,
                        format!("`{text}` is not a user name: write e.g. `user: billing`, or `uid: 1001`"),
                    );
                    None
                }
            }
            _ => {
                let valid = text.starts_with('/')
                    && !text.starts_with("/sys/")
                    && !text.split('/').any(|part| part == "..")
                    && text
                        .bytes()
                        .all(|b| b.is_ascii_graphic() && b != b'"' && b != b'\\');
                if valid {
                    Some(Owner::Cgroup(text.to_owned()))
                } else {
                    self.err_at(
                        value,
                        &here,
                        format!(
                            "`{text}` is not a cgroup v2 path: write it relative to the cgroup root, e.g. \
                             `cgroup: /system.slice/billing.service` (not under /sys/fs/cgroup)"
                        ),
                    );
                    None
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::config::{ConfigError, Diagnostic, ProxyConfig};

    const HEAD: &str = "identity:
  authority: { url: \"https://authority:15170\", bundle: ca.pem, join_token_file: host.token, state_dir: /var/lib/appid }
trust_domains: [prod.example]
policy: policy.yaml
inbound: [{ listen: \"0.0.0.0:15106\" }]
outbound: [{ listen: \"127.0.0.1:15101\" }]
";

    fn parse(services: &str) -> Result<ProxyConfig, ConfigError> {
        let text = format!("{HEAD}services:\n{services}");
        ProxyConfig::from_yaml("proxy.yaml", Path::new("/etc/appid"), &text)
    }

    fn errors(services: &str) -> Vec<Diagnostic> {
        parse(services)
            .expect_err("config should be refused")
            .diagnostics()
            .to_vec()
    }

    #[test]
    fn services_parse_with_their_owners_ports_and_workloads() {
        let config = parse(
            "  - name: billing
    join_token_file: billing.token
    workload: { pid_file: /run/billing.pid }
    inbound_ports: [8081, 9090]
    outbound: { listen: \"127.0.0.1:15111\", owner: { uid: 1001 } }
  - name: reports
    outbound: { listen: \"127.0.0.1:15112\", owner: { user: reports } }
  - name: batch
    outbound: { listen: \"127.0.0.1:15113\", owner: { cgroup: /system.slice/batch.service } }
  - name: web
    inbound_ports: [8080]
",
        )
        .expect("valid");
        let s = &config.services;
        assert_eq!(s.len(), 4);
        assert_eq!(s[0].name, "billing");
        assert_eq!(
            s[0].join_token_file.as_deref(),
            Some(Path::new("/etc/appid/billing.token"))
        );
        assert_eq!(
            s[0].workload,
            Some(Workload::PidFile("/run/billing.pid".into()))
        );
        assert_eq!(s[0].inbound_ports, vec![8081, 9090]);
        let out = |i: usize| s[i].outbound.clone().expect("outbound");
        assert_eq!(out(0).listen, "127.0.0.1:15111".parse().unwrap());
        assert_eq!(out(0).owner, Owner::Uid(1001));
        assert_eq!(out(1).owner, Owner::User("reports".into()));
        assert_eq!(
            out(2).owner,
            Owner::Cgroup("/system.slice/batch.service".into())
        );
        assert_eq!(s[3].outbound, None);
        // Shown on /config.
        let shown = config.effective_json();
        assert_eq!(shown["services"][0]["outbound"]["owner"]["uid"], 1001);
        assert_eq!(
            shown["services"][2]["outbound"]["owner"]["cgroup"],
            "/system.slice/batch.service"
        );
    }

    #[test]
    fn every_mistake_names_its_field_and_what_to_write() {
        let cases: [(&str, &str, &str); 9] = [
            ("  - inbound_ports: [8080]\n", "services[0].name", "missing"),
            (
                "  - { name: Billing, inbound_ports: [8080] }\n",
                "services[0].name",
                "not a service name",
            ),
            (
                "  - { name: billing }\n",
                "services[0]",
                "neither `inbound_ports` nor `outbound`",
            ),
            (
                "  - { name: billing, inbound_ports: [0] }\n",
                "services[0].inbound_ports[0]",
                "",
            ),
            (
                "  - { name: billing, outbound: { listen: \"127.0.0.1:15111\" } }\n",
                "services[0].outbound.owner",
                "missing",
            ),
            (
                "  - { name: billing, outbound: { listen: \"127.0.0.1:15111\", owner: { uid: 1, user: x } } }\n",
                "services[0].outbound.owner",
                "more than one owner",
            ),
            (
                "  - { name: billing, outbound: { listen: \"127.0.0.1:15111\", owner: { cgroup: /sys/fs/cgroup/x } } }\n",
                "services[0].outbound.owner.cgroup",
                "relative to the cgroup root",
            ),
            (
                "  - { name: billing, outbound: { listen: \"10.0.0.1:15111\", owner: { uid: 1 } } }\n",
                "services[0].outbound.listen",
                "not a loopback address",
            ),
            (
                "  - { name: billing, outbound: { listen: \"127.0.0.1:15101\", owner: { uid: 1 } } }\n",
                "services[0].outbound.listen",
                "already used by outbound[0].listen",
            ),
        ];
        for (yaml, field, says) in cases {
            let errors = errors(yaml);
            assert!(
                errors
                    .iter()
                    .any(|d| d.field == field && d.message.contains(says)),
                "{yaml}: expected {field}: …{says}…, got {errors:#?}"
            );
        }
    }

    #[test]
    fn names_and_ports_belong_to_one_service() {
        let e = errors(
            "  - { name: billing, inbound_ports: [8080] }
  - { name: billing, inbound_ports: [8081] }
",
        );
        assert!(e.iter().any(|d| d.field == "services[1].name"), "{e:#?}");
        let e = errors(
            "  - { name: billing, inbound_ports: [8080] }
  - { name: reports, inbound_ports: [8080] }
",
        );
        assert!(
            e.iter()
                .any(|d| d.field == "services[1].inbound_ports" && d.message.contains("`billing`")),
            "{e:#?}"
        );
    }

    #[test]
    fn services_need_the_authority() {
        let text = "identity: { cert: a.pem, key: a.key, bundle: ca.pem }
trust_domains: [prod.example]
policy: policy.yaml
inbound: [{ listen: \"0.0.0.0:15106\" }]
services:
  - { name: billing, inbound_ports: [8080] }
";
        let e = ProxyConfig::from_yaml("proxy.yaml", Path::new("/etc/appid"), text)
            .expect_err("refused");
        assert!(
            e.diagnostics()
                .iter()
                .any(|d| d.field == "services" && d.message.contains("authority")),
            "{e}"
        );
    }

    #[test]
    fn a_service_listener_alone_is_a_listener() {
        let text = "identity:
  authority: { url: \"https://authority:15170\", bundle: ca.pem, join_token_file: t }
trust_domains: [prod.example]
policy: policy.yaml
services:
  - { name: billing, outbound: { listen: \"127.0.0.1:15111\", owner: { uid: 1001 } } }
";
        let config = ProxyConfig::from_yaml("proxy.yaml", Path::new("/etc/appid"), text)
            .expect("a service's outbound listener is a listener");
        assert_eq!(config.services.len(), 1);
    }
}
