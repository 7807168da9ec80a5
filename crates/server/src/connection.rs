//! An accepted connection: the slot it holds under `--max-connections`, and its lingering close.
//!
//! Beyond the limit the listener stops accepting until a connection closes: new clients wait
//! in the kernel's accept queue (bounded by the listen backlog), they are not refused. Each
//! wait is counted.
//!
//! Lingering close (as nginx's `lingering_close`): a server that answers before it has read the
//! whole request body (413 over `--max-request-bytes`, 401, 404 for an unknown model, 429) and
//! then closes the socket with the client's data still unread makes the kernel send a reset,
//! and the client, still sending, loses the answer (Python's `requests` and `urllib` report a
//! broken pipe). So once the server has flushed its answer and shut down its write side, the
//! socket stays open and what the client still sends is read and thrown away until the client
//! closes, bounded in time.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use prometheus::{IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::metrics::Metrics;

/// The longest a closed connection keeps reading what its client still sends.
const LINGER_TIME: Duration = Duration::from_secs(10);
/// A lingering connection whose client sends nothing for this long is closed.
const LINGER_IDLE: Duration = Duration::from_secs(2);

/// The limits on client connections, for every listener.
#[derive(Debug, Clone)]
pub struct ConnectionLimits {
    /// Connections each listener holds open at once (`--max-connections`).
    pub max_connections: usize,
    /// The longest an HTTP/1 client may take to send a request's head, also the longest an
    /// idle kept-alive connection waits for its next request (`--header-read-timeout-ms`).
    pub header_read_timeout: Duration,
    /// Concurrent HTTP/2 streams (gRPC calls) per connection (`--grpc-max-concurrent-streams`).
    pub max_concurrent_streams: u32,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        ConnectionLimits {
            max_connections: 1024,
            header_read_timeout: Duration::from_secs(75),
            max_concurrent_streams: 128,
        }
    }
}

/// How long to wait before accepting again after `accept` failed.
const ACCEPT_RETRY: Duration = Duration::from_millis(100);

/// Accepts the next connection once a slot is free. An accept error (a client gone before it
/// was accepted, or no file descriptor left) is returned after a short pause, so that a caller
/// that retries does not spin.
pub async fn accept(
    listener: &TcpListener,
    slots: &ConnectionSlots,
    linger: bool,
) -> io::Result<(Connection, SocketAddr)> {
    let slot = slots.acquire().await;
    match listener.accept().await {
        Ok((stream, addr)) => {
            crate::listeners::no_delay(&stream);
            Ok((Connection::new(stream, slot, linger), addr))
        }
        Err(e) => {
            tracing::debug!("accept failed: {e}");
            tokio::time::sleep(ACCEPT_RETRY).await;
            Err(e)
        }
    }
}

/// The connection metrics of every listener, by `protocol` (http, grpc).
pub struct ConnectionMetrics {
    open: IntGaugeVec,
    waits: IntCounterVec,
}

impl ConnectionMetrics {
    /// Creates the metrics and registers them with the server's registry.
    pub fn register(metrics: &Metrics) -> Result<ConnectionMetrics, prometheus::Error> {
        let open = IntGaugeVec::new(
            Opts::new(
                "rtserve_connections_open",
                "Client connections open, lingering ones included (at most --max-connections per listener)",
            ),
            &["protocol"],
        )?;
        let waits = IntCounterVec::new(
            Opts::new(
                "rtserve_connection_limit_waits_total",
                "Times a listener reached --max-connections and waited for a connection to close before accepting more",
            ),
            &["protocol"],
        )?;
        metrics.register(Box::new(open.clone()))?;
        metrics.register(Box::new(waits.clone()))?;
        Ok(ConnectionMetrics { open, waits })
    }

    /// The slots of one listener.
    pub fn slots(&self, protocol: &str, max_connections: usize) -> ConnectionSlots {
        ConnectionSlots {
            semaphore: Arc::new(Semaphore::new(max_connections)),
            open: self.open.with_label_values(&[protocol]),
            waits: self.waits.with_label_values(&[protocol]),
        }
    }
}

/// The connections one listener may hold open at once.
#[derive(Clone)]
pub struct ConnectionSlots {
    semaphore: Arc<Semaphore>,
    open: IntGauge,
    waits: IntCounter,
}

impl ConnectionSlots {
    /// Waits for a free slot (counting the wait when there is none at once).
    pub async fn acquire(&self) -> Slot {
        let permit = match self.semaphore.clone().try_acquire_owned() {
            Ok(permit) => Some(permit),
            Err(_) => {
                self.waits.inc();
                tracing::debug!("--max-connections reached: accepting again when a connection closes");
                // The semaphore is never closed, so this waits for a permit.
                self.semaphore.clone().acquire_owned().await.ok()
            }
        };
        self.open.inc();
        Slot { _permit: permit, open: self.open.clone() }
    }
}

/// A held slot; freed when dropped.
pub struct Slot {
    _permit: Option<OwnedSemaphorePermit>,
    open: IntGauge,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.open.dec();
    }
}

/// An accepted TCP stream holding its slot. With `linger`, closing it after a clean shutdown
/// of the write side reads and discards the client's data for a bounded time first. (TLS, when
/// on, wraps this stream: its close_notify goes out before the write side shuts.)
pub struct Connection {
    /// `Some` until dropped.
    stream: Option<TcpStream>,
    slot: Option<Slot>,
    linger: bool,
    write_closed: bool,
}

impl Connection {
    pub fn new(stream: TcpStream, slot: Slot, linger: bool) -> Connection {
        Connection { stream: Some(stream), slot: Some(slot), linger, write_closed: false }
    }

    fn stream(&mut self) -> io::Result<&mut TcpStream> {
        self.stream.as_mut().ok_or_else(|| io::Error::from(io::ErrorKind::NotConnected))
    }
}

impl AsyncRead for Connection {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(self.get_mut().stream()?).poll_read(cx, buf)
    }
}

impl AsyncWrite for Connection {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(self.get_mut().stream()?).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(self.get_mut().stream()?).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.as_ref().is_some_and(TcpStream::is_write_vectored)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(self.get_mut().stream()?).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let result = std::task::ready!(Pin::new(this.stream()?).poll_shutdown(cx));
        this.write_closed = result.is_ok();
        Poll::Ready(result)
    }
}

impl tonic::transport::server::Connected for Connection {
    type ConnectInfo = tonic::transport::server::TcpConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        match &self.stream {
            Some(stream) => stream.connect_info(),
            None => tonic::transport::server::TcpConnectInfo { local_addr: None, remote_addr: None },
        }
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        // Lingering needs the runtime; outside one (never in the server) the socket just closes.
        let runtime = tokio::runtime::Handle::try_current();
        if let (true, true, Some(stream), Ok(runtime)) =
            (self.linger, self.write_closed, self.stream.take(), runtime)
        {
            runtime.spawn(linger(stream, self.slot.take()));
        }
    }
}

/// Reads and discards until the client closes, goes quiet for [`LINGER_IDLE`], or
/// [`LINGER_TIME`] has passed; the slot is freed when the socket closes.
async fn linger(mut stream: TcpStream, _slot: Option<Slot>) {
    let mut discard = vec![0u8; 16 * 1024];
    let read_until_closed = async {
        while let Ok(Ok(read)) = tokio::time::timeout(LINGER_IDLE, stream.read(&mut discard)).await {
            if read == 0 {
                break;
            }
        }
    };
    let _ = tokio::time::timeout(LINGER_TIME, read_until_closed).await;
}

#[cfg(test)]
mod tests {
    use futures::FutureExt;
    use tokio::io::AsyncWriteExt;

    use super::*;

    fn slots(max: usize) -> (ConnectionSlots, IntCounter) {
        let metrics = Metrics::new().expect("metrics");
        let slots = ConnectionMetrics::register(&metrics).expect("register").slots("test", max);
        let waits = slots.waits.clone();
        (slots, waits)
    }

    #[tokio::test]
    async fn a_slot_past_the_limit_waits_for_one_to_be_freed_and_the_wait_is_counted() {
        let (slots, waits) = slots(1);
        let first = slots.acquire().await;
        assert_eq!((slots.open.get(), waits.get()), (1, 0));
        let mut second = Box::pin(slots.acquire());
        assert!((&mut second).now_or_never().is_none(), "a second slot while the first is held");
        assert_eq!(waits.get(), 1);
        drop(first);
        let _second = second.await;
        assert_eq!(slots.open.get(), 1);
    }

    /// A reply written before the request is read reaches a client that first sends far more
    /// than the socket buffers hold: the closed connection drains it instead of resetting.
    #[tokio::test]
    async fn a_lingering_close_lets_a_client_that_sends_first_read_the_reply() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("address");
        let (slots, _) = slots(4);
        let server = tokio::spawn(async move {
            let (mut connection, _) = accept(&listener, &slots, true).await.expect("accept");
            connection.write_all(b"refused\n").await.expect("write");
            connection.shutdown().await.expect("shutdown");
            drop(connection);
            slots
        });
        let mut client = TcpStream::connect(addr).await.expect("connect");
        client.write_all(&vec![0u8; 16 * 1024 * 1024]).await.expect("the whole body is taken");
        client.shutdown().await.expect("client shutdown");
        let mut reply = String::new();
        client.read_to_string(&mut reply).await.expect("the reply is read");
        assert_eq!(reply, "refused\n");
        let slots = server.await.expect("server task");
        drop(client);
        // The slot is held until the lingering read sees the client's end.
        let deadline = tokio::time::Instant::now() + LINGER_TIME;
        while slots.open.get() != 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(slots.open.get(), 0);
    }
}
