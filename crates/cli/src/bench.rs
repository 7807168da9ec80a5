//! `rtserve bench`: flags → [`BenchConfig`] → a load run against a server → a table on stdout,
//! and JSON / CSV / chart files when asked. With `--matrix`, a file of rows, each run against a
//! server started for it, → a Markdown table.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use rtserve_bench::credentials::CredentialFiles;
use rtserve_bench::matrix::{self, spec::MatrixSpec, table};
use rtserve_bench::{
    parse_duration, plot, report, BenchConfig, BenchOptions, Endpoint, InputDataArg, ShapeOverride,
};

#[derive(Args, Debug)]
pub struct BenchArgs {
    /// Server to load: http://HOST:PORT (KServe v2 REST) or grpc://HOST:PORT; over TLS
    /// https://HOST:PORT or grpcs://HOST:PORT (the system's roots are trusted, and --tls-ca).
    #[arg(long, env = "RTSERVE_BENCH_URL", required_unless_present = "matrix")]
    url: Option<Endpoint>,

    /// Model to benchmark.
    #[arg(long, env = "RTSERVE_BENCH_MODEL", required_unless_present = "matrix")]
    model: Option<String>,

    /// Run the rows of this TOML file instead, each against an `rtserve serve` started for it
    /// (model, server settings, load per row; see docs/bench.md), and print a Markdown table.
    /// --json, --plot and --quiet apply; the load flags come from the file.
    #[arg(long, value_name = "FILE.toml", conflicts_with_all = ["url", "model", "concurrency", "rate", "csv", "token_file", "tls_ca"])]
    matrix: Option<PathBuf>,

    /// Model version (default: the server's choice, normally the latest).
    #[arg(long, env = "RTSERVE_BENCH_MODEL_VERSION")]
    model_version: Option<String>,

    /// Closed loop: requests kept in flight, one step per value (e.g. 1,4,16). The default when
    /// neither --concurrency nor --rate is given is 1.
    #[arg(long, env = "RTSERVE_BENCH_CONCURRENCY", value_delimiter = ',')]
    concurrency: Vec<usize>,

    /// Open loop: Poisson arrivals at this many requests/s, one step per value (e.g. 100,500).
    /// Latency counts from each request's scheduled send time. Runs after the closed-loop steps.
    #[arg(long, env = "RTSERVE_BENCH_RATE", value_delimiter = ',')]
    rate: Vec<f64>,

    /// Warm-up before each step's measurement window (e.g. 500ms, 2s, 1m); not counted.
    #[arg(long, env = "RTSERVE_BENCH_WARMUP", default_value = "2s", value_parser = parse_duration)]
    warmup: Duration,

    /// Length of each step's measurement window.
    #[arg(long, env = "RTSERVE_BENCH_DURATION", default_value = "10s", value_parser = parse_duration)]
    duration: Duration,

    /// Limit per request; a request unanswered by then counts as a timeout.
    #[arg(long, env = "RTSERVE_BENCH_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    timeout: Duration,

    /// Open loop: most requests in flight; a request due while this many are out is counted
    /// as dropped instead of delaying the schedule.
    #[arg(long, env = "RTSERVE_BENCH_MAX_INFLIGHT", default_value_t = 1024)]
    max_inflight: usize,

    /// HTTP: send JSON tensors instead of the binary tensor data extension.
    #[arg(long, env = "RTSERVE_BENCH_HTTP_JSON")]
    http_json: bool,

    /// gRPC: use ModelStreamInfer (one bidirectional stream per closed-loop slot, one for an
    /// open loop) instead of unary ModelInfer.
    #[arg(long, env = "RTSERVE_BENCH_GRPC_STREAM")]
    grpc_stream: bool,

    /// Rows per request when the model batches (every input's first dimension is -1).
    #[arg(long, env = "RTSERVE_BENCH_BATCH", default_value_t = 1)]
    batch: usize,

    /// Shape of an input with dynamic dimensions, without the batch dimension when the model
    /// batches: NAME:D1,D2,... Repeat for several inputs. Dynamic dimensions default to 1.
    #[arg(long = "shape", value_name = "NAME:D1,D2,...")]
    shapes: Vec<ShapeOverride>,

    /// Input data instead of random values: a perf_analyzer JSON file ({"data": [...]}), or
    /// NAME=FILE.npy per input (the array's first axis indexes samples). Repeatable for .npy.
    #[arg(long = "input-data", value_name = "FILE.json | NAME=FILE.npy")]
    input_data: Vec<InputDataArg>,

    /// Random data: distinct requests in the pool, cycled round-robin (fewer means more
    /// repeats, i.e. more hits in a server's response cache).
    #[arg(long, env = "RTSERVE_BENCH_DISTINCT", default_value_t = 1024)]
    distinct: usize,

    /// Seed of the random input values and of the open-loop arrival times.
    #[arg(long, env = "RTSERVE_BENCH_SEED", default_value_t = 1)]
    seed: u64,

    /// Server's Prometheus metrics (http://HOST:PORT[/PATH]), for the server-side queue and
    /// compute times and batch size. Default: /metrics at an http:// --url, when it answers.
    #[arg(long, env = "RTSERVE_BENCH_METRICS_URL")]
    metrics_url: Option<String>,

    /// Process id of the server (same machine), to report its peak resident memory per step.
    #[arg(long, env = "RTSERVE_BENCH_SERVER_PID")]
    server_pid: Option<u32>,

    /// Threads that send requests and read replies. One costs the least CPU per request (no
    /// hand-offs between threads) and leaves the other cores to a server on the same machine;
    /// give more on a machine of its own when one core cannot keep up.
    #[arg(long, env = "RTSERVE_BENCH_THREADS", default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=1024))]
    threads: u16,

    /// A file whose first token is sent as `Authorization: Bearer TOKEN` (HTTP) and
    /// `authorization` metadata (gRPC), for a server with --auth-token-file; the server's own
    /// token file format (`TOKEN [NAME]` a line, `#` comments) works. Read from a file so that
    /// the token never shows in `ps`.
    #[arg(long, env = "RTSERVE_BENCH_TOKEN_FILE", value_name = "FILE")]
    token_file: Option<PathBuf>,

    /// CA certificates (PEM) to trust for an https:// or grpcs:// --url, besides the system's
    /// roots: for a server whose certificate comes from a private CA.
    #[arg(long, env = "RTSERVE_BENCH_TLS_CA", value_name = "FILE")]
    tls_ca: Option<PathBuf>,

    /// No progress bar (it is also hidden when stderr is not a terminal).
    #[arg(long, short, env = "RTSERVE_BENCH_QUIET")]
    quiet: bool,

    /// Also write every step to this JSON file.
    #[arg(long, env = "RTSERVE_BENCH_JSON")]
    json: Option<PathBuf>,

    /// Also write every step to this CSV file (one row per step).
    #[arg(long, env = "RTSERVE_BENCH_CSV")]
    csv: Option<PathBuf>,

    /// Also draw latency against throughput to this .svg or .png file: p50, p90 and p99 over
    /// the steps; with --matrix, p99 of each row.
    #[arg(long, env = "RTSERVE_BENCH_PLOT", value_name = "FILE.svg|FILE.png")]
    plot: Option<PathBuf>,
}

impl BenchArgs {
    fn into_config(self) -> anyhow::Result<BenchConfig> {
        // clap requires both unless --matrix is given, and the matrix path returns earlier.
        let (Some(url), Some(model)) = (self.url, self.model) else {
            anyhow::bail!("--url and --model are required");
        };
        Ok(BenchConfig::new(BenchOptions {
            url,
            model,
            model_version: self.model_version,
            concurrency: self.concurrency,
            rate: self.rate,
            http_json: self.http_json,
            grpc_stream: self.grpc_stream,
            warmup: self.warmup,
            duration: self.duration,
            timeout: self.timeout,
            max_inflight: self.max_inflight,
            batch: self.batch,
            shapes: self.shapes,
            input_data: self.input_data,
            distinct: self.distinct,
            seed: self.seed,
            metrics_url: self.metrics_url,
            server_pid: self.server_pid,
            progress: !self.quiet,
            credentials: CredentialFiles { token_file: self.token_file, tls_ca: self.tls_ca },
        })?)
    }
}

pub fn run(args: BenchArgs) -> anyhow::Result<()> {
    if let Some(path) = &args.plot {
        plot::check_chart_path(path)?;
    }
    let runtime = match args.threads {
        1 => tokio::runtime::Builder::new_current_thread().enable_all().build(),
        n => tokio::runtime::Builder::new_multi_thread().worker_threads(n.into()).enable_all().build(),
    }
    .context("starting the runtime")?;
    if let Some(file) = &args.matrix {
        return run_matrix(&runtime, file, &args);
    }
    let (json, csv, plot_file) = (args.json.clone(), args.csv.clone(), args.plot.clone());
    let config = args.into_config()?;
    let results = runtime.block_on(rtserve_bench::run(&config))?;
    print!("{}", report::render_table(&results));
    if let Some(path) = json {
        report::write_file(&path, &report::to_json(&results))?;
    }
    if let Some(path) = csv {
        report::write_file(&path, &report::to_csv(&results))?;
    }
    if let Some(path) = plot_file {
        plot::write_chart(&path, &plot::run_chart(&results))?;
    }
    Ok(())
}

/// `--matrix`: every row against a server this binary starts, then the Markdown table.
fn run_matrix(runtime: &tokio::runtime::Runtime, file: &Path, args: &BenchArgs) -> anyhow::Result<()> {
    let spec = MatrixSpec::read(file)?;
    let rtserve = std::env::current_exe().context("locating the rtserve binary to serve with")?;
    let results = runtime.block_on(matrix::run_matrix(&spec, &rtserve, !args.quiet));
    println!("{}\n", results.title);
    print!("{}", table::render_markdown(&results));
    if let Some(path) = &args.json {
        report::write_file(path, &results.to_json())?;
    }
    if let Some(path) = &args.plot {
        plot::write_chart(path, &table::chart(&results))?;
    }
    match results.failures() {
        0 => Ok(()),
        n => anyhow::bail!("{n} of {} rows failed (see the table)", results.rows.len()),
    }
}
