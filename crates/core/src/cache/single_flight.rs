//! The registry of in-flight misses: the first request for a key leads (computes), later ones
//! wait for the leader's result.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::watch;

use super::key::CacheKey;
use super::local::CachedOutputs;

/// What waiters learn from their leader.
#[derive(Clone, Debug)]
pub(crate) enum FlightResult {
    Done(CachedOutputs),
    /// The leader's computation failed, or was lost (panicked). The error itself stays with the
    /// leader: it may be the leader's own (its deadline, its priority), so waiters retry.
    Failed,
}

type Slot = Option<FlightResult>;

struct Flight {
    id: u64,
    result: watch::Receiver<Slot>,
}

/// The in-flight computations, by key.
#[derive(Default)]
pub(crate) struct Flights {
    map: Mutex<HashMap<CacheKey, Flight>>,
    next_id: AtomicU64,
}

/// A request's part in a flight.
pub(crate) enum Role {
    /// The entry appeared while joining; no flight needed.
    Hit(CachedOutputs),
    /// Compute, then [`Leader::finish`].
    Leader(Leader),
    /// Wait with [`Waiter::wait`].
    Waiter(Waiter),
}

impl Flights {
    /// Leads a new flight for `key`, or joins the one in progress. `recheck` runs under the
    /// registry lock: a flight that completes between the caller's cache miss and this call has
    /// already inserted its result, and `recheck` finds it instead of starting a second flight.
    pub(crate) fn join(
        self: &Arc<Self>,
        key: &CacheKey,
        recheck: impl FnOnce() -> Option<CachedOutputs>,
    ) -> Role {
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(flight) = map.get(key) {
            return Role::Waiter(Waiter { result: flight.result.clone() });
        }
        if let Some(hit) = recheck() {
            return Role::Hit(hit);
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = watch::channel(None);
        map.insert(key.clone(), Flight { id, result: rx });
        Role::Leader(Leader { tx, flights: self.clone(), key: key.clone(), id })
    }

    /// Forgets the model's flights: they finish for the requests already waiting on them, but new
    /// requests start fresh ones.
    pub(crate) fn forget_model(&self, model: &str) {
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        map.retain(|key, _| key.model() != model);
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.map.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    fn remove(&self, key: &CacheKey, id: u64) {
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        if map.get(key).is_some_and(|flight| flight.id == id) {
            map.remove(key);
        }
    }
}

/// The request that computes. Dropping it without [`Leader::finish`] (a panic) ends the flight
/// as failed, so waiters never hang.
pub(crate) struct Leader {
    tx: watch::Sender<Slot>,
    flights: Arc<Flights>,
    key: CacheKey,
    id: u64,
}

impl Leader {
    /// Ends the flight. Insert a successful result into the cache before calling this, so that no
    /// request finds neither the entry nor the flight.
    pub(crate) fn finish(self, result: FlightResult) {
        self.tx.send_replace(Some(result));
        // Drop removes the flight.
    }
}

impl Drop for Leader {
    fn drop(&mut self) {
        self.flights.remove(&self.key, self.id);
        // If `finish` was not called the sender drops with the slot empty: waiters see Failed.
    }
}

/// A request waiting for a leader.
pub(crate) struct Waiter {
    result: watch::Receiver<Slot>,
}

impl Waiter {
    pub(crate) async fn wait(mut self) -> FlightResult {
        match self.result.wait_for(Option::is_some).await {
            Ok(slot) => slot.clone().unwrap_or(FlightResult::Failed),
            Err(_) => FlightResult::Failed,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::key::cache_key;
    use crate::{NamedTensor, Tensor};

    fn key(model: &str) -> CacheKey {
        cache_key(model, "1", &[], &[], &[])
    }

    fn value() -> CachedOutputs {
        Arc::new(vec![NamedTensor {
            name: "y".into(),
            tensor: Tensor::from_f32(vec![1], &[1.0]).expect("valid"),
        }])
    }

    fn leader(role: Role) -> Leader {
        match role {
            Role::Leader(l) => l,
            _ => panic!("expected to lead"),
        }
    }

    fn waiter(role: Role) -> Waiter {
        match role {
            Role::Waiter(w) => w,
            _ => panic!("expected to wait"),
        }
    }

    #[tokio::test]
    async fn second_request_waits_for_the_first() {
        let flights = Arc::new(Flights::default());
        let lead = leader(flights.join(&key("m"), || None));
        let wait = waiter(flights.join(&key("m"), || None));
        let v = value();
        lead.finish(FlightResult::Done(v.clone()));
        assert_eq!(flights.len(), 0);
        match wait.wait().await {
            FlightResult::Done(got) => assert!(Arc::ptr_eq(&got, &v)),
            FlightResult::Failed => panic!("expected the leader's value"),
        }
        // The next request leads a new flight.
        let _lead = leader(flights.join(&key("m"), || None));
    }

    #[tokio::test]
    async fn recheck_under_the_lock_turns_a_miss_into_a_hit() {
        let flights = Arc::new(Flights::default());
        assert!(matches!(flights.join(&key("m"), || Some(value())), Role::Hit(_)));
        assert_eq!(flights.len(), 0);
    }

    #[tokio::test]
    async fn a_lost_leader_fails_its_waiters() {
        let flights = Arc::new(Flights::default());
        let lead = leader(flights.join(&key("m"), || None));
        let wait = waiter(flights.join(&key("m"), || None));
        drop(lead);
        assert!(matches!(wait.wait().await, FlightResult::Failed));
        assert_eq!(flights.len(), 0);
    }

    #[tokio::test]
    async fn forgetting_a_model_starts_new_flights_and_the_old_one_cannot_remove_them() {
        let flights = Arc::new(Flights::default());
        let old = leader(flights.join(&key("m"), || None));
        let other = leader(flights.join(&key("n"), || None));
        flights.forget_model("m");
        assert_eq!(flights.len(), 1);
        let new = leader(flights.join(&key("m"), || None));
        old.finish(FlightResult::Failed);
        // The new flight is still registered: a third request waits on it.
        let wait = waiter(flights.join(&key("m"), || None));
        new.finish(FlightResult::Done(value()));
        assert!(matches!(wait.wait().await, FlightResult::Done(_)));
        drop(other);
    }
}
