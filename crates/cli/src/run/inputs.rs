//! The inputs of a run: `.npy` / `.npz` arrays, images (through the model's preprocessing) and
//! raw tensor bytes on stdin, each read into the model's named input tensors.

use std::io::Read;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use rtserve_bench::npy::parse_npy_raw;
use rtserve_core::{DataType, NamedTensor, Tensor, TensorData};
use rtserve_server::preprocess::{images_tensor, Normaliser, DEFAULT_MAX_IMAGE_PIXELS};
use rtserve_server::ServerError;

use super::model::RunModel;
use super::RunError;

/// The file extensions read as images.
const IMAGE_EXTENSIONS: &[&str] = &["png", "jpg", "jpeg", "webp"];

/// What an input is.
#[derive(Debug, Clone, PartialEq)]
pub enum InputKind {
    Npy(PathBuf),
    Npz(PathBuf),
    Image(PathBuf),
    Stdin,
}

/// One input to run, and the name its results go under.
#[derive(Debug, Clone, PartialEq)]
pub struct InputSource {
    /// The path as given (a folder's images: the folder joined with the file name), `-` for stdin.
    pub label: String,
    pub kind: InputKind,
}

/// The inputs named on the command line, folders expanded into their images (sorted by name).
/// An unknown file type, a missing file or an empty folder is refused before anything runs.
pub fn sources(paths: &[PathBuf]) -> Result<Vec<InputSource>, RunError> {
    let mut sources = Vec::new();
    for path in paths {
        let label = path.display().to_string();
        if path.as_os_str() == "-" {
            if sources.iter().any(|s: &InputSource| s.kind == InputKind::Stdin) {
                return Err(RunError::Input("stdin (-) can be read once".into()));
            }
            sources.push(InputSource { label, kind: InputKind::Stdin });
        } else if path.is_dir() {
            let images = image_files(path)?;
            if images.is_empty() {
                return Err(RunError::Input(format!(
                    "{label}: the folder holds no image ({})",
                    IMAGE_EXTENSIONS.join(", ")
                )));
            }
            sources.extend(
                images
                    .into_iter()
                    .map(|p| InputSource { label: p.display().to_string(), kind: InputKind::Image(p) }),
            );
        } else if !path.exists() {
            return Err(RunError::Input(format!("{label}: no such file or folder")));
        } else {
            let kind = match extension(path).as_str() {
                "npy" => InputKind::Npy(path.clone()),
                "npz" => InputKind::Npz(path.clone()),
                ext if IMAGE_EXTENSIONS.contains(&ext) => InputKind::Image(path.clone()),
                _ => {
                    return Err(RunError::Input(format!(
                        "{label}: unknown input type (expected .npy, .npz, an image: {}, a folder of \
                         images, or - for stdin)",
                        IMAGE_EXTENSIONS.join(", ")
                    )))
                }
            };
            sources.push(InputSource { label, kind });
        }
    }
    Ok(sources)
}

fn extension(path: &Path) -> String {
    path.extension().and_then(|e| e.to_str()).unwrap_or("").to_ascii_lowercase()
}

fn image_files(dir: &Path) -> Result<Vec<PathBuf>, RunError> {
    let entries = std::fs::read_dir(dir).map_err(|e| RunError::Input(format!("{}: {e}", dir.display())))?;
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file() && IMAGE_EXTENSIONS.contains(&extension(p).as_str()))
        .collect();
    files.sort();
    Ok(files)
}

/// Reads one input into named tensors for the model. `shape` and `datatype` describe stdin.
pub fn read(
    source: &InputSource,
    model: &RunModel,
    shape: Option<&[usize]>,
    datatype: DataType,
) -> Result<Vec<NamedTensor>, RunError> {
    let bad = |e: String| RunError::Input(format!("{}: {e}", source.label));
    let tensors = match &source.kind {
        InputKind::Npy(path) => {
            let name = single_input(model, ".npy file").map_err(bad)?;
            vec![NamedTensor { name, tensor: npy_tensor(&read_file(path)?).map_err(bad)? }]
        }
        InputKind::Npz(path) => npz_tensors(path).map_err(bad)?,
        InputKind::Image(path) => vec![image_tensor(&read_file(path)?, model).map_err(bad)?],
        InputKind::Stdin => {
            let name = single_input(model, "tensor on stdin").map_err(bad)?;
            let mut data = Vec::new();
            std::io::stdin().read_to_end(&mut data).map_err(|e| bad(e.to_string()))?;
            let shape = shape.unwrap_or_default().to_vec();
            if datatype == DataType::Bytes {
                return Err(bad("--datatype BYTES cannot be read as raw bytes".into()));
            }
            let tensor =
                Tensor::new(datatype, shape, TensorData::Raw(data.into())).map_err(|e| bad(e.to_string()))?;
            vec![NamedTensor { name, tensor }]
        }
    };
    Ok(tensors.into_iter().map(|t| with_batch(model, t)).collect())
}

fn read_file(path: &Path) -> Result<Vec<u8>, RunError> {
    std::fs::read(path).map_err(|e| RunError::Input(format!("{}: {e}", path.display())))
}

/// The name of the model's only input; `what` feeds a model with one input.
fn single_input(model: &RunModel, what: &str) -> Result<String, String> {
    let inputs = &model.config().inputs;
    match inputs.as_slice() {
        [only] => Ok(only.name.clone()),
        _ => {
            let names: Vec<&str> = inputs.iter().map(|i| i.name.as_str()).collect();
            Err(format!(
                "a {what} feeds a model with one input; model '{}' has {} ({}): give a .npz with one \
                 array per input",
                model.config().name,
                inputs.len(),
                names.join(", ")
            ))
        }
    }
}

fn npy_tensor(bytes: &[u8]) -> Result<Tensor, String> {
    let npy = parse_npy_raw(bytes)?;
    let data = TensorData::Raw(Bytes::copy_from_slice(npy.data));
    Tensor::new(npy.datatype, npy.shape, data).map_err(|e| e.to_string())
}

/// The arrays of a `.npz` file (a zip of `.npy` files), named after their members.
fn npz_tensors(path: &Path) -> Result<Vec<NamedTensor>, String> {
    let file = std::fs::File::open(path).map_err(|e| e.to_string())?;
    let mut archive = zip::ZipArchive::new(file).map_err(|e| format!("not a .npz (zip) file: {e}"))?;
    let mut tensors = Vec::with_capacity(archive.len());
    for i in 0..archive.len() {
        let mut member = archive.by_index(i).map_err(|e| format!("member {i}: {e}"))?;
        let name = member.name().trim_end_matches(".npy").to_string();
        let mut bytes = Vec::new();
        member.read_to_end(&mut bytes).map_err(|e| format!("array '{name}': {e}"))?;
        let tensor = npy_tensor(&bytes).map_err(|e| format!("array '{name}': {e}"))?;
        tensors.push(NamedTensor { name, tensor });
    }
    Ok(tensors)
}

/// An encoded image, through the model's preprocessing as the server applies it.
fn image_tensor(bytes: &[u8], model: &RunModel) -> Result<NamedTensor, String> {
    let Some(spec) = model.preprocess() else {
        return Err(format!(
            "model '{}' declares no preprocessing, so it cannot take images (add a [preprocess] table \
             to its config.toml or preprocess.* parameters to its config.pbtxt)",
            model.config().name
        ));
    };
    let images = [Bytes::copy_from_slice(bytes)];
    images_tensor(spec, &Normaliser::new(spec), &images, DEFAULT_MAX_IMAGE_PIXELS).map_err(|e| match e {
        ServerError::BadRequest(m) => m,
        other => other.to_string(),
    })
}

/// An array for an input of a batching model, given without its batch dimension, as a batch of
/// one. Anything else is left for validation to judge.
fn with_batch(model: &RunModel, input: NamedTensor) -> NamedTensor {
    let config = model.config();
    let Some(spec) = config.input(&input.name) else { return input };
    if config.max_batch_size == 0 || input.tensor.shape().len() != spec.dims.len() {
        return input;
    }
    let shape = std::iter::once(1).chain(input.tensor.shape().iter().copied()).collect();
    match Tensor::new(input.tensor.datatype(), shape, input.tensor.data().clone()) {
        Ok(tensor) => NamedTensor { name: input.name, tensor },
        Err(_) => input,
    }
}
