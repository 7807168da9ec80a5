//! A matrix row's own server: a one-model repository in a temporary folder, `rtserve serve` on
//! free loopback ports, ready when `/v2/health/ready` answers 200, killed when dropped.

use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::spec::RowSpec;

/// The model's name in the row's repository.
pub const MODEL_NAME: &str = "model";

/// How many lines of the server's log a failure shows.
const LOG_TAIL_LINES: usize = 15;

/// A running `rtserve serve` for one row.
pub struct LocalServer {
    child: Child,
    pub http: SocketAddr,
    pub grpc: SocketAddr,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl LocalServer {
    /// Writes the row's repository, starts `rtserve` on it and waits until it is ready.
    pub async fn start(rtserve: &Path, row: &RowSpec) -> Result<LocalServer, String> {
        let dir = tempfile::tempdir().map_err(|e| format!("temporary folder: {e}"))?;
        let repository = dir.path().join("repository");
        write_repository(&repository, row)?;
        let (http, grpc) = (free_port()?, free_port()?);
        let log = dir.path().join("server.log");
        let log_file = std::fs::File::create(&log).map_err(|e| format!("{}: {e}", log.display()))?;
        let mut command = match row.memory_limit_mb {
            // prlimit sets the limit and execs rtserve: same process, so --server-pid holds.
            Some(mb) => {
                let mut c = Command::new("prlimit");
                c.arg(format!("--data={}", mb * 1024 * 1024)).arg("--").arg(rtserve);
                c
            }
            None => Command::new(rtserve),
        };
        command
            .arg("serve")
            .arg("--model-repository")
            .arg(&repository)
            .args(["--host", "127.0.0.1", "--http-port", &http.to_string(), "--grpc-port", &grpc.to_string()])
            .args(&row.serve_args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log_file);
        let program = if row.memory_limit_mb.is_some() { "prlimit" } else { "rtserve" };
        let child = command.spawn().map_err(|e| format!("cannot run {program}: {e}"))?;
        let mut server = LocalServer {
            child,
            http: SocketAddr::from((Ipv4Addr::LOCALHOST, http)),
            grpc: SocketAddr::from((Ipv4Addr::LOCALHOST, grpc)),
            log,
            _dir: dir,
        };
        server.wait_ready(row.start_timeout).await?;
        Ok(server)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    async fn wait_ready(&mut self, limit: Duration) -> Result<(), String> {
        let client = reqwest::Client::new();
        let url = format!("http://{}/v2/health/ready", self.http);
        let deadline = Instant::now() + limit;
        loop {
            if let Ok(reply) = client.get(&url).timeout(Duration::from_secs(2)).send().await {
                if reply.status().is_success() {
                    return Ok(());
                }
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(format!("the server exited ({status})\nits log ends:\n{}", self.log_tail()));
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "the server was not ready after {}s\nits log ends:\n{}",
                    limit.as_secs(),
                    self.log_tail()
                ));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(LOG_TAIL_LINES)..].join("\n")
    }
}

impl Drop for LocalServer {
    fn drop(&mut self) {
        // Killing a process that already exited fails harmlessly.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `repository/model/config.toml` (the row's config with its name) and
/// `repository/model/1/model.onnx`, a link to the row's file.
fn write_repository(repository: &Path, row: &RowSpec) -> Result<(), String> {
    let version = repository.join(MODEL_NAME).join("1");
    std::fs::create_dir_all(&version).map_err(|e| format!("{}: {e}", version.display()))?;
    let model =
        std::fs::canonicalize(&row.model).map_err(|e| format!("model {}: {e}", row.model.display()))?;
    std::os::unix::fs::symlink(&model, version.join("model.onnx"))
        .map_err(|e| format!("linking {}: {e}", model.display()))?;
    let mut config = row.config.clone();
    config.insert("name".into(), toml::Value::String(MODEL_NAME.into()));
    let text = toml::to_string(&config).map_err(|e| format!("the row's config: {e}"))?;
    let path = repository.join(MODEL_NAME).join("config.toml");
    std::fs::write(&path, text).map_err(|e| format!("{}: {e}", path.display()))
}

/// A loopback port free right now (the server binds it a moment later).
fn free_port() -> Result<u16, String> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).map_err(|e| format!("no free port: {e}"))?;
    listener.local_addr().map(|a| a.port()).map_err(|e| format!("no free port: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::matrix::spec::MatrixSpec;

    #[test]
    fn the_repository_holds_the_rows_config_and_a_link_to_its_model() {
        let dir = tempfile::tempdir().expect("tempdir");
        let model = dir.path().join("m.onnx");
        std::fs::write(&model, b"onnx").expect("write");
        let text = format!(
            "[[row]]\nname = \"a\"\nmodel = \"{}\"\nconfig = {{ max_batch_size = 4, parameters = {{ intra_op_threads = \"1\" }} }}",
            model.display()
        );
        let spec = MatrixSpec::parse(&text).expect("parse");
        let repository = dir.path().join("repo");
        write_repository(&repository, &spec.rows[0]).expect("write");
        let config: toml::Table =
            toml::from_str(&std::fs::read_to_string(repository.join("model/config.toml")).expect("config"))
                .expect("toml");
        assert_eq!(config.get("name").and_then(|v| v.as_str()), Some(MODEL_NAME));
        assert_eq!(config.get("max_batch_size").and_then(|v| v.as_integer()), Some(4));
        assert_eq!(std::fs::read(repository.join("model/1/model.onnx")).expect("link"), b"onnx");
    }

    #[test]
    fn a_missing_model_is_named() {
        let spec =
            MatrixSpec::parse("[[row]]\nname = \"a\"\nmodel = \"/nonexistent/m.onnx\"").expect("parse");
        let dir = tempfile::tempdir().expect("tempdir");
        let err = write_repository(dir.path(), &spec.rows[0]).expect_err("missing");
        assert!(err.contains("/nonexistent/m.onnx"), "{err}");
    }
}
