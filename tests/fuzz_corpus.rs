//! Replays the committed fuzz corpus (`fuzz/corpus/<target>/*`) through the
//! fuzz targets' bodies (`fuzz/src/lib.rs`, compiled here as a module), so
//! every seed and every saved crash input is checked by the normal
//! `cargo test`, on stable, without a fuzzing toolchain. See
//! `fuzz/README.md`.

#[path = "../fuzz/src/lib.rs"]
mod targets;

use std::fs;
use std::path::{Path, PathBuf};

/// Inputs larger than this are skipped (libFuzzer's default `-max_len` is
/// 4 KiB; nothing committed comes near this).
const MAX_INPUT: u64 = 1 << 20;

fn corpus_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus")
}

/// The files of one target's corpus, sorted (hidden files skipped).
fn inputs(target: &str) -> Vec<PathBuf> {
    let dir = corpus_dir().join(target);
    let mut files: Vec<PathBuf> = fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| entry.expect("a directory entry").path())
        .filter(|p| p.is_file())
        .filter(|p| {
            !p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with('.'))
        })
        .collect();
    files.sort();
    files
}

#[test]
fn every_corpus_input_passes_its_target() {
    let mut replayed = 0;
    for (name, body) in targets::TARGETS {
        let files = inputs(name);
        assert!(!files.is_empty(), "fuzz/corpus/{name}/ has no seed");
        for file in files {
            let size = fs::metadata(&file).expect("metadata").len();
            if size > MAX_INPUT {
                continue;
            }
            let data = fs::read(&file).expect("a corpus file");
            let outcome = std::panic::catch_unwind(|| body(&data));
            assert!(
                outcome.is_ok(),
                "fuzz target {name} failed on {}",
                file.display()
            );
            replayed += 1;
        }
    }
    assert!(replayed > 0);
}

#[test]
fn every_corpus_folder_has_a_target() {
    for entry in fs::read_dir(corpus_dir()).expect("fuzz/corpus") {
        let name = entry.expect("a directory entry").file_name();
        let name = name.to_string_lossy();
        assert!(
            targets::TARGETS.iter().any(|(t, _)| *t == name),
            "fuzz/corpus/{name}/ belongs to no target in fuzz/src/lib.rs"
        );
    }
}
