//! The model repository: Triton's layout `<repo>/<model>/<version>/model.onnx`, with explicit
//! load and unload. A model that fails to load is reported and the others keep serving; a
//! reload that fails leaves the previous versions serving.

mod accelerators;
mod config_file;
mod content;
mod control;
mod error;
mod load;
mod load_request;
mod pbtxt;
mod placement;
mod poll;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};

use crate::model::LoadedModel;
use crate::ServerError;
use rtserve_engines::Engines;

pub use config_file::{parse_pbtxt, parse_toml, read_config, read_config_file, DEFAULT_MODEL_FILENAME};
pub use control::{ModelControl, ModelControlMode, StartupModels};
pub use error::LoadError;
pub use load::{check_against_signature, configured_threads, infer_config, Serving, INFERRED_MAX_BATCH_SIZE};
pub use load_request::RepositoryParameter;
pub use placement::{GpuDefaults, ALLOW_CPU_FALLBACK_PARAMETER};

use load_request::{LoadRequest, UnloadRequest};

use poll::{Fingerprint, PollState};

/// A model's state as the repository index reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModelState {
    Ready,
    Loading,
    Unavailable,
}

impl ModelState {
    pub fn as_str(self) -> &'static str {
        match self {
            ModelState::Ready => "READY",
            ModelState::Loading => "LOADING",
            ModelState::Unavailable => "UNAVAILABLE",
        }
    }
}

struct ModelEntry {
    state: ModelState,
    reason: String,
    versions: BTreeMap<u64, Arc<LoadedModel>>,
}

/// One row of the repository index.
#[derive(Debug, Clone)]
pub struct IndexEntry {
    pub name: String,
    /// Empty for a model with no loaded version.
    pub version: String,
    pub state: ModelState,
    pub reason: String,
}

/// All models of the configured repository folders.
pub struct ModelRepository {
    roots: Vec<PathBuf>,
    engines: Engines,
    serving: Serving,
    control: ModelControl,
    models: RwLock<BTreeMap<String, ModelEntry>>,
    /// Serializes loads and unloads.
    load_lock: tokio::sync::Mutex<()>,
}

impl ModelRepository {
    pub fn new(roots: Vec<PathBuf>, engines: Engines, serving: Serving, control: ModelControl) -> Self {
        ModelRepository {
            roots,
            engines,
            serving,
            control,
            models: RwLock::new(BTreeMap::new()),
            load_lock: tokio::sync::Mutex::new(()),
        }
    }

    /// Model folders on disk by name. A name found in two repositories is an error for it.
    /// A repository that cannot be read is logged and skipped.
    fn discover(&self) -> BTreeMap<String, Result<PathBuf, LoadError>> {
        let (found, unreadable) = self.scan();
        for reason in unreadable {
            tracing::error!("{reason}");
        }
        found
    }

    /// [`ModelRepository::discover`], with the repositories that could not be read.
    fn scan(&self) -> (BTreeMap<String, Result<PathBuf, LoadError>>, Vec<String>) {
        let mut found: BTreeMap<String, Result<PathBuf, LoadError>> = BTreeMap::new();
        let mut unreadable = Vec::new();
        for root in &self.roots {
            let entries = match std::fs::read_dir(root) {
                Ok(entries) => entries,
                Err(e) => {
                    unreadable.push(format!("cannot read model repository {}: {e}", root.display()));
                    continue;
                }
            };
            for entry in entries.filter_map(Result::ok) {
                let path = entry.path();
                let Some(name) = entry.file_name().to_str().map(str::to_string) else { continue };
                if name.starts_with('.') || !path.is_dir() {
                    continue;
                }
                let result = match found.remove(&name) {
                    Some(Ok(first)) => Err(LoadError::Layout(format!(
                        "model '{name}' is in two repositories: {} and {}",
                        first.display(),
                        path.display()
                    ))),
                    Some(Err(e)) => Err(e),
                    None => Ok(path),
                };
                found.insert(name, result);
            }
        }
        (found, unreadable)
    }

    /// Every model folder with its [`Fingerprint`] (`None` when it cannot be read now); an
    /// error when a repository cannot be read, so that a poll does not take its models for
    /// removed. Blocking.
    fn fingerprints(&self) -> Result<BTreeMap<String, Option<Fingerprint>>, String> {
        let (found, unreadable) = self.scan();
        if let Some(reason) = unreadable.into_iter().next() {
            return Err(reason);
        }
        Ok(found.into_iter().filter_map(|(name, dir)| Some((name, Fingerprint::of(&dir.ok()?)))).collect())
    }

    /// Loads what the model control loads at start; in poll mode, then polls the repository.
    /// A model that fails to load is logged and reported as UNAVAILABLE; a `--load-model`
    /// name with no folder is an error.
    pub async fn start(self: &Arc<Self>) -> Result<(), String> {
        match &self.control {
            ModelControl::None | ModelControl::Explicit(StartupModels::All) => self.load_all().await,
            ModelControl::Explicit(StartupModels::Named(names)) => {
                let on_disk = self.discover();
                if let Some(missing) = names.iter().find(|name| !on_disk.contains_key(*name)) {
                    return Err(format!("--load-model '{missing}': no such model folder in the repository"));
                }
                for name in names {
                    if let Err(e) = self.load(name).await {
                        tracing::error!(model = %name, "{e}");
                    }
                }
            }
            ModelControl::Poll { interval } => {
                // Taken before loading, so that a change made while loading is picked up.
                let scan = self.clone();
                let on_disk = tokio::task::spawn_blocking(move || scan.fingerprints())
                    .await
                    .map_err(|e| format!("repository scan failed: {e}"))??;
                let mut state = PollState::default();
                state.loaded = on_disk.into_iter().filter_map(|(name, f)| Some((name, f?))).collect();
                self.load_all().await;
                poll::spawn(self.clone(), state, *interval);
            }
        }
        Ok(())
    }

    /// Loads every model on disk; failures are logged and reported as UNAVAILABLE.
    async fn load_all(self: &Arc<Self>) {
        for name in self.discover().into_keys() {
            if let Err(e) = self.load(&name).await {
                tracing::error!(model = %name, "{e}");
            }
        }
    }

    /// Loads (or reloads) a model from disk.
    pub async fn load(self: &Arc<Self>, name: &str) -> Result<(), ServerError> {
        self.load_with(name, LoadRequest::default()).await
    }

    /// A load asked for through the repository API, with the request's parameters: refused
    /// unless the model control is explicit, as Triton's (before any file is written).
    pub async fn request_load(
        self: &Arc<Self>,
        name: &str,
        parameters: BTreeMap<String, RepositoryParameter>,
    ) -> Result<(), ServerError> {
        self.check_api("load")?;
        let model = name.to_string();
        let request = tokio::task::spawn_blocking(move || LoadRequest::from_parameters(&model, parameters))
            .await
            .map_err(|e| ServerError::Internal(format!("reading the load request: {e}")))??;
        self.load_with(name, request).await
    }

    /// An unload asked for through the repository API: refused unless the model control is
    /// explicit.
    pub async fn request_unload(
        &self,
        name: &str,
        parameters: BTreeMap<String, RepositoryParameter>,
    ) -> Result<(), ServerError> {
        self.check_api("unload")?;
        let request = UnloadRequest::from_parameters(parameters)?;
        self.unload(name, request.version).await
    }

    fn check_api(&self, what: &str) -> Result<(), ServerError> {
        if self.control.api_allowed() {
            return Ok(());
        }
        Err(ServerError::ModelControlDisabled(format!(
            "explicit model {what} is not allowed: the server runs with --model-control-mode {} \
             (start it with --model-control-mode explicit to load and unload models)",
            self.control.mode_name()
        )))
    }

    /// Loads (or reloads) a model, from the repository or from the request's files, with the
    /// request's config instead of the folder's when it gives one. The new versions are swapped
    /// in only once all of them have loaded (and warmed up); requests that hold an old version
    /// finish on it.
    async fn load_with(self: &Arc<Self>, name: &str, request: LoadRequest) -> Result<(), ServerError> {
        let _guard = self.load_lock.lock().await;
        let (staged, config) = request.into_parts();
        let dir = match (&staged, self.discover().remove(name)) {
            (Some(staged), _) => staged.path().to_path_buf(),
            (None, None) => return Err(ServerError::ModelNotFound(name.to_string())),
            (None, Some(Err(reason))) => return Err(self.record_failure(name, reason)),
            (None, Some(Ok(dir))) => dir,
        };
        self.set_state(name, ModelState::Loading, "");
        let this = self.clone();
        let model = name.to_string();
        let result = tokio::task::spawn_blocking(move || {
            let loaded = load::load_model(&dir, &model, config, &this.engines, &this.serving);
            // The engines hold what they read; the staged files go.
            drop(staged);
            loaded
        })
        .await
        .unwrap_or_else(|e| Err(LoadError::Panicked(e.to_string())));
        let outcome = if result.is_ok() { "success" } else { "failed" };
        self.serving.loads.with_label_values(&[name, outcome]).inc();
        match result {
            Ok(versions) => {
                self.serving.cache.invalidate_model(name);
                let entry = ModelEntry { state: ModelState::Ready, reason: String::new(), versions };
                self.write().insert(name.to_string(), entry);
                Ok(())
            }
            Err(reason) => Err(self.record_failure(name, reason)),
        }
    }

    /// Marks a failed load; versions already serving stay.
    fn record_failure(&self, name: &str, reason: LoadError) -> ServerError {
        let mut models = self.write();
        let entry = models.entry(name.to_string()).or_insert_with(|| ModelEntry {
            state: ModelState::Unavailable,
            reason: String::new(),
            versions: BTreeMap::new(),
        });
        entry.state = if entry.versions.is_empty() { ModelState::Unavailable } else { ModelState::Ready };
        entry.reason = format!("load failed: {reason}");
        tracing::error!(model = name, "{}", entry.reason);
        ServerError::BadRequest(format!("failed to load model '{name}': {reason}"))
    }

    /// Stops serving a model, or one version of it. Requests already queued finish.
    pub async fn unload(&self, name: &str, version: Option<u64>) -> Result<(), ServerError> {
        let _guard = self.load_lock.lock().await;
        let mut models = self.write();
        let entry = models.get_mut(name).ok_or_else(|| ServerError::ModelNotFound(name.to_string()))?;
        match version {
            None => entry.versions.clear(),
            Some(version) => {
                entry.versions.remove(&version).ok_or_else(|| ServerError::VersionNotFound {
                    model: name.to_string(),
                    version: version.to_string(),
                })?;
            }
        }
        self.serving.cache.invalidate_model(name);
        if entry.versions.is_empty() {
            entry.state = ModelState::Unavailable;
            entry.reason = "unloaded".to_string();
        }
        match version {
            None => tracing::info!(model = name, "unloaded"),
            Some(version) => tracing::info!(model = name, version, "version unloaded"),
        }
        Ok(())
    }

    /// The model version to serve; `None` or an empty version means the highest loaded one.
    pub fn get(&self, name: &str, version: Option<&str>) -> Result<Arc<LoadedModel>, ServerError> {
        let models = self.read();
        let entry = models.get(name).ok_or_else(|| ServerError::ModelNotFound(name.to_string()))?;
        if entry.versions.is_empty() {
            let reason =
                if entry.reason.is_empty() { entry.state.as_str().to_string() } else { entry.reason.clone() };
            return Err(ServerError::ModelNotReady { model: name.to_string(), reason });
        }
        let not_found = || ServerError::VersionNotFound {
            model: name.to_string(),
            version: version.unwrap_or_default().to_string(),
        };
        match version.filter(|v| !v.is_empty()) {
            None => entry.versions.values().next_back().cloned().ok_or_else(not_found),
            Some(v) => {
                let number: u64 = v.parse().map_err(|_| not_found())?;
                entry.versions.get(&number).cloned().ok_or_else(not_found)
            }
        }
    }

    /// Every loaded model version.
    pub fn loaded(&self) -> Vec<Arc<LoadedModel>> {
        self.read().values().flat_map(|entry| entry.versions.values().cloned()).collect()
    }

    /// The versions that statistics cover: every loaded one, a model's loaded versions, or one
    /// version; empty names and versions mean "all".
    pub fn select(&self, name: &str, version: &str) -> Result<Vec<Arc<LoadedModel>>, ServerError> {
        match (name, version) {
            ("", _) => Ok(self.loaded()),
            (name, "") => {
                self.get(name, None)?;
                let models = self.read();
                Ok(models.get(name).map(|e| e.versions.values().cloned().collect()).unwrap_or_default())
            }
            (name, version) => Ok(vec![self.get(name, Some(version))?]),
        }
    }

    /// The loaded versions of a model, highest first.
    pub fn versions(&self, name: &str) -> Vec<String> {
        self.read()
            .get(name)
            .map(|entry| entry.versions.keys().rev().map(u64::to_string).collect())
            .unwrap_or_default()
    }

    /// Every model on disk or known to the server, one row per loaded version; with
    /// `ready_only`, just the rows of models that serve.
    pub fn index(&self, ready_only: bool) -> Vec<IndexEntry> {
        let models = self.read();
        let mut rows = Vec::new();
        let on_disk = self.discover();
        let names: std::collections::BTreeSet<&String> = models.keys().chain(on_disk.keys()).collect();
        for name in names {
            match models.get(name) {
                Some(entry) if !entry.versions.is_empty() => {
                    rows.extend(entry.versions.keys().map(|v| IndexEntry {
                        name: name.clone(),
                        version: v.to_string(),
                        state: entry.state,
                        reason: entry.reason.clone(),
                    }));
                }
                Some(entry) => rows.push(IndexEntry {
                    name: name.clone(),
                    version: String::new(),
                    state: entry.state,
                    reason: entry.reason.clone(),
                }),
                None => rows.push(IndexEntry {
                    name: name.clone(),
                    version: String::new(),
                    state: ModelState::Unavailable,
                    reason: "not loaded".to_string(),
                }),
            }
        }
        rows.retain(|row| !ready_only || row.state == ModelState::Ready);
        rows
    }

    fn set_state(&self, name: &str, state: ModelState, reason: &str) {
        let mut models = self.write();
        let entry = models.entry(name.to_string()).or_insert_with(|| ModelEntry {
            state,
            reason: String::new(),
            versions: BTreeMap::new(),
        });
        if entry.versions.is_empty() {
            entry.state = state;
        }
        entry.reason = reason.to_string();
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<String, ModelEntry>> {
        self.models.read().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, BTreeMap<String, ModelEntry>> {
        self.models.write().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}
