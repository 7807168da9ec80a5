//! Every fuzz target run on its seeds (`fuzz/seeds/<target>/`), its past crashes
//! (`fuzz/regressions/<target>/`) and, for `onnx_model` and `tflite_model`, the example ONNX and
//! TFLite models: what
//! `scripts/fuzz.sh` starts each libFuzzer run from, replayed on stable so that CI catches a
//! crash that comes back without building the fuzzers.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};

use rtserve_fuzz_targets::TARGETS;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR")).ancestors().nth(2).expect("crates/fuzz-targets is two levels down")
}

/// The files directly in `folder`, sorted; none when it does not exist.
fn files_in(folder: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(folder) else { return Vec::new() };
    let mut files: Vec<PathBuf> =
        entries.map(|e| e.expect("a readable entry").path()).filter(|p| p.is_file()).collect();
    files.sort();
    files
}

/// The example models with extension `extension` that `scripts/fuzz.sh` adds to the
/// `onnx_model` and `tflite_model` corpora (those under 500 KB).
fn example_models(folder: &Path, extension: &str, found: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(folder).expect("examples/ is readable") {
        let path = entry.expect("a readable entry").path();
        if path.is_dir() {
            example_models(&path, extension, found);
        } else if path.extension().is_some_and(|e| e == extension)
            && path.metadata().expect("metadata").len() < 500_000
        {
            found.push(path);
        }
    }
}

#[test]
fn every_seed_and_past_crash_runs_without_a_crash() {
    let root = root();
    let mut crashes = Vec::new();
    for (name, target) in TARGETS {
        let seeds = files_in(&root.join("fuzz/seeds").join(name));
        assert!(seeds.len() >= 4, "fuzz/seeds/{name}/ holds {} files; run python3 fuzz/seed.py", seeds.len());
        let mut inputs = seeds;
        inputs.extend(files_in(&root.join("fuzz/regressions").join(name)));
        match name {
            "onnx_model" => example_models(&root.join("examples"), "onnx", &mut inputs),
            "tflite_model" => example_models(&root.join("examples"), "tflite", &mut inputs),
            _ => {}
        }
        eprintln!("{name}: {} inputs", inputs.len());
        for input in inputs {
            let data = std::fs::read(&input).expect("a readable input");
            if catch_unwind(AssertUnwindSafe(|| target(&data))).is_err() {
                crashes.push(format!("{name}: {}", input.display()));
            }
        }
    }
    assert!(crashes.is_empty(), "fuzz targets crashed on:\n{}", crashes.join("\n"));
}
