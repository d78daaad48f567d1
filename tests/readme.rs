//! The README's walk-through runs as written, and shows what it says.
//!
//! Every ` ```sh ` block of the section "Walk-through: a certificate from a
//! scanner report" is run, in order, in one `bash` (so `cd` and `export`
//! carry over), from the checkout's root as a new user would. A comment
//! line `#   …` right after a command is output that command must print:
//! the expected lines must appear in its output in that order (not
//! necessarily adjacent), whitespace runs compare equal, `…` stands for any
//! text within a line, and `#   ...` is only a reminder that lines are
//! left out. Any other comment is prose.
//!
//! Two substitutions, both about the binary: the block's
//! `cargo build --release -p appid-proxy` is not re-run (the test suite
//! has built `appid` already), and `$PWD/target/release` names the
//! directory of that `appid`. `mktemp -d` makes its directory inside this
//! test's own temporary directory. Everything else is the README's text.
//!
//! The walk-through reads real scanner reports from `../shared/fixtures`;
//! without them the test says so and skips (under `CI=true`, fails).

use std::path::{Path, PathBuf};
use std::process::Command;

const APPID: &str = env!("CARGO_BIN_EXE_appid");
const SECTION: &str = "## Walk-through: a certificate from a scanner report";

/// One command of the walk-through and the output it must show.
#[derive(Debug)]
struct Step {
    command: String,
    expected: Vec<String>,
}

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the workspace root")
        .to_path_buf()
}

/// The `sh` blocks of the section headed `heading` (up to the next `## `).
fn sh_blocks(readme: &str, heading: &str) -> Vec<Vec<String>> {
    let start = readme
        .find(heading)
        .unwrap_or_else(|| panic!("README has no section {heading:?}"));
    let rest = &readme[start + heading.len()..];
    let section = &rest[..rest.find("\n## ").unwrap_or(rest.len())];
    let mut blocks = Vec::new();
    let mut current: Option<Vec<String>> = None;
    for line in section.lines() {
        match (&mut current, line.trim_end()) {
            (None, "```sh") => current = Some(Vec::new()),
            (Some(_), "```") => blocks.extend(current.take()),
            (Some(block), text) => block.push(text.to_owned()),
            (None, _) => {}
        }
    }
    blocks
}

/// Commands (continuation lines joined) with the output lines shown
/// after each.
fn steps(blocks: &[Vec<String>]) -> Vec<Step> {
    let mut steps: Vec<Step> = Vec::new();
    for block in blocks {
        let mut pending = String::new();
        for line in block {
            if pending.is_empty()
                && let Some(shown) = line.strip_prefix("#   ")
            {
                let step = steps.last_mut().expect("output shown before any command");
                step.expected.push(shown.trim().to_owned());
                continue;
            }
            if pending.is_empty() && (line.trim().is_empty() || line.trim_start().starts_with('#'))
            {
                continue;
            }
            match line.strip_suffix('\\') {
                Some(head) => {
                    pending.push_str(head);
                    pending.push(' ');
                }
                None => {
                    pending.push_str(line);
                    steps.push(Step {
                        command: strip_comment(&pending).to_owned(),
                        expected: Vec::new(),
                    });
                    pending.clear();
                }
            }
        }
        assert!(
            pending.is_empty(),
            "a block ends in a continuation: {pending}"
        );
    }
    steps
}

/// The command without a trailing `# comment` (none of the walk-through's
/// commands has a `#` inside quotes).
fn strip_comment(command: &str) -> &str {
    match command.find(" #") {
        Some(at) => command[..at].trim_end(),
        None => command.trim_end(),
    }
}

/// Whether `line` shows `expected` (`…` any text, whitespace runs equal).
fn shows(line: &str, expected: &str) -> bool {
    let squeeze = |s: &str| s.split_whitespace().collect::<Vec<_>>().join(" ");
    let (line, expected) = (squeeze(line), squeeze(expected));
    let parts: Vec<&str> = expected.split('…').map(str::trim).collect();
    let [first, middle @ .., last] = parts.as_slice() else {
        return line == expected;
    };
    let Some(mut rest) = line.strip_prefix(first) else {
        return false;
    };
    for part in middle {
        match rest.find(part) {
            Some(at) => rest = &rest[at + part.len()..],
            None => return false,
        }
    }
    rest.ends_with(last)
}

/// Checks that `expected` appears in `output` in order.
fn check_output(step: &Step, output: &str) -> Result<(), String> {
    let mut lines = output.lines();
    for expected in &step.expected {
        if expected == "..." {
            continue;
        }
        if !lines.by_ref().any(|line| shows(line, expected)) {
            return Err(format!(
                "`{}` did not show {expected:?} (in order); it printed:\n{output}",
                step.command
            ));
        }
    }
    Ok(())
}

#[test]
fn the_walk_through_runs_as_written_and_shows_what_it_says() {
    let root = repo_root();
    if !root.join("../shared/fixtures").is_dir() {
        let reason = "../shared/fixtures is not beside the checkout";
        assert_ne!(
            std::env::var("CI").as_deref(),
            Ok("true"),
            "README walk-through: {reason}"
        );
        eprintln!("skipping the README walk-through: {reason}");
        return;
    }
    let readme = std::fs::read_to_string(root.join("README.md")).expect("README.md");
    let steps = steps(&sh_blocks(&readme, SECTION));
    assert!(steps.len() >= 8, "too few commands found: {steps:#?}");
    let bin_dir = Path::new(APPID).parent().expect("appid's directory");
    let temp = tempfile::tempdir().expect("temp dir");
    let outputs = temp.path().join("outputs");
    std::fs::create_dir(&outputs).expect("outputs dir");

    // One script: each command's output to its own file, stop at the
    // first failure (and say which).
    let mut script = String::from("set -e\n");
    for (i, step) in steps.iter().enumerate() {
        let command = step
            .command
            .replace("cargo build --release -p appid-proxy", "true")
            .replace("$PWD/target/release", &bin_dir.display().to_string());
        let out = outputs.join(format!("{i}.out"));
        script.push_str(&format!(
            "echo {i} > {progress}\n{command} > {out} 2>&1\n",
            progress = outputs.join("progress").display(),
            out = out.display(),
        ));
    }
    let run = Command::new("bash")
        .arg("-c")
        .arg(&script)
        .current_dir(&root)
        .env("TMPDIR", temp.path())
        .output()
        .expect("run bash");
    let read =
        |i: usize| std::fs::read_to_string(outputs.join(format!("{i}.out"))).unwrap_or_default();
    if !run.status.success() {
        let failed: usize = std::fs::read_to_string(outputs.join("progress"))
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0);
        panic!(
            "README command failed ({}): `{}`\n{}{}",
            run.status,
            steps[failed].command,
            read(failed),
            String::from_utf8_lossy(&run.stderr)
        );
    }
    let shown: usize = steps.iter().map(|s| s.expected.len()).sum();
    assert!(shown >= 5, "too few shown outputs found: {steps:#?}");
    for (i, step) in steps.iter().enumerate() {
        if let Err(e) = check_output(step, &read(i)) {
            panic!("{e}");
        }
    }
}

#[test]
fn the_output_matcher_means_what_the_module_doc_says() {
    assert!(shows("  labels.app      = legacy", "labels.app = legacy"));
    assert!(shows(
        "vulns.report     = sha256:cad7",
        "vulns.report = sha256:…"
    ));
    assert!(shows(
        "....{\"v\":1,\"id\":\"x\",\"labels\":{}}",
        "…{\"v\":1,\"id\":\"x\", …"
    ));
    assert!(!shows("labels.app = web", "labels.app = legacy"));
    assert!(!shows("vulns.critical = 20", "vulns.critical = 2"));
    let step = Step {
        command: "x".into(),
        expected: vec!["a = 1".into(), "...".into(), "c = 3".into()],
    };
    assert!(check_output(&step, "a = 1\nb = 2\nc = 3\n").is_ok());
    assert!(check_output(&step, "c = 3\na = 1\n").is_err());
    let blocks = vec![vec![
        "appid issue --dir ca \\".to_owned(),
        "  --cert x.pem   # a comment".to_owned(),
        "#   issued …".to_owned(),
        "# prose".to_owned(),
    ]];
    let parsed = steps(&blocks);
    assert_eq!(parsed.len(), 1);
    assert_eq!(parsed[0].command, "appid issue --dir ca    --cert x.pem");
    assert_eq!(parsed[0].expected, ["issued …"]);
}
