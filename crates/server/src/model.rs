//! A loaded model version: its configuration, its scheduler, and the request path through the
//! prediction cache to the scheduler.

use std::sync::Arc;
use std::time::Instant;

use rtserve_core::{
    cache_enabled, cache_key, validate_request, CacheOutcome, InferRequest, InferResponse, ModelConfig,
    NamedTensor, PredictionCache, Scheduler,
};

use crate::ServerError;

/// One model version, ready to serve.
pub struct LoadedModel {
    pub config: ModelConfig,
    pub version: u64,
    /// The engine that runs it (`tract`, `onnxruntime`).
    pub engine: &'static str,
    pub scheduler: Scheduler,
    cache: PredictionCache,
}

/// A reply, and where it came from: `None` when the model does not use the cache.
pub struct Inferred {
    pub response: InferResponse,
    pub cache: Option<CacheOutcome>,
}

impl LoadedModel {
    pub fn new(
        config: ModelConfig,
        version: u64,
        engine: &'static str,
        scheduler: Scheduler,
        cache: PredictionCache,
    ) -> Self {
        LoadedModel { config, version, engine, scheduler, cache }
    }

    /// Validates the request against the config, then answers it from the cache (when the model
    /// has `response_cache` on and the request does not bypass it) or through the scheduler.
    /// `deadline` is the caller's own (the gRPC deadline): the request never runs after it.
    pub async fn infer(
        self: &Arc<Self>,
        mut request: InferRequest,
        deadline: Option<Instant>,
    ) -> Result<Inferred, ServerError> {
        validate_request(&self.config, &request)?;
        let outputs = if request.outputs.is_empty() {
            self.config.outputs.iter().map(|o| o.name.clone()).collect()
        } else {
            std::mem::take(&mut request.outputs)
        };
        let id = std::mem::take(&mut request.id);
        let (outputs, cache) = if self.config.response_cache {
            let enabled = cache_enabled(true, &request);
            let key = cache_key(&self.config.name, &self.version.to_string(), &request.inputs, &outputs, &[]);
            let model = self.clone();
            let requested = outputs.clone();
            let compute = async move { model.scheduler.infer(request, requested, deadline).await };
            let (result, outcome) = self.cache.get_or_compute(key, enabled, compute).await;
            (in_requested_order(&result?, &outputs), Some(outcome))
        } else {
            (self.scheduler.infer(request, outputs, deadline).await?, None)
        };
        let response = InferResponse {
            model_name: self.config.name.clone(),
            model_version: self.version.to_string(),
            id,
            outputs,
        };
        Ok(Inferred { response, cache })
    }
}

/// A cached reply holds its outputs in the order of the request that computed it; this request
/// gets them in its own order. Tensors share their bytes, so this copies no data.
fn in_requested_order(cached: &[NamedTensor], requested: &[String]) -> Vec<NamedTensor> {
    requested.iter().filter_map(|name| cached.iter().find(|t| &t.name == name).cloned()).collect()
}
