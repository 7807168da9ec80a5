//! A loaded model version: its configuration, its scheduler, and the request path through the
//! prediction cache to the scheduler.

use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rtserve_core::scheduler::{DurationTotal, Scheduled};
use rtserve_core::{
    cache_enabled, cache_key, validate_request, CacheOutcome, InferRequest, InferResponse, ModelConfig,
    NamedTensor, PredictionCache, Scheduler,
};

use crate::classification::{classify, Classification};
use crate::metrics::ProcessingMetrics;
use crate::preprocess::Preprocessor;
use crate::ServerError;

/// One model version, ready to serve.
pub struct LoadedModel {
    pub config: ModelConfig,
    pub version: u64,
    /// The engine that runs it (`tract`, `onnxruntime`).
    pub engine: &'static str,
    pub scheduler: Scheduler,
    /// The version identity in cache keys: the number and the digest of the version folder's
    /// files taken at load, so that a file replaced in place never gets the old file's cached
    /// replies.
    cache_version: String,
    cache: PredictionCache,
    requests: Mutex<RequestStats>,
    processing: Processing,
}

/// The stages around the model: input processing (images to the input tensor) and
/// post-processing (classification with labels), and their histograms.
#[derive(Default)]
pub struct Processing {
    pub preprocessor: Option<Preprocessor>,
    /// From the model folder's `labels.txt`.
    pub labels: Option<Vec<String>>,
    pub metrics: Option<ProcessingMetrics>,
}

/// Requests to one model version, as Triton's statistics report them.
#[derive(Debug, Clone, Default)]
pub struct RequestStats {
    /// Answered with outputs, and their time in the model's request path.
    pub success: DurationTotal,
    pub fail: DurationTotal,
    /// Answered from the cache (local, Redis or an identical request in flight), and their time.
    pub cache_hit: DurationTotal,
    /// Cache lookups that ran the model (counted; their time is in `success`).
    pub cache_miss: DurationTotal,
    /// When the last request arrived, in milliseconds since the Unix epoch; 0 before any.
    pub last_inference_ms: u64,
}

/// A reply, and where it came from.
pub struct Inferred {
    pub response: InferResponse,
    /// `None` when the model does not use the cache.
    pub cache: Option<CacheOutcome>,
    /// Where the time went, when this request ran the model (not for a cache hit or a
    /// coalesced request).
    pub stages: Option<StageTimes>,
    /// Time spent decoding and transforming images, when the request sent images.
    pub preprocess: Option<Duration>,
    /// Time spent post-processing outputs, when the request asked for it.
    pub postprocess: Option<Duration>,
}

impl Inferred {
    /// How the reply was served, as `(name, value)` pairs: `cache` (when the model caches),
    /// `queue_us` and `compute_us` (when this request ran the model), `preprocess_us` and
    /// `postprocess_us` (when those stages ran). HTTP sends them as
    /// `x-rtserve-{name}` headers (`_` as `-`), gRPC as `rtserve_{name}` response parameters.
    pub fn served(&self) -> Vec<(&'static str, Served)> {
        let micros = |d: Duration| Served::Micros(u64::try_from(d.as_micros()).unwrap_or(u64::MAX));
        let mut served = Vec::new();
        if let Some(outcome) = self.cache {
            served.push(("cache", Served::Text(outcome.as_str())));
        }
        if let Some(stages) = self.stages {
            served.push(("queue_us", micros(stages.queue)));
            served.push(("compute_us", micros(stages.compute)));
        }
        if let Some(preprocess) = self.preprocess {
            served.push(("preprocess_us", micros(preprocess)));
        }
        if let Some(postprocess) = self.postprocess {
            served.push(("postprocess_us", micros(postprocess)));
        }
        served
    }
}

/// One value of [`Inferred::served`].
#[derive(Debug, Clone, Copy)]
pub enum Served {
    Text(&'static str),
    Micros(u64),
}

impl std::fmt::Display for Served {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Served::Text(text) => f.write_str(text),
            Served::Micros(us) => write!(f, "{us}"),
        }
    }
}

/// A request's time in the scheduler's queue and in the engine (its whole batch's run).
#[derive(Debug, Clone, Copy)]
pub struct StageTimes {
    pub queue: Duration,
    pub compute: Duration,
}

impl StageTimes {
    fn of(scheduled: &Scheduled) -> StageTimes {
        StageTimes { queue: scheduled.queue, compute: scheduled.compute }
    }
}

impl LoadedModel {
    pub fn new(
        config: ModelConfig,
        version: u64,
        engine: &'static str,
        scheduler: Scheduler,
        content: String,
        cache: PredictionCache,
    ) -> Self {
        LoadedModel {
            config,
            version,
            engine,
            scheduler,
            cache_version: format!("{version}:{content}"),
            cache,
            requests: Mutex::default(),
            processing: Processing::default(),
        }
    }

    /// The same model with input processing and post-processing.
    pub fn with_processing(self, processing: Processing) -> Self {
        LoadedModel { processing, ..self }
    }

    /// The model's image preprocessing, if its config declares one.
    pub fn preprocessor(&self) -> Option<&Preprocessor> {
        self.processing.preprocessor.as_ref()
    }

    /// The class names from `labels.txt`, if the model has one.
    pub fn labels(&self) -> Option<&[String]> {
        self.processing.labels.as_deref()
    }

    /// Records post-processing done outside [`LoadedModel::infer_with`] (the JSON top-k form).
    pub fn observe_postprocess(&self, elapsed: Duration) {
        if let Some(metrics) = &self.processing.metrics {
            metrics.postprocess.observe(elapsed.as_secs_f64());
        }
    }

    /// A snapshot of the request counters.
    pub fn request_stats(&self) -> RequestStats {
        self.requests.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).clone()
    }

    /// Validates the request against the config, then answers it from the cache (when the model
    /// has `response_cache` on and the request does not bypass it) or through the scheduler.
    /// `deadline` is the caller's own (the gRPC deadline): the request never runs after it.
    pub async fn infer(
        self: &Arc<Self>,
        request: InferRequest,
        deadline: Option<Instant>,
    ) -> Result<Inferred, ServerError> {
        self.infer_with(request, deadline, &[]).await
    }

    /// [`LoadedModel::infer`], with images in the request preprocessed first (when the model
    /// declares preprocessing) and the `classification` outputs turned into top-k labels.
    pub async fn infer_with(
        self: &Arc<Self>,
        request: InferRequest,
        deadline: Option<Instant>,
        classification: &[Classification],
    ) -> Result<Inferred, ServerError> {
        let start = Instant::now();
        let result = self.process(request, deadline, classification).await;
        let elapsed = start.elapsed();
        let mut stats = self.requests.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        stats.last_inference_ms =
            SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
        match &result {
            Ok(inferred) => {
                stats.success.add(elapsed);
                match inferred.cache {
                    Some(CacheOutcome::Hit | CacheOutcome::RedisHit | CacheOutcome::Coalesced) => {
                        stats.cache_hit.add(elapsed)
                    }
                    Some(CacheOutcome::Miss) => stats.cache_miss.add(Duration::ZERO),
                    Some(CacheOutcome::Bypass) | None => {}
                }
            }
            Err(_) => stats.fail.add(elapsed),
        }
        result
    }

    async fn process(
        self: &Arc<Self>,
        mut request: InferRequest,
        deadline: Option<Instant>,
        classification: &[Classification],
    ) -> Result<Inferred, ServerError> {
        let preprocess = match &self.processing.preprocessor {
            Some(preprocessor) => preprocessor.apply(&mut request).await?,
            None => None,
        };
        let mut inferred = self.serve(request, deadline).await?;
        inferred.preprocess = preprocess;
        if !classification.is_empty() {
            let start = Instant::now();
            let batched = self.config.max_batch_size > 0;
            classify(&mut inferred.response.outputs, classification, self.labels(), batched)?;
            inferred.postprocess = Some(start.elapsed());
        }
        if let Some(metrics) = &self.processing.metrics {
            if let Some(elapsed) = inferred.preprocess {
                metrics.preprocess.observe(elapsed.as_secs_f64());
            }
            if let Some(elapsed) = inferred.postprocess {
                metrics.postprocess.observe(elapsed.as_secs_f64());
            }
        }
        Ok(inferred)
    }

    async fn serve(
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
        let (outputs, cache, stages) = if self.config.response_cache {
            let enabled = cache_enabled(true, &request);
            let key = cache_key(&self.config.name, &self.cache_version, &request.inputs, &outputs, &[]);
            let (model, requested) = (self.clone(), outputs.clone());
            // Filled only when this request's own computation runs.
            let ran = Arc::new(OnceLock::new());
            let compute = {
                let ran = ran.clone();
                async move {
                    let scheduled = model.scheduler.infer(request, requested, deadline).await?;
                    let _ = ran.set(StageTimes::of(&scheduled));
                    Ok(scheduled.outputs)
                }
            };
            let (result, outcome) = self.cache.get_or_compute(key, enabled, compute).await;
            (in_requested_order(&result?, &outputs), Some(outcome), ran.get().copied())
        } else {
            let scheduled = self.scheduler.infer(request, outputs, deadline).await?;
            let stages = StageTimes::of(&scheduled);
            (scheduled.outputs, None, Some(stages))
        };
        let response = InferResponse {
            model_name: self.config.name.clone(),
            model_version: self.version.to_string(),
            id,
            outputs,
        };
        Ok(Inferred { response, cache, stages, preprocess: None, postprocess: None })
    }
}

/// A cached reply holds its outputs in the order of the request that computed it; this request
/// gets them in its own order. Tensors share their bytes, so this copies no data.
fn in_requested_order(cached: &[NamedTensor], requested: &[String]) -> Vec<NamedTensor> {
    requested.iter().filter_map(|name| cached.iter().find(|t| &t.name == name).cloned()).collect()
}
