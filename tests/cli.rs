//! The `appid` command line as a shell user meets it: completion scripts
//! that real shells load and that complete real subcommands and flags.

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
