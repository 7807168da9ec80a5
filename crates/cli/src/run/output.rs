//! What a run prints or writes: the output tensors as JSON lines on stdout, the top-k classes
//! with their labels, or one `.npy` file per output.

use std::io::Write;
use std::path::{Path, PathBuf};

use rtserve_bench::npy::write_npy;
use rtserve_core::NamedTensor;
use rtserve_server::classification::{read_labels, score_rows, top_k};
use rtserve_server::http::json::tensor_to_json;
use serde_json::{json, Value};

use super::model::RunModel;
use super::RunError;

/// The outputs of every input, in the order they ran.
#[derive(Default)]
pub struct Results {
    items: Vec<(String, Vec<NamedTensor>)>,
}

impl Results {
    pub fn push(&mut self, input: String, outputs: Vec<NamedTensor>) {
        self.items.push((input, outputs));
    }
}

/// Where the results go.
pub struct RunOutput {
    out: Option<PathBuf>,
    top_k: Option<TopK>,
}

struct TopK {
    k: usize,
    softmax: bool,
    labels: Option<Vec<String>>,
    /// The model's first output.
    output: String,
    batched: bool,
}

impl RunOutput {
    /// Checks the output flags against the model and reads the labels, before anything runs.
    pub fn new(
        out: &Option<PathBuf>,
        k: Option<usize>,
        softmax: bool,
        labels: &Option<PathBuf>,
        model: &RunModel,
    ) -> Result<RunOutput, RunError> {
        if let Some(dir) = out {
            if dir.exists() && !dir.is_dir() {
                return Err(RunError::Input(format!("--out {}: not a folder", dir.display())));
            }
        }
        let top_k = match k {
            None => None,
            Some(k) => {
                let config = model.config();
                let output = config.outputs.first().ok_or_else(|| {
                    RunError::Failed(format!("model '{}' has no output to classify", config.name))
                })?;
                let labels = match labels {
                    Some(file) => Some(read_labels_file(file)?),
                    None => read_labels(model.folder()).map_err(RunError::Input)?,
                };
                Some(TopK {
                    k,
                    softmax,
                    labels,
                    output: output.name.clone(),
                    batched: config.max_batch_size > 0,
                })
            }
        };
        Ok(RunOutput { out: out.clone(), top_k })
    }

    /// Writes the files (all or none) and prints to stdout: the top-k classes when asked,
    /// else the tensors unless they went to files.
    pub fn write(&self, results: &Results) -> Result<(), RunError> {
        let mut lines = Vec::new();
        if let Some(top_k) = &self.top_k {
            for (input, outputs) in &results.items {
                lines.push(top_k.classes(input, outputs)?.to_string());
            }
        } else if self.out.is_none() {
            for (input, outputs) in &results.items {
                let tensors: Vec<JsonTensor<'_>> = outputs
                    .iter()
                    .map(|o| JsonTensor {
                        name: &o.name,
                        datatype: o.tensor.datatype().as_str(),
                        shape: o.tensor.shape(),
                        data: tensor_to_json(&o.tensor),
                    })
                    .collect();
                let line = JsonResult { input, outputs: tensors };
                // A string, not a `Value`, to keep the fields in order.
                lines.push(serde_json::to_string(&line).map_err(|e| RunError::Failed(format!("JSON: {e}")))?);
            }
        }
        if let Some(dir) = &self.out {
            write_files(dir, results)?;
        }
        let mut stdout = std::io::stdout().lock();
        for line in lines {
            writeln!(stdout, "{line}").map_err(|e| RunError::Failed(format!("stdout: {e}")))?;
        }
        stdout.flush().map_err(|e| RunError::Failed(format!("stdout: {e}")))
    }
}

/// One line of tensor output, fields in the protocol's order.
#[derive(serde::Serialize)]
struct JsonResult<'a> {
    input: &'a str,
    outputs: Vec<JsonTensor<'a>>,
}

#[derive(serde::Serialize)]
struct JsonTensor<'a> {
    name: &'a str,
    datatype: &'static str,
    shape: &'a [usize],
    data: Value,
}

impl TopK {
    /// `{"input", "output", "classes": [[{index, score, label}...] per batch row]}`.
    fn classes(&self, input: &str, outputs: &[NamedTensor]) -> Result<Value, RunError> {
        let output = outputs
            .iter()
            .find(|o| o.name == self.output)
            .ok_or_else(|| RunError::Failed(format!("the model returned no output '{}'", self.output)))?;
        let rows = score_rows(output, self.batched).map_err(|e| RunError::Failed(e.to_string()))?;
        let classes: Vec<Vec<Value>> = rows
            .iter()
            .map(|row| {
                top_k(row, self.k, self.softmax)
                    .into_iter()
                    .map(|s| {
                        let label = self.labels.as_ref().and_then(|l| l.get(s.index));
                        json!({ "index": s.index, "score": s.score, "label": label })
                    })
                    .collect()
            })
            .collect();
        Ok(json!({ "input": input, "output": self.output, "classes": classes }))
    }
}

/// A labels file named on the command line: one class name a line, as labels.txt.
fn read_labels_file(path: &Path) -> Result<Vec<String>, RunError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| RunError::Input(format!("--labels {}: {e}", path.display())))?;
    Ok(text.lines().map(|l| l.trim_end_matches('\r').to_string()).collect())
}

/// `DIR/<output>.npy` for one input, `DIR/<input>/<output>.npy` for several, where `<input>`
/// is the input's file stem. Every file is encoded before the first is written, and each is
/// written to a temporary file in its folder and renamed.
fn write_files(dir: &Path, results: &Results) -> Result<(), RunError> {
    let several = results.items.len() > 1;
    let mut files: Vec<(PathBuf, Vec<u8>)> = Vec::new();
    for (input, outputs) in &results.items {
        let folder = if several { dir.join(file_part(&input_stem(input))) } else { dir.to_path_buf() };
        for output in outputs {
            let path = folder.join(format!("{}.npy", file_part(&output.name)));
            if files.iter().any(|(p, _)| *p == path) {
                return Err(RunError::Input(format!(
                    "--out: two results would both be written to {}; run these inputs separately",
                    path.display()
                )));
            }
            let raw = output.tensor.raw().ok_or_else(|| {
                RunError::Failed(format!(
                    "output '{}' is {}: no .npy form",
                    output.name,
                    output.tensor.datatype()
                ))
            })?;
            let bytes = write_npy(output.tensor.datatype(), output.tensor.shape(), raw)
                .map_err(|e| RunError::Failed(format!("output '{}': {e}", output.name)))?;
            files.push((path, bytes));
        }
    }
    for (path, bytes) in files {
        let folder = path.parent().unwrap_or(dir);
        let failed = |e: std::io::Error| RunError::Failed(format!("{}: {e}", path.display()));
        std::fs::create_dir_all(folder).map_err(failed)?;
        let mut file = tempfile::NamedTempFile::new_in(folder).map_err(failed)?;
        file.write_all(&bytes).map_err(failed)?;
        file.persist(&path).map_err(|e| failed(e.error))?;
    }
    Ok(())
}

/// The file stem of an input label (`stdin` for `-`).
fn input_stem(label: &str) -> String {
    if label == "-" {
        return "stdin".to_string();
    }
    Path::new(label).file_stem().and_then(|s| s.to_str()).unwrap_or(label).to_string()
}

/// A tensor or input name made safe as one file name component.
fn file_part(name: &str) -> String {
    let safe: String = name
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') { c } else { '_' })
        .collect();
    match safe.trim_start_matches('.') {
        "" => "_".to_string(),
        _ => safe,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_names_are_one_safe_component() {
        assert_eq!(file_part("logits"), "logits");
        assert_eq!(file_part("out/0:1"), "out_0_1");
        assert_eq!(file_part(".."), "_");
        assert_eq!(input_stem("images/cat.png"), "cat");
        assert_eq!(input_stem("-"), "stdin");
    }
}
