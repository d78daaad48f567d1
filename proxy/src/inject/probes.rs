//! Probe rewriting: the app's `httpGet` and `tcpSocket` probes go through
//! the sidecar.
//!
//! Kubelet probes from the node, from outside the mesh: with the redirect
//! in place its connection to an app port reaches the sidecar's inbound
//! listener as an unauthenticated caller, which a policy denies. So, as
//! Istio does, each such probe of an app container is pointed at the
//! sidecar's health listener (`httpGet` on port 15191, path
//! `/app-health/<container>/<livez|readyz|startupz>`), and its original
//! target goes into the sidecar's `APPID_APP_PROBES` environment variable
//! (a JSON object by that path, in Istio's `ISTIO_KUBE_APP_PROBERS` shape),
//! from where the sidecar runs it against the app inside the pod. Every
//! other field of the probe (delays, periods, thresholds, `timeoutSeconds`)
//! stays as it is. Named ports are resolved from the container's `ports`;
//! one that cannot be leaves the probe alone, with a warning. A probe with
//! a `host` is left alone too: kubelet dials that host, not the pod, and
//! the sidecar runs probes of the app inside the pod only (run by it, a
//! probe of another host would make the health port, which anyone who can
//! reach the pod may ask, a proxy to that host). `exec` probes
//! run inside the container and need nothing; `grpc` probes cannot be
//! rewritten (kubelet itself speaks the gRPC health protocol to the port)
//! and are left with a warning.
//!
//! Idempotency: a probe that already points at `/app-health/...` on the
//! health port is recognized; its original target is then only in the
//! existing sidecar's environment, so it is read back from there. With
//! `appid.dev/rewrite-probes: "false"` such a probe is restored from it.

use std::collections::BTreeMap;

use serde_json::{Map, Value as Json};

use super::edit::{Edit, indent_of};
use super::emit::{self, Layout, Value, s};
use super::tree::{Kind, Node};
use super::{APP_PROBES_ENV, HEALTH_PORT, INIT_CONTAINER, PROXY_CONTAINER};

/// The probes of a container and the name of each in the health path.
const PROBES: [(&str, &str); 3] = [
    ("livenessProbe", "livez"),
    ("readinessProbe", "readyz"),
    ("startupProbe", "startupz"),
];

/// The prefix of every rewritten probe's path.
const PREFIX: &str = "/app-health/";

/// What rewriting a pod spec's probes comes to.
#[derive(Debug, Default)]
pub(crate) struct Rewrite {
    pub edits: Vec<Edit>,
    /// Health path → the original target, for `APPID_APP_PROBES`.
    pub targets: BTreeMap<String, Json>,
    /// One line each, naming the container and the probe.
    pub warnings: Vec<String>,
}

impl Rewrite {
    /// The value of `APPID_APP_PROBES`, if any probe was rewritten: compact
    /// JSON, keys sorted, so the same targets always give the same text.
    pub fn env_value(&self) -> Option<String> {
        (!self.targets.is_empty())
            .then(|| Json::Object(self.targets.clone().into_iter().collect()).to_string())
    }
}

/// The probe edits for the pod spec `pod`: rewrites when `enabled`,
/// otherwise restores the probes an earlier run rewrote.
pub(crate) fn rewrite(input: &str, layout: Layout<'_>, pod: &Node, enabled: bool) -> Rewrite {
    let mut run = Run {
        input,
        layout,
        enabled,
        previous: Map::new(),
        grpc: Vec::new(),
        out: Rewrite::default(),
    };
    run.previous = run.previous_targets(pod);
    for list in ["containers", "initContainers"] {
        let items = pod
            .get_all(list)
            .next()
            .and_then(|(_, v)| v.items())
            .unwrap_or_default();
        for container in items {
            let Some(name) = scalar_field(container, "name") else {
                continue;
            };
            if name == INIT_CONTAINER || name == PROXY_CONTAINER {
                continue;
            }
            for (key, kind) in PROBES {
                if let Some((_, probe)) = container.get_all(key).next() {
                    run.probe(container, name, key, kind, probe);
                }
            }
        }
    }
    for (container, port, probes) in run.grpc {
        run.out.warnings.push(format!(
            "container \"{container}\" {}: gRPC probes cannot go through the sidecar: kubelet \
             calls port {port} directly, from outside the mesh; allow that (a rule with \
             from.unauthenticated.cidrs: [<node range>] and to.ports: [{port}]) or exclude the \
             port (appid.dev/exclude-inbound-ports: \"{port}\")",
            probes.join(" and ")
        ));
    }
    run.out
}

struct Run<'a> {
    input: &'a str,
    layout: Layout<'a>,
    enabled: bool,
    /// The targets an earlier run recorded, by health path.
    previous: Map<String, Json>,
    /// gRPC probes, by container and port, in order: one warning each.
    grpc: Vec<(String, String, Vec<String>)>,
    out: Rewrite,
}

/// A scalar field of a mapping.
fn scalar_field<'n>(map: &'n Node, key: &str) -> Option<&'n str> {
    map.get_all(key).next().and_then(|(_, v)| v.scalar())
}

/// A plain scalar that is a whole number as Kubernetes reads it
/// ([`super::yaml11`]: `0x1F90` is 8080, a quoted `"8080"` is a name).
fn plain_int(node: &Node) -> Option<i64> {
    match super::yaml11::int(node) {
        super::yaml11::Value::Is(n) => Some(n),
        _ => None,
    }
}

fn is_plain_map(node: &Node) -> bool {
    matches!(node.kind, Kind::Map { .. })
        && !node.anchored
        && !node
            .entries()
            .unwrap_or_default()
            .iter()
            .any(|(k, _)| k.scalar() == Some("<<"))
}

impl Run<'_> {
    /// `APPID_APP_PROBES` of the `appid-proxy` an earlier run added.
    fn previous_targets(&mut self, pod: &Node) -> Map<String, Json> {
        let env = pod
            .get_all("initContainers")
            .next()
            .and_then(|(_, v)| v.items())
            .unwrap_or_default()
            .iter()
            .filter(|c| scalar_field(c, "name") == Some(PROXY_CONTAINER))
            .filter_map(|c| c.get_all("env").next().and_then(|(_, v)| v.items()))
            .flatten()
            .find(|e| scalar_field(e, "name") == Some(APP_PROBES_ENV))
            .and_then(|e| scalar_field(e, "value"));
        let Some(text) = env else {
            return Map::new();
        };
        match serde_json::from_str::<Map<String, Json>>(text) {
            Ok(map) => map,
            Err(e) => {
                self.out.warnings.push(format!(
                    "{PROXY_CONTAINER} env {APP_PROBES_ENV} is not a JSON object ({e}); \
                     probes already pointing at the sidecar cannot be matched with their targets"
                ));
                Map::new()
            }
        }
    }

    fn probe(&mut self, container: &Node, name: &str, key: &str, kind: &str, probe: &Node) {
        let what = format!("container \"{name}\" {key}");
        if !is_plain_map(probe) {
            return;
        }
        let handlers: Vec<&(Node, Node)> = probe
            .entries()
            .unwrap_or_default()
            .iter()
            .filter(|(k, _)| matches!(k.scalar(), Some("httpGet" | "tcpSocket" | "exec" | "grpc")))
            .collect();
        // None or several: Kubernetes refuses the probe; nothing to do here.
        let [(hkey, handler)] = handlers.as_slice() else {
            return;
        };
        let timeout = probe
            .get_all("timeoutSeconds")
            .next()
            .and_then(|(_, v)| plain_int(v))
            .unwrap_or(1);
        let health = format!("{PREFIX}{name}/{kind}");
        let ours = hkey.scalar() == Some("httpGet")
            && handler
                .get_all("port")
                .next()
                .and_then(|(_, v)| plain_int(v))
                == Some(i64::from(HEALTH_PORT))
            && scalar_field(handler, "path").is_some_and(|p| p.starts_with(PREFIX));
        let result = match hkey.scalar() {
            _ if ours => self.rewritten(probe, hkey, handler, &health, timeout),
            Some("grpc") => {
                let port = scalar_field(handler, "port").unwrap_or("?").to_owned();
                match self
                    .grpc
                    .iter_mut()
                    .find(|(c, p, _)| c == name && *p == port)
                {
                    Some((_, _, probes)) => probes.push(key.to_owned()),
                    None => self
                        .grpc
                        .push((name.to_owned(), port, vec![key.to_owned()])),
                }
                Ok(())
            }
            // A probe of another host is not the pod's traffic: kubelet
            // dials that host, the redirect never sees it. Run by the
            // sidecar, it would make the health port, which anyone who can
            // reach the pod may ask, a proxy to that host (the metadata
            // API), outside capture, policy and audit.
            Some("tcpSocket" | "httpGet") if handler.get_all("host").next().is_some() => Ok(()),
            Some("httpGet" | "tcpSocket") if self.enabled => {
                self.original(probe, container, hkey, handler, &health, timeout)
            }
            _ => Ok(()),
        };
        if let Err(reason) = result {
            self.out.warnings.push(format!("{what}: {reason}"));
        }
    }

    /// A probe an earlier run pointed at the sidecar.
    fn rewritten(
        &mut self,
        probe: &Node,
        hkey: &Node,
        handler: &Node,
        health: &str,
        timeout: i64,
    ) -> Result<(), String> {
        let path = scalar_field(handler, "path").unwrap_or_default();
        let Some(mut target) = self
            .previous
            .get(path)
            .filter(|t| original_handler(t).is_some())
            .cloned()
        else {
            return Err(format!(
                "it points at the sidecar ({path} on port {HEALTH_PORT}) but {PROXY_CONTAINER}'s \
                 {APP_PROBES_ENV} has no target for it; left as it is (inject the manifest from \
                 before injection to start afresh)"
            ));
        };
        if !self.enabled {
            let (name, body) =
                original_handler(&target).ok_or("its recorded target is not a probe")?;
            let edit = self.replace(probe, hkey, handler, name, body)?;
            self.out.edits.push(edit);
            return Ok(());
        }
        if let Some(obj) = target.as_object_mut() {
            obj.insert("timeoutSeconds".into(), timeout.into());
        }
        if path != health {
            // The container was renamed, or the probe moved.
            let edit = self.replace(probe, hkey, handler, "httpGet", health_body(health))?;
            self.out.edits.push(edit);
        }
        self.out.targets.insert(health.to_owned(), target);
        Ok(())
    }

    /// An app probe as its author wrote it: record, then rewrite.
    fn original(
        &mut self,
        probe: &Node,
        container: &Node,
        hkey: &Node,
        handler: &Node,
        health: &str,
        timeout: i64,
    ) -> Result<(), String> {
        let left =
            |why: String| format!("left as it is: {why}; kubelet will call the app directly");
        if !is_plain_map(handler) {
            return Err(left("the handler is not a plain mapping".into()));
        }
        let port = handler
            .get_all("port")
            .next()
            .map(|(_, v)| v)
            .ok_or_else(|| left("no port".into()))?;
        let port = resolve_port(container, port).map_err(left)?;
        let mut target = Map::new();
        if hkey.scalar() == Some("httpGet") {
            let mut get = Map::new();
            get.insert(
                "path".into(),
                scalar_field(handler, "path").unwrap_or("/").into(),
            );
            get.insert("port".into(), port.into());
            get.insert(
                "scheme".into(),
                scalar_field(handler, "scheme").unwrap_or("HTTP").into(),
            );
            if let Some(host) = scalar_field(handler, "host") {
                get.insert("host".into(), host.into());
            }
            if let Some((_, headers)) = handler.get_all("httpHeaders").next() {
                let headers = http_headers(headers).ok_or_else(|| {
                    left("httpHeaders is not a list of {name, value} strings".into())
                })?;
                if !headers.is_empty() {
                    get.insert("httpHeaders".into(), Json::Array(headers));
                }
            }
            target.insert("httpGet".into(), Json::Object(get));
        } else {
            let mut tcp = Map::new();
            tcp.insert("port".into(), port.into());
            target.insert("tcpSocket".into(), Json::Object(tcp));
        }
        target.insert("timeoutSeconds".into(), timeout.into());
        // The sidecar's own parser decides (one check, one place): a probe it
        // would refuse (a hostname in `host`, a timeout over its cap) stays
        // as it is rather than stopping the sidecar.
        let entry = Json::Object(Map::from_iter([(
            health.to_owned(),
            Json::Object(target.clone()),
        )]));
        crate::health::probes::AppProbes::parse(&entry.to_string()).map_err(|e| {
            left(format!(
                "{PROXY_CONTAINER} could not run it ({}: {})",
                e.path, e.message
            ))
        })?;
        let edit = self
            .replace(probe, hkey, handler, "httpGet", health_body(health))
            .map_err(left)?;
        self.out.edits.push(edit);
        self.out
            .targets
            .insert(health.to_owned(), Json::Object(target));
        Ok(())
    }

    /// Replaces the handler entry `hkey: handler` of `probe` by
    /// `name: body`, in the probe's style and the handler's indentation.
    fn replace(
        &self,
        probe: &Node,
        hkey: &Node,
        handler: &Node,
        name: &'static str,
        body: Vec<(&'static str, Value)>,
    ) -> Result<Edit, String> {
        if handler.anchored || matches!(handler.kind, Kind::Alias) || hkey.props {
            return Err("the handler uses a YAML anchor or alias".into());
        }
        let text = match &probe.kind {
            Kind::Map { flow: true, .. } => format!(
                "{}: {}",
                emit::json_string(name),
                emit::json(&Value::Map(body))
            ),
            _ => {
                let col = indent_of(self.input, hkey.start)
                    .ok_or("the handler is not on a line of its own")?;
                let inner = match &handler.kind {
                    Kind::Map { flow: false, .. } => indent_of(self.input, handler.start)
                        .filter(|&c| c > col)
                        .unwrap_or(col + 2),
                    _ => col + 2,
                };
                format!(
                    "{name}:{}{}{}",
                    self.layout.nl,
                    " ".repeat(inner),
                    emit::block_map(&body, inner, self.layout)
                )
            }
        };
        Ok(Edit {
            start: hkey.start,
            end: handler.end.max(hkey.end),
            text,
        })
    }
}

/// The rewritten handler: `httpGet` on the health port.
fn health_body(health: &str) -> Vec<(&'static str, Value)> {
    vec![
        ("path", s(health)),
        ("port", Value::Int(i64::from(HEALTH_PORT))),
    ]
}

/// A probe's port: a number, or the name of one of the container's ports.
fn resolve_port(container: &Node, port: &Node) -> Result<u16, String> {
    let number = |n: i64| u16::try_from(n).ok().filter(|&p| p != 0);
    if let Some(n) = plain_int(port) {
        return number(n).ok_or_else(|| format!("port {n} is not a port number (1-65535)"));
    }
    let Some(name) = port.scalar().filter(|n| !n.is_empty()) else {
        return Err("the port is neither a number nor a name".into());
    };
    container
        .get_all("ports")
        .next()
        .and_then(|(_, v)| v.items())
        .unwrap_or_default()
        .iter()
        .find(|p| scalar_field(p, "name") == Some(name))
        .and_then(|p| p.get_all("containerPort").next())
        .and_then(|(_, v)| plain_int(v))
        .and_then(number)
        .ok_or_else(|| format!("the named port `{name}` is not among the container's ports"))
}

/// `httpHeaders` as JSON `[{"name": .., "value": ..}]`.
fn http_headers(list: &Node) -> Option<Vec<Json>> {
    if list.is_null() {
        return Some(Vec::new());
    }
    list.items()?
        .iter()
        .map(|h| {
            let mut header = Map::new();
            header.insert("name".into(), scalar_field(h, "name")?.into());
            header.insert(
                "value".into(),
                scalar_field(h, "value").unwrap_or("").into(),
            );
            Some(Json::Object(header))
        })
        .collect()
}

/// The handler an `APPID_APP_PROBES` target describes, as YAML to restore:
/// `None` when the target is not one this module writes.
fn original_handler(target: &Json) -> Option<(&'static str, Vec<(&'static str, Value)>)> {
    let port = |handler: &Json| {
        handler
            .get("port")?
            .as_u64()
            .and_then(|p| u16::try_from(p).ok())
            .filter(|&p| p != 0)
            .map(|p| Value::Int(i64::from(p)))
    };
    if let Some(get) = target.get("httpGet") {
        let mut body = Vec::new();
        if let Some(path) = get.get("path").and_then(Json::as_str) {
            body.push(("path", s(path)));
        }
        body.push(("port", port(get)?));
        if let Some(host) = get.get("host").and_then(Json::as_str) {
            body.push(("host", s(host)));
        }
        match get.get("scheme").and_then(Json::as_str) {
            None | Some("HTTP") => {}
            Some(scheme) => body.push(("scheme", s(scheme))),
        }
        if let Some(headers) = get.get("httpHeaders").and_then(Json::as_array) {
            let headers = headers
                .iter()
                .map(|h| {
                    Some(Value::Map(vec![
                        ("name", s(h.get("name")?.as_str()?)),
                        ("value", s(h.get("value")?.as_str()?)),
                    ]))
                })
                .collect::<Option<Vec<_>>>()?;
            body.push(("httpHeaders", Value::Seq(headers)));
        }
        return Some(("httpGet", body));
    }
    let tcp = target.get("tcpSocket")?;
    Some(("tcpSocket", vec![("port", port(tcp)?)]))
}

#[cfg(test)]
mod tests {
    use super::super::tree;
    use super::*;

    fn container(yaml: &str) -> Node {
        tree::parse(yaml).unwrap().remove(0).root
    }

    #[test]
    fn ports_are_numbers_or_names_of_the_container() {
        let c = container(
            "name: c\nports:\n- {name: http, containerPort: 8080}\n- {name: bad, containerPort: 0}\n",
        );
        let port = |text: &str| {
            let doc = container(&format!("port: {text}\n"));
            let (_, node) = doc.get_all("port").next().unwrap();
            resolve_port(&c, node)
        };
        assert_eq!(port("80"), Ok(80));
        assert_eq!(port("http"), Ok(8080));
        assert!(port("0").unwrap_err().contains("not a port number"));
        assert!(port("70000").unwrap_err().contains("not a port number"));
        // Quoted digits are a name to Kubernetes, and no port is named so.
        assert!(port("\"8080\"").unwrap_err().contains("`8080`"));
        assert!(
            port("metrics")
                .unwrap_err()
                .contains("`metrics` is not among")
        );
        assert!(port("bad").is_err());
        assert!(port("[1]").is_err());
    }

    #[test]
    fn recorded_targets_are_checked_before_they_are_restored() {
        let ok = serde_json::json!({"httpGet": {"path": "/h", "port": 80, "scheme": "HTTPS",
            "httpHeaders": [{"name": "a", "value": "b"}]}, "timeoutSeconds": 1});
        let (name, body) = original_handler(&ok).unwrap();
        assert_eq!(name, "httpGet");
        let keys: Vec<&str> = body.iter().map(|(k, _)| *k).collect();
        assert_eq!(keys, ["path", "port", "scheme", "httpHeaders"]);
        let tcp = serde_json::json!({"tcpSocket": {"port": 5432}});
        assert_eq!(original_handler(&tcp).unwrap().0, "tcpSocket");
        for bad in [
            serde_json::json!({"httpGet": {"path": "/h"}}),
            serde_json::json!({"httpGet": {"port": 0}}),
            serde_json::json!({"tcpSocket": {"port": "x"}}),
            serde_json::json!({"exec": {}}),
            serde_json::json!("text"),
            serde_json::json!({"httpGet": {"port": 1, "httpHeaders": [{"name": 1}]}}),
        ] {
            assert!(original_handler(&bad).is_none(), "{bad}");
        }
    }
}
