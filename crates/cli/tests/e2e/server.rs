//! The harness: starts the real `rtserve` binary on port 0, learns its ports from its log, waits
//! until it is ready, and stops it with SIGTERM.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// How long a server may take to bind its ports and load its models (a debug build on a busy
/// two-core machine).
const START_TIMEOUT: Duration = Duration::from_secs(120);
/// How long a server may take to exit after SIGTERM (its own `--shutdown-timeout` is 30 s).
const STOP_TIMEOUT: Duration = Duration::from_secs(40);
/// How long a dropped server gets before SIGKILL.
const DROP_TIMEOUT: Duration = Duration::from_secs(5);

/// The engine every model of a server runs on (`--engine`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Engine {
    Tract,
    OnnxRuntime,
}

impl Engine {
    pub fn flag(self) -> &'static str {
        match self {
            Engine::Tract => "tract",
            Engine::OnnxRuntime => "onnxruntime",
        }
    }
}

/// Why a server did not come up.
#[derive(Debug)]
pub enum StartError {
    /// `--engine onnxruntime` was asked for and no ONNX Runtime library was found.
    OnnxRuntimeMissing(String),
    /// Anything else; the text holds the server's log.
    Failed(String),
}

/// A running `rtserve serve`.
pub struct Server {
    /// `None` once the process has been waited for.
    child: Mutex<Option<Child>>,
    /// The write end of the reaper's stdin; see [`spawn_reaper`].
    reaper: Mutex<Option<(Child, ChildStdin)>>,
    http: SocketAddr,
    grpc: SocketAddr,
    /// Started with `--tls-cert`: its URLs are https.
    tls: bool,
    log: Arc<Mutex<String>>,
}

impl Server {
    /// Starts a server on `repository` with `engine`, plus `extra` flags, and waits until
    /// `/v2/health/ready` answers 200 (with `--tls-cert`, until the log says it is ready: the
    /// harness speaks no TLS).
    pub fn start(repository: &Path, engine: Engine, extra: &[&str]) -> Result<Server, StartError> {
        let mut child = Command::new(env!("CARGO_BIN_EXE_rtserve"))
            .arg("--log-format")
            .arg("text")
            .arg("serve")
            .arg("--model-repository")
            .arg(repository)
            .args(["--http-port", "0", "--grpc-port", "0", "--host", "127.0.0.1", "--engine", engine.flag()])
            .args(extra)
            // Tests that stop a server wait for its exit; only the drain test drains.
            .args(if extra.contains(&"--drain-seconds") { &[][..] } else { &["--drain-seconds", "0"][..] })
            // The ports are read from info lines, whatever the environment asks for.
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| StartError::Failed(format!("cannot run {}: {e}", env!("CARGO_BIN_EXE_rtserve"))))?;
        let stderr = child.stderr.take().expect("stderr is piped");
        let log = Arc::new(Mutex::new(String::new()));
        let lines = forward_log(stderr, log.clone());
        let unbound = SocketAddr::from(([127, 0, 0, 1], 0));
        let mut server = Server {
            reaper: Mutex::new(spawn_reaper(child.id())),
            child: Mutex::new(Some(child)),
            http: unbound,
            grpc: unbound,
            tls: extra.contains(&"--tls-cert"),
            log,
        };
        let deadline = Instant::now() + START_TIMEOUT;
        (server.http, server.grpc) = match wait_for_ports(&lines, deadline) {
            Ok(ports) => ports,
            Err(reason) => return Err(server.start_failure(reason)),
        };
        if server.tls {
            return match wait_for_line(&lines, deadline, |line| line.ends_with(" ready")) {
                Ok(()) => Ok(server),
                Err(reason) => Err(server.start_failure(reason)),
            };
        }
        while !http_get_ok(server.http, "/v2/health/ready") {
            if Instant::now() > deadline || server.has_exited() {
                return Err(StartError::Failed(format!(
                    "rtserve never became ready; its log:\n{}",
                    server.log()
                )));
            }
            thread::sleep(Duration::from_millis(25));
        }
        Ok(server)
    }

    /// Why the server did not log its ports: it exited, or it took too long (then it is killed).
    fn start_failure(&self, reason: mpsc::RecvTimeoutError) -> StartError {
        let exit = self.wait_for_exit(Duration::from_secs(5));
        let log = self.log();
        if log.contains("--engine onnxruntime:") {
            return StartError::OnnxRuntimeMissing(log);
        }
        let why = match reason {
            mpsc::RecvTimeoutError::Timeout => "did not log its ports in time".to_string(),
            mpsc::RecvTimeoutError::Disconnected => format!("exited ({exit:?})"),
        };
        StartError::Failed(format!("rtserve {why}; its log:\n{log}"))
    }

    pub fn http_addr(&self) -> SocketAddr {
        self.http
    }

    pub fn grpc_addr(&self) -> SocketAddr {
        self.grpc
    }

    /// `http://127.0.0.1:PORT{path}` (https with TLS).
    pub fn url(&self, path: &str) -> String {
        format!("{}://{}{path}", self.scheme(), self.http)
    }

    /// The gRPC endpoint, for `GrpcInferenceServiceClient::connect` (https with TLS).
    pub fn grpc_endpoint(&self) -> String {
        format!("{}://{}", self.scheme(), self.grpc)
    }

    fn scheme(&self) -> &'static str {
        if self.tls {
            "https"
        } else {
            "http"
        }
    }

    /// Everything the server has written to stderr so far.
    pub fn log(&self) -> String {
        self.log.lock().expect("log lock").clone()
    }

    /// Sends SIGTERM and returns at once.
    pub fn terminate(&self) {
        self.signal(Signal::SIGTERM);
    }

    /// Sends `signal` and returns at once.
    pub fn signal(&self, signal: Signal) {
        if let Some(child) = self.child.lock().expect("child lock").as_ref() {
            let pid = Pid::from_raw(i32::try_from(child.id()).expect("pid fits i32"));
            // The process may already be gone; then there is nothing to signal.
            let _ = kill(pid, signal);
        }
    }

    /// SIGTERM, then asserts that the server exits with status 0 in time.
    pub async fn stop(self) {
        self.terminate();
        self.wait_for_clean_exit().await;
    }

    /// Asserts that the server, already sent SIGTERM, exits with status 0 in time. Async, so that
    /// the test's own clients keep running: an HTTP/2 client must answer the server's GOAWAY
    /// ping before the server can close its connection.
    pub async fn wait_for_clean_exit(self) {
        let deadline = Instant::now() + STOP_TIMEOUT;
        while !self.has_exited() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        match self.wait_for_exit(Duration::ZERO) {
            Some(status) => {
                assert!(
                    status.success(),
                    "rtserve exited with {status} after SIGTERM; its log:\n{}",
                    self.log()
                )
            }
            None => panic!("rtserve still runs {STOP_TIMEOUT:?} after SIGTERM; its log:\n{}", self.log()),
        }
    }

    /// Waits up to `timeout` for the process to exit; SIGKILLs it if it does not. `None` when
    /// it had to be killed.
    fn wait_for_exit(&self, timeout: Duration) -> Option<ExitStatus> {
        let mut guard = self.child.lock().expect("child lock");
        let mut child = guard.take()?;
        let deadline = Instant::now() + timeout;
        let status = loop {
            match child.try_wait() {
                Ok(Some(status)) => break Some(status),
                Ok(None) if Instant::now() < deadline => thread::sleep(Duration::from_millis(10)),
                _ => {
                    let _ = child.kill();
                    let _ = child.wait();
                    break None;
                }
            }
        };
        if let Some((mut reaper, _stdin)) = self.reaper.lock().expect("reaper lock").take() {
            let _ = reaper.kill();
            let _ = reaper.wait();
        }
        status
    }

    fn has_exited(&self) -> bool {
        match self.child.lock().expect("child lock").as_mut() {
            Some(child) => !matches!(child.try_wait(), Ok(None)),
            None => true,
        }
    }
}

impl Drop for Server {
    /// Cleanup only (a failed test, or a test that does not check the exit): SIGTERM, then
    /// SIGKILL if the server lingers.
    fn drop(&mut self) {
        self.terminate();
        self.wait_for_exit(DROP_TIMEOUT);
    }
}

/// Servers shared through a `static` are never dropped. So that none outlives the test binary,
/// a tiny shell waits for EOF on a pipe whose write end only this process holds, then sends the
/// server SIGTERM: the kernel closes that pipe however the test binary ends.
fn spawn_reaper(pid: u32) -> Option<(Child, ChildStdin)> {
    let mut reaper = Command::new("sh")
        .args(["-c", r#"read -r _ ; kill -TERM "$1" 2>/dev/null"#, "rtserve-reaper", &pid.to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    let stdin = reaper.stdin.take()?;
    Some((reaper, stdin))
}

/// Copies the server's stderr into `log` (and to this process's stderr when
/// `RTSERVE_E2E_LOG` is set); each line also goes to the returned channel.
fn forward_log(stderr: impl Read + Send + 'static, log: Arc<Mutex<String>>) -> mpsc::Receiver<String> {
    let echo = std::env::var_os("RTSERVE_E2E_LOG").is_some();
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if echo {
                eprintln!("[rtserve] {line}");
            }
            let mut text = log.lock().expect("log lock");
            text.push_str(&line);
            text.push('\n');
            drop(text);
            // The receiver is gone once the server is up; later lines only go to the log.
            let _ = tx.send(line);
        }
    });
    rx
}

/// Reads log lines until both "HTTP listening on ADDR" and "gRPC listening on ADDR" are seen.
fn wait_for_ports(
    lines: &mpsc::Receiver<String>,
    deadline: Instant,
) -> Result<(SocketAddr, SocketAddr), mpsc::RecvTimeoutError> {
    let (mut http, mut grpc) = (None, None);
    loop {
        if let (Some(http), Some(grpc)) = (http, grpc) {
            return Ok((http, grpc));
        }
        let line = lines.recv_timeout(deadline.saturating_duration_since(Instant::now()))?;
        http = http.or_else(|| address_after(&line, "HTTP listening on "));
        grpc = grpc.or_else(|| address_after(&line, "gRPC listening on "));
    }
}

/// Reads log lines until one passes `wanted`.
fn wait_for_line(
    lines: &mpsc::Receiver<String>,
    deadline: Instant,
    wanted: impl Fn(&str) -> bool,
) -> Result<(), mpsc::RecvTimeoutError> {
    while !wanted(&lines.recv_timeout(deadline.saturating_duration_since(Instant::now()))?) {}
    Ok(())
}

fn address_after(line: &str, marker: &str) -> Option<SocketAddr> {
    let (_, rest) = line.split_once(marker)?;
    rest.split_whitespace().next()?.parse().ok()
}

/// A bare HTTP/1.1 GET, so that the harness needs no async runtime: true on a 200.
fn http_get_ok(addr: SocketAddr, path: &str) -> bool {
    let Ok(mut stream) = TcpStream::connect_timeout(&addr, Duration::from_secs(1)) else { return false };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    if stream.write_all(request.as_bytes()).is_err() {
        return false;
    }
    let mut status_line = String::new();
    BufReader::new(stream).read_line(&mut status_line).is_ok() && status_line.starts_with("HTTP/1.1 200")
}

/// The example repository that ships with the repo.
pub fn example_repository() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/model_repository")
}
