//! The `appid` command line as a shell user meets it: completion scripts
//! that real shells load and that complete real subcommands and flags;
//! `appid probe` against an admin API that never answers.

use std::process::Command;

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Runs `script` in a real bash with `appid`'s completion loaded; what it
/// prints.
fn bash_with_completions(script: &str) -> String {
    let appid = env!("CARGO_BIN_EXE_appid");
    let out = Command::new("bash")
        .arg("-c")
        .arg(format!("source <(\"{appid}\" completions bash)\n{script}"))
        .output()
        .expect("bash must be installed");
    assert!(out.status.success(), "bash: {}", text(&out.stderr));
    text(&out.stdout)
}

/// `appid completions bash` is a script bash loads and that completes
/// subcommands and their flags; zsh and fish scripts are produced too; an
/// unknown shell is bad input (exit 2).
#[test]
fn completion_scripts_complete_subcommands_and_flags() {
    let registered = bash_with_completions("complete -p appid");
    assert!(registered.contains("appid"), "{registered}");

    let subcommands = bash_with_completions(
        "COMP_WORDS=(appid au); COMP_CWORD=1; _appid appid au appid; echo \"${COMPREPLY[@]}\"",
    );
    assert_eq!(subcommands.trim(), "authority", "{subcommands}");

    let flags = bash_with_completions(
        "COMP_WORDS=(appid issue --fo); COMP_CWORD=2; _appid appid --fo issue; echo \"${COMPREPLY[@]}\"",
    );
    assert_eq!(flags.trim(), "--force", "{flags}");

    for shell in ["zsh", "fish"] {
        let out = Command::new(env!("CARGO_BIN_EXE_appid"))
            .args(["completions", shell])
            .output()
            .unwrap();
        assert!(out.status.success(), "{shell}: {}", text(&out.stderr));
        assert!(text(&out.stdout).contains("authority"), "{shell}");
    }

    let bad = Command::new(env!("CARGO_BIN_EXE_appid"))
        .args(["completions", "tcsh"])
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(2), "{}", text(&bad.stderr));
}

/// `appid probe ready --timeout T` against an admin address that accepts
/// (the kernel completes the handshake) but never answers: it waits the
/// whole `T` — at least 3.5 s of a 4 s timeout, where the 2 s default
/// would have given up — then exits 1 ("not ready", as for any answer but
/// 200), saying so. It used to exit 2 (bad arguments) with "Resource
/// temporarily unavailable" when the answer did not come in time.
#[test]
fn probe_waits_its_timeout_for_a_silent_admin_then_exits_1() {
    let silent = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let admin = silent.local_addr().unwrap().to_string();
    let probe = |extra: &[&str]| {
        let start = std::time::Instant::now();
        let out = Command::new(env!("CARGO_BIN_EXE_appid"))
            .args(["probe", "ready", "--admin", &admin])
            .args(extra)
            .output()
            .expect("run appid probe");
        (out, start.elapsed())
    };

    let (out, took) = probe(&["--timeout", "4s"]);
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}{}", text(&out.stderr));
    assert!(
        stdout.contains("/ready: no answer from the admin API") && stdout.contains("within 4s"),
        "{stdout}"
    );
    assert!(
        took >= std::time::Duration::from_millis(3500),
        "gave up after {took:?}, not at --timeout 4s"
    );

    let (out, _) = probe(&[]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stdout));
    drop(silent);
}
