//! The HTTP accept loop: hyper (HTTP/1 and HTTP/2, over TLS when it is on) with a header read
//! timeout against slow clients, `--max-connections`, lingering close (`crate::connection`) and
//! the client's address in each request's extensions ([`ClientAddr`]).

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::Body;
use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tower::ServiceExt;

use crate::connection::{accept, ConnectionLimits, ConnectionSlots};
use crate::metrics::Protocol;
use crate::tls::Tls;

/// The peer of the connection a request came on.
#[derive(Debug, Clone, Copy)]
pub struct ClientAddr(pub SocketAddr);

/// Serves `app` on `listener` (each connection handshaken first when `tls` is given) until
/// `stop` completes, then lets every open connection finish its request in flight (idle ones
/// close at once) and returns.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: &ConnectionLimits,
    slots: ConnectionSlots,
    tls: Option<Arc<Tls>>,
    stop: impl Future<Output = ()>,
) {
    let mut builder = Builder::new(TokioExecutor::new());
    builder.http1().timer(TokioTimer::new()).header_read_timeout(limits.header_read_timeout);
    builder.http2().timer(TokioTimer::new()).max_concurrent_streams(limits.max_concurrent_streams);
    let graceful = GracefulShutdown::new();
    let mut stop = std::pin::pin!(stop);
    loop {
        let (connection, addr) = tokio::select! {
            () = &mut stop => break,
            accepted = accept(&listener, &slots, true) => match accepted {
                Ok(accepted) => accepted,
                Err(_) => continue,
            },
        };
        let app = app.clone();
        let service = hyper::service::service_fn(move |request: hyper::Request<Incoming>| {
            let mut request = request.map(Body::new);
            request.extensions_mut().insert(ClientAddr(addr));
            app.clone().oneshot(request)
        });
        let (builder, watcher, tls) = (builder.clone(), graceful.watcher(), tls.clone());
        tokio::spawn(async move {
            let served = match tls {
                None => {
                    watcher
                        .watch(builder.serve_connection(TokioIo::new(connection), service).into_owned())
                        .await
                }
                Some(tls) => {
                    let Some(stream) = tls.handshake(connection, Protocol::Http, addr).await else { return };
                    watcher.watch(builder.serve_connection(TokioIo::new(stream), service).into_owned()).await
                }
            };
            if let Err(e) = served {
                // Header read timeouts, resets and protocol errors of one client.
                tracing::debug!("connection from {addr}: {e}");
            }
        });
    }
    drop(listener);
    graceful.shutdown().await;
}
