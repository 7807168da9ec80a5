//! The server's ports: reserved at start (so that a port in use fails at once), opened when the
//! server says (at once, or once start-up loading is done), and closed gracefully on shutdown.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use futures::StreamExt;
use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::connection::{ConnectionLimits, ConnectionMetrics};
use crate::metrics::Protocol;
use crate::serve::StartError;
use crate::tls::Tls;

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
pub(crate) fn no_delay(stream: &tokio::net::TcpStream) {
    if let Err(e) = stream.set_nodelay(true) {
        tracing::debug!("cannot set TCP_NODELAY: {e}");
    }
}

/// The open listeners, each served by a task until [`Listeners::close`].
pub struct Listeners {
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<Result<(), String>>>,
    limits: ConnectionLimits,
    connections: ConnectionMetrics,
}

impl Listeners {
    pub fn new(limits: ConnectionLimits, connections: ConnectionMetrics) -> Listeners {
        Listeners { stop: watch::channel(false).0, tasks: Vec::new(), limits, connections }
    }

    /// Completes when [`Listeners::close`] is called.
    fn stopped(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let mut stop = self.stop.subscribe();
        async move {
            let _ = stop.wait_for(|stop| *stop).await;
        }
    }

    /// Serves `app` over HTTP on `port`, over TLS when `tls` is given; `what` names it in the
    /// log.
    pub fn open_http(
        &mut self,
        port: Port,
        what: &str,
        app: Router,
        tls: Option<Arc<Tls>>,
    ) -> Result<(), StartError> {
        let (listener, addr) = port.listen()?;
        match tls {
            None => tracing::info!("{what} listening on {addr}"),
            Some(_) => tracing::info!("{what} listening on {addr} (TLS)"),
        }
        let slots = self.connections.slots(&what.to_ascii_lowercase(), self.limits.max_connections);
        let (limits, stop) = (self.limits.clone(), self.stopped());
        self.tasks.push(tokio::spawn(async move {
            crate::http::connections::serve(listener, app, &limits, slots, tls, stop).await;
            Ok(())
        }));
        Ok(())
    }

    /// Serves the gRPC inference service on `port`, over TLS when `tls` is given.
    pub fn open_grpc(
        &mut self,
        port: Port,
        service: crate::grpc::Service,
        tls: Option<Arc<Tls>>,
    ) -> Result<(), StartError> {
        let (listener, addr) = port.listen()?;
        let slots = self.connections.slots("grpc", self.limits.max_connections);
        let server = tonic::transport::Server::builder()
            .max_concurrent_streams(self.limits.max_concurrent_streams)
            .add_service(service);
        let stopped = self.stopped();
        let task = match tls {
            None => {
                tracing::info!("gRPC listening on {addr}");
                let incoming = futures::stream::unfold((listener, slots), |(listener, slots)| async move {
                    let accepted =
                        crate::connection::accept(&listener, &slots, false).await.map(|(stream, _)| stream);
                    Some((accepted, (listener, slots)))
                });
                tokio::spawn(async move {
                    server.serve_with_incoming_shutdown(incoming, stopped).await.map_err(|e| e.to_string())
                })
            }
            Some(tls) => {
                tracing::info!("gRPC listening on {addr} (TLS)");
                let incoming =
                    tokio_stream::wrappers::ReceiverStream::new(tls.accept(listener, slots, Protocol::Grpc))
                        .map(Ok::<_, std::io::Error>);
                tokio::spawn(async move {
                    server.serve_with_incoming_shutdown(incoming, stopped).await.map_err(|e| e.to_string())
                })
            }
        };
        self.tasks.push(task);
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
