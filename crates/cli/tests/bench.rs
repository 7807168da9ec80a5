//! `rtserve bench` end to end: the real `rtserve serve` on port 0 with the example models, and
//! `rtserve bench` run against it as a user would, over each transport, reading its `--json`.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::Value;

/// A debug server on a busy two-core machine may take this long to load its models.
const START_TIMEOUT: Duration = Duration::from_secs(120);

/// A running `rtserve serve`, stopped with SIGTERM (then SIGKILL) when dropped.
struct Server {
    child: Child,
    http: SocketAddr,
    grpc: SocketAddr,
    log: Arc<Mutex<String>>,
}

impl Server {
    fn start() -> Server {
        let repository = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/model_repository");
        let mut child = Command::new(env!("CARGO_BIN_EXE_rtserve"))
            .args(["--log-format", "text", "serve", "--model-repository"])
            .arg(repository)
            .args(["--http-port", "0", "--grpc-port", "0", "--host", "127.0.0.1", "--engine", "tract"])
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run rtserve serve");
        let stderr = child.stderr.take().expect("stderr is piped");
        let log = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = mpsc::channel();
        thread::spawn({
            let log = log.clone();
            move || {
                for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                    for (prefix, key) in [("HTTP listening on ", "http"), ("gRPC listening on ", "grpc")] {
                        if let Some(addr) = line.split(prefix).nth(1) {
                            let _ = tx.send((key, addr.trim().to_string()));
                        }
                    }
                    log.lock().expect("log lock").push_str(&format!("{line}\n"));
                }
            }
        });
        let unbound = SocketAddr::from(([127, 0, 0, 1], 0));
        let mut server = Server { child, http: unbound, grpc: unbound, log };
        let deadline = Instant::now() + START_TIMEOUT;
        while server.http.port() == 0 || server.grpc.port() == 0 {
            let left = deadline.saturating_duration_since(Instant::now());
            let Ok((key, addr)) = rx.recv_timeout(left) else {
                panic!("rtserve did not log its ports; its log:\n{}", server.log())
            };
            let addr: SocketAddr = addr.parse().expect("a socket address");
            if key == "http" {
                server.http = addr;
            } else {
                server.grpc = addr;
            }
        }
        while !http_get_ok(server.http, "/v2/health/ready") {
            assert!(Instant::now() < deadline, "rtserve never became ready; its log:\n{}", server.log());
            thread::sleep(Duration::from_millis(50));
        }
        server
    }

    fn log(&self) -> String {
        self.log.lock().expect("log lock").clone()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Ok(pid) = i32::try_from(self.child.id()) {
            let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `GET path` answers 200 (a plain HTTP/1.0 request: no client library needed to wait).
fn http_get_ok(addr: SocketAddr, path: &str) -> bool {
    let Ok(mut stream) = TcpStream::connect_timeout(&addr, Duration::from_secs(1)) else { return false };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    if stream.write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes()).is_err() {
        return false;
    }
    let mut reply = String::new();
    let _ = stream.read_to_string(&mut reply);
    reply.starts_with("HTTP/1.1 200") || reply.starts_with("HTTP/1.0 200")
}

/// Runs `rtserve bench ARGS --quiet` and returns its output.
fn bench(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_rtserve"))
        .arg("bench")
        .args(args)
        .arg("--quiet")
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .output()
        .expect("run rtserve bench")
}

fn describe(output: &Output) -> String {
    format!(
        "status {}\nstdout:\n{}\nstderr:\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// Runs a benchmark (200 ms warm-up, then a `duration` window) that must succeed and returns
/// its one step from `--json`.
fn bench_step(server: &Server, dir: &Path, name: &str, duration: &str, args: &[&str]) -> Value {
    let json: PathBuf = dir.join(format!("{name}.json"));
    let json_arg = json.to_str().expect("utf-8 path");
    let mut all = vec!["--model", "mlp", "--warmup", "200ms", "--duration", duration, "--json", json_arg];
    all.extend_from_slice(args);
    let output = bench(&all);
    assert!(output.status.success(), "{name}: {}\nserver log:\n{}", describe(&output), server.log());
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.lines().nth(1).is_some_and(|l| l.starts_with("step")), "{name}: no table:\n{stdout}");
    let report: Value =
        serde_json::from_str(&std::fs::read_to_string(&json).expect("--json written")).expect("valid JSON");
    assert_eq!(report["schema"], 1);
    assert_eq!(report["model"], "mlp");
    let steps = report["steps"].as_array().expect("steps");
    assert_eq!(steps.len(), 1, "{name}: {report:#}");
    let step = steps[0].clone();
    let n = |key: &str| step[key].as_f64().unwrap_or_else(|| panic!("{name}: no {key} in {step:#}"));
    assert!(n("successes") > 0.0, "{name}: {step:#}");
    assert_eq!(n("requests"), n("successes"), "{name}: failed requests: {step:#}");
    let errors = step["errors"].as_object().expect("errors");
    assert!(errors.values().all(|v| v == 0), "{name}: errors {step:#}");
    let latency = |key: &str| step["latency_us"][key].as_u64().unwrap_or_else(|| panic!("{name}: {key}"));
    assert!(latency("p50_us") > 0, "{name}: {step:#}");
    assert!(latency("p50_us") <= latency("p99_us"), "{name}: {step:#}");
    assert!(latency("p99_us") <= latency("max_us"), "{name}: {step:#}");
    step
}

#[test]
fn bench_measures_every_transport_against_the_real_server() {
    let server = Server::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let http = format!("http://{}", server.http);
    let grpc = format!("grpc://{}", server.grpc);
    let pid = server.child.id().to_string();

    let binary = bench_step(
        &server,
        dir.path(),
        "http",
        "1s",
        &["--url", &http, "--concurrency", "2", "--server-pid", &pid],
    );
    assert_eq!((binary["protocol"].as_str(), binary["concurrency"].as_u64()), (Some("http"), Some(2)));
    // Server-side figures come from its /metrics; its memory from /proc.
    assert!(binary["server"]["compute_us"].as_f64().is_some_and(|us| us > 0.0), "{binary:#}");
    assert!(binary["server_peak_rss_bytes"].as_u64().is_some_and(|b| b > 1 << 20), "{binary:#}");

    let json = bench_step(
        &server,
        dir.path(),
        "http-json",
        "1s",
        &["--url", &http, "--concurrency", "2", "--http-json"],
    );
    assert_eq!(json["protocol"], "http-json");
    let unary = bench_step(&server, dir.path(), "grpc", "1s", &["--url", &grpc, "--concurrency", "2"]);
    assert_eq!(unary["protocol"], "grpc");
    let stream = bench_step(
        &server,
        dir.path(),
        "grpc-stream",
        "1s",
        &["--url", &grpc, "--concurrency", "2", "--grpc-stream"],
    );
    assert_eq!(stream["protocol"], "grpc-stream");

    // Open loop: 50 requests/s for 2 s is about 100 Poisson arrivals (standard deviation 10),
    // so the achieved rate lies within ±50% of the offered one unless requests are lost.
    let open = bench_step(&server, dir.path(), "open", "2s", &["--url", &http, "--rate", "50"]);
    assert_eq!((open["mode"].as_str(), open["offered_rps"].as_f64()), (Some("open"), Some(50.0)));
    let achieved = open["throughput_rps"].as_f64().expect("throughput");
    assert!((25.0..=75.0).contains(&achieved), "offered 50/s, achieved {achieved}/s: {open:#}");

    // A model the server does not have: a setup error that names it, and no results.
    let unknown = bench(&["--url", &http, "--model", "no_such_model", "--duration", "1s"]);
    assert!(!unknown.status.success(), "{}", describe(&unknown));
    let stderr = String::from_utf8_lossy(&unknown.stderr);
    assert!(stderr.contains("no_such_model"), "{}", describe(&unknown));
    assert!(unknown.stdout.is_empty(), "{}", describe(&unknown));
    let unknown_grpc = bench(&["--url", &grpc, "--model", "no_such_model"]);
    assert!(!unknown_grpc.status.success(), "{}", describe(&unknown_grpc));
    assert!(
        String::from_utf8_lossy(&unknown_grpc.stderr).contains("no_such_model"),
        "{}",
        describe(&unknown_grpc)
    );
}

#[test]
fn bench_fails_clearly_when_no_server_listens() {
    // A port that was free a moment ago: nothing listens there.
    let port = TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("free port").port();
    for url in [format!("http://127.0.0.1:{port}"), format!("grpc://127.0.0.1:{port}")] {
        let output = bench(&["--url", &url, "--model", "mlp", "--duration", "1s"]);
        assert!(!output.status.success(), "{}", describe(&output));
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains("cannot reach the server"), "{}", describe(&output));
    }
    let output = bench(&["--url", "localhost:1", "--model", "mlp"]);
    assert!(!output.status.success() && String::from_utf8_lossy(&output.stderr).contains("http://HOST:PORT"));
}

#[test]
fn matrix_runs_each_row_against_its_own_server_and_prints_one_table() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mlp = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/model_repository/mlp/1/model.onnx");
    let made = dir.path().join("made.onnx");
    let matrix = dir.path().join("matrix.toml");
    std::fs::write(
        &matrix,
        format!(
            r#"title = "MLP matrix"
[defaults]
model = "{mlp}"
serve_args = ["--engine", "tract"]
warmup = "200ms"
duration = "1s"
config = {{ max_batch_size = 8 }}

[[row]]
name = "plain"
concurrency = [1, 2]

[[row]]
name = "batching over http"
protocol = "http"
concurrency = [4]
memory_limit_mb = 1024
config = {{ max_batch_size = 8, dynamic_batching = {{ max_queue_delay_microseconds = 2000 }} }}

[[row]]
name = "prepared"
model = "{made}"
prepare = ["cp", "{mlp}", "{{model}}"]

[[row]]
name = "on a GPU"
requires = ["gpu"]

[[row]]
name = "missing"
model = "{missing}"
"#,
            mlp = mlp.display(),
            made = made.display(),
            missing = dir.path().join("missing.onnx").display(),
        ),
    )
    .expect("write matrix");
    let (json, svg) = (dir.path().join("m.json"), dir.path().join("m.svg"));
    let output = bench(&[
        "--matrix",
        matrix.to_str().expect("utf-8"),
        "--json",
        json.to_str().expect("utf-8"),
        "--plot",
        svg.to_str().expect("utf-8"),
    ]);
    // One row cannot run: the table is printed, the status says so.
    assert_eq!(output.status.code(), Some(1), "{}", describe(&output));
    let stdout = String::from_utf8_lossy(&output.stdout);
    let table: Vec<&str> = stdout.lines().filter(|l| l.starts_with("| ")).collect();
    assert_eq!(table.len(), 2 + 2 + 1 + 1 + 1 + 1, "header, 2 + 1 + 1 steps, GPU, missing:\n{stdout}");
    assert!(
        table[2].starts_with("| plain | grpc c=1 |") && table[3].starts_with("| plain | grpc c=2 |"),
        "{stdout}"
    );
    assert!(table[4].starts_with("| batching over http | http c=4 |"), "{stdout}");
    assert!(table[5].starts_with("| prepared | grpc c=1 |"), "{stdout}");
    assert!(
        table[7].starts_with("| missing | failed: model ") && table[7].contains("no `prepare`"),
        "{stdout}"
    );
    assert!(String::from_utf8_lossy(&output.stderr).contains("1 of 5 rows failed"), "{}", describe(&output));

    let report: Value = serde_json::from_str(&std::fs::read_to_string(&json).expect("--json")).expect("JSON");
    let rows = report["rows"].as_array().expect("rows");
    let statuses: Vec<&str> = rows.iter().map(|r| r["status"].as_str().unwrap_or("?")).collect();
    let gpu = std::path::Path::new("/dev/nvidia0").exists();
    assert_eq!(statuses, ["ran", "ran", "ran", if gpu { "ran" } else { "skipped" }, "failed"], "{report:#}");
    if !gpu {
        assert_eq!(rows[3]["reason"], "needs GPU");
    }
    assert!(made.exists(), "the prepare command made the model");
    for row in &rows[..3] {
        for step in row["report"]["steps"].as_array().expect("steps") {
            assert!(step["successes"].as_u64().is_some_and(|n| n > 0), "{row:#}");
            assert_eq!(step["requests"], step["successes"], "{row:#}");
            // Each row's own server: its memory and its metrics were read.
            assert!(step["server_peak_rss_bytes"].as_u64().is_some_and(|b| b > 1 << 20), "{row:#}");
            assert!(step["server"]["compute_us"].as_f64().is_some_and(|us| us > 0.0), "{row:#}");
        }
    }
    assert_eq!(rows[0]["model_bytes"].as_u64(), std::fs::metadata(&mlp).ok().map(|m| m.len()));
    let chart = std::fs::read_to_string(&svg).expect("--plot");
    for name in ["plain", "batching over http", "prepared"] {
        assert!(chart.contains(&format!("\n{name}\n</text>")), "{name} in the legend");
    }
}

#[test]
fn matrix_file_mistakes_are_named_before_anything_starts() {
    let dir = tempfile::tempdir().expect("tempdir");
    let matrix = dir.path().join("matrix.toml");
    std::fs::write(&matrix, "[[row]]\nname = \"a\"\nmodel = \"m.onnx\"\nconcurency = [4]\n").expect("write");
    let output = bench(&["--matrix", matrix.to_str().expect("utf-8")]);
    assert!(!output.status.success(), "{}", describe(&output));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("matrix.toml") && stderr.contains("concurency"), "{}", describe(&output));
    assert!(output.stdout.is_empty(), "{}", describe(&output));
}

#[test]
fn plot_draws_the_sweep() {
    let server = Server::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let png = dir.path().join("sweep.png");
    let url = format!("grpc://{}", server.grpc);
    let output = bench(&[
        "--url",
        &url,
        "--model",
        "mlp",
        "--concurrency",
        "1,2",
        "--warmup",
        "100ms",
        "--duration",
        "500ms",
        "--plot",
        png.to_str().expect("utf-8"),
    ]);
    assert!(output.status.success(), "{}", describe(&output));
    let bytes = std::fs::read(&png).expect("--plot written");
    assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n");
}
