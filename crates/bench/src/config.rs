//! Options, parsed once and validated into the [`BenchConfig`] the rest of the crate receives.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use crate::credentials::{CredentialFiles, Credentials};
use crate::BenchError;

/// The most requests an open-loop step may keep in flight (`--max-inflight`).
pub const MAX_INFLIGHT_LIMIT: usize = 1 << 20;

/// Where the server is: `http://HOST:PORT` or `grpc://HOST:PORT`, or over TLS
/// `https://HOST:PORT` or `grpcs://HOST:PORT`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub scheme: Scheme,
    /// `HOST:PORT`.
    pub authority: String,
    /// TLS (`https`, `grpcs`).
    pub tls: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    Http,
    Grpc,
}

impl Endpoint {
    /// `http://HOST:PORT` (`https` with TLS), the address both protocols are reached at
    /// underneath.
    pub fn http_base(&self) -> String {
        format!("{}://{}", if self.tls { "https" } else { "http" }, self.authority)
    }
}

impl FromStr for Endpoint {
    type Err = String;

    fn from_str(url: &str) -> Result<Self, String> {
        let (scheme, rest) = url
            .split_once("://")
            .ok_or_else(|| format!("'{url}' has no scheme: give http://HOST:PORT or grpc://HOST:PORT"))?;
        let (scheme, tls) = match scheme {
            "http" => (Scheme::Http, false),
            "https" => (Scheme::Http, true),
            "grpc" => (Scheme::Grpc, false),
            "grpcs" => (Scheme::Grpc, true),
            other => {
                return Err(format!(
                    "'{url}': unknown scheme '{other}' (expected http, https, grpc or grpcs)"
                ))
            }
        };
        let authority = rest.trim_end_matches('/');
        if authority.is_empty() || authority.contains('/') {
            return Err(format!("'{url}': expected {}://HOST:PORT with no path", scheme_name(scheme, tls)));
        }
        Ok(Endpoint { scheme, authority: authority.to_string(), tls })
    }
}

fn scheme_name(scheme: Scheme, tls: bool) -> &'static str {
    match (scheme, tls) {
        (Scheme::Http, false) => "http",
        (Scheme::Http, true) => "https",
        (Scheme::Grpc, false) => "grpc",
        (Scheme::Grpc, true) => "grpcs",
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}://{}", scheme_name(self.scheme, self.tls), self.authority)
    }
}

/// How requests travel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// HTTP with the binary tensor data extension.
    HttpBinary,
    /// HTTP with JSON tensors.
    HttpJson,
    /// gRPC ModelInfer, one call per request.
    GrpcUnary,
    /// gRPC ModelStreamInfer: one bidirectional stream per closed-loop slot (one for an open
    /// loop), replies matched by request id.
    GrpcStream,
}

impl Protocol {
    /// The name used in reports: `http`, `http-json`, `grpc`, `grpc-stream`.
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::HttpBinary => "http",
            Protocol::HttpJson => "http-json",
            Protocol::GrpcUnary => "grpc",
            Protocol::GrpcStream => "grpc-stream",
        }
    }
}

/// One step of load.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum LoadLevel {
    /// Closed loop: this many requests in flight, each slot sending the next on an answer.
    Concurrency(usize),
    /// Open loop: Poisson arrivals at this many requests per second.
    Rate(f64),
}

impl fmt::Display for LoadLevel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LoadLevel::Concurrency(c) => write!(f, "c={c}"),
            LoadLevel::Rate(r) => write!(f, "r={r}/s"),
        }
    }
}

/// `--shape NAME:D1,D2,...`: the dimensions of an input with dynamic (-1) dimensions, without
/// the batch dimension when the model batches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShapeOverride {
    pub name: String,
    pub dims: Vec<usize>,
}

impl FromStr for ShapeOverride {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let (name, dims) =
            s.rsplit_once(':').ok_or_else(|| format!("'{s}': expected NAME:D1,D2,... (e.g. tokens:5,8)"))?;
        if name.is_empty() {
            return Err(format!("'{s}': the input name is empty"));
        }
        let dims = if dims.trim().is_empty() {
            Vec::new()
        } else {
            dims.split(',')
                .map(|d| d.trim().parse::<usize>().map_err(|_| format!("'{s}': '{d}' is not a dimension")))
                .collect::<Result<Vec<_>, _>>()?
        };
        Ok(ShapeOverride { name: name.to_string(), dims })
    }
}

/// One `--input-data` value: a perf_analyzer JSON file, or `NAME=FILE.npy` for one input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InputDataArg {
    Json(PathBuf),
    Npy { name: String, path: PathBuf },
}

impl FromStr for InputDataArg {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        if let Some((name, path)) = s.split_once('=') {
            if name.is_empty() || !path.ends_with(".npy") {
                return Err(format!("'{s}': expected NAME=FILE.npy"));
            }
            return Ok(InputDataArg::Npy { name: name.to_string(), path: PathBuf::from(path) });
        }
        if s.ends_with(".npy") {
            return Err(format!("'{s}': name the input of a .npy file: NAME={s}"));
        }
        Ok(InputDataArg::Json(PathBuf::from(s)))
    }
}

/// Where input values come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InputSource {
    /// Seeded random values, `distinct` different requests cycled.
    Random,
    /// A perf_analyzer-style JSON file: `{"data": [{"INPUT": [..]}, ...]}`.
    Json(PathBuf),
    /// `.npy` arrays, one per named input; the first axis indexes samples.
    Npy(Vec<(String, PathBuf)>),
}

/// What each request carries.
#[derive(Debug, Clone, PartialEq)]
pub struct InputPlan {
    /// Rows per request, when the model batches (its inputs' first dimension is -1).
    pub batch: usize,
    pub shapes: Vec<ShapeOverride>,
    pub source: InputSource,
    /// Different random requests in the pool, cycled round-robin (random data only).
    pub distinct: usize,
    pub seed: u64,
}

/// Where to read the server's Prometheus metrics, and whether the user asked for it (then a
/// failure to read them is an error rather than a note).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetricsSource {
    pub url: String,
    pub explicit: bool,
}

/// The options as given, typed but not yet checked against each other.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    pub url: Endpoint,
    pub model: String,
    pub model_version: Option<String>,
    pub concurrency: Vec<usize>,
    pub rate: Vec<f64>,
    pub http_json: bool,
    pub grpc_stream: bool,
    pub warmup: Duration,
    pub duration: Duration,
    pub timeout: Duration,
    pub max_inflight: usize,
    pub batch: usize,
    pub shapes: Vec<ShapeOverride>,
    pub input_data: Vec<InputDataArg>,
    pub distinct: usize,
    pub seed: u64,
    pub metrics_url: Option<String>,
    pub server_pid: Option<u32>,
    pub progress: bool,
    pub credentials: CredentialFiles,
}

/// A validated benchmark plan.
#[derive(Debug, Clone)]
pub struct BenchConfig {
    pub endpoint: Endpoint,
    pub model: String,
    pub model_version: Option<String>,
    pub protocol: Protocol,
    /// Closed-loop steps first, then open-loop steps, each in the order given.
    pub levels: Vec<LoadLevel>,
    pub warmup: Duration,
    pub duration: Duration,
    pub timeout: Duration,
    pub max_inflight: usize,
    pub inputs: InputPlan,
    pub metrics: Option<MetricsSource>,
    pub server_pid: Option<u32>,
    /// Draw a progress bar on stderr.
    pub progress: bool,
    /// The token and CA that the clients present and trust.
    pub credentials: Credentials,
}

impl BenchConfig {
    pub fn new(o: BenchOptions) -> Result<BenchConfig, BenchError> {
        let bad = |m: String| Err(BenchError::Config(m));
        if o.model.is_empty() {
            return bad("--model must not be empty".into());
        }
        if o.concurrency.contains(&0) {
            return bad("--concurrency values must be at least 1".into());
        }
        if let Some(r) = o.rate.iter().find(|r| !(r.is_finite() && **r > 0.0)) {
            return bad(format!("--rate values must be positive request rates, not {r}"));
        }
        let mut levels: Vec<LoadLevel> = o.concurrency.iter().map(|&c| LoadLevel::Concurrency(c)).collect();
        levels.extend(o.rate.iter().map(|&r| LoadLevel::Rate(r)));
        if levels.is_empty() {
            levels.push(LoadLevel::Concurrency(1));
        }
        if o.duration.is_zero() {
            return bad("--duration must be more than zero".into());
        }
        if o.timeout.is_zero() {
            return bad("--timeout must be more than zero".into());
        }
        if !(1..=MAX_INFLIGHT_LIMIT).contains(&o.max_inflight) {
            return bad(format!("--max-inflight must be in 1..={MAX_INFLIGHT_LIMIT}"));
        }
        if o.batch == 0 {
            return bad("--batch must be at least 1".into());
        }
        if o.distinct == 0 {
            return bad("--distinct must be at least 1".into());
        }
        let protocol = match (o.url.scheme, o.http_json, o.grpc_stream) {
            (Scheme::Http, false, false) => Protocol::HttpBinary,
            (Scheme::Http, true, false) => Protocol::HttpJson,
            (Scheme::Grpc, false, false) => Protocol::GrpcUnary,
            (Scheme::Grpc, false, true) => Protocol::GrpcStream,
            (_, true, true) => return bad("--http-json and --grpc-stream exclude each other".into()),
            (Scheme::Grpc, true, _) => return bad("--http-json needs an http:// --url".into()),
            (Scheme::Http, _, true) => return bad("--grpc-stream needs a grpc:// --url".into()),
        };
        if o.credentials.tls_ca.is_some() && !o.url.tls {
            return bad("--tls-ca needs an https:// or grpcs:// --url".into());
        }
        let credentials = Credentials::read(&o.credentials)?;
        let source = input_source(&o.input_data)?;
        let mut names: Vec<&str> = o.shapes.iter().map(|s| s.name.as_str()).collect();
        names.sort_unstable();
        if let Some(w) = names.windows(2).find(|w| w[0] == w[1]) {
            return bad(format!("--shape gives input '{}' twice", w[0]));
        }
        let metrics = match (o.metrics_url, o.url.scheme) {
            (Some(url), _) => Some(MetricsSource { url: metrics_url(&url)?, explicit: true }),
            (None, Scheme::Http) => {
                Some(MetricsSource { url: format!("{}/metrics", o.url.http_base()), explicit: false })
            }
            (None, Scheme::Grpc) => None,
        };
        Ok(BenchConfig {
            endpoint: o.url,
            model: o.model,
            model_version: o.model_version.filter(|v| !v.is_empty()),
            protocol,
            levels,
            warmup: o.warmup,
            duration: o.duration,
            timeout: o.timeout,
            max_inflight: o.max_inflight,
            inputs: InputPlan {
                batch: o.batch,
                shapes: o.shapes,
                source,
                distinct: o.distinct,
                seed: o.seed,
            },
            metrics,
            server_pid: o.server_pid,
            progress: o.progress,
            credentials,
        })
    }
}

fn input_source(args: &[InputDataArg]) -> Result<InputSource, BenchError> {
    let bad = |m: &str| Err(BenchError::Config(m.to_string()));
    let mut json = None;
    let mut npy: Vec<(String, PathBuf)> = Vec::new();
    for arg in args {
        match arg {
            InputDataArg::Json(path) if json.is_none() => json = Some(path.clone()),
            InputDataArg::Json(_) => return bad("--input-data: give at most one JSON file"),
            InputDataArg::Npy { name, path } => {
                if npy.iter().any(|(n, _)| n == name) {
                    return Err(BenchError::Config(format!("--input-data names input '{name}' twice")));
                }
                npy.push((name.clone(), path.clone()));
            }
        }
    }
    match (json, npy.is_empty()) {
        (None, true) => Ok(InputSource::Random),
        (Some(path), true) => Ok(InputSource::Json(path)),
        (None, false) => Ok(InputSource::Npy(npy)),
        (Some(_), false) => bad("--input-data: give a JSON file or .npy files, not both"),
    }
}

/// `http://HOST:PORT[/PATH]`; no path means `/metrics`.
fn metrics_url(url: &str) -> Result<String, BenchError> {
    let (scheme, rest) =
        url.split_once("://").filter(|(scheme, _)| ["http", "https"].contains(scheme)).ok_or_else(|| {
            BenchError::Config(format!("--metrics-url '{url}': expected http[s]://HOST:PORT[/PATH]"))
        })?;
    Ok(match rest.split_once('/') {
        Some((_, path)) if !path.is_empty() => url.to_string(),
        _ => format!("{scheme}://{}/metrics", rest.trim_end_matches('/')),
    })
}

/// A duration such as `500ms`, `2s`, `1.5s`, `1m`, `1h` or `250us`. A bare number is seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let s = text.trim();
    let split = s.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(s.len());
    let (number, unit) = s.split_at(split);
    let value: f64 = number
        .parse()
        .map_err(|_| format!("'{text}' is not a duration (expected e.g. 500ms, 2s, 1.5s, 1m)"))?;
    let seconds = match unit.trim() {
        "" | "s" | "sec" | "secs" => value,
        "ms" => value / 1e3,
        "us" | "µs" => value / 1e6,
        "m" | "min" | "mins" => value * 60.0,
        "h" => value * 3600.0,
        other => return Err(format!("'{text}': unknown unit '{other}' (use us, ms, s, m or h)")),
    };
    Duration::try_from_secs_f64(seconds).map_err(|_| format!("'{text}' is out of range"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options(url: &str) -> BenchOptions {
        BenchOptions {
            url: url.parse().expect("valid test url"),
            model: "m".into(),
            model_version: None,
            concurrency: vec![],
            rate: vec![],
            http_json: false,
            grpc_stream: false,
            warmup: Duration::from_secs(1),
            duration: Duration::from_secs(1),
            timeout: Duration::from_secs(1),
            max_inflight: 8,
            batch: 1,
            shapes: vec![],
            input_data: vec![],
            distinct: 4,
            seed: 1,
            metrics_url: None,
            server_pid: None,
            progress: false,
            credentials: CredentialFiles::default(),
        }
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2s"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("1m"), Ok(Duration::from_secs(60)));
        assert_eq!(parse_duration("250us"), Ok(Duration::from_micros(250)));
        assert_eq!(parse_duration("3"), Ok(Duration::from_secs(3)));
        assert!(parse_duration("2 weeks").is_err());
        assert!(parse_duration("-1s").is_err());
        assert!(parse_duration("ms").is_err());
    }

    #[test]
    fn endpoints() {
        let e: Endpoint = "grpc://127.0.0.1:8001/".parse().expect("valid");
        assert_eq!((e.scheme, e.authority.as_str()), (Scheme::Grpc, "127.0.0.1:8001"));
        assert_eq!(e.http_base(), "http://127.0.0.1:8001");
        assert!("localhost:8000".parse::<Endpoint>().is_err());
        let e: Endpoint = "https://h:1".parse().expect("valid");
        assert_eq!((e.scheme, e.tls, e.http_base()), (Scheme::Http, true, "https://h:1".to_string()));
        let e: Endpoint = "grpcs://h:1".parse().expect("valid");
        assert_eq!((e.scheme, e.tls, e.to_string()), (Scheme::Grpc, true, "grpcs://h:1".to_string()));
        assert!("ftp://h:1".parse::<Endpoint>().is_err());
        assert!("http://h:1/v2".parse::<Endpoint>().is_err());
    }

    #[test]
    fn shapes_and_input_data_arguments() {
        assert_eq!(
            "tokens:5,8".parse::<ShapeOverride>(),
            Ok(ShapeOverride { name: "tokens".into(), dims: vec![5, 8] })
        );
        assert!("tokens".parse::<ShapeOverride>().is_err());
        assert!("tokens:5,-1".parse::<ShapeOverride>().is_err());
        assert_eq!(
            "x=data/x.npy".parse::<InputDataArg>(),
            Ok(InputDataArg::Npy { name: "x".into(), path: "data/x.npy".into() })
        );
        assert_eq!("in.json".parse::<InputDataArg>(), Ok(InputDataArg::Json("in.json".into())));
        assert!("x.npy".parse::<InputDataArg>().is_err());
    }

    #[test]
    fn plan_defaults_and_checks() {
        let config = BenchConfig::new(options("http://h:1")).expect("valid");
        assert_eq!(config.levels, vec![LoadLevel::Concurrency(1)]);
        assert_eq!(config.protocol, Protocol::HttpBinary);
        assert_eq!(config.metrics, Some(MetricsSource { url: "http://h:1/metrics".into(), explicit: false }));

        let mut o = options("grpc://h:1");
        o.concurrency = vec![1, 4];
        o.rate = vec![100.0];
        o.grpc_stream = true;
        o.metrics_url = Some("http://h:2".into());
        let config = BenchConfig::new(o).expect("valid");
        assert_eq!(
            config.levels,
            vec![LoadLevel::Concurrency(1), LoadLevel::Concurrency(4), LoadLevel::Rate(100.0)]
        );
        assert_eq!(config.protocol, Protocol::GrpcStream);
        assert_eq!(config.metrics.map(|m| m.url), Some("http://h:2/metrics".into()));

        let rejected = |change: &dyn Fn(&mut BenchOptions), url: &str, needle: &str| {
            let mut o = options(url);
            change(&mut o);
            let err = BenchConfig::new(o).expect_err(needle).to_string();
            assert!(err.contains(needle), "{err} lacks {needle}");
        };
        rejected(&|o| o.http_json = true, "grpc://h:1", "--http-json needs an http://");
        rejected(&|o| o.grpc_stream = true, "http://h:1", "--grpc-stream needs a grpc://");
        rejected(&|o| o.concurrency = vec![0], "http://h:1", "--concurrency");
        rejected(
            &|o| o.credentials.tls_ca = Some("ca.pem".into()),
            "http://h:1",
            "--tls-ca needs an https://",
        );
        rejected(&|o| o.rate = vec![f64::NAN], "http://h:1", "--rate");
        rejected(&|o| o.duration = Duration::ZERO, "http://h:1", "--duration");
        rejected(&|o| o.max_inflight = 0, "http://h:1", "--max-inflight");
        rejected(
            &|o| o.input_data = vec!["a.json".parse().expect("ok"), "x=b.npy".parse().expect("ok")],
            "http://h:1",
            "not both",
        );
        rejected(
            &|o| o.shapes = vec!["a:1".parse().expect("ok"), "a:2".parse().expect("ok")],
            "http://h:1",
            "twice",
        );
    }
}
