//! `rtserve bench --matrix FILE.toml`: rows of (model variant, server settings, load), each run
//! against a server started for it, collected into one Markdown table.
//!
//! | module | one idea |
//! | --- | --- |
//! | `spec` | the matrix file |
//! | `server` | a row's own `rtserve serve` |
//! | `table` | the Markdown table and the chart |

mod server;
pub mod spec;
pub mod table;

use std::path::Path;
use std::process::Command;

use serde::Serialize;

use crate::config::{BenchConfig, BenchOptions, Endpoint, Protocol, Scheme};
use crate::result::BenchReport;
use server::{LocalServer, MODEL_NAME};
use spec::{MatrixSpec, Requirement, RowSpec};

/// What became of one row.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "status", rename_all = "lowercase")]
pub enum RowOutcome {
    Ran {
        report: BenchReport,
    },
    /// Not run: the machine lacks what the row requires (e.g. `needs GPU`).
    Skipped {
        reason: String,
    },
    /// The model could not be prepared, the server did not start, or the load could not begin.
    Failed {
        reason: String,
    },
}

#[derive(Debug, Clone, Serialize)]
pub struct RowResult {
    pub name: String,
    /// Size of the model file, when it exists.
    pub model_bytes: Option<u64>,
    #[serde(flatten)]
    pub outcome: RowOutcome,
}

#[derive(Debug, Clone, Serialize)]
pub struct MatrixReport {
    pub title: String,
    pub rows: Vec<RowResult>,
}

impl MatrixReport {
    /// Pretty-printed JSON: each row with its status and, when it ran, its full report.
    pub fn to_json(&self) -> String {
        // Plain data with string keys: serialization cannot fail.
        serde_json::to_string_pretty(self).unwrap_or_default()
    }

    pub fn failures(&self) -> usize {
        self.rows.iter().filter(|r| matches!(r.outcome, RowOutcome::Failed { .. })).count()
    }
}

/// Runs every row in order with `rtserve` (the binary to serve with), one server at a time.
/// A row that fails is recorded and the next one runs.
pub async fn run_matrix(spec: &MatrixSpec, rtserve: &Path, progress: bool) -> MatrixReport {
    let gpu = gpu_present();
    let mut rows = Vec::with_capacity(spec.rows.len());
    for (i, row) in spec.rows.iter().enumerate() {
        eprintln!("[{}/{}] {}", i + 1, spec.rows.len(), row.name);
        let outcome = run_row(row, rtserve, gpu, progress).await;
        if let RowOutcome::Failed { reason } | RowOutcome::Skipped { reason } = &outcome {
            eprintln!("[{}/{}] {}: {reason}", i + 1, spec.rows.len(), row.name);
        }
        let model_bytes = std::fs::metadata(&row.model).ok().map(|m| m.len());
        rows.push(RowResult { name: row.name.clone(), model_bytes, outcome });
    }
    MatrixReport { title: spec.title.clone(), rows }
}

async fn run_row(row: &RowSpec, rtserve: &Path, gpu: bool, progress: bool) -> RowOutcome {
    if row.requires.contains(&Requirement::Gpu) && !gpu {
        return RowOutcome::Skipped { reason: "needs GPU".into() };
    }
    let failed = |reason: String| RowOutcome::Failed { reason };
    if let Err(reason) = prepare(row) {
        return failed(reason);
    }
    let server = match LocalServer::start(rtserve, row).await {
        Ok(server) => server,
        Err(reason) => return failed(reason),
    };
    let config = match BenchConfig::new(options(row, &server, progress)) {
        Ok(config) => config,
        Err(e) => return failed(e.to_string()),
    };
    match crate::run(&config).await {
        Ok(report) => RowOutcome::Ran { report },
        Err(e) => failed(e.to_string()),
    }
}

/// Runs the row's `prepare` command when its model file is missing.
fn prepare(row: &RowSpec) -> Result<(), String> {
    if row.model.exists() {
        return Ok(());
    }
    let Some((program, args)) = row.prepare.split_first() else {
        return Err(format!(
            "model {} does not exist and the row has no `prepare` command",
            row.model.display()
        ));
    };
    let model = row.model.to_string_lossy();
    let args: Vec<String> = args.iter().map(|a| a.replace("{model}", &model)).collect();
    eprintln!("preparing {}: {program} {}", row.model.display(), args.join(" "));
    let status =
        Command::new(program).args(&args).status().map_err(|e| format!("cannot run {program}: {e}"))?;
    if !status.success() {
        return Err(format!("`prepare` ({program} …) failed ({status})"));
    }
    if !row.model.exists() {
        return Err(format!("`prepare` succeeded but {} still does not exist", row.model.display()));
    }
    Ok(())
}

/// The load of a row against its server: the row's protocol, server-side figures from the
/// server's /metrics, memory from its process.
fn options(row: &RowSpec, server: &LocalServer, progress: bool) -> BenchOptions {
    let (scheme, address) = match row.protocol {
        Protocol::HttpBinary | Protocol::HttpJson => (Scheme::Http, server.http),
        Protocol::GrpcUnary | Protocol::GrpcStream => (Scheme::Grpc, server.grpc),
    };
    BenchOptions {
        url: Endpoint { scheme, authority: address.to_string(), tls: false },
        model: MODEL_NAME.into(),
        model_version: None,
        concurrency: row.concurrency.clone(),
        rate: row.rate.clone(),
        http_json: row.protocol == Protocol::HttpJson,
        grpc_stream: row.protocol == Protocol::GrpcStream,
        warmup: row.warmup,
        duration: row.duration,
        timeout: row.timeout,
        max_inflight: 1024,
        batch: row.batch,
        shapes: Vec::new(),
        input_data: Vec::new(),
        distinct: row.distinct,
        seed: 1,
        metrics_url: Some(format!("http://{}/metrics", server.http)),
        server_pid: Some(server.pid()),
        progress,
        credentials: Default::default(),
    }
}

/// An NVIDIA GPU visible to this process (its device node or driver entry).
fn gpu_present() -> bool {
    Path::new("/dev/nvidia0").exists()
        || std::fs::read_dir("/proc/driver/nvidia/gpus").is_ok_and(|mut d| d.next().is_some())
}
