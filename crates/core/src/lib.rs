//! rtserve core: what every other part shares and nothing web- or engine-specific.
//!
//! - [`Tensor`] and [`NamedTensor`]: tensors as bytes plus a shape; the wire format itself
//!   ([`DataType`], little-endian elements, the BYTES layout) is the [`wire`] crate, re-exported.
//! - [`InferRequest`] / [`InferResponse`]: one inference, protocol-independent.
//! - [`ModelConfig`]: a model's validated configuration, from any config format.
//! - [`Engine`] / [`ModelInstance`]: the synchronous engine trait; [`Device`]: where an instance
//!   runs, with the GPU settings of its config.
//! - [`Scheduler`]: admission control, priority queue and SLO-aware dynamic batching in front
//!   of a model's instances; its policy is the pure [`BatchPlanner`] (see [`scheduler`]).
//! - [`PredictionCache`]: the reply cache ([`cache_key`], local tier, single-flight, Redis tier).

#[cfg(target_endian = "big")]
compile_error!("rtserve keeps tensors in host order, which must be the little-endian wire order");

mod batch_input;
mod cache;
mod device;
mod engine;
mod error;
mod model_config;
mod pool;
mod request;
pub mod scheduler;
mod tensor;
mod validate;

pub use batch_input::{batch_inputs, concat_rows, BatchError, BatchInput};
pub use cache::{
    cache_enabled, cache_key, CacheError, CacheKey, CacheOptions, CacheOutcome, CacheStats, CachedOutputs,
    LatencySnapshot, PredictionCache, RedisOptions, RedisTls, CACHE_PARAMETER, LOOKUP_BUCKETS,
};
pub use device::{
    ConvAlgoSearch, CudaOptions, Device, GpuAcceleration, GpuPlacement, Precision, TensorRtOptions,
};
pub use engine::{
    intra_op_threads_for, Engine, EngineError, LoadOptions, ModelInstance, ModelSignature, PreparedModel,
    ONE_THREAD_BELOW,
};
pub use error::InferError;
pub use model_config::{
    DynamicBatching, InstanceGroup, InstanceKind, ModelConfig, QueuePolicy, TensorSpec, TimeoutAction,
    VersionPolicy,
};
pub use request::{InferRequest, InferResponse, Parameter};
pub use rtserve_wire as wire;
pub use rtserve_wire::{DataType, UnknownDataType};
pub use scheduler::{
    BatchPlanner, Deadlines, Decision, LatencyProfile, PlannerConfig, RejectReason, Rejection, Scheduler,
    SchedulerError, SchedulerObserver, SchedulerOptions, SchedulerStats,
};
pub use tensor::{NamedTensor, Tensor, TensorData, TensorError};
pub use validate::validate_request;
