//! A loaded model version: its configuration and the instance pool that runs it.

use rtserve_core::{validate_request, InferRequest, InferResponse, InstancePool, ModelConfig};

use crate::ServerError;

/// One model version, ready to serve.
pub struct LoadedModel {
    pub config: ModelConfig,
    pub version: u64,
    /// The engine that runs it (`tract`, `onnxruntime`).
    pub engine: &'static str,
    pool: InstancePool,
}

impl LoadedModel {
    pub fn new(config: ModelConfig, version: u64, engine: &'static str, pool: InstancePool) -> Self {
        LoadedModel { config, version, engine, pool }
    }

    /// Validates the request against the config and runs it on a free instance.
    pub async fn infer(&self, request: InferRequest) -> Result<InferResponse, ServerError> {
        validate_request(&self.config, &request)?;
        let outputs = if request.outputs.is_empty() {
            self.config.outputs.iter().map(|o| o.name.clone()).collect()
        } else {
            request.outputs
        };
        let outputs = self.pool.infer(request.inputs, outputs).await?;
        Ok(InferResponse {
            model_name: self.config.name.clone(),
            model_version: self.version.to_string(),
            id: request.id,
            outputs,
        })
    }
}
