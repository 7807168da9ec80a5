//! What a client presents to a guarded server: a bearer token (`--token-file`), sent as
//! `Authorization: Bearer` on HTTP and as `authorization` metadata on gRPC, and the CA that a TLS
//! server's certificate must chain to (`--tls-ca`, besides the system's roots).
//!
//! The token is read from a file so that it never appears in `ps` output; the file has the
//! format of rtserve's `--auth-token-file` (`TOKEN [NAME]` a line, `#` comments), and its first
//! token is used. The token is never printed, not even by `Debug`.

use std::fmt;
use std::path::{Path, PathBuf};

use reqwest::header::{HeaderMap, HeaderValue, AUTHORIZATION};
use tonic::metadata::{Ascii, MetadataValue};
use tonic::transport::{Certificate, ClientTlsConfig};

use crate::BenchError;

/// The files, as given on the command line.
#[derive(Debug, Clone, Default)]
pub struct CredentialFiles {
    /// A file whose first token is sent as a bearer token.
    pub token_file: Option<PathBuf>,
    /// CA certificates (PEM) to trust for an https:// or grpcs:// server.
    pub tls_ca: Option<PathBuf>,
}

/// The files' contents, checked.
#[derive(Clone, Default)]
pub struct Credentials {
    /// `Bearer TOKEN`.
    authorization: Option<String>,
    ca_pem: Option<Vec<u8>>,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("token", &self.authorization.as_ref().map(|_| "<redacted>"))
            .field("tls_ca", &self.ca_pem.as_ref().map(Vec::len))
            .finish()
    }
}

impl Credentials {
    /// Reads and checks the files.
    pub fn read(files: &CredentialFiles) -> Result<Credentials, BenchError> {
        let authorization = files.token_file.as_deref().map(read_token).transpose()?;
        let ca_pem = match &files.tls_ca {
            Some(path) => {
                let pem = std::fs::read(path)
                    .map_err(|e| bad(path, "--tls-ca", &format!("cannot read it: {e}")))?;
                let certificates = reqwest::Certificate::from_pem_bundle(&pem)
                    .map_err(|e| bad(path, "--tls-ca", &format!("not PEM certificates: {e}")))?;
                if certificates.is_empty() {
                    return Err(bad(path, "--tls-ca", "it holds no PEM certificate"));
                }
                Some(pem)
            }
            None => None,
        };
        Ok(Credentials { authorization, ca_pem })
    }

    /// Whether `--tls-ca` was given.
    pub fn has_ca(&self) -> bool {
        self.ca_pem.is_some()
    }

    /// An HTTP client builder that sends the token on every request and trusts the CA.
    pub fn http_client(&self) -> Result<reqwest::ClientBuilder, BenchError> {
        let mut builder = reqwest::Client::builder();
        if let Some(authorization) = &self.authorization {
            let mut value = HeaderValue::from_str(authorization)
                .map_err(|_| BenchError::Config("--token-file: the token is not visible ASCII".into()))?;
            value.set_sensitive(true);
            builder = builder.default_headers(HeaderMap::from_iter([(AUTHORIZATION, value)]));
        }
        if let Some(pem) = &self.ca_pem {
            for certificate in reqwest::Certificate::from_pem_bundle(pem)
                .map_err(|e| BenchError::Config(format!("--tls-ca: {e}")))?
            {
                builder = builder.add_root_certificate(certificate);
            }
        }
        Ok(builder)
    }

    /// The TLS settings of a grpcs:// channel: the system's roots and the CA.
    pub fn grpc_tls(&self) -> ClientTlsConfig {
        let config = ClientTlsConfig::new().with_native_roots();
        match &self.ca_pem {
            Some(pem) => config.ca_certificate(Certificate::from_pem(pem)),
            None => config,
        }
    }

    /// The interceptor that adds the token to every gRPC call.
    pub fn grpc_interceptor(&self) -> Result<BearerToken, BenchError> {
        let value = self
            .authorization
            .as_deref()
            .map(|a| {
                let mut value: MetadataValue<Ascii> = a
                    .parse()
                    .map_err(|_| BenchError::Config("--token-file: the token is not visible ASCII".into()))?;
                value.set_sensitive(true);
                Ok::<_, BenchError>(value)
            })
            .transpose()?;
        Ok(BearerToken(value))
    }
}

/// Adds `authorization: Bearer TOKEN` to each gRPC call (nothing without a token).
#[derive(Clone)]
pub struct BearerToken(Option<MetadataValue<Ascii>>);

impl tonic::service::Interceptor for BearerToken {
    fn call(&mut self, mut request: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(value) = &self.0 {
            request.metadata_mut().insert("authorization", value.clone());
        }
        Ok(request)
    }
}

fn bad(path: &Path, flag: &str, problem: &str) -> BenchError {
    BenchError::Config(format!("{flag} {}: {problem}", path.display()))
}

/// `Bearer TOKEN` for the first token of the file.
fn read_token(path: &Path) -> Result<String, BenchError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| bad(path, "--token-file", &format!("cannot read it: {e}")))?;
    let token = text
        .lines()
        .map(str::trim)
        .find(|line| !line.is_empty() && !line.starts_with('#'))
        .and_then(|line| line.split_whitespace().next())
        .ok_or_else(|| bad(path, "--token-file", "it holds no token (one a line: TOKEN [NAME])"))?;
    Ok(format!("Bearer {token}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_token_of_the_file_is_sent_and_never_printed() {
        let dir = tempfile::tempdir().expect("temporary folder");
        let path = dir.path().join("tokens");
        std::fs::write(&path, "# bench\n\n  s3cret-token bench-client\nother\n").expect("write");
        let files = CredentialFiles { token_file: Some(path.clone()), tls_ca: None };
        let credentials = Credentials::read(&files).expect("token");
        assert_eq!(credentials.authorization.as_deref(), Some("Bearer s3cret-token"));
        assert!(!format!("{credentials:?}").contains("s3cret"));

        std::fs::write(&path, "# none\n").expect("write");
        let error = Credentials::read(&files).expect_err("no token").to_string();
        assert!(error.contains("--token-file") && error.contains("no token"), "{error}");
        let files = CredentialFiles { token_file: None, tls_ca: Some(path.clone()) };
        let error = Credentials::read(&files).expect_err("no certificate").to_string();
        assert!(error.contains("--tls-ca") && error.contains("no PEM certificate"), "{error}");
        let files = CredentialFiles { token_file: None, tls_ca: Some(dir.path().join("missing")) };
        let error = Credentials::read(&files).expect_err("missing").to_string();
        assert!(error.contains("cannot read"), "{error}");
    }
}
