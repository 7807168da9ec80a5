//! `rtserve bench`: a load generator for KServe v2 / Triton inference servers over HTTP and
//! gRPC. A client of the protocol only; it knows nothing of the server's internals.
//!
//! [`BenchOptions`] → [`BenchConfig::new`] (validation) → [`run`] → a [`BenchReport`] of
//! [`StepResult`]s → [`report`] renders it as a table, JSON or CSV.
//!
//! | module | one idea |
//! | --- | --- |
//! | `config` | options and the validated plan |
//! | `target` | the model's metadata and the shapes sent |
//! | `values`, `samples`, `npy`, `inputs` | datatypes and values; data files; the request pool |
//! | `credentials` | the bearer token and the TLS CA a client presents and trusts |
//! | `transport` | HTTP (binary or JSON) and gRPC (unary or streaming) |
//! | `schedule`, `load` | Poisson arrivals; closed and open loops |
//! | `outcome`, `stats` | error kinds; latency histograms |
//! | `server_side` | the server's metrics and memory during a step |
//! | `result`, `report` | serializable results; table, JSON, CSV |
//! | `plot` | latency against throughput, SVG or PNG |
//! | `matrix` | `--matrix`: rows of model, server settings and load, each against its own server |

pub mod config;
pub mod credentials;
mod error;
pub mod inputs;
pub mod load;
pub mod matrix;
pub mod npy;
pub mod outcome;
pub mod plot;
mod progress;
pub mod report;
pub mod result;
mod rng;
mod runner;
pub mod samples;
pub mod schedule;
pub mod server_side;
pub mod stats;
pub mod target;
pub mod transport;
pub mod values;

pub use config::{parse_duration, BenchConfig, BenchOptions, Endpoint, InputDataArg, ShapeOverride};
pub use error::BenchError;
pub use result::{BenchReport, LoadMode, StepResult};
pub use runner::run;
