//! Labelled data for training: samples of one input with a class label each, read from the
//! formats `optimize` reads (`.npy`/`.npz` with a labels file, image folders) or from
//! Fashion-MNIST's IDX files as Debian's `dataset-fashion-mnist` installs them; shuffled
//! minibatches.

use std::io::Read;
use std::path::Path;

use candle_core::{Device, Tensor};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;

use crate::data::{load_labels, load_samples, ImagePreprocess, Sample};
use crate::error::{OptimizeError, Result};

/// Where Debian's `dataset-fashion-mnist` puts the files.
pub const FASHION_MNIST_DIR: &str = "/usr/share/datasets/fashion-mnist";

/// Samples of one input, flattened, with their labels.
#[derive(Debug, Clone, PartialEq)]
pub struct Dataset {
    /// The shape of one sample (without the batch axis).
    pub sample_shape: Vec<usize>,
    pub features: Vec<f32>,
    pub labels: Vec<u32>,
}

impl Dataset {
    /// Checks that features and labels agree.
    pub fn new(sample_shape: Vec<usize>, features: Vec<f32>, labels: Vec<u32>) -> Result<Dataset> {
        let per: usize = sample_shape.iter().product();
        if per == 0 || !features.len().is_multiple_of(per) {
            return Err(OptimizeError::data(format!(
                "{} values do not make whole samples of shape {sample_shape:?}",
                features.len()
            )));
        }
        if features.len() / per != labels.len() {
            return Err(OptimizeError::data(format!(
                "{} samples but {} labels: there must be one label per sample",
                features.len() / per,
                labels.len()
            )));
        }
        Ok(Dataset { sample_shape, features, labels })
    }

    pub fn len(&self) -> usize {
        self.labels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    fn sample_len(&self) -> usize {
        self.sample_shape.iter().product()
    }

    /// The first `n` samples.
    pub fn truncate(mut self, n: usize) -> Dataset {
        let n = n.min(self.len());
        self.features.truncate(n * self.sample_len());
        self.labels.truncate(n);
        self
    }

    /// Splits off the last `fraction` of the samples (a held-out set) and returns it.
    pub fn split_off(&mut self, fraction: f64) -> Result<Dataset> {
        if !(0.0..1.0).contains(&fraction) {
            return Err(OptimizeError::Option(format!("the held-out fraction {fraction} is not in [0, 1)")));
        }
        let held = ((self.len() as f64) * fraction).round() as usize;
        let keep = self.len() - held;
        let features = self.features.split_off(keep * self.sample_len());
        let labels = self.labels.split_off(keep);
        Ok(Dataset { sample_shape: self.sample_shape.clone(), features, labels })
    }

    /// The samples at `indices` as one batch tensor `[n, sample_shape...]` and its labels.
    pub fn batch(&self, indices: &[usize]) -> Result<(Tensor, Tensor)> {
        let per = self.sample_len();
        let mut values = Vec::with_capacity(indices.len() * per);
        let mut labels = Vec::with_capacity(indices.len());
        for &i in indices {
            values.extend_from_slice(&self.features[i * per..(i + 1) * per]);
            labels.push(self.labels[i]);
        }
        let mut shape = vec![indices.len()];
        shape.extend_from_slice(&self.sample_shape);
        Ok((Tensor::from_vec(values, shape, &Device::Cpu)?, Tensor::new(labels, &Device::Cpu)?))
    }

    /// The samples at `indices` as one engine input called `input` (`[n, sample_shape...]`).
    pub fn engine_batch(&self, indices: &[usize], input: &str) -> Result<Sample> {
        let per = self.sample_len();
        let mut values = Vec::with_capacity(indices.len() * per);
        for &i in indices {
            values.extend_from_slice(&self.features[i * per..(i + 1) * per]);
        }
        let mut shape = vec![indices.len()];
        shape.extend_from_slice(&self.sample_shape);
        let tensor =
            rtserve_core::Tensor::from_f32(shape, &values).map_err(|e| OptimizeError::data(e.to_string()))?;
        Ok(vec![rtserve_core::NamedTensor { name: input.to_string(), tensor }])
    }

    /// Replaces the labels (with a teacher's predictions, for data that came without).
    pub fn relabel(&mut self, labels: Vec<u32>) -> Result<()> {
        if labels.len() != self.len() {
            return Err(OptimizeError::data(format!(
                "{} samples but {} labels: there must be one label per sample",
                self.len(),
                labels.len()
            )));
        }
        self.labels = labels;
        Ok(())
    }

    /// The sample indices of one epoch in minibatches, shuffled by `rng` when asked.
    pub fn minibatches(&self, batch_size: usize, rng: Option<&mut StdRng>) -> Vec<Vec<usize>> {
        let mut order: Vec<usize> = (0..self.len()).collect();
        if let Some(rng) = rng {
            order.shuffle(rng);
        }
        order.chunks(batch_size.max(1)).map(<[usize]>::to_vec).collect()
    }

    /// Checks that each sample fits an input of the model's shape (`None` = dynamic dimension;
    /// the first dimension is the batch).
    pub fn check_fits(&self, input: &str, model_shape: &[Option<usize>]) -> Result<()> {
        let fits = model_shape.len() == self.sample_shape.len() + 1
            && model_shape[1..].iter().zip(&self.sample_shape).all(|(m, s)| m.is_none_or(|m| m == *s));
        if fits {
            return Ok(());
        }
        let shown: Vec<String> =
            model_shape.iter().map(|d| d.map(|d| d.to_string()).unwrap_or_else(|| "?".into())).collect();
        Err(OptimizeError::data(format!(
            "samples of shape {:?} do not fit model input '{input}' of shape [{}]",
            self.sample_shape,
            shown.join(", ")
        )))
    }
}

/// A data set from a `.npy`/`.npz` file or an image folder (for the model input `input`) and a
/// labels file (`.npy` or one integer per line). Without a labels file every label is 0 until
/// [`Dataset::relabel`] gives the real ones (a teacher's predictions).
pub fn load(path: &Path, labels: Option<&Path>, input: &str, images: &ImagePreprocess) -> Result<Dataset> {
    let samples = load_samples(path, &[input.to_string()], images, None)?;
    let labels: Vec<u32> = match labels {
        Some(labels) => load_labels(labels)?
            .into_iter()
            .map(|l| u32::try_from(l).map_err(|_| OptimizeError::data(format!("label {l} is too large"))))
            .collect::<Result<_>>()?,
        None => vec![0; samples.len()],
    };
    let first = samples.first().and_then(|s| s.first()).ok_or_else(|| OptimizeError::data("no samples"))?;
    let sample_shape: Vec<usize> = first.tensor.shape().iter().skip(1).copied().collect();
    let mut features = Vec::new();
    for sample in &samples {
        let t = &sample[0].tensor;
        let values = t.to_f32().ok_or_else(|| OptimizeError::data("training samples must be float"))?;
        features.extend(values);
    }
    Dataset::new(sample_shape, features, labels)
}

/// One split of Fashion-MNIST (`train`: 60,000 images, `t10k`: 10,000) from the IDX files in
/// `dir`, as `[1, 28, 28]` samples with pixels / 255.
pub fn fashion_mnist(dir: &Path, split: &str) -> Result<Dataset> {
    let read = |name: &str| -> Result<Vec<u8>> {
        let path = dir.join(name);
        let file = std::fs::File::open(&path)
            .map_err(|source| OptimizeError::Read { path: path.clone(), source })?;
        let mut bytes = Vec::new();
        flate2::read::GzDecoder::new(file)
            .read_to_end(&mut bytes)
            .map_err(|source| OptimizeError::Read { path, source })?;
        Ok(bytes)
    };
    let images = read(&format!("{split}-images-idx3-ubyte.gz"))?;
    let labels = read(&format!("{split}-labels-idx1-ubyte.gz"))?;
    let bad =
        |what: &str| OptimizeError::data(format!("{}: {split} {what} is not an IDX file", dir.display()));
    if images.len() < 16 || images[..4] != [0, 0, 8, 3] {
        return Err(bad("images"));
    }
    if labels.len() < 8 || labels[..4] != [0, 0, 8, 1] {
        return Err(bad("labels"));
    }
    let count = u32::from_be_bytes([images[4], images[5], images[6], images[7]]) as usize;
    let (rows, cols) = (
        u32::from_be_bytes([images[8], images[9], images[10], images[11]]) as usize,
        u32::from_be_bytes([images[12], images[13], images[14], images[15]]) as usize,
    );
    let pixels = images.get(16..16 + count * rows * cols).ok_or_else(|| bad("images (truncated)"))?;
    let labels = labels.get(8..8 + count).ok_or_else(|| bad("labels (truncated)"))?;
    Dataset::new(
        vec![1, rows, cols],
        pixels.iter().map(|&p| p as f32 / 255.0).collect(),
        labels.iter().map(|&l| l as u32).collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn tiny() -> Dataset {
        Dataset::new(vec![2], (0..20).map(|v| v as f32).collect(), (0..10).collect()).expect("data")
    }

    #[test]
    fn labels_of_the_wrong_length_are_named() {
        let err = Dataset::new(vec![2], vec![0.0; 20], vec![0; 9]).expect_err("length").to_string();
        assert!(err.contains("10 samples but 9 labels"), "{err}");
    }

    #[test]
    fn held_out_split_takes_the_tail() {
        let mut d = tiny();
        let held = d.split_off(0.2).expect("split");
        assert_eq!((d.len(), held.len()), (8, 2));
        assert_eq!(held.labels, vec![8, 9]);
        assert_eq!(held.features, vec![16.0, 17.0, 18.0, 19.0]);
        assert!(tiny().split_off(1.0).is_err());
    }

    #[test]
    fn minibatches_cover_every_sample_once_and_follow_the_seed() {
        let d = tiny();
        let a = d.minibatches(3, Some(&mut StdRng::seed_from_u64(7)));
        let b = d.minibatches(3, Some(&mut StdRng::seed_from_u64(7)));
        assert_eq!(a, b);
        assert_eq!(a.iter().map(Vec::len).collect::<Vec<_>>(), vec![3, 3, 3, 1]);
        let mut all: Vec<usize> = a.concat();
        all.sort();
        assert_eq!(all, (0..10).collect::<Vec<_>>());
        let (x, y) = d.batch(&[3, 1]).expect("batch");
        assert_eq!(x.to_vec2::<f32>().expect("x"), vec![vec![6.0, 7.0], vec![2.0, 3.0]]);
        assert_eq!(y.to_vec1::<u32>().expect("y"), vec![3, 1]);
    }

    #[test]
    fn shape_mismatch_names_the_input() {
        let err = tiny().check_fits("input", &[None, Some(3)]).expect_err("mismatch").to_string();
        assert!(err.contains("[2]") && err.contains("'input'") && err.contains("[?, 3]"), "{err}");
        tiny().check_fits("input", &[None, Some(2)]).expect("fits");
    }
}
