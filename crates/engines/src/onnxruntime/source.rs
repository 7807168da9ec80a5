//! What a session is made from: an ONNX file, or a TFLite file rewritten as ONNX
//! (`crate::tflite_onnx`).

use std::path::{Path, PathBuf};

use ort::session::builder::SessionBuilder;
use ort::session::Session;
use rtserve_core::EngineError;

pub(super) enum Source {
    File(PathBuf),
    /// A TFLite file (`path`) rewritten as ONNX.
    #[cfg(feature = "tract")]
    Converted {
        path: PathBuf,
        onnx: Converted,
    },
}

/// Where a rewritten model waits for the sessions made from it. In a temporary file: ONNX
/// Runtime then reads it as it reads any file, and no copy is held beside the sessions (a
/// ResNet-50 TFLite load peaked at 392 MiB with the float model held in memory, 323 MiB from
/// the file; INT8: 117.6 against 106.2 MiB). In memory where no temporary file can be written (a
/// read-only device).
#[cfg(feature = "tract")]
pub(super) enum Converted {
    OnDisk(tempfile::NamedTempFile),
    InMemory(Vec<u8>),
}

impl Source {
    /// The model at `path`: a `.tflite` file is rewritten as ONNX here, once.
    pub fn read(path: &Path) -> Result<Source, EngineError> {
        #[cfg(feature = "tract")]
        if crate::tract::is_tflite(path) {
            let onnx = crate::tflite_onnx::convert(path)?;
            let onnx = match spill(&onnx) {
                Ok(file) => Converted::OnDisk(file),
                Err(e) => {
                    tracing::debug!("{}: the ONNX rewrite stays in memory ({e})", path.display());
                    Converted::InMemory(onnx)
                }
            };
            return Ok(Source::Converted { path: path.to_path_buf(), onnx });
        }
        Ok(Source::File(path.to_path_buf()))
    }

    /// The model file as the user named it.
    pub fn path(&self) -> &Path {
        match self {
            Source::File(path) => path,
            #[cfg(feature = "tract")]
            Source::Converted { path, .. } => path,
        }
    }

    pub fn commit(&self, builder: &mut SessionBuilder) -> ort::Result<Session> {
        match self {
            Source::File(path) => builder.commit_from_file(path),
            #[cfg(feature = "tract")]
            Source::Converted { onnx: Converted::OnDisk(file), .. } => builder.commit_from_file(file.path()),
            #[cfg(feature = "tract")]
            Source::Converted { onnx: Converted::InMemory(onnx), .. } => builder.commit_from_memory(onnx),
        }
    }
}

/// Writes `onnx` to a temporary file, removed when the model is dropped.
#[cfg(feature = "tract")]
fn spill(onnx: &[u8]) -> std::io::Result<tempfile::NamedTempFile> {
    use std::io::Write;
    let mut file = tempfile::Builder::new().prefix("rtserve-tflite-").suffix(".onnx").tempfile()?;
    file.write_all(onnx)?;
    file.flush()?;
    Ok(file)
}
