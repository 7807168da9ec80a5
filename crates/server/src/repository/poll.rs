//! Poll mode: the repository is read every interval, and models follow it. A model folder is
//! acted on only once it has looked the same (every file's name, size and modification time)
//! on two polls in a row, so that a file still being written is not loaded half-written; the
//! load itself also refuses a file that changes while it is read (see `load.rs`).

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use super::content::files_under;
use super::ModelRepository;

/// What a model folder looks like on disk: a digest of every file's relative name, size and
/// modification time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fingerprint(u128);

impl Fingerprint {
    /// The fingerprint of a model folder; `None` when it cannot be read.
    pub fn of(dir: &Path) -> Option<Fingerprint> {
        let mut listing = files_under(dir).ok()?;
        listing.sort_by(|a, b| a.0.cmp(&b.0));
        let mut hasher = blake3::Hasher::new();
        for (relative, metadata) in listing {
            let name = relative.to_string_lossy();
            let modified = metadata.modified().ok()?.duration_since(UNIX_EPOCH).map(|d| d.as_nanos());
            hasher.update(&(name.len() as u64).to_le_bytes());
            hasher.update(name.as_bytes());
            hasher.update(&metadata.len().to_le_bytes());
            hasher.update(&modified.unwrap_or_default().to_le_bytes());
        }
        let mut first = [0u8; 16];
        first.copy_from_slice(&hasher.finalize().as_bytes()[..16]);
        Some(Fingerprint(u128::from_le_bytes(first)))
    }
}

/// What the poller knows between polls.
#[derive(Debug, Default)]
pub struct PollState {
    /// The fingerprint each model folder had when it was last loaded (or failed to).
    pub loaded: BTreeMap<String, Fingerprint>,
    /// A changed folder seen once, waiting to look the same on the next poll.
    pending: BTreeMap<String, Fingerprint>,
}

/// What one poll decided.
#[derive(Debug, PartialEq, Eq)]
pub enum Change {
    Load(String),
    Unload(String),
}

impl PollState {
    /// Compares the folders on disk now with what is loaded. `on_disk` holds every model
    /// folder of a repository that could be read, with its fingerprint (`None`: unreadable
    /// this time, left as it is).
    pub fn changes(&mut self, on_disk: &BTreeMap<String, Option<Fingerprint>>) -> Vec<Change> {
        let mut changes = Vec::new();
        for (name, fingerprint) in on_disk {
            let Some(fingerprint) = *fingerprint else { continue };
            if self.loaded.get(name) == Some(&fingerprint) {
                self.pending.remove(name);
            } else if self.pending.get(name) == Some(&fingerprint) {
                self.pending.remove(name);
                self.loaded.insert(name.clone(), fingerprint);
                changes.push(Change::Load(name.clone()));
            } else {
                self.pending.insert(name.clone(), fingerprint);
            }
        }
        let removed: Vec<String> =
            self.loaded.keys().filter(|name| !on_disk.contains_key(*name)).cloned().collect();
        for name in removed {
            self.loaded.remove(&name);
            changes.push(Change::Unload(name));
        }
        self.pending.retain(|name, _| on_disk.contains_key(name));
        changes
    }
}

/// Polls the repository every `interval`, for as long as the server runs.
pub fn spawn(repository: Arc<ModelRepository>, mut state: PollState, interval: Duration) {
    tokio::spawn(async move {
        let mut ticks = tokio::time::interval(interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticks.tick().await;
        loop {
            ticks.tick().await;
            let scan = repository.clone();
            let on_disk = match tokio::task::spawn_blocking(move || scan.fingerprints()).await {
                Ok(Ok(on_disk)) => on_disk,
                Ok(Err(reason)) => {
                    tracing::warn!("repository poll skipped, models left as they are: {reason}");
                    continue;
                }
                Err(e) => {
                    tracing::error!("repository poll failed: {e}");
                    continue;
                }
            };
            for change in state.changes(&on_disk) {
                match change {
                    Change::Load(name) => {
                        tracing::info!(model = %name, "repository poll: new or changed, loading");
                        if let Err(e) = repository.load(&name).await {
                            tracing::error!(model = %name, "repository poll: {e}");
                        }
                    }
                    Change::Unload(name) => {
                        tracing::info!(model = %name, "repository poll: removed, unloading");
                        if let Err(e) = repository.unload(&name, None).await {
                            tracing::error!(model = %name, "repository poll: {e}");
                        }
                    }
                }
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn disk(entries: &[(&str, u128)]) -> BTreeMap<String, Option<Fingerprint>> {
        entries.iter().map(|(name, f)| (name.to_string(), Some(Fingerprint(*f)))).collect()
    }

    #[test]
    fn a_change_is_loaded_only_once_it_is_stable() {
        let mut state = PollState::default();
        state.loaded.insert("a".into(), Fingerprint(1));
        assert_eq!(state.changes(&disk(&[("a", 1)])), vec![]);
        // Being written: a new fingerprint each poll.
        assert_eq!(state.changes(&disk(&[("a", 2)])), vec![]);
        assert_eq!(state.changes(&disk(&[("a", 3)])), vec![]);
        // The same twice: loaded, once.
        assert_eq!(state.changes(&disk(&[("a", 3)])), vec![Change::Load("a".into())]);
        assert_eq!(state.changes(&disk(&[("a", 3)])), vec![]);
        // A new model too.
        assert_eq!(state.changes(&disk(&[("a", 3), ("b", 7)])), vec![]);
        assert_eq!(state.changes(&disk(&[("a", 3), ("b", 7)])), vec![Change::Load("b".into())]);
    }

    #[test]
    fn removed_models_unload_and_unreadable_ones_stay() {
        let mut state = PollState::default();
        state.loaded.insert("a".into(), Fingerprint(1));
        state.loaded.insert("b".into(), Fingerprint(2));
        let mut on_disk = disk(&[("a", 1)]);
        on_disk.insert("b".into(), None);
        assert_eq!(state.changes(&on_disk), vec![], "b unreadable: left as it is");
        assert_eq!(state.changes(&disk(&[("b", 2)])), vec![Change::Unload("a".into())]);
        // A change back to what is loaded cancels a pending one.
        assert_eq!(state.changes(&disk(&[("b", 5)])), vec![]);
        assert_eq!(state.changes(&disk(&[("b", 2)])), vec![]);
        assert_eq!(state.changes(&disk(&[("b", 5)])), vec![]);
    }

    #[test]
    fn fingerprint_follows_size_time_and_names() {
        let dir = tempfile::tempdir().expect("temporary folder");
        std::fs::create_dir(dir.path().join("1")).expect("folder");
        std::fs::write(dir.path().join("1/model.onnx"), b"abc").expect("write");
        let first = Fingerprint::of(dir.path()).expect("readable");
        assert_eq!(Some(first), Fingerprint::of(dir.path()));
        std::fs::write(dir.path().join("1/model.onnx"), b"abcd").expect("write");
        let grown = Fingerprint::of(dir.path()).expect("readable");
        assert_ne!(first, grown);
        std::fs::create_dir(dir.path().join("2")).expect("folder");
        std::fs::write(dir.path().join("2/model.onnx"), b"x").expect("write");
        assert_ne!(Some(grown), Fingerprint::of(dir.path()));
        assert_eq!(Fingerprint::of(&dir.path().join("missing")), None);
    }
}
