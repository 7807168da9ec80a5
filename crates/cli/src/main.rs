//! `rtserve`: one binary, thin over the library crates.

#[cfg(feature = "serve")]
mod bench;
#[cfg(feature = "optimize")]
mod optimize;
mod run;
#[cfg(feature = "serve")]
mod serve;

use clap::{Parser, Subcommand};
use tracing_subscriber::filter::LevelFilter;

/// rtserve: a real-time ML inference server for ONNX models (KServe v2 over HTTP and gRPC).
#[derive(Parser)]
#[command(name = "rtserve", version, about, long_about = None)]
struct Cli {
    /// Log format: text or json.
    #[arg(long, env = "RTSERVE_LOG_FORMAT", default_value = "text", global = true, value_parser = ["text", "json"])]
    log_format: String,

    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the models of one or more model repositories.
    #[cfg(feature = "serve")]
    Serve(serve::ServeArgs),
    /// Load a server with inference requests and report latency percentiles and throughput.
    #[cfg(feature = "serve")]
    Bench(Box<bench::BenchArgs>),
    /// Optimize ONNX models: INT8 quantization, FP16 conversion, evaluation, training, pruning,
    /// distillation, quantization-aware training.
    #[cfg(feature = "optimize")]
    Optimize(optimize::OptimizeArgs),
    /// Run a model once on input files (.npy, .npz, images, stdin) and print or save its
    /// outputs, without a server. Exit code 2: bad input; 1: the model failed.
    Run(Box<run::RunArgs>),
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    #[cfg(feature = "serve")]
    let access_log = matches!(&cli.command, Command::Serve(args) if args.access_log);
    #[cfg(not(feature = "serve"))]
    let access_log = false;
    // A one-shot run logs warnings only, unless RUST_LOG says otherwise.
    let default_level =
        if matches!(cli.command, Command::Run(_)) { LevelFilter::WARN } else { LevelFilter::INFO };
    init_logging(&cli.log_format, access_log, default_level);
    match cli.command {
        Command::Run(args) => run::main(*args),
        #[cfg(feature = "serve")]
        Command::Serve(args) => exit_code(serve::run(args)),
        #[cfg(feature = "serve")]
        Command::Bench(args) => exit_code(bench::run(*args)),
        #[cfg(feature = "optimize")]
        Command::Optimize(args) => exit_code(optimize::run(args)),
    }
}

/// The exit status of a subcommand other than `run` (which has its own codes); an error is logged
/// and printed.
#[cfg(any(feature = "serve", feature = "optimize"))]
fn exit_code(result: anyhow::Result<()>) -> std::process::ExitCode {
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Logs to stderr; `RUST_LOG` filters by target (`warn,rtserve=debug`; default `default_level`),
/// except that `--access-log` keeps the access lines whatever it says. Colour only on a terminal.
/// (A target list rather than tracing's full `EnvFilter` syntax: the filter then needs no regular
/// expressions, which keeps them out of edge builds.)
fn init_logging(format: &str, access_log: bool, default_level: LevelFilter) {
    use std::io::IsTerminal;
    use tracing_subscriber::filter::Targets;
    use tracing_subscriber::prelude::*;
    let mut filter = Targets::new().with_default(default_level);
    if let Ok(directives) = std::env::var("RUST_LOG") {
        match directives.parse::<Targets>() {
            Ok(targets) => filter = targets,
            Err(e) => eprintln!("warning: RUST_LOG={directives:?} ignored ({e}): give `level` or `target=level`, comma-separated"),
        }
    }
    if access_log {
        filter = filter.with_target("rtserve::access", LevelFilter::INFO);
    }
    // The filter above decides; the fmt subscriber's own ceiling (INFO by default) would hide
    // `RUST_LOG=debug`.
    let builder = tracing_subscriber::fmt().with_max_level(LevelFilter::TRACE).with_writer(std::io::stderr);
    if format == "json" {
        builder.json().finish().with(filter).init();
    } else {
        builder.with_ansi(std::io::stderr().is_terminal()).finish().with(filter).init();
    }
}
