//! YAML text → validated rules, or every error with its position.
//!
//! Design bias: *strict and complete*. Every map is checked for unknown and
//! duplicate keys, every value for its type, every glob, CIDR and port range
//! for its syntax, and the loader keeps going after an error so one run
//! shows them all. It returns either all rules or no rules: the caller
//! never sees a policy that is only partly what the file says.
//!
//! The checks that are about meaning rather than syntax:
//! - `from.unauthenticated` (a caller outside the mesh) has no claims, so it
//!   cannot be combined with claim selectors in the same `from`;
//! - `to.external` (a destination outside the mesh) has no claims either, and
//!   its ports go under `to.external.ports`;
//! - a rule cannot be both: no connection is inbound and outbound at once;
//! - `http` cannot be combined with `to.external`: the sidecar passes
//!   external traffic through without reading the app's own TLS;
//! - `to.protocol: tcp` only on allow rules without `http`;
//! - a method with a lower-case letter could never match (the sidecar
//!   refuses such requests), so it is an error.

use std::collections::HashMap;

use ipnet::IpNet;

use super::attr::Attr;
use super::decision::{DEFAULT_RULE, SIDECAR_RULE_NAMES};
use super::error::{Diags, choices_hint};
use super::glob::Glob;
use super::query::{decoded_in_paths, is_host_name, normalize_host, push_percent_encoded};
use super::rule::{Action, Clause, MetadataNamed, PortSet, Rule, Side, Test, scope};
use super::selector;
use super::yaml::{self, Mark, Node, Value};

/// Enforce decisions, or only report would-be denials.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Mode {
    Enforce,
    /// Every would-be denial is allowed and reported as audit-only.
    Audit,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Enforce => "enforce",
            Mode::Audit => "audit",
        }
    }
}

impl std::fmt::Display for Mode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A policy file's content, fully validated.
#[derive(Debug)]
pub(crate) struct Loaded {
    pub default: Action,
    pub mode: Mode,
    /// `paths_case_insensitive`: `http.paths` globs ignore ASCII case.
    pub paths_case_insensitive: bool,
    /// In file order.
    pub rules: Vec<Rule>,
}

const TOP_KEYS: &[&str] = &[
    "version",
    "default",
    "mode",
    "paths_case_insensitive",
    "rules",
];
const RULE_KEYS: &[&str] = &["name", "action", "from", "to", "http"];
const UNAUTH_KEYS: &[&str] = &["cidrs"];
const EXTERNAL_KEYS: &[&str] = &["hosts", "cidrs", "ports"];
const HTTP_KEYS: &[&str] = &["methods", "paths", "headers"];
const MAX_NAME_LEN: usize = 128;

/// Parses and validates a policy document.
pub(crate) fn load(src: &str) -> Result<Loaded, Diags> {
    let mut diags = Diags::default();
    let root = match yaml::parse(src) {
        Ok(Some(root)) => root,
        Ok(None) => {
            diags.push(
                Mark { line: 1, column: 1 },
                "the policy is empty",
                "start with `version: 1`, `default: deny` and a list of `rules`",
            );
            return Err(diags);
        }
        Err(d) => {
            diags.add(d);
            return Err(diags);
        }
    };
    let Some(entries) = map_entries(&root, "the policy", &mut diags) else {
        return Err(diags);
    };

    let mut version_seen = false;
    let mut default = Action::Deny;
    let mut mode = Mode::Enforce;
    let mut paths_case_insensitive = false;
    let mut rules_node = None;
    for e in &entries {
        match e.key {
            "version" => {
                version_seen = true;
                if e.value.scalar() != Some("1") {
                    diags.push(
                        e.value.mark,
                        format!("unsupported policy version `{}`", e.value.flow()),
                        "this appid reads `version: 1`",
                    );
                }
            }
            "default" => {
                if let Some(a) = keyword(
                    e.value,
                    &[("deny", Action::Deny), ("allow", Action::Allow)],
                    "default",
                    &mut diags,
                ) {
                    default = a;
                }
            }
            "mode" => {
                if let Some(m) = keyword(
                    e.value,
                    &[("enforce", Mode::Enforce), ("audit", Mode::Audit)],
                    "mode",
                    &mut diags,
                ) {
                    mode = m;
                }
            }
            "paths_case_insensitive" => match e.value.as_bool() {
                Some(b) => paths_case_insensitive = b,
                None => diags.push(
                    e.value.mark,
                    format!(
                        "`paths_case_insensitive` takes true or false, found `{}`",
                        e.value.flow()
                    ),
                    "write `paths_case_insensitive: true` if the app routes paths ignoring case, \
                     or leave it out",
                ),
            },
            // Read after the loop: how `http.paths` compare depends on
            // `paths_case_insensitive`, which may come later in the file.
            "rules" => rules_node = Some(e.value),
            _ => unknown_key(e, TOP_KEYS, "the policy", &mut diags),
        }
    }
    let paths = if paths_case_insensitive {
        PathCase::Insensitive
    } else {
        PathCase::Sensitive
    };
    let rules = match rules_node {
        Some(node) => load_rules(node, paths, &mut diags),
        None => Vec::new(),
    };
    if !version_seen {
        diags.push(
            root.mark,
            "the policy has no `version`",
            "add `version: 1` as the first line",
        );
    }
    if diags.is_empty() {
        Ok(Loaded {
            default,
            mode,
            paths_case_insensitive,
            rules,
        })
    } else {
        Err(diags)
    }
}

/// A key and its value in a map.
pub(super) struct Entry<'n, 'a> {
    pub key: &'n str,
    pub key_node: &'n Node<'a>,
    pub value: &'n Node<'a>,
}

/// The entries of a map (an empty value counts as an empty map), checking
/// that keys are plain names and not repeated: every map of the policy is
/// read through here (selectors' operator maps too).
pub(super) fn map_entries<'n, 'a>(
    node: &'n Node<'a>,
    what: &str,
    diags: &mut Diags,
) -> Option<Vec<Entry<'n, 'a>>> {
    if node.is_null() {
        return Some(Vec::new());
    }
    let Value::Map(pairs) = &node.value else {
        diags.push(
            node.mark,
            format!(
                "{what} must be a map of `key: value`, found {}",
                node.kind()
            ),
            "write `key: value` lines (or `{key: value}`) here",
        );
        return None;
    };
    let mut seen: HashMap<&str, Mark> = HashMap::new();
    let mut out = Vec::with_capacity(pairs.len());
    for (k, v) in pairs {
        let Some(key) = k.scalar().filter(|_| !k.is_null()) else {
            diags.push(
                k.mark,
                format!("a key in {what} must be a name"),
                "write `name: value`",
            );
            continue;
        };
        if let Some(first) = seen.get(key) {
            diags.push(
                k.mark,
                format!(
                    "duplicate key `{key}` in {what} (first at line {})",
                    first.line
                ),
                "keep only one of them",
            );
            continue;
        }
        seen.insert(key, k.mark);
        out.push(Entry {
            key,
            key_node: k,
            value: v,
        });
    }
    Some(out)
}

fn unknown_key(e: &Entry<'_, '_>, known: &[&str], what: &str, diags: &mut Diags) {
    diags.push(
        e.key_node.mark,
        format!("unknown key `{}` in {what}", e.key),
        choices_hint(e.key, known, "the keys allowed here"),
    );
}

fn keyword<T: Copy>(
    node: &Node<'_>,
    choices: &[(&str, T)],
    what: &str,
    diags: &mut Diags,
) -> Option<T> {
    let text = node.scalar().unwrap_or("");
    if let Some((_, v)) = choices.iter().find(|(k, _)| *k == text) {
        return Some(*v);
    }
    let names: Vec<&str> = choices.iter().map(|(k, _)| *k).collect();
    diags.push(
        node.mark,
        format!("`{what}` cannot be `{}`", node.flow()),
        choices_hint(text, &names, "the choices"),
    );
    None
}

/// How `http.paths` globs compare (`paths_case_insensitive`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PathCase {
    Sensitive,
    Insensitive,
}

/// `to.protocol`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Protocol {
    /// Also allow connections that are not HTTP.
    Tcp,
    /// HTTP only, like an empty `http`.
    Http,
}

fn load_rules(node: &Node<'_>, paths: PathCase, diags: &mut Diags) -> Vec<Rule> {
    if node.is_null() {
        return Vec::new();
    }
    let Value::Seq(items) = &node.value else {
        diags.push(
            node.mark,
            format!("`rules` must be a list, found {}", node.kind()),
            "write each rule as a `- name: ...` item",
        );
        return Vec::new();
    };
    let mut names: HashMap<&str, Mark> = HashMap::new();
    let mut rules = Vec::with_capacity(items.len());
    for item in items {
        let (rule, name_node) = load_rule(item, paths, diags);
        // Names are checked for duplicates even when the rule has other
        // errors, so one run reports both.
        if let Some(name_node) = name_node
            && let Some(name) = name_node.scalar().filter(|n| !n.is_empty())
        {
            if let Some(first) = names.get(name) {
                diags.push(
                    name_node.mark,
                    format!(
                        "duplicate rule name `{name}` (first defined at line {})",
                        first.line
                    ),
                    "give each rule a unique name; it appears in every decision log",
                );
                continue;
            }
            names.insert(name, name_node.mark);
        }
        rules.extend(rule);
    }
    rules
}

/// Clauses of a rule while it is being read, by kind.
#[derive(Default)]
struct Parts {
    ports: Option<Clause>,
    source: Option<Clause>,
    external: Vec<Clause>,
    claims: Vec<Clause>,
    http: Vec<Clause>,
    /// `to.protocol` and where its value is.
    protocol: Option<(Protocol, Mark)>,
}

/// A rule (if it has no errors) and its `name` node (if it has one).
fn load_rule<'n, 'a>(
    node: &'n Node<'a>,
    paths: PathCase,
    diags: &mut Diags,
) -> (Option<Rule>, Option<&'n Node<'a>>) {
    let errors_before = diags.len();
    let Some(entries) = map_entries(node, "a rule", diags) else {
        return (None, None);
    };
    let (mut name, mut action, mut from, mut to, mut http) = (None, None, None, None, None);
    for e in &entries {
        match e.key {
            "name" => name = Some(e.value),
            "action" => action = Some(e.value),
            "from" => from = Some(e),
            "to" => to = Some(e),
            "http" => http = Some(e),
            _ => unknown_key(e, RULE_KEYS, "a rule", diags),
        }
    }
    let Some(name_node) = name else {
        diags.push(
            node.mark,
            "a rule has no `name`",
            "add `name: <unique-name>`, e.g. `name: web-to-api`",
        );
        return (None, None);
    };
    let name = rule_name(name_node, diags);
    let action = match action {
        Some(a) => keyword(
            a,
            &[("allow", Action::Allow), ("deny", Action::Deny)],
            "action",
            diags,
        ),
        None => {
            diags.push(
                node.mark,
                format!("rule `{}` has no `action`", name_node.flow()),
                "add `action: allow` or `action: deny`",
            );
            None
        }
    };

    let mut parts = Parts::default();
    let unauth = from.and_then(|e| load_from(e, &mut parts, diags));
    let external = to.and_then(|e| load_to(e, &mut parts, diags));
    if let (Some(_), Some(ext)) = (unauth, external) {
        diags.push(
            ext.mark,
            "a rule cannot have both `from.unauthenticated` and `to.external`: no connection is \
             both from outside the mesh (inbound) and to outside it (outbound)",
            "split it into two rules",
        );
    }
    if let Some(h) = http {
        if let Some(ext) = external {
            diags.push(
                h.key_node.mark,
                format!(
                    "`http` cannot be combined with `to.external` (line {}): the sidecar passes \
                     external traffic through without reading its HTTP",
                    ext.mark.line
                ),
                "remove `http` and match the destination with `to.external.hosts` (the SNI or Host the app sent)",
            );
        }
        load_http(h.value, paths, &mut parts, diags);
    }
    if let Some((Protocol::Tcp, mark)) = parts.protocol {
        if action == Some(Action::Deny) {
            diags.push(
                mark,
                "`to.protocol: tcp` is for allow rules: it lets an allow rule accept connections \
                 that are not HTTP",
                "remove it; a deny rule without `http` already applies to every connection, HTTP or not",
            );
        }
        if let Some(h) = http {
            diags.push(
                mark,
                format!(
                    "`to.protocol: tcp` cannot be combined with `http` (line {}): a rule with \
                     `http` only matches HTTP requests",
                    h.key_node.mark.line
                ),
                "split it into two rules: one with `http` for the requests, one with \
                 `protocol: tcp` for the traffic that is not HTTP",
            );
        }
    }

    let (Some(name), Some(action)) = (name, action) else {
        return (None, Some(name_node));
    };
    if diags.len() != errors_before {
        return (None, Some(name_node));
    }
    let cidrs = parts.external.iter().flat_map(|c| match &c.test {
        Test::ExternalCidrs(nets) => &nets[..],
        _ => &[],
    });
    let hosts = parts.external.iter().flat_map(|c| match &c.test {
        Test::ExternalHosts(globs) => &globs[..],
        _ => &[],
    });
    let metadata_named = MetadataNamed::of(cidrs, hosts.map(Glob::as_str));
    let protocol = parts.protocol.map(|(p, _)| p);
    let mut clauses = Vec::new();
    clauses.extend(parts.ports);
    clauses.extend(parts.source);
    clauses.extend(parts.external);
    clauses.extend(parts.claims);
    let l7_from = clauses.len();
    clauses.extend(parts.http);
    let is_l7 = http.is_some() || protocol == Some(Protocol::Http);
    let (caller, callee) = scope(
        action,
        unauth.is_some(),
        external.is_some(),
        &clauses,
        is_l7,
    );
    (
        Some(Rule {
            name: name.into(),
            action,
            mark: node.mark,
            caller,
            callee,
            clauses: clauses.into(),
            l7_from,
            is_l7,
            allows_non_http: protocol == Some(Protocol::Tcp),
            metadata_named,
        }),
        Some(name_node),
    )
}

fn rule_name(node: &Node<'_>, diags: &mut Diags) -> Option<String> {
    let text = node.scalar().filter(|_| !node.is_null()).unwrap_or("");
    let ok_char = |c: char| c.is_ascii_alphanumeric() || "-_.:/".contains(c);
    if text.is_empty() || text.len() > MAX_NAME_LEN || !text.chars().all(ok_char) {
        diags.push(
            node.mark,
            format!("`{}` is not a valid rule name", node.flow()),
            format!("use up to {MAX_NAME_LEN} letters, digits and `-_.:/`, e.g. `web-to-api`"),
        );
        return None;
    }
    if text == DEFAULT_RULE {
        diags.push(
            node.mark,
            "`default` is reserved: decisions made by the policy's `default` are named so",
            "choose another name, e.g. `default-allow`",
        );
        return None;
    }
    if SIDECAR_RULE_NAMES.contains(&text) {
        diags.push(
            node.mark,
            format!(
                "`{text}` is reserved: the sidecar names its own denials so (a revoked peer, an \
                 expired certificate, a request refused before policy), in audit lines and \
                 `x-appid-denied-by`"
            ),
            format!("choose another name, e.g. `no-{text}-peers` or `deny-{text}`"),
        );
        return None;
    }
    Some(text.to_string())
}

/// Reads `from`; returns the `unauthenticated` key node if present.
fn load_from<'n, 'a>(
    e: &Entry<'n, 'a>,
    parts: &mut Parts,
    diags: &mut Diags,
) -> Option<&'n Node<'a>> {
    let entries = map_entries(e.value, "`from`", diags)?;
    let mut unauth = None;
    let mut claim_keys = Vec::new();
    for e in &entries {
        match e.key {
            "unauthenticated" => {
                unauth = Some(e.key_node);
                parts.source = load_unauthenticated(e.value, diags);
            }
            "ports" | "external" => diags.push(
                e.key_node.mark,
                format!("`{}` describes the called side, not the caller", e.key),
                format!("move it under `to` (`to.{}`)", e.key),
            ),
            _ => {
                if let Some(c) = claim_clause(e, Side::Caller, diags) {
                    parts.claims.push(c);
                }
                claim_keys.push(e.key_node);
            }
        }
    }
    if unauth.is_some() {
        for k in claim_keys {
            diags.push(
                k.mark,
                format!(
                    "a caller outside the mesh has no claims, so `from.{}` cannot be combined with `from.unauthenticated`",
                    k.scalar().unwrap_or("")
                ),
                "put the claim selector in a separate rule, or remove `unauthenticated`",
            );
        }
    }
    unauth
}

/// Reads `to`; returns the `external` key node if present.
fn load_to<'n, 'a>(
    e: &Entry<'n, 'a>,
    parts: &mut Parts,
    diags: &mut Diags,
) -> Option<&'n Node<'a>> {
    let entries = map_entries(e.value, "`to`", diags)?;
    let mut external = None;
    let mut others = Vec::new();
    for e in &entries {
        match e.key {
            "ports" => {
                parts.ports = load_ports(e.value, "to.ports", diags).map(|ports| Clause {
                    path: "to.ports".into(),
                    text: format!("to.ports: {}", e.value.flow()).into(),
                    test: Test::Ports(ports),
                });
                others.push(e.key_node);
            }
            "protocol" => {
                parts.protocol = keyword(
                    e.value,
                    &[("tcp", Protocol::Tcp), ("http", Protocol::Http)],
                    "to.protocol",
                    diags,
                )
                .map(|p| (p, e.value.mark));
                others.push(e.key_node);
            }
            "external" => {
                external = Some(e.key_node);
                load_external(e.value, parts, diags);
            }
            "unauthenticated" => diags.push(
                e.key_node.mark,
                "`unauthenticated` describes the caller, not the called side",
                "move it under `from` (`from.unauthenticated`)",
            ),
            _ => {
                if let Some(c) = claim_clause(e, Side::Callee, diags) {
                    parts.claims.push(c);
                }
                others.push(e.key_node);
            }
        }
    }
    if external.is_some() {
        for k in others {
            let key = k.scalar().unwrap_or("");
            if key == "ports" {
                diags.push(
                    k.mark,
                    "`to.ports` cannot be combined with `to.external`",
                    "put the ports under `to.external.ports`",
                );
            } else if key == "protocol" {
                diags.push(
                    k.mark,
                    "`to.protocol` cannot be combined with `to.external`: the sidecar passes \
                     external traffic through without reading its HTTP",
                    "remove `protocol`; a rule with `to.external` applies to the connection \
                     whatever its protocol",
                );
            } else {
                diags.push(
                    k.mark,
                    format!(
                        "a destination outside the mesh has no claims, so `to.{key}` cannot be combined with `to.external`"
                    ),
                    "put the claim selector in a separate rule, or remove `external`",
                );
            }
        }
    }
    external
}

fn claim_clause(e: &Entry<'_, '_>, side: Side, diags: &mut Diags) -> Option<Clause> {
    let prefix = match side {
        Side::Caller => "from",
        Side::Callee => "to",
    };
    let attr = match Attr::parse(e.key) {
        Ok(a) => a,
        Err(hint) => {
            let extra = match side {
                Side::Caller => "`unauthenticated`",
                Side::Callee => "`ports`, `protocol`, `external`",
            };
            diags.push(
                e.key_node.mark,
                format!(
                    "unknown key `{}` in `{prefix}`: not a claim path or {extra}",
                    e.key
                ),
                hint,
            );
            return None;
        }
    };
    let pred = selector::parse(e.value, &attr, diags)?;
    Some(Clause {
        path: format!("{prefix}.{}", e.key).into(),
        text: format!("{prefix}.{}: {}", e.key, e.value.flow()).into(),
        test: Test::Claim(side, attr, pred),
    })
}

fn load_unauthenticated(node: &Node<'_>, diags: &mut Diags) -> Option<Clause> {
    let entries = map_entries(node, "`from.unauthenticated`", diags)?;
    let mut cidrs = None;
    for e in &entries {
        match e.key {
            "cidrs" => {
                cidrs =
                    load_cidrs(e.value, "from.unauthenticated.cidrs", diags).map(|nets| Clause {
                        path: "from.unauthenticated.cidrs".into(),
                        text: format!("from.unauthenticated.cidrs: {}", e.value.flow()).into(),
                        test: Test::SourceCidrs(nets),
                    });
            }
            _ => unknown_key(e, UNAUTH_KEYS, "`from.unauthenticated`", diags),
        }
    }
    if entries.iter().all(|e| e.key != "cidrs") {
        diags.push(
            node.mark,
            "`from.unauthenticated` needs `cidrs`: the source addresses allowed in",
            "write e.g. `unauthenticated: { cidrs: [\"10.0.0.0/8\"] }` (`0.0.0.0/0` and `::/0` for anywhere)",
        );
    }
    cidrs
}

fn load_external(node: &Node<'_>, parts: &mut Parts, diags: &mut Diags) {
    let Some(entries) = map_entries(node, "`to.external`", diags) else {
        return;
    };
    for e in &entries {
        let path = format!("to.external.{}", e.key);
        let test = match e.key {
            "hosts" => load_hosts(e.value, diags).map(Test::ExternalHosts),
            "cidrs" => load_cidrs(e.value, &path, diags).map(Test::ExternalCidrs),
            "ports" => load_ports(e.value, &path, diags).map(Test::ExternalPorts),
            _ => {
                unknown_key(e, EXTERNAL_KEYS, "`to.external`", diags);
                None
            }
        };
        if let Some(test) = test {
            parts.external.push(Clause {
                text: format!("{path}: {}", e.value.flow()).into(),
                path: path.into(),
                test,
            });
        }
    }
    // Cheapest first: ports, then addresses, then host names.
    parts.external.sort_by_key(|c| match c.test {
        Test::ExternalPorts(_) => 0,
        Test::ExternalCidrs(_) => 1,
        _ => 2,
    });
}

fn load_http(node: &Node<'_>, paths: PathCase, parts: &mut Parts, diags: &mut Diags) {
    let Some(entries) = map_entries(node, "`http`", diags) else {
        return;
    };
    for e in &entries {
        match e.key {
            "methods" => {
                if let Some(methods) = load_methods(e.value, diags) {
                    parts.http.push(Clause {
                        path: "http.methods".into(),
                        text: format!("http.methods: {}", e.value.flow()).into(),
                        test: Test::Methods(methods),
                    });
                }
            }
            "paths" => {
                let globs = scalars(e.value, "`http.paths`", diags).and_then(|items| {
                    collect_all(items.into_iter().map(|(text, mark)| {
                        if !text.starts_with('/') && !text.starts_with('*') {
                            diags.push(
                                mark,
                                format!("HTTP path pattern `{text}` does not start with `/`"),
                                "write an absolute path pattern, e.g. `/v1/**`",
                            );
                            return None;
                        }
                        // Spelled as the sidecar spells request paths.
                        let text = &*canonical_spelling(text);
                        let glob = match paths {
                            PathCase::Sensitive => Glob::path(text),
                            PathCase::Insensitive => Glob::path_ignoring_case(text),
                        };
                        glob_or_report(glob, mark, diags)
                    }))
                });
                if let Some(globs) = globs {
                    parts.http.push(Clause {
                        path: "http.paths".into(),
                        text: format!("http.paths: {}", e.value.flow()).into(),
                        test: Test::Paths(globs),
                    });
                }
            }
            "headers" => {
                let Some(headers) = map_entries(e.value, "`http.headers`", diags) else {
                    continue;
                };
                let mut seen: HashMap<String, (&str, Mark)> = HashMap::new();
                for h in &headers {
                    if h.key.is_empty() || !h.key.bytes().all(is_tchar) {
                        diags.push(
                            h.key_node.mark,
                            format!("`{}` is not a valid HTTP header name", h.key),
                            "write a header name such as `x-tenant`",
                        );
                        continue;
                    }
                    // As the sidecar compares names: `X_Debug` is `x-debug`.
                    let name = h.key.to_ascii_lowercase().replace('_', "-");
                    if let Some((first, mark)) = seen.get(&name) {
                        diags.push(
                            h.key_node.mark,
                            format!(
                                "`{}` is the same header as `{first}` (line {}): names ignore case, \
                                 and `_` is `-`",
                                h.key, mark.line
                            ),
                            "list all its values under one key",
                        );
                        continue;
                    }
                    seen.insert(name.clone(), (h.key, h.key_node.mark));
                    // `host` is a host name: ASCII case ignored, and the
                    // pattern, like the request's host, without a port or
                    // a trailing dot (`*` still spans labels, as in any
                    // header pattern: `*.corp.test` meets `a.b.corp.test`).
                    // Other values have no segments: `*` spans `/` too.
                    let glob = |text: &str| match name.as_str() {
                        "host" => host_pattern(text),
                        _ => Glob::value(text),
                    };
                    let globs = scalars(h.value, "a header value", diags).and_then(|items| {
                        collect_all(
                            items
                                .into_iter()
                                .map(|(text, mark)| glob_or_report(glob(text), mark, diags)),
                        )
                    });
                    if let Some(globs) = globs {
                        parts.http.push(Clause {
                            path: format!("http.headers.{name}").into(),
                            text: format!("http.headers.{name}: {}", h.value.flow()).into(),
                            test: Test::Header(name.into(), globs),
                        });
                    }
                }
            }
            _ => unknown_key(e, HTTP_KEYS, "`http`", diags),
        }
    }
}

/// An `http.headers.host` pattern: a host name (letters, digits, `-`, `.`,
/// `_`, `~` and `*`; a trailing dot dropped, as from the request's host)
/// or an IPv6 literal, ASCII case ignored. Anything else (a port:
/// `*:8080`, `a.test:*`; `[a]junk`; nothing) could never mean what it says
/// against the request's host, which is matched without its port, and is
/// refused.
fn host_pattern(text: &str) -> Result<Glob, super::glob::GlobError> {
    let is_name = |n: &str| is_host_name(n.strip_suffix('.').unwrap_or(n), true);
    // A port is refused rather than dropped: `*:8080` would otherwise
    // become `*`, every host.
    let valid = match text.strip_prefix('[') {
        Some(rest) => rest.split_once(']').is_some_and(|(v6, after)| {
            after.is_empty() && v6.parse::<std::net::Ipv6Addr>().is_ok()
        }),
        None => is_name(text),
    };
    let name = normalize_host(text);
    if !valid {
        return Err(super::glob::GlobError {
            message: format!("`{text}` is not a host name pattern"),
            hint: "write a host name such as `api.example.com` or `*.example.com` \
                   (a port is no part of it: ports are `to.ports`)"
                .into(),
        });
    }
    Glob::path_ignoring_case(name)
}

/// A path pattern spelled as the sidecar spells a canonical request path
/// (`docs/what-policy-sees.md`): `%XX` of an unreserved character decoded,
/// other `%XX` with upper-case hex, and raw non-ASCII bytes encoded so. A
/// pattern written `/café/**` then meets the request `/caf%c3%a9/x`, and
/// `/caf%c3%a9/**` the request `/café/x`, as the app routes both.
fn canonical_spelling(pattern: &str) -> std::borrow::Cow<'_, str> {
    let bytes = pattern.as_bytes();
    if !bytes
        .iter()
        .any(|b| !b.is_ascii() || *b == b'%' || *b == b' ')
    {
        return std::borrow::Cow::Borrowed(pattern);
    }
    let hex = |b: u8| char::from(b).to_digit(16);
    let mut out = String::with_capacity(pattern.len() + 8);
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        let encoded = match (b, bytes.get(i + 1..i + 3)) {
            (b'%', Some(&[h, l])) => hex(h).zip(hex(l)).map(|(h, l)| (h * 16 + l) as u8),
            _ => None,
        };
        if let Some(decoded) = encoded {
            i += 3;
            if decoded_in_paths(decoded) {
                out.push(char::from(decoded));
            } else {
                push_percent_encoded(&mut out, decoded);
            }
        } else if !b.is_ascii() || b == b' ' {
            // A request carries a space only encoded (its target ends at
            // a raw one): `/annual report/**` means `/annual%20report/**`.
            i += 1;
            push_percent_encoded(&mut out, b);
        } else {
            i += 1;
            out.push(char::from(b));
        }
    }
    std::borrow::Cow::Owned(out)
}

/// An HTTP token character (RFC 9110 `tchar`), as in header names.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

fn load_methods(node: &Node<'_>, diags: &mut Diags) -> Option<Box<[Box<str>]>> {
    let items = scalars(node, "`http.methods`", diags)?;
    collect_all(items.into_iter().map(|(text, mark)| {
        let is_method_char = |b: u8| b.is_ascii_alphabetic() || b == b'-' || b == b'_';
        let is_method = !text.is_empty() && text.bytes().all(is_method_char);
        if is_method && !text.bytes().any(|b| b.is_ascii_lowercase()) {
            Some(text.into())
        } else if is_method {
            diags.push(
                mark,
                format!(
                    "HTTP method `{text}` has lower-case letters, so this rule could never match \
                     it: methods are case-sensitive and the sidecar refuses lower-case ones"
                ),
                format!("write `{}`", text.to_ascii_uppercase()),
            );
            None
        } else {
            diags.push(
                mark,
                format!("`{text}` is not an HTTP method"),
                "write methods such as `GET`, `POST`",
            );
            None
        }
    }))
}

fn load_hosts(node: &Node<'_>, diags: &mut Diags) -> Option<Box<[Glob]>> {
    let items = scalars(node, "`to.external.hosts`", diags)?;
    collect_all(items.into_iter().map(|(text, mark)| {
        // `:` only in an IPv6 literal: a port (`evil.example:443`) would
        // never meet the app's host, which is matched without its port.
        let name_like = text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-.*_".contains(&b));
        if !name_like && text.parse::<std::net::Ipv6Addr>().is_err() {
            diags.push(
                mark,
                format!("`{text}` is not a host name pattern"),
                "write a DNS name, optionally with `*` for one label or `**` for any, e.g. \
                 `*.stripe.com`, or an IPv6 address (a port is no part of it: ports are \
                 `to.external.ports`)",
            );
            return None;
        }
        glob_or_report(Glob::host(text), mark, diags)
    }))
}

fn load_cidrs(node: &Node<'_>, what: &str, diags: &mut Diags) -> Option<Box<[IpNet]>> {
    let items = scalars(node, &format!("`{what}`"), diags)?;
    collect_all(items.into_iter().map(|(text, mark)| {
        let net = match text.parse::<IpNet>() {
            Ok(n) => n,
            Err(_) => match text.parse::<std::net::IpAddr>() {
                Ok(ip) => IpNet::from(ip),
                Err(_) => {
                    diags.push(
                        mark,
                        format!("`{text}` is not a CIDR"),
                        "write an address and prefix length, e.g. `10.0.0.0/8` or `fd00::/8`",
                    );
                    return None;
                }
            },
        };
        if net.trunc() != net {
            diags.push(
                mark,
                format!("CIDR `{text}` has host bits set"),
                format!("write `{}`", net.trunc()),
            );
            return None;
        }
        // Addresses are compared in their IPv4 form when they are
        // IPv4-mapped (`::ffff:10.1.2.3` is `10.1.2.3`), so networks of
        // mapped addresses are too: `::ffff:10.0.0.0/104` is `10.0.0.0/8`.
        Some(ipv4_form(net))
    }))
}

/// `net` in IPv4 form when it lies within `::ffff:0:0/96`.
fn ipv4_form(net: IpNet) -> IpNet {
    match net {
        IpNet::V6(v6) if v6.prefix_len() >= 96 => match v6.network().to_ipv4_mapped() {
            Some(v4) => ipnet::Ipv4Net::new(v4, v6.prefix_len() - 96)
                .map(IpNet::V4)
                .unwrap_or(net),
            None => net,
        },
        _ => net,
    }
}

fn load_ports(node: &Node<'_>, what: &str, diags: &mut Diags) -> Option<PortSet> {
    let items = scalars(node, &format!("`{what}`"), diags)?;
    let ranges = collect_all(items.into_iter().map(|(text, mark)| {
        let port = |s: &str| s.trim().parse::<u32>().ok();
        let (lo, hi) = match text.split_once('-') {
            Some((a, b)) => (port(a), port(b)),
            None => (port(text), port(text)),
        };
        let (Some(lo), Some(hi)) = (lo, hi) else {
            diags.push(
                mark,
                format!("`{text}` is not a port or port range"),
                "write a port such as `8080` or a range such as `\"9000-9100\"`",
            );
            return None;
        };
        if lo == 0 || hi > 65535 || lo > 65535 || hi == 0 {
            diags.push(
                mark,
                format!("port `{text}` is out of range"),
                "ports are 1 to 65535",
            );
            return None;
        }
        if lo > hi {
            diags.push(
                mark,
                format!("port range `{text}` is out of order"),
                format!("write `{hi}-{lo}`"),
            );
            return None;
        }
        // Both are in 1..=65535, checked above.
        Some((u16::try_from(lo).ok()?, u16::try_from(hi).ok()?))
    }))?;
    Some(PortSet::new(ranges.into_vec()))
}

/// A non-empty scalar or list of scalars, with their positions.
fn scalars<'n>(node: &'n Node<'_>, what: &str, diags: &mut Diags) -> Option<Vec<(&'n str, Mark)>> {
    let items: Vec<&Node<'_>> = match &node.value {
        Value::Seq(items) => items.iter().collect(),
        Value::Scalar { .. } if !node.is_null() => vec![node],
        _ => {
            diags.push(
                node.mark,
                format!(
                    "{what} takes a value or a list of values, found {}",
                    node.kind()
                ),
                "write e.g. `[a, b]`",
            );
            return None;
        }
    };
    if items.is_empty() {
        diags.push(
            node.mark,
            format!("empty {what} matches nothing"),
            "list at least one value, or remove the key to match any",
        );
        return None;
    }
    let mut out = Vec::with_capacity(items.len());
    let mut ok = true;
    for item in items {
        match item.scalar().filter(|_| !item.is_null()) {
            Some(text) => out.push((text, item.mark)),
            None => {
                ok = false;
                diags.push(
                    item.mark,
                    format!(
                        "{what}: each entry must be a plain value, found {}",
                        item.kind()
                    ),
                    "write a list of plain values",
                );
            }
        }
    }
    ok.then_some(out)
}

fn glob_or_report(
    glob: Result<Glob, super::glob::GlobError>,
    mark: Mark,
    diags: &mut Diags,
) -> Option<Glob> {
    glob.map_err(|e| diags.push(mark, format!("bad glob: {}", e.message), e.hint))
        .ok()
}

/// All items, or `None` if any failed (every item is still visited, so
/// every error is reported).
fn collect_all<T>(items: impl Iterator<Item = Option<T>>) -> Option<Box<[T]>> {
    let mut ok = true;
    let mut out = Vec::new();
    for item in items {
        match item {
            Some(v) => out.push(v),
            None => ok = false,
        }
    }
    ok.then(|| out.into())
}
