//! A real `redis-server` on a free loopback port, stopped on drop.

use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct RedisServer {
    child: Child,
    pub port: u16,
}

/// Whether `redis-server` is installed; prints a note when it is not. With
/// `RTSERVE_TEST_REQUIRE_REDIS` set (CI), a missing `redis-server` fails the test instead.
pub fn available() -> bool {
    let found = Command::new("redis-server")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !found {
        assert!(
            std::env::var_os("RTSERVE_TEST_REQUIRE_REDIS").is_none(),
            "RTSERVE_TEST_REQUIRE_REDIS is set but redis-server is not on PATH"
        );
        eprintln!("note: redis-server is not on PATH; skipping this test (CI installs it)");
    }
    found
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// Certificates for a Redis that speaks only TLS (PEM files).
pub struct RedisTls<'a> {
    pub cert: &'a Path,
    pub key: &'a Path,
    /// The CA that client certificates must chain to.
    pub ca: &'a Path,
    /// Whether clients must present a certificate (`tls-auth-clients`).
    pub require_client_cert: bool,
}

impl RedisServer {
    /// Starts a server on `port` and waits until it accepts connections.
    pub fn start(port: u16) -> RedisServer {
        Self::spawn(port, &["--port", &port.to_string()])
    }

    /// Starts a server that speaks only TLS on `port` (Debian's redis-server is built with
    /// TLS); [`RedisServer::tls_url`] reaches it.
    pub fn start_tls(port: u16, tls: &RedisTls) -> RedisServer {
        let path = |p: &Path| p.to_str().expect("UTF-8 path").to_string();
        let auth = if tls.require_client_cert { "yes" } else { "no" };
        Self::spawn(
            port,
            &[
                "--port",
                "0",
                "--tls-port",
                &port.to_string(),
                "--tls-cert-file",
                &path(tls.cert),
                "--tls-key-file",
                &path(tls.key),
                "--tls-ca-cert-file",
                &path(tls.ca),
                "--tls-auth-clients",
                auth,
            ],
        )
    }

    fn spawn(port: u16, listen: &[&str]) -> RedisServer {
        let child = Command::new("redis-server")
            .args(listen)
            .args(["--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server starts");
        let server = RedisServer { child, port };
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "redis-server did not listen on port {port}");
            std::thread::sleep(Duration::from_millis(20));
        }
        server
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// The URL of a server started with [`RedisServer::start_tls`].
    pub fn tls_url(&self) -> String {
        format!("rediss://127.0.0.1:{}/", self.port)
    }

    /// Kills the server and waits until the port is closed.
    pub fn stop(mut self) {
        self.kill();
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}
