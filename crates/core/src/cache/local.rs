//! The local tier: a concurrent, byte-bounded, TTL-limited map from key to outputs (moka), with
//! per-model invalidation.

use std::collections::HashMap;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use moka::notification::RemovalCause;
use moka::sync::Cache;

use super::key::CacheKey;
use super::stats::Counters;
use crate::{NamedTensor, TensorData};

/// The cached outputs of one inference.
pub type CachedOutputs = Arc<Vec<NamedTensor>>;

/// Per-model generation: bumped when a model's entries are dropped, so that a computation that
/// started before cannot insert a stale reply after.
type Generations = RwLock<HashMap<Arc<str>, u64>>;

pub(crate) struct LocalTier {
    cache: Cache<CacheKey, CachedOutputs>,
    generations: Generations,
}

impl LocalTier {
    pub(crate) fn new(max_bytes: u64, ttl: Duration, counters: Arc<Counters>) -> Self {
        let cache = Cache::builder()
            .max_capacity(max_bytes)
            .weigher(|key: &CacheKey, value: &CachedOutputs| entry_weight(key, value))
            .time_to_live(ttl)
            .support_invalidation_closures()
            .eviction_listener(move |_key, _value, cause| {
                let counter: &AtomicU64 = match cause {
                    RemovalCause::Size => &counters.evictions,
                    RemovalCause::Expired => &counters.expirations,
                    RemovalCause::Explicit | RemovalCause::Replaced => return,
                };
                Counters::add(counter);
            })
            .build();
        LocalTier { cache, generations: RwLock::new(HashMap::new()) }
    }

    pub(crate) fn get(&self, key: &CacheKey) -> Option<CachedOutputs> {
        self.cache.get(key)
    }

    /// The model's generation now; pass it back to [`LocalTier::insert_if_current`].
    pub(crate) fn generation(&self, model: &str) -> u64 {
        let generations = self.generations.read().unwrap_or_else(|e| e.into_inner());
        generations.get(model).copied().unwrap_or(0)
    }

    /// Inserts unless the model's entries were dropped since `generation` was read.
    pub(crate) fn insert_if_current(&self, key: CacheKey, value: CachedOutputs, generation: u64) -> bool {
        // The read lock is held across the insert so that `invalidate_model` (write lock) cannot
        // run between the check and the insert.
        let generations = self.generations.read().unwrap_or_else(|e| e.into_inner());
        if generations.get(key.model()).copied().unwrap_or(0) != generation {
            return false;
        }
        self.cache.insert(key, value);
        true
    }

    /// Drops every entry of `model`, whatever its version.
    pub(crate) fn invalidate_model(&self, model: &str) {
        {
            let mut generations = self.generations.write().unwrap_or_else(|e| e.into_inner());
            *generations.entry(Arc::from(model)).or_insert(0) += 1;
        }
        let model: Arc<str> = Arc::from(model);
        // Only fails when invalidation closures are not enabled, which `new` always does.
        if let Err(error) = self.cache.invalidate_entries_if(move |key, _| key.model() == &*model) {
            tracing::warn!(%error, "could not invalidate cache entries");
        }
    }

    pub(crate) fn invalidate_all(&self) {
        self.cache.invalidate_all();
    }

    pub(crate) fn run_pending_tasks(&self) {
        self.cache.run_pending_tasks();
    }

    pub(crate) fn entry_count(&self) -> u64 {
        self.cache.entry_count()
    }

    pub(crate) fn weighted_size(&self) -> u64 {
        self.cache.weighted_size()
    }
}

/// Fixed cost of an entry besides its tensors: the key, the map slot, moka's bookkeeping.
const ENTRY_OVERHEAD: usize = 160;
/// Fixed cost of one tensor: the struct, its name and shape allocations.
const TENSOR_OVERHEAD: usize = 96;

/// Approximate bytes an entry holds.
pub(crate) fn entry_weight(key: &CacheKey, outputs: &CachedOutputs) -> u32 {
    let tensors: usize = outputs
        .iter()
        .map(|t| {
            let data = match t.tensor.data() {
                TensorData::Raw(bytes) => bytes.len(),
                TensorData::Strings(items) => items.iter().map(|i| i.len() + 32).sum(),
            };
            TENSOR_OVERHEAD + t.name.len() + 8 * t.tensor.shape().len() + data
        })
        .sum();
    u32::try_from(ENTRY_OVERHEAD + key.model().len() + tensors).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;

    use super::*;
    use crate::cache::key::cache_key;
    use crate::Tensor;

    fn outputs(n_floats: usize) -> CachedOutputs {
        let values = vec![0.5f32; n_floats];
        Arc::new(vec![NamedTensor {
            name: "y".into(),
            tensor: Tensor::from_f32(vec![n_floats], &values).expect("valid"),
        }])
    }

    fn key(model: &str, version: &str, x: f32) -> CacheKey {
        let input = NamedTensor { name: "x".into(), tensor: Tensor::from_f32(vec![1], &[x]).expect("valid") };
        cache_key(model, version, &[input], &[], &[])
    }

    fn tier(max_bytes: u64) -> (LocalTier, Arc<Counters>) {
        let counters = Arc::new(Counters::default());
        (LocalTier::new(max_bytes, Duration::from_secs(600), counters.clone()), counters)
    }

    #[test]
    fn hit_returns_the_same_tensors() {
        let (local, _) = tier(1 << 20);
        let value = outputs(4);
        assert!(local.insert_if_current(key("m", "1", 1.0), value.clone(), 0));
        let got = local.get(&key("m", "1", 1.0)).expect("hit");
        assert!(Arc::ptr_eq(&got, &value));
        assert!(local.get(&key("m", "1", 2.0)).is_none());
    }

    #[test]
    fn weight_counts_tensor_bytes() {
        let k = key("m", "1", 1.0);
        let small = entry_weight(&k, &outputs(10));
        let large = entry_weight(&k, &outputs(1010));
        assert_eq!(large - small, 4000);
    }

    #[test]
    fn stays_under_the_byte_limit_and_counts_evictions() {
        let max_bytes = 50_000;
        let (local, counters) = tier(max_bytes);
        // 200 entries of ~4.3 KB each: far more than fits.
        for i in 0..200 {
            local.insert_if_current(key("m", "1", i as f32), outputs(1000), 0);
            if i % 10 == 0 {
                local.run_pending_tasks();
            }
        }
        local.run_pending_tasks();
        assert!(local.weighted_size() <= max_bytes, "{} > {max_bytes}", local.weighted_size());
        assert!(local.entry_count() > 0);
        assert!(local.entry_count() < 200);
        assert!(counters.evictions.load(Ordering::Relaxed) > 0);
    }

    #[test]
    fn invalidating_a_model_drops_only_its_entries_and_blocks_stale_inserts() {
        let (local, _) = tier(1 << 20);
        local.insert_if_current(key("a", "1", 1.0), outputs(1), 0);
        local.insert_if_current(key("a", "2", 1.0), outputs(1), 0);
        local.insert_if_current(key("b", "1", 1.0), outputs(1), 0);
        // A computation for model a starts before the invalidation...
        let started_at = local.generation("a");
        local.invalidate_model("a");
        assert!(local.get(&key("a", "1", 1.0)).is_none());
        assert!(local.get(&key("a", "2", 1.0)).is_none());
        assert!(local.get(&key("b", "1", 1.0)).is_some());
        // ...and its result is not inserted after it.
        assert!(!local.insert_if_current(key("a", "1", 3.0), outputs(1), started_at));
        assert!(local.get(&key("a", "1", 3.0)).is_none());
        // New computations cache again.
        assert!(local.insert_if_current(key("a", "3", 1.0), outputs(1), local.generation("a")));
        assert!(local.get(&key("a", "3", 1.0)).is_some());
    }

    #[test]
    fn entries_expire_after_the_ttl() {
        let counters = Arc::new(Counters::default());
        let local = LocalTier::new(1 << 20, Duration::from_millis(20), counters.clone());
        local.insert_if_current(key("m", "1", 1.0), outputs(1), 0);
        // Only the absence after the TTL is asserted: a slow machine cannot make this fail.
        std::thread::sleep(Duration::from_millis(100));
        assert!(local.get(&key("m", "1", 1.0)).is_none());
        local.run_pending_tasks();
        assert_eq!(local.entry_count(), 0);
        assert_eq!(counters.expirations.load(Ordering::Relaxed), 1);
    }
}
