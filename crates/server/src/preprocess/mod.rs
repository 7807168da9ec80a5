//! Input processing: a BYTES input of encoded images (JPEG, PNG, WebP) becomes the model's image
//! tensor, decoded, resized, cropped and normalised on a worker pool sized to the cores, before
//! the request reaches the cache and the scheduler (never on an engine thread).

mod decode;
mod spec;
mod transform;

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use rayon::prelude::*;
use rtserve_core::{InferRequest, NamedTensor, Tensor, TensorData};

pub use decode::{decode_rgb, ImageError};
pub use spec::{preprocess_spec, ColorOrder, Filter, Layout, PreprocessSpec, Resize, PARAMETER_PREFIX};
pub use transform::{resized_size, write_tensor, Normaliser};

use crate::ServerError;

/// The default `--max-image-pixels`: 64 megapixels (8192 × 8192).
pub const DEFAULT_MAX_IMAGE_PIXELS: u64 = 8192 * 8192;

/// The threads that decode and resize images, shared by every model.
pub struct ImagePool {
    pool: rayon::ThreadPool,
    /// Images with more pixels than this are refused from their header.
    max_pixels: u64,
}

impl ImagePool {
    /// A pool of `threads` workers (0: one per core).
    pub fn new(threads: usize, max_pixels: u64) -> Result<ImagePool, String> {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .thread_name(|i| format!("rtserve-image-{i}"))
            .build()
            .map_err(|e| format!("image worker pool: {e}"))?;
        Ok(ImagePool { pool, max_pixels })
    }

    pub fn threads(&self) -> usize {
        self.pool.current_num_threads()
    }

    /// Runs `work` on the pool and waits for it without blocking the async runtime.
    async fn run<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, ServerError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.pool.spawn(move || {
            let _ = tx.send(work());
        });
        rx.await.map_err(|_| ServerError::Internal("an image worker stopped".to_string()))
    }
}

/// One model's preprocessing: its spec and the shared pool.
pub struct Preprocessor {
    spec: Arc<PreprocessSpec>,
    normaliser: Arc<Normaliser>,
    pool: Arc<ImagePool>,
    /// The model's `max_batch_size` (0: no batching): more images than this are refused before
    /// any is decoded.
    max_images: usize,
}

impl Preprocessor {
    pub fn new(spec: PreprocessSpec, pool: Arc<ImagePool>, max_batch_size: u32) -> Preprocessor {
        let normaliser = Arc::new(Normaliser::new(&spec));
        let max_images = if spec.batched && max_batch_size > 0 { max_batch_size as usize } else { 1 };
        Preprocessor { spec: Arc::new(spec), normaliser, pool, max_images }
    }

    pub fn spec(&self) -> &PreprocessSpec {
        &self.spec
    }

    /// Replaces the request's image input, if it has one, by the model's tensor. Returns the
    /// time it took (waiting for a worker included), `None` when the request had no images.
    pub async fn apply(&self, request: &mut InferRequest) -> Result<Option<Duration>, ServerError> {
        let Some(position) = request.inputs.iter().position(|i| i.name == self.spec.input) else {
            return Ok(None);
        };
        let start = Instant::now();
        let name = &self.spec.input;
        if request.inputs.iter().any(|i| i.name == self.spec.tensor) {
            return Err(bad(format!("give input '{name}' or '{}', not both", self.spec.tensor)));
        }
        let tensor = &request.inputs[position].tensor;
        let images: Vec<Bytes> = match tensor.data() {
            TensorData::Strings(items) => items.clone(),
            TensorData::Raw(_) => {
                return Err(bad(format!(
                    "input '{name}' is {}; it must be BYTES, one encoded image per element",
                    tensor.datatype()
                )))
            }
        };
        if images.is_empty() {
            return Err(bad(format!("input '{name}' holds no image")));
        }
        if images.len() > self.max_images {
            return Err(bad(format!(
                "input '{name}' holds {} images; the model takes at most {} a request",
                images.len(),
                self.max_images
            )));
        }
        let (spec, normaliser, max_pixels) =
            (self.spec.clone(), self.normaliser.clone(), self.pool.max_pixels);
        request.inputs[position] =
            self.pool.run(move || images_tensor(&spec, &normaliser, &images, max_pixels)).await??;
        Ok(Some(start.elapsed()))
    }
}

/// The model input made of `images` (encoded files), decoded and transformed in parallel on the
/// calling thread's rayon pool (the server's image pool; rayon's global pool for `rtserve run`).
pub fn images_tensor(
    spec: &PreprocessSpec,
    normaliser: &Normaliser,
    images: &[Bytes],
    max_pixels: u64,
) -> Result<NamedTensor, ServerError> {
    let data = tensor_bytes(spec, normaliser, images, max_pixels)?;
    let image_shape = spec.image_shape();
    let shape = if spec.batched {
        std::iter::once(images.len()).chain(image_shape).collect()
    } else {
        image_shape.to_vec()
    };
    let tensor = Tensor::new(spec.dtype, shape, TensorData::Raw(data.into()))
        .map_err(|e| ServerError::Internal(format!("preprocessed tensor: {e}")))?;
    Ok(NamedTensor { name: spec.tensor.clone(), tensor })
}

/// Decodes and transforms every image, in parallel on the calling pool, into one buffer.
fn tensor_bytes(
    spec: &PreprocessSpec,
    normaliser: &Normaliser,
    images: &[Bytes],
    max_pixels: u64,
) -> Result<Vec<u8>, ServerError> {
    let per_image = spec.image_bytes();
    let mut out = vec![0u8; per_image * images.len()];
    let name = &spec.input;
    out.par_chunks_mut(per_image).zip(images.par_iter()).enumerate().try_for_each(|(i, (slot, data))| {
        let image = decode_rgb(data, max_pixels).map_err(|e| {
            let which = if images.len() > 1 { format!(" element {i}") } else { String::new() };
            bad(format!("input '{name}'{which}: {e}"))
        })?;
        write_tensor(spec, normaliser, &image, slot).map_err(ServerError::Internal)
    })?;
    Ok(out)
}

fn bad(message: String) -> ServerError {
    ServerError::BadRequest(message)
}
