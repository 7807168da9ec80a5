//! The server's ports: reserved at start (so that a port in use fails at once), opened when the
//! server says (at once, or once start-up loading is done), and closed gracefully on shutdown.

use std::net::SocketAddr;
use std::time::Duration;

use axum::serve::ListenerExt;
use axum::Router;
use futures::StreamExt;
use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::serve::StartError;

/// Connections the kernel queues for a listener before `accept` (tokio's default too).
const BACKLOG: u32 = 1024;

/// A port bound but not listening: connections to it are refused until [`Listeners::open`].
pub struct Port {
    socket: TcpSocket,
    addr: SocketAddr,
    /// The option that chose the port, for errors.
    flag: &'static str,
}

impl Port {
    /// Binds `host:port` (0 picks a free port).
    pub async fn reserve(host: &str, port: u16, flag: &'static str) -> Result<Port, StartError> {
        let named = format!("{host}:{port}");
        let error = |source| StartError::Bind { addr: named.clone(), flag, source };
        let addr = tokio::net::lookup_host(&named).await.map_err(error)?.next().ok_or_else(|| {
            error(std::io::Error::new(
                std::io::ErrorKind::AddrNotAvailable,
                "the host resolves to no address",
            ))
        })?;
        let socket = if addr.is_ipv4() { TcpSocket::new_v4() } else { TcpSocket::new_v6() }.map_err(error)?;
        socket.set_reuseaddr(true).map_err(error)?;
        socket.bind(addr).map_err(error)?;
        let addr = socket.local_addr().map_err(error)?;
        Ok(Port { socket, addr, flag })
    }

    fn listen(self) -> Result<(TcpListener, SocketAddr), StartError> {
        let Port { socket, addr, flag } = self;
        let listener = socket.listen(BACKLOG).map_err(|source| StartError::Bind {
            addr: addr.to_string(),
            flag,
            source,
        })?;
        Ok((listener, addr))
    }
}

/// Small replies must not wait for the peer's delayed ACK (Nagle's algorithm adds up to 40 ms).
fn no_delay(stream: &tokio::net::TcpStream) {
    if let Err(e) = stream.set_nodelay(true) {
        tracing::debug!("cannot set TCP_NODELAY: {e}");
    }
}

/// The open listeners, each served by a task until [`Listeners::close`].
pub struct Listeners {
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<Result<(), String>>>,
}

impl Listeners {
    pub fn new() -> Listeners {
        Listeners { stop: watch::channel(false).0, tasks: Vec::new() }
    }

    /// Completes when [`Listeners::close`] is called.
    fn stopped(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let mut stop = self.stop.subscribe();
        async move {
            let _ = stop.wait_for(|stop| *stop).await;
        }
    }

    /// Serves `app` over HTTP on `port`; `what` names it in the log.
    pub fn open_http(&mut self, port: Port, what: &str, app: Router) -> Result<(), StartError> {
        let (listener, addr) = port.listen()?;
        tracing::info!("{what} listening on {addr}");
        let server = axum::serve(listener.tap_io(|stream| no_delay(stream)), app)
            .with_graceful_shutdown(self.stopped());
        self.tasks.push(tokio::spawn(async move { server.await.map_err(|e| e.to_string()) }));
        Ok(())
    }

    /// Serves the gRPC inference service on `port`.
    pub fn open_grpc(&mut self, port: Port, service: crate::grpc::Service) -> Result<(), StartError> {
        let (listener, addr) = port.listen()?;
        tracing::info!("gRPC listening on {addr}");
        let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener)
            .map(|accepted| accepted.inspect(no_delay));
        let server = tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming_shutdown(incoming, self.stopped());
        self.tasks.push(tokio::spawn(async move { server.await.map_err(|e| e.to_string()) }));
        Ok(())
    }

    /// Closes every listener (new connections are refused) and waits up to `timeout` for the
    /// requests in flight; what still runs then is dropped.
    pub async fn close(self, timeout: Duration) -> Result<(), StartError> {
        let _ = self.stop.send(true);
        let finished = async {
            for task in self.tasks {
                match task.await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => return Err(StartError::Serve(e)),
                    Err(e) => return Err(StartError::Serve(e.to_string())),
                }
            }
            Ok(())
        };
        match tokio::time::timeout(timeout, finished).await {
            Ok(result) => result,
            Err(_) => {
                tracing::warn!("shutdown timeout reached; dropping requests still in flight");
                Ok(())
            }
        }
    }
}
