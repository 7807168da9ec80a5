//! Bearer-token authentication: the token files (`--auth-token-file`, `--admin-token-file`),
//! which access each endpoint needs, and the check of a presented token, in constant time.
//!
//! A token file holds one token a line, optionally followed by a name for the logs:
//! `TOKEN [NAME]` (the token is the first word; the rest of the line is the name; without one the
//! name is `FILE:LINE`). Blank lines and lines starting with `#` are skipped. A token is visible
//! ASCII (what an HTTP header and gRPC metadata carry). A file with no token, a bad token or the
//! same token twice is refused, naming the file and the line.
//!
//! The sets are reread on [`Auth::reload`] (SIGHUP); a file that fails then leaves the tokens
//! as they were. Tokens are kept only as SHA-256 digests, and a presented token is compared with
//! every digest of the set without stopping at the first match, so that neither the content
//! nor the length of a token can be learnt from the time a refusal takes.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use sha2::{Digest, Sha256};

/// What an endpoint needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Anyone: health probes, the static pages, `/metrics` unless `--metrics-auth`.
    Open,
    /// A token from `--auth-token-file` or `--admin-token-file`.
    Inference,
    /// A token from `--admin-token-file`: the repository API (load, unload, index).
    Admin,
}

/// Where the tokens come from.
#[derive(Debug, Clone, Default)]
pub struct AuthConfig {
    /// Tokens for inference, metadata, statistics and the status feed. `None`: those are open.
    pub token_file: Option<PathBuf>,
    /// Tokens for the repository API (and everything else). `None` with `token_file` set: the
    /// repository API is refused to every token (403); `None` without it: open.
    pub admin_token_file: Option<PathBuf>,
    /// `/metrics` needs a token (when `token_file` or `admin_token_file` is given).
    pub metrics_auth: bool,
}

/// Why a token file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TokenFileError {
    #[error("cannot read token file {path} ({flag}): {source}")]
    Read { path: PathBuf, flag: &'static str, source: std::io::Error },
    #[error("token file {path} ({flag}) line {line}: {problem}")]
    Line { path: PathBuf, flag: &'static str, line: usize, problem: String },
    #[error("token file {path} ({flag}) holds no token (one a line: TOKEN [NAME])")]
    Empty { path: PathBuf, flag: &'static str },
}

/// Why a request is refused: the `reason` label of `rtserve_auth_failures_total`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// No `Authorization: Bearer` header (401).
    Missing,
    /// A token that is in no set (401).
    Invalid,
    /// A valid token without the access the endpoint needs (403); the token's name.
    Forbidden { name: String, admin_file: bool },
}

impl Refusal {
    pub fn reason(&self) -> &'static str {
        match self {
            Refusal::Missing => "missing",
            Refusal::Invalid => "invalid",
            Refusal::Forbidden { .. } => "forbidden",
        }
    }
}

impl From<Refusal> for crate::ServerError {
    fn from(refusal: Refusal) -> Self {
        use crate::ServerError::{PermissionDenied, Unauthenticated};
        match refusal {
            Refusal::Missing => Unauthenticated(
                "this endpoint needs a token: send the header 'Authorization: Bearer TOKEN'".into(),
            ),
            Refusal::Invalid => Unauthenticated("the bearer token is not valid".into()),
            Refusal::Forbidden { name, admin_file: true } => PermissionDenied(format!(
                "token '{name}' may not use the model repository API: it needs an admin token"
            )),
            Refusal::Forbidden { name, admin_file: false } => PermissionDenied(format!(
                "token '{name}' may not use the model repository API: this server has no admin \
                 tokens (--admin-token-file)"
            )),
        }
    }
}

struct Token {
    digest: [u8; 32],
    name: String,
}

#[derive(Default)]
struct TokenSets {
    /// `None`: the file was not given.
    inference: Option<Vec<Token>>,
    admin: Option<Vec<Token>>,
}

/// The token sets, swapped whole on reload.
pub struct Auth {
    config: AuthConfig,
    sets: RwLock<Arc<TokenSets>>,
}

impl Auth {
    /// Reads the token files; with neither, every endpoint is open.
    pub fn load(config: AuthConfig) -> Result<Auth, TokenFileError> {
        let sets = read_sets(&config)?;
        Ok(Auth { config, sets: RwLock::new(Arc::new(sets)) })
    }

    /// No authentication.
    pub fn disabled() -> Auth {
        Auth { config: AuthConfig::default(), sets: RwLock::new(Arc::new(TokenSets::default())) }
    }

    /// Whether any token file was given.
    pub fn enabled(&self) -> bool {
        self.config.token_file.is_some() || self.config.admin_token_file.is_some()
    }

    /// Rereads the files. On error the tokens stay as they were. Returns the number of
    /// (inference, admin) tokens now in force.
    pub fn reload(&self) -> Result<(usize, usize), TokenFileError> {
        let sets = read_sets(&self.config)?;
        let counts = (sets.inference.as_ref().map_or(0, Vec::len), sets.admin.as_ref().map_or(0, Vec::len));
        *self.sets.write().unwrap_or_else(|poisoned| poisoned.into_inner()) = Arc::new(sets);
        Ok(counts)
    }

    /// What an HTTP path needs.
    pub fn http_access(&self, path: &str) -> Access {
        http_access(path, self.config.metrics_auth)
    }

    /// Checks the value of an `Authorization` header (HTTP) or `authorization` metadata (gRPC)
    /// for `need`. Returns the token's name when one was checked.
    pub fn check(&self, need: Access, authorization: Option<&[u8]>) -> Result<Option<String>, Refusal> {
        let sets = self.sets.read().unwrap_or_else(|poisoned| poisoned.into_inner()).clone();
        let (inference, admin) = (sets.inference.as_deref(), sets.admin.as_deref());
        let protected = match need {
            Access::Open => false,
            Access::Inference => inference.is_some(),
            Access::Admin => inference.is_some() || admin.is_some(),
        };
        if !protected {
            return Ok(None);
        }
        let token = authorization.and_then(bearer).ok_or(Refusal::Missing)?;
        let digest: [u8; 32] = Sha256::digest(token).into();
        if let Some(name) = admin.and_then(|set| find(set, &digest)) {
            return Ok(Some(name));
        }
        let name = inference.and_then(|set| find(set, &digest)).ok_or(Refusal::Invalid)?;
        match need {
            Access::Admin => Err(Refusal::Forbidden { name, admin_file: admin.is_some() }),
            Access::Open | Access::Inference => Ok(Some(name)),
        }
    }
}

/// What an HTTP path needs: health probes and the static pages are open, `/metrics` as
/// configured, the repository API needs an admin token, everything else an inference token.
fn http_access(path: &str, metrics_auth: bool) -> Access {
    match path {
        "/" | "/docs" | "/openapi.json" => Access::Open,
        "/metrics" if !metrics_auth => Access::Open,
        _ if path.starts_with("/v2/health/") || path.starts_with("/docs/") => Access::Open,
        _ if path.starts_with("/v2/repository/") => Access::Admin,
        _ => Access::Inference,
    }
}

/// The token of `Bearer TOKEN` (the scheme in any case, as RFC 7235 has it).
fn bearer(value: &[u8]) -> Option<&[u8]> {
    let value = value.trim_ascii();
    let (scheme, rest) = value.split_at_checked(7)?;
    let token = rest.trim_ascii_start();
    (scheme.eq_ignore_ascii_case(b"bearer ") && !token.is_empty()).then_some(token)
}

/// The name of the token with `digest`: every entry is compared, whatever matches.
fn find(set: &[Token], digest: &[u8; 32]) -> Option<String> {
    let mut found = None;
    for token in set {
        if constant_time_eq::constant_time_eq_32(&token.digest, digest) {
            found = Some(&token.name);
        }
    }
    found.cloned()
}

fn read_sets(config: &AuthConfig) -> Result<TokenSets, TokenFileError> {
    let read = |path: &Option<PathBuf>, flag| path.as_deref().map(|p| read_token_file(p, flag)).transpose();
    Ok(TokenSets {
        inference: read(&config.token_file, "--auth-token-file")?,
        admin: read(&config.admin_token_file, "--admin-token-file")?,
    })
}

fn read_token_file(path: &Path, flag: &'static str) -> Result<Vec<Token>, TokenFileError> {
    let text = std::fs::read_to_string(path).map_err(|source| TokenFileError::Read {
        path: path.to_path_buf(),
        flag,
        source,
    })?;
    warn_if_others_can_read(path, flag);
    parse_tokens(&text, &path.display().to_string()).map_err(|e| match e {
        None => TokenFileError::Empty { path: path.to_path_buf(), flag },
        Some((line, problem)) => TokenFileError::Line { path: path.to_path_buf(), flag, line, problem },
    })
}

/// Tokens are secrets: a file that the group or others may read is worth a warning.
fn warn_if_others_can_read(path: &Path, flag: &str) {
    use std::os::unix::fs::PermissionsExt;
    if let Ok(meta) = std::fs::metadata(path) {
        if meta.permissions().mode() & 0o077 != 0 {
            tracing::warn!(
                "token file {} ({flag}) may be read by other users (mode {:o}): chmod 600 it",
                path.display(),
                meta.permissions().mode() & 0o777
            );
        }
    }
}

/// Parses a token file's text; `file` names tokens without a name. The error is `None` for a
/// file without tokens, else the line (from 1) and what is wrong with it.
fn parse_tokens(text: &str, file: &str) -> Result<Vec<Token>, Option<(usize, String)>> {
    let mut tokens: Vec<(Token, usize)> = Vec::new();
    for (index, line) in text.lines().enumerate() {
        let number = index + 1;
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (token, name) = line.split_once(char::is_whitespace).unwrap_or((line, ""));
        if let Some(bad) = token.chars().find(|c| !c.is_ascii_graphic()) {
            return Err(Some((
                number,
                format!(
                    "the token holds {bad:?}; a token is visible ASCII (an HTTP header carries no other)"
                ),
            )));
        }
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        if let Some((_, first)) = tokens.iter().find(|(t, _)| t.digest == digest) {
            return Err(Some((number, format!("the same token as line {first}"))));
        }
        let name = match name.trim() {
            "" => format!("{file}:{number}"),
            name => name.to_string(),
        };
        tokens.push((Token { digest, name }, number));
    }
    if tokens.is_empty() {
        return Err(None);
    }
    Ok(tokens.into_iter().map(|(token, _)| token).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, text).expect("write token file");
        path
    }

    fn temp_dir(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("rtserve-auth-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temporary folder");
        dir
    }

    #[test]
    fn parses_names_comments_and_blank_lines() {
        let tokens =
            parse_tokens("# clients\n\nabc123 alice\n  def456  \nghi bob smith\n", "t").expect("parse");
        let names: Vec<&str> = tokens.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(names, ["alice", "t:4", "bob smith"]);
    }

    #[test]
    fn refuses_empty_files_duplicates_and_non_ascii() {
        assert!(matches!(parse_tokens("# nothing\n\n", "t"), Err(None)));
        assert_eq!(
            parse_tokens("a x\nb\na y\n", "t").err(),
            Some(Some((3, "the same token as line 1".into())))
        );
        let Err(Some((line, problem))) = parse_tokens("ok\ntoké\n", "t") else { panic!("accepted") };
        assert_eq!(line, 2);
        assert!(problem.contains("visible ASCII"), "{problem}");
    }

    #[test]
    fn bearer_header_parsing() {
        assert_eq!(bearer(b"Bearer abc"), Some(&b"abc"[..]));
        assert_eq!(bearer(b"bearer   abc "), Some(&b"abc"[..]));
        assert_eq!(bearer(b"Basic abc"), None);
        assert_eq!(bearer(b"Bearer "), None);
        assert_eq!(bearer(b"abc"), None);
    }

    #[test]
    fn routes_need_what_the_docs_say() {
        assert_eq!(http_access("/v2/health/ready", true), Access::Open);
        assert_eq!(http_access("/", true), Access::Open);
        assert_eq!(http_access("/docs/swagger-ui.css", true), Access::Open);
        assert_eq!(http_access("/metrics", false), Access::Open);
        assert_eq!(http_access("/metrics", true), Access::Inference);
        assert_eq!(http_access("/v2/status", false), Access::Inference);
        assert_eq!(http_access("/v2/models/mlp/infer", false), Access::Inference);
        assert_eq!(http_access("/v2/models/mlp/ready", false), Access::Inference);
        assert_eq!(http_access("/v2/repository/index", false), Access::Admin);
    }

    #[test]
    fn inference_and_admin_tokens() {
        let dir = temp_dir("sets");
        let auth = Auth::load(AuthConfig {
            token_file: Some(write(&dir, "tokens", "inference-token client\n")),
            admin_token_file: Some(write(&dir, "admin", "admin-token ops\n")),
            metrics_auth: false,
        })
        .expect("load");
        let check = |need, header: &str| auth.check(need, Some(header.as_bytes()));
        assert_eq!(auth.check(Access::Inference, None), Err(Refusal::Missing));
        assert_eq!(check(Access::Inference, "Bearer nope"), Err(Refusal::Invalid));
        assert_eq!(check(Access::Inference, "Bearer inference-token"), Ok(Some("client".into())));
        assert_eq!(check(Access::Inference, "Bearer admin-token"), Ok(Some("ops".into())));
        assert_eq!(check(Access::Admin, "Bearer admin-token"), Ok(Some("ops".into())));
        assert_eq!(
            check(Access::Admin, "Bearer inference-token"),
            Err(Refusal::Forbidden { name: "client".into(), admin_file: true })
        );
        assert_eq!(check(Access::Admin, "Bearer nope"), Err(Refusal::Invalid));
        assert_eq!(auth.check(Access::Open, None), Ok(None));
    }

    #[test]
    fn without_admin_file_the_repository_api_is_forbidden() {
        let dir = temp_dir("no-admin");
        let config = AuthConfig { token_file: Some(write(&dir, "tokens", "tok\n")), ..AuthConfig::default() };
        let auth = Auth::load(config).expect("load");
        assert!(matches!(
            auth.check(Access::Admin, Some(b"Bearer tok")),
            Err(Refusal::Forbidden { admin_file: false, .. })
        ));
        assert_eq!(auth.check(Access::Admin, None), Err(Refusal::Missing));
    }

    #[test]
    fn reload_swaps_tokens_and_keeps_them_on_error() {
        let dir = temp_dir("reload");
        let path = write(&dir, "tokens", "old\n");
        let auth =
            Auth::load(AuthConfig { token_file: Some(path.clone()), ..AuthConfig::default() }).expect("load");
        write(&dir, "tokens", "new\n");
        assert_eq!(auth.reload().expect("reload"), (1, 0));
        assert_eq!(auth.check(Access::Inference, Some(b"Bearer old")), Err(Refusal::Invalid));
        assert!(auth.check(Access::Inference, Some(b"Bearer new")).is_ok());
        write(&dir, "tokens", "\n");
        assert!(matches!(auth.reload(), Err(TokenFileError::Empty { .. })));
        assert!(auth.check(Access::Inference, Some(b"Bearer new")).is_ok());
    }

    #[test]
    fn a_missing_file_names_the_flag_and_path() {
        let config = AuthConfig { token_file: Some("/nonexistent/tokens".into()), ..AuthConfig::default() };
        let error = Auth::load(config).err().expect("refused").to_string();
        assert!(error.contains("/nonexistent/tokens") && error.contains("--auth-token-file"), "{error}");
    }
}
