//! What in a pod spec lets a container get around capture, and what the
//! injector does about it.
//!
//! The redirect sends every TCP connection of the pod through the sidecar,
//! except the sidecar's own: those of uid 1337 return to the kernel
//! untouched. Capture is a handful of iptables rules in the pod's network
//! namespace, so a container of the pod gets around it by:
//! - running as uid 1337: refused (an error naming the line): nothing in
//!   such a pod could be trusted to be meshed;
//! - being able to *become* 1337: root keeps CAP_SETUID under the
//!   runtime's default capabilities, so a root process can `setuid(1337)`
//!   and leave capture; so can a non-root one through a setuid binary
//!   unless `allowPrivilegeEscalation: false`. An image's `USER` is not in
//!   the manifest: without a `runAsUser` it may be root, or even 1337;
//! - sending below the rules: NET_RAW (in the default set) opens raw and
//!   packet sockets, whose packets never meet the nat table;
//! - removing the rules: NET_ADMIN, SYS_ADMIN or `privileged: true`.
//!
//! All but the first are warnings, one line per container listing what it
//! lacks or has, not refusals: most real manifests set none of these, and
//! the containers are the app's own code, so the operator decides; the
//! README ("What capture cannot stop") says how to harden a pod.
//!
//! The fields are read as Kubernetes reads them ([`super::yaml11`]): a
//! value of the wrong type (a quoted `"1337"`) is an error, since the API
//! server would refuse the pod too, and a YAML alias, tag or merge key
//! (`<<`) on the way to a field the check reads makes the workload skipped
//! with a warning, as aliases the injector cannot edit through do.

use serde_saphyr::granit_parser::ScalarStyle;

use super::tree::{Kind, Node};
use super::yaml11::{self, Value};
use super::{INIT_CONTAINER, InjectError, Location, PROXY_CONTAINER, PROXY_UID, get};

/// The outcome of [`check`] for an injectable pod.
pub(super) enum Verdict {
    /// One warning per container that could get around capture.
    Warnings(Vec<String>),
    /// Leave the workload alone, for this reason.
    Skip(String),
}

/// Why reading stopped: the workload is skipped, or the input refused.
enum Stop {
    Skip(String),
    Refuse(InjectError),
}

impl From<InjectError> for Stop {
    fn from(e: InjectError) -> Self {
        Stop::Refuse(e)
    }
}

/// Refuses a container that runs as the sidecar's uid; otherwise returns a
/// warning for each container (the pod's init containers and app
/// containers, appid's own excluded) that could get around capture.
pub(super) fn check(pod: &Node, location: &Location) -> Result<Verdict, InjectError> {
    match check_containers(pod, location) {
        Ok(warnings) => Ok(Verdict::Warnings(warnings)),
        Err(Stop::Skip(reason)) => Ok(Verdict::Skip(reason)),
        Err(Stop::Refuse(e)) => Err(e),
    }
}

fn check_containers(pod: &Node, location: &Location) -> Result<Vec<String>, Stop> {
    let reader = Reader { location };
    let pod_context = reader.context(pod, "the pod's securityContext")?;
    let mut warnings = Vec::new();
    for list in ["initContainers", "containers"] {
        let Some(containers) = get(pod, list, location)? else {
            continue;
        };
        reader.readable(containers, list)?;
        for (i, container) in containers.items().unwrap_or_default().iter().enumerate() {
            reader.readable(container, &format!("{list}[{i}]"))?;
            let name = get(container, "name", location)?.and_then(Node::scalar);
            if name.is_some_and(|n| n == INIT_CONTAINER || n == PROXY_CONTAINER) {
                continue; // ours, replaced
            }
            let label = format!("container `{}`", name.unwrap_or("(no name)"));
            let own = reader.context(container, &format!("{label}'s securityContext"))?;
            let effective = own.over(&pod_context);
            if let Some((uid, line, text)) = &effective.run_as_user
                && *uid == i64::from(PROXY_UID)
            {
                return Err(Stop::Refuse(InjectError::Structure {
                    location: location.clone(),
                    line: *line,
                    message: format!(
                        "{label} runs as uid {PROXY_UID}{}, the sidecar's, whose traffic the \
                         redirect never captures: it would bypass the sidecar; give it another \
                         securityContext.runAsUser",
                        spelled(text)
                    ),
                }));
            }
            if let Some(warning) = effective.warning() {
                warnings.push(format!("{location}: {label} {warning}"));
            }
        }
    }
    Ok(warnings)
}

/// `" (runAsUser: 0x539)"` when the uid was not written `1337`.
fn spelled(text: &str) -> String {
    if text == PROXY_UID.to_string() {
        String::new()
    } else {
        format!(" (runAsUser: {text})")
    }
}

/// The fields of a securityContext that matter here; `None` when absent
/// (or null).
#[derive(Default)]
struct Context {
    /// The uid, its line and its text as written.
    run_as_user: Option<(i64, usize, String)>,
    run_as_non_root: Option<bool>,
    allow_privilege_escalation: Option<bool>,
    privileged: Option<bool>,
    /// Capability names, upper case, without `CAP_`.
    add: Vec<String>,
    drop: Vec<String>,
}

impl Context {
    /// The container's context over the pod's: Kubernetes takes
    /// `runAsUser` and `runAsNonRoot` from the container when set there,
    /// else from the pod; the rest exists only on containers.
    fn over(self, pod: &Context) -> Context {
        Context {
            run_as_user: self.run_as_user.or_else(|| pod.run_as_user.clone()),
            run_as_non_root: self.run_as_non_root.or(pod.run_as_non_root),
            ..self
        }
    }

    /// Whether the container keeps capability `name`, as containerd
    /// applies `add` and `drop` to the default set (`drop: [ALL]` first,
    /// then single adds, then single drops).
    fn keeps(&self, name: &str) -> bool {
        let listed = |list: &[String], n: &str| list.iter().any(|c| c == n);
        let in_default_set = matches!(name, "SETUID" | "SETGID" | "NET_RAW");
        let before_single_adds = if listed(&self.drop, "ALL") {
            false
        } else {
            in_default_set || listed(&self.add, "ALL")
        };
        (before_single_adds || listed(&self.add, name)) && !listed(&self.drop, name)
    }

    /// One line (after the container's name): what it lacks or has, why
    /// that matters, and what to set. `None` when hardened.
    fn warning(&self) -> Option<String> {
        let mut found: Vec<String> = Vec::new();
        let mut why: Vec<&str> = Vec::new();
        let mut becomes_root = false;
        let uid = self.run_as_user.as_ref().map(|(uid, _, _)| *uid);
        let non_root = self.run_as_non_root == Some(true);
        match (uid, non_root) {
            // With runAsNonRoot, the kubelet does not start a uid 0.
            (Some(0), false) => {
                found.push("runs as root (runAsUser: 0)".into());
                becomes_root = true;
            }
            (Some(_), _) => {}
            (None, true) => {
                found.push("its uid left to the image (no runAsUser)".into());
                why.push("that may be uid 1337, whose traffic is never captured");
            }
            (None, false) => {
                found.push("may run as root (no runAsUser or runAsNonRoot: true)".into());
                becomes_root = true;
            }
        }
        let privileged = self.privileged == Some(true);
        if self.allow_privilege_escalation != Some(false) && !privileged {
            found.push("allowPrivilegeEscalation not false".into());
            becomes_root = true;
        }
        let kept: Vec<&str> = ["SETUID", "SETGID", "NET_RAW"]
            .into_iter()
            .filter(|c| self.keeps(c) && !privileged)
            .collect();
        if let Some((last, first)) = kept.split_last() {
            let list = if first.is_empty() {
                last.to_string()
            } else {
                format!("{} and {last}", first.join(", "))
            };
            found.push(format!("{list} not dropped"));
        }
        if kept.contains(&"SETUID") || kept.contains(&"SETGID") {
            becomes_root = true;
        }
        if becomes_root {
            why.insert(0, "a root process can setuid(1337) and leave capture");
        }
        if kept.contains(&"NET_RAW") {
            why.push("NET_RAW sends raw packets below it");
        }
        let added: Vec<&str> = ["NET_ADMIN", "SYS_ADMIN"]
            .into_iter()
            .filter(|c| self.keeps(c))
            .collect();
        if !added.is_empty() {
            found.push(format!("{} added", added.join(" and ")));
        }
        if privileged {
            found.push("privileged: true".into());
        }
        let mut fix = "set runAsNonRoot: true, a runAsUser, allowPrivilegeEscalation: false and \
                       capabilities.drop: [ALL] in its securityContext";
        if !added.is_empty() || privileged {
            why.push("NET_ADMIN can delete its rules");
            fix = "drop privileged, NET_ADMIN and SYS_ADMIN, and set runAsNonRoot: true, a \
                   runAsUser, allowPrivilegeEscalation: false and capabilities.drop: [ALL] in \
                   its securityContext";
        }
        if found.is_empty() {
            return None;
        }
        Some(format!(
            "may get around capture: {} ({}); {fix}",
            found.join(", "),
            why.join("; ")
        ))
    }
}

struct Reader<'a> {
    location: &'a Location,
}

impl Reader<'_> {
    /// Stops at an alias, or a mapping with a merge key (`<<`): what they
    /// stand for is not read here.
    fn readable(&self, node: &Node, what: &str) -> Result<(), Stop> {
        let merge = node.get_all("<<").next().map(|(key, _)| key);
        let (line, kind) = match (&node.kind, merge) {
            (Kind::Alias, _) => (node.line, "is a YAML alias"),
            (_, Some(key)) => (key.line, "uses a YAML merge key (<<)"),
            _ => return Ok(()),
        };
        Err(Stop::Skip(format!(
            "line {line}: {what} {kind}, which the injector does not read through to check \
             for ways around capture; write it out"
        )))
    }

    /// The securityContext of a pod or container (`what` names it).
    fn context(&self, holder: &Node, what: &str) -> Result<Context, Stop> {
        let mut context = Context::default();
        let Some(node) = get(holder, "securityContext", self.location)? else {
            return Ok(context);
        };
        self.readable(node, what)?;
        if node.is_null() {
            return Ok(context);
        }
        if !matches!(node.kind, Kind::Map { .. }) {
            return Err(self.wrong(node, what, "a mapping"));
        }
        if let Some((uid, field)) =
            self.field(node, what, "runAsUser", yaml11::int, "an integer")?
        {
            let text = field.scalar().unwrap_or_default().to_owned();
            context.run_as_user = Some((uid, field.line, text));
        }
        let boolean = |key| self.field(node, what, key, yaml11::bool, "true or false");
        context.run_as_non_root = boolean("runAsNonRoot")?.map(|(b, _)| b);
        context.allow_privilege_escalation = boolean("allowPrivilegeEscalation")?.map(|(b, _)| b);
        context.privileged = boolean("privileged")?.map(|(b, _)| b);
        if let Some(caps) = get(node, "capabilities", self.location)? {
            let what = format!("{what}.capabilities");
            self.readable(caps, &what)?;
            context.add = self.names(caps, &what, "add")?;
            context.drop = self.names(caps, &what, "drop")?;
        }
        Ok(context)
    }

    /// A scalar field read with `read`, and its node.
    fn field<'n, T>(
        &self,
        context: &'n Node,
        what: &str,
        key: &str,
        read: fn(&Node) -> Value<T>,
        expected: &str,
    ) -> Result<Option<(T, &'n Node)>, Stop> {
        let Some(node) = get(context, key, self.location)? else {
            return Ok(None);
        };
        let what = format!("{what}.{key}");
        match read(node) {
            Value::Null => Ok(None),
            Value::Is(value) => Ok(Some((value, node))),
            Value::Unresolved(kind) => Err(Stop::Skip(format!(
                "line {}: {what} is {kind}, which the injector does not resolve; write the \
                 value itself",
                node.line
            ))),
            Value::Wrong => Err(self.wrong(node, &what, expected)),
        }
    }

    /// `capabilities.add` or `.drop`: names, upper case, without `CAP_`
    /// (containerd's spelling rules). Items that are no plain name are
    /// left to the API server, which refuses them.
    fn names(&self, caps: &Node, what: &str, key: &str) -> Result<Vec<String>, Stop> {
        let Some(list) = get(caps, key, self.location)? else {
            return Ok(Vec::new());
        };
        let what = format!("{what}.{key}");
        self.readable(list, &what)?;
        let mut names = Vec::new();
        for item in list.items().unwrap_or_default() {
            self.readable(item, &what)?;
            if let Some(name) = item.scalar() {
                let upper = name.trim().to_ascii_uppercase();
                let bare = upper.strip_prefix("CAP_").unwrap_or(&upper);
                names.push(bare.to_owned());
            }
        }
        Ok(names)
    }

    fn wrong(&self, node: &Node, what: &str, expected: &str) -> Stop {
        let (text, quoted) = match &node.kind {
            Kind::Scalar { value, style } if *style == ScalarStyle::Plain => {
                (format!("`{}`", value.escape_debug()), "")
            }
            Kind::Scalar { value, .. } => (format!("`{value:?}`"), " (quoted, it is a string)"),
            Kind::Seq { .. } => ("a list".into(), ""),
            _ => ("a mapping".into(), ""),
        };
        Stop::Refuse(InjectError::Structure {
            location: self.location.clone(),
            line: node.line,
            message: format!(
                "{what}: {text} is not {expected} as Kubernetes reads YAML{quoted}, so the API \
                 server would refuse the pod; write {expected}"
            ),
        })
    }
}
