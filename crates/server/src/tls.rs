//! TLS on the HTTP and gRPC ports (rustls, ring): the certificate chain, its key and, for mutual
//! TLS, the client CA, read from PEM files (`--tls-cert`, `--tls-key`, `--tls-client-ca`).
//!
//! Every file is checked at start (readable, holds what it should, the key matches the
//! certificate), so that a bad one is a start-up error naming the flag and the file. The files
//! are reread on [`Tls::reload`] (SIGHUP): the new configuration serves the connections accepted
//! after it, and a file that fails then leaves the one in force, so that a rotation needs no
//! restart and a bad rotation breaks nothing.
//!
//! Handshakes run on tasks of their own, bounded by [`HANDSHAKE_TIMEOUT`], so that a slow or
//! silent client holds up no other; a failed handshake (a plaintext client, a missing or unknown
//! client certificate) closes that connection only, and is counted in
//! `rtserve_tls_handshake_failures_total`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

use crate::connection::{self, Connection, ConnectionSlots};
use crate::metrics::{Metrics, Protocol};

/// How long a client may take to complete its handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections whose handshake is done and that the server has not taken yet.
const READY_QUEUE: usize = 64;

/// Where the certificate and keys come from.
#[derive(Debug, Clone)]
pub struct TlsConfig {
    /// The server's certificate chain, leaf first (PEM).
    pub cert: PathBuf,
    /// The certificate's private key (PEM: PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// CA certificates (PEM) that client certificates must chain to; `Some`: every client must
    /// present one (mutual TLS).
    pub client_ca: Option<PathBuf>,
}

/// Why the TLS files cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {path} ({flag}): {source}")]
    Read { path: PathBuf, flag: &'static str, source: std::io::Error },
    #[error("{path} ({flag}) holds no PEM {what}")]
    Missing { path: PathBuf, flag: &'static str, what: &'static str },
    #[error("{path} ({flag}) is not valid PEM: {problem}")]
    Pem { path: PathBuf, flag: &'static str, problem: String },
    #[error("the key {key} (--tls-key) does not match the certificate {cert} (--tls-cert)")]
    KeyMismatch { cert: PathBuf, key: PathBuf },
    #[error("cannot use {path} ({flag}): {problem}")]
    Unusable { path: PathBuf, flag: &'static str, problem: String },
}

struct Configs {
    http: Arc<ServerConfig>,
    grpc: Arc<ServerConfig>,
}

/// The rustls configurations in force, swapped whole on reload.
pub struct Tls {
    config: TlsConfig,
    current: RwLock<Arc<Configs>>,
    /// Counts failed handshakes.
    metrics: Arc<Metrics>,
}

impl Tls {
    /// Reads and checks the files.
    pub fn load(config: TlsConfig, metrics: Arc<Metrics>) -> Result<Tls, TlsError> {
        let configs = read_configs(&config)?;
        Ok(Tls { config, current: RwLock::new(Arc::new(configs)), metrics })
    }

    /// Rereads the files; on error the configuration in force stays.
    pub fn reload(&self) -> Result<(), TlsError> {
        let configs = read_configs(&self.config)?;
        *self.current.write().unwrap_or_else(|poisoned| poisoned.into_inner()) = Arc::new(configs);
        Ok(())
    }

    /// The configuration of a port: each advertises its protocols by ALPN (HTTP/1.1 and HTTP/2
    /// on the HTTP port; `h2` only on the gRPC port, where clients insist on it).
    fn acceptor(&self, protocol: Protocol) -> TlsAcceptor {
        let configs = self.current.read().unwrap_or_else(|poisoned| poisoned.into_inner()).clone();
        TlsAcceptor::from(match protocol {
            Protocol::Http => configs.http.clone(),
            Protocol::Grpc => configs.grpc.clone(),
        })
    }

    /// Accepts connections on `listener` under `slots` (`--max-connections`), each handshaken
    /// on a task of its own; yields those whose handshake succeeds. Stops accepting (and closes
    /// the listener) when the receiver is dropped.
    pub fn accept(
        self: Arc<Tls>,
        listener: TcpListener,
        slots: ConnectionSlots,
        protocol: Protocol,
    ) -> mpsc::Receiver<TlsStream<Connection>> {
        let (ready, receiver) = mpsc::channel(READY_QUEUE);
        tokio::spawn(async move {
            loop {
                let accepted = tokio::select! {
                    accepted = connection::accept(&listener, &slots, false) => accepted,
                    () = ready.closed() => return,
                };
                // An accept error (out of file descriptors and the like) leaves the listener fine.
                let Ok((stream, peer)) = accepted else { continue };
                let (tls, ready) = (self.clone(), ready.clone());
                tokio::spawn(async move {
                    if let Some(stream) = tls.handshake(stream, protocol, peer).await {
                        let _ = ready.send(stream).await;
                    }
                });
            }
        });
        receiver
    }

    /// The TLS handshake on an accepted connection, bounded in time; `None` (counted and
    /// logged) when it fails.
    pub async fn handshake<Io: AsyncRead + AsyncWrite + Unpin>(
        &self,
        stream: Io,
        protocol: Protocol,
        peer: SocketAddr,
    ) -> Option<TlsStream<Io>> {
        let failure =
            match tokio::time::timeout(HANDSHAKE_TIMEOUT, self.acceptor(protocol).accept(stream)).await {
                Ok(Ok(stream)) => return Some(stream),
                Ok(Err(e)) => e.to_string(),
                Err(_) => "timed out".to_string(),
            };
        self.metrics.tls_handshake_failure(protocol);
        tracing::debug!("TLS handshake with {peer} failed: {failure}");
        None
    }
}

fn read_configs(config: &TlsConfig) -> Result<Configs, TlsError> {
    let chain = read_certificates(&config.cert, "--tls-cert", "certificate")?;
    let key = read_key(&config.key)?;
    let builder = match &config.client_ca {
        None => ServerConfig::builder().with_no_client_auth(),
        Some(path) => {
            let mut roots = RootCertStore::empty();
            for certificate in read_certificates(path, "--tls-client-ca", "CA certificate")? {
                roots.add(certificate).map_err(|e| unusable(path, "--tls-client-ca", e))?;
            }
            let verifier = WebPkiClientVerifier::builder(Arc::new(roots))
                .build()
                .map_err(|e| unusable(path, "--tls-client-ca", e))?;
            ServerConfig::builder().with_client_cert_verifier(verifier)
        }
    };
    let base = builder.with_single_cert(chain, key).map_err(|e| match e {
        rustls::Error::InconsistentKeys(_) => {
            TlsError::KeyMismatch { cert: config.cert.clone(), key: config.key.clone() }
        }
        e => unusable(&config.key, "--tls-key", e),
    })?;
    let with_alpn = |protocols: &[&[u8]]| {
        let mut config = base.clone();
        config.alpn_protocols = protocols.iter().map(|p| p.to_vec()).collect();
        Arc::new(config)
    };
    Ok(Configs { http: with_alpn(&[b"h2", b"http/1.1"]), grpc: with_alpn(&[b"h2"]) })
}

fn unusable(path: &Path, flag: &'static str, error: impl std::fmt::Display) -> TlsError {
    TlsError::Unusable { path: path.to_owned(), flag, problem: error.to_string() }
}

fn read(path: &Path, flag: &'static str) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read { path: path.to_owned(), flag, source })
}

fn read_certificates(
    path: &Path,
    flag: &'static str,
    what: &'static str,
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read(path, flag)?;
    let certificates = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Pem { path: path.to_owned(), flag, problem: e.to_string() })?;
    if certificates.is_empty() {
        return Err(TlsError::Missing { path: path.to_owned(), flag, what });
    }
    Ok(certificates)
}

fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let pem = read(path, "--tls-key")?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|e| match e {
        rustls::pki_types::pem::Error::NoItemsFound => {
            TlsError::Missing { path: path.to_owned(), flag: "--tls-key", what: "private key" }
        }
        e => TlsError::Pem { path: path.to_owned(), flag: "--tls-key", problem: e.to_string() },
    })
}
