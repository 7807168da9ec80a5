//! The matrix file: a TOML list of rows, each a model with server settings and a load, with a
//! `[defaults]` table every row starts from. Parsed strictly: an unknown key is an error, so a
//! typo cannot silently run a different benchmark.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::config::{parse_duration, Protocol};
use crate::BenchError;

/// A row's fields as written; every one may come from `[defaults]` instead.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRow {
    name: Option<String>,
    model: Option<PathBuf>,
    prepare: Option<Vec<String>>,
    config: Option<toml::Table>,
    serve_args: Option<Vec<String>>,
    memory_limit_mb: Option<u64>,
    requires: Option<Vec<String>>,
    protocol: Option<String>,
    concurrency: Option<Vec<usize>>,
    rate: Option<Vec<f64>>,
    batch: Option<usize>,
    warmup: Option<String>,
    duration: Option<String>,
    timeout: Option<String>,
    distinct: Option<usize>,
    start_timeout: Option<String>,
}

impl RawRow {
    /// This row's fields, each falling back to the default's.
    fn over(self, d: &RawRow) -> RawRow {
        let d = d.clone();
        RawRow {
            name: self.name.or(d.name),
            model: self.model.or(d.model),
            prepare: self.prepare.or(d.prepare),
            config: self.config.or(d.config),
            serve_args: self.serve_args.or(d.serve_args),
            memory_limit_mb: self.memory_limit_mb.or(d.memory_limit_mb),
            requires: self.requires.or(d.requires),
            protocol: self.protocol.or(d.protocol),
            concurrency: self.concurrency.or(d.concurrency),
            rate: self.rate.or(d.rate),
            batch: self.batch.or(d.batch),
            warmup: self.warmup.or(d.warmup),
            duration: self.duration.or(d.duration),
            timeout: self.timeout.or(d.timeout),
            distinct: self.distinct.or(d.distinct),
            start_timeout: self.start_timeout.or(d.start_timeout),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMatrix {
    title: Option<String>,
    #[serde(default)]
    defaults: RawRow,
    #[serde(default)]
    row: Vec<RawRow>,
}

/// What a row needs from the machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Requirement {
    Gpu,
}

/// One row, complete and checked.
#[derive(Debug, Clone, PartialEq)]
pub struct RowSpec {
    pub name: String,
    /// The ONNX file served, relative to the directory the command runs in.
    pub model: PathBuf,
    /// Run when `model` does not exist, to make it; `{model}` is replaced by its path.
    pub prepare: Vec<String>,
    /// The model's `config.toml`, written as given (`name` is set by the matrix).
    pub config: toml::Table,
    /// Extra `rtserve serve` flags.
    pub serve_args: Vec<String>,
    /// The server's data segment limit (RLIMIT_DATA, through `prlimit`), MiB.
    pub memory_limit_mb: Option<u64>,
    pub requires: Vec<Requirement>,
    pub protocol: Protocol,
    pub concurrency: Vec<usize>,
    pub rate: Vec<f64>,
    pub batch: usize,
    pub warmup: Duration,
    pub duration: Duration,
    pub timeout: Duration,
    pub distinct: usize,
    /// How long the server may take to load the model and become ready.
    pub start_timeout: Duration,
}

/// A matrix file, read and checked.
#[derive(Debug, Clone, PartialEq)]
pub struct MatrixSpec {
    pub title: String,
    pub rows: Vec<RowSpec>,
}

impl MatrixSpec {
    /// Reads and checks a matrix file.
    pub fn read(path: &Path) -> Result<MatrixSpec, BenchError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| BenchError::Matrix { path: path.to_path_buf(), reason: e.to_string() })?;
        MatrixSpec::parse(&text).map_err(|reason| BenchError::Matrix { path: path.to_path_buf(), reason })
    }

    /// Parses the text of a matrix file.
    pub fn parse(text: &str) -> Result<MatrixSpec, String> {
        let raw: RawMatrix = toml::from_str(text).map_err(|e| e.to_string())?;
        if raw.row.is_empty() {
            return Err("no [[row]] tables: a matrix needs at least one row".into());
        }
        let rows = raw
            .row
            .into_iter()
            .enumerate()
            .map(|(i, row)| row_spec(row.over(&raw.defaults)).map_err(|e| format!("row {}: {e}", i + 1)))
            .collect::<Result<Vec<_>, _>>()?;
        let mut names: Vec<&str> = rows.iter().map(|r| r.name.as_str()).collect();
        names.sort_unstable();
        if let Some(w) = names.windows(2).find(|w| w[0] == w[1]) {
            return Err(format!("two rows are named '{}'", w[0]));
        }
        Ok(MatrixSpec { title: raw.title.unwrap_or_else(|| "rtserve benchmark matrix".into()), rows })
    }
}

fn row_spec(raw: RawRow) -> Result<RowSpec, String> {
    let name = raw.name.filter(|n| !n.trim().is_empty()).ok_or("`name` is missing")?;
    let at = |e: String| format!("'{name}': {e}");
    let model = raw.model.ok_or_else(|| at("`model` (the ONNX file) is missing".into()))?;
    let duration = |key: &str, value: Option<String>, default: &str| {
        parse_duration(value.as_deref().unwrap_or(default)).map_err(|e| at(format!("`{key}`: {e}")))
    };
    let protocol = match raw.protocol.as_deref().unwrap_or("grpc") {
        "http" => Protocol::HttpBinary,
        "http-json" => Protocol::HttpJson,
        "grpc" => Protocol::GrpcUnary,
        "grpc-stream" => Protocol::GrpcStream,
        other => {
            return Err(at(format!("`protocol` '{other}': expected http, http-json, grpc or grpc-stream")))
        }
    };
    let requires = raw
        .requires
        .unwrap_or_default()
        .iter()
        .map(|r| match r.as_str() {
            "gpu" => Ok(Requirement::Gpu),
            other => Err(at(format!("`requires` '{other}': the only requirement known is \"gpu\""))),
        })
        .collect::<Result<Vec<_>, _>>()?;
    let prepare = raw.prepare.unwrap_or_default();
    if prepare.first().is_some_and(|program| program.trim().is_empty()) {
        return Err(at("`prepare` starts with an empty program".into()));
    }
    if raw.memory_limit_mb == Some(0) {
        return Err(at("`memory_limit_mb` must be at least 1".into()));
    }
    if let Some(value) = raw.config.as_ref().and_then(|c| c.get("name")) {
        return Err(at(format!("`config.name` ({value}) is set by the matrix; leave it out")));
    }
    Ok(RowSpec {
        model,
        prepare,
        config: raw.config.unwrap_or_default(),
        serve_args: raw.serve_args.unwrap_or_default(),
        memory_limit_mb: raw.memory_limit_mb,
        requires,
        protocol,
        concurrency: raw.concurrency.unwrap_or_default(),
        rate: raw.rate.unwrap_or_default(),
        batch: raw.batch.unwrap_or(1),
        warmup: duration("warmup", raw.warmup, "2s")?,
        duration: duration("duration", raw.duration, "10s")?,
        timeout: duration("timeout", raw.timeout, "10s")?,
        distinct: raw.distinct.unwrap_or(1024),
        start_timeout: duration("start_timeout", raw.start_timeout, "120s")?,
        name,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = r#"
title = "ResNet-50"
[defaults]
model = "r50.onnx"
concurrency = [1]
duration = "5s"
serve_args = ["--engine", "onnxruntime"]

[[row]]
name = "FP32"

[[row]]
name = "batch 4"
concurrency = [8, 16]
protocol = "grpc-stream"
config = { max_batch_size = 4, dynamic_batching = { max_queue_delay_microseconds = 2000 } }

[[row]]
name = "edge"
model = "int8.onnx"
prepare = ["python3", "make.py", "{model}"]
serve_args = ["--engine", "tract"]
memory_limit_mb = 256
requires = ["gpu"]
"#;

    #[test]
    fn rows_fall_back_to_the_defaults_field_by_field() {
        let spec = MatrixSpec::parse(FILE).expect("parse");
        assert_eq!(spec.title, "ResNet-50");
        let [fp32, batch, edge] = &spec.rows[..] else { panic!("three rows") };
        assert_eq!(fp32.model, PathBuf::from("r50.onnx"));
        assert_eq!(fp32.concurrency, vec![1]);
        assert_eq!(fp32.duration, Duration::from_secs(5));
        assert_eq!(fp32.warmup, Duration::from_secs(2), "built-in default");
        assert_eq!(fp32.protocol, Protocol::GrpcUnary);
        assert!(fp32.config.is_empty());
        assert_eq!(batch.concurrency, vec![8, 16]);
        assert_eq!(batch.protocol, Protocol::GrpcStream);
        assert_eq!(batch.config.get("max_batch_size").and_then(|v| v.as_integer()), Some(4));
        assert_eq!(batch.serve_args, vec!["--engine", "onnxruntime"]);
        assert_eq!(edge.serve_args, vec!["--engine", "tract"], "a row's list replaces the default's");
        assert_eq!(edge.memory_limit_mb, Some(256));
        assert_eq!(edge.requires, vec![Requirement::Gpu]);
        assert_eq!(edge.prepare.len(), 3);
    }

    #[test]
    fn mistakes_are_named() {
        let cases = [
            ("title = \"t\"", "no [[row]]"),
            ("[[row]]\nmodel = \"m.onnx\"", "`name` is missing"),
            ("[[row]]\nname = \"a\"", "'a': `model`"),
            ("[[row]]\nname = \"a\"\nmodel = \"m\"\nprotocol = \"udp\"", "`protocol` 'udp'"),
            ("[[row]]\nname = \"a\"\nmodel = \"m\"\nduration = \"soon\"", "`duration`"),
            ("[[row]]\nname = \"a\"\nmodel = \"m\"\nrequires = [\"tpu\"]", "`requires` 'tpu'"),
            ("[[row]]\nname = \"a\"\nmodel = \"m\"\nconcurency = [1]", "unknown field `concurency`"),
            ("[[row]]\nname = \"a\"\nmodel = \"m\"\nconfig = { name = \"x\" }", "`config.name`"),
            (
                "[[row]]\nname = \"a\"\nmodel = \"m\"\n[[row]]\nname = \"a\"\nmodel = \"m\"",
                "two rows are named 'a'",
            ),
            ("[[row]]\nname = \"a\"\nmodel = \"m\"\nmemory_limit_mb = 0", "`memory_limit_mb`"),
        ];
        for (text, expected) in cases {
            let err = MatrixSpec::parse(text).expect_err(text);
            assert!(err.contains(expected), "{text:?}: {err}");
        }
    }
}
