//! The image-classifier stand-in of the image tests (`e2e/images.rs`, `run.rs`): a repository
//! model whose graph is `pixels = Identity(input)`, `input` FP32 `[N, 3, 8, 8]`, so its output is
//! the preprocessed tensor itself, with 192 labels `class0..class191`.

use std::path::{Path, PathBuf};

#[allow(dead_code)]
#[path = "../../../engines/tests/support/onnx_writer.rs"]
mod onnx_writer;

use onnx_writer::{elem, identity_model, Dim, Io};

/// The images' side in pixels: the model takes `[N, 3, SIDE, SIDE]`.
pub const SIDE: u64 = 8;

/// Writes the model `name` into `repository` with the given config file (`config.toml` or
/// `config.pbtxt`) and its text, and `labels.txt`; returns the path of `1/model.onnx`.
pub fn write_pixels_model(repository: &Path, name: &str, config_file: &str, config: &str) -> PathBuf {
    let dir = repository.join(name);
    std::fs::create_dir_all(dir.join("1")).expect("model folder");
    let dims = || vec![Dim::Symbol("N"), Dim::Fixed(3), Dim::Fixed(SIDE), Dim::Fixed(SIDE)];
    let model = identity_model(&[(
        Io { name: "input".into(), elem_type: elem::FLOAT, dims: dims() },
        Io { name: "pixels".into(), elem_type: elem::FLOAT, dims: dims() },
    )]);
    std::fs::write(dir.join("1").join("model.onnx"), model).expect("model.onnx");
    std::fs::write(dir.join(config_file), config).expect("config");
    let labels: Vec<String> = (0..3 * SIDE * SIDE).map(|i| format!("class{i}")).collect();
    std::fs::write(dir.join("labels.txt"), labels.join("\n")).expect("labels.txt");
    dir.join("1").join("model.onnx")
}
