//! Knowledge distillation: a student learns from a teacher's temperature-softened outputs,
//! `alpha·T²·KL(softmax(teacher/T) ‖ softmax(student/T)) + (1-alpha)·CE(labels, student)`
//! (Hinton et al.). The teacher runs once over the training set on the serving engine and its
//! logits are reused every epoch; a student can be the teacher with every layer narrowed by
//! structured channel pruning.

use std::path::Path;

use candle_core::{Device, Tensor};
use rtserve_core::{Engine, LoadOptions};

use super::data::Dataset;
use super::ops::log_softmax;
use super::trainer::{cross_entropy, Batch, Objective};
use crate::error::{OptimizeError, Result};
use crate::evaluate::output_values;
use crate::model::tensor_dims;
use crate::onnx::ModelProto;
use crate::prune::channels::{prune_channels, ChannelOptions, Criterion, GroupReport};

/// The two settings of the distillation loss.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DistillOptions {
    /// T: both outputs are divided by it before the softmax; > 0.
    pub temperature: f64,
    /// The weight of the soft (teacher) term, in [0, 1]; 1 − alpha weighs the labels.
    pub alpha: f64,
}

impl Default for DistillOptions {
    fn default() -> Self {
        DistillOptions { temperature: 3.0, alpha: 0.7 }
    }
}

impl DistillOptions {
    /// Checks the temperature and alpha.
    pub fn check(&self) -> Result<()> {
        if !(self.temperature.is_finite() && self.temperature > 0.0) {
            return Err(OptimizeError::Option(format!(
                "the temperature must be a positive number, not {}",
                self.temperature
            )));
        }
        if !(0.0..=1.0).contains(&self.alpha) {
            return Err(OptimizeError::Option(format!("alpha must be between 0 and 1, not {}", self.alpha)));
        }
        Ok(())
    }
}

/// The distillation loss of a batch, averaged over it: `student` and `teacher` are
/// `[n, classes]` logits, `labels` `[n]` class indices (not read when alpha is 1).
pub fn distillation_loss(
    student: &Tensor,
    teacher: &Tensor,
    labels: &Tensor,
    options: &DistillOptions,
) -> Result<Tensor> {
    if student.dims() != teacher.dims() {
        return Err(OptimizeError::data(format!(
            "the student's logits have shape {:?} and the teacher's {:?}: they must be the same",
            student.dims(),
            teacher.dims()
        )));
    }
    let t = options.temperature;
    let log_q = log_softmax(&(student / t)?)?;
    let log_p = log_softmax(&(teacher.to_dtype(student.dtype())? / t)?)?;
    let kl = (log_p.exp()? * (&log_p - &log_q)?)?.sum(1)?.mean_all()?;
    let soft = (kl * (options.alpha * t * t))?;
    if options.alpha >= 1.0 {
        return Ok(soft);
    }
    Ok((soft + (cross_entropy(student, labels)? * (1.0 - options.alpha))?)?)
}

/// A model's logits for every sample of a data set, `[samples, classes]` row-major.
#[derive(Debug, Clone, PartialEq)]
pub struct Logits {
    pub classes: usize,
    pub values: Vec<f32>,
}

impl Logits {
    /// The top-1 class of each sample.
    pub fn argmax(&self) -> Vec<u32> {
        self.values
            .chunks(self.classes.max(1))
            .map(|row| {
                let best = row.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)).map(|(i, _)| i);
                best.unwrap_or(0) as u32
            })
            .collect()
    }

    /// The fraction of samples whose top-1 class is their label.
    pub fn accuracy(&self, labels: &[u32]) -> f64 {
        let hits = self.argmax().iter().zip(labels).filter(|(p, l)| p == l).count();
        hits as f64 / labels.len().max(1) as f64
    }

    /// The rows at `indices` as a `[n, classes]` tensor.
    pub fn rows(&self, indices: &[usize]) -> Result<Tensor> {
        let mut values = Vec::with_capacity(indices.len() * self.classes);
        for &i in indices {
            let row = self
                .values
                .get(i * self.classes..(i + 1) * self.classes)
                .ok_or_else(|| OptimizeError::data(format!("no teacher output for sample {i}")))?;
            values.extend_from_slice(row);
        }
        Ok(Tensor::from_vec(values, (indices.len(), self.classes), &Device::Cpu)?)
    }
}

/// Runs the model at `path` on `engine` over every sample of `data` (batches of 64, or the
/// model's fixed batch size) and returns its first output. `progress` gets the samples done.
pub fn engine_logits(
    path: &Path,
    engine: &dyn Engine,
    data: &Dataset,
    progress: &dyn Fn(usize),
) -> Result<Logits> {
    let signature = engine.signature(path)?;
    let [input] = signature.inputs.as_slice() else {
        return Err(OptimizeError::model(format!(
            "{}: the teacher must have one input; it has {}",
            path.display(),
            signature.inputs.len()
        )));
    };
    let output = signature
        .outputs
        .first()
        .map(|o| o.name.clone())
        .ok_or_else(|| OptimizeError::model(format!("{}: the model has no outputs", path.display())))?;
    let batch = match input.dims.first() {
        Some(&d) if d > 0 => d as usize,
        _ => 64,
    };
    let mut instance = engine.load(path, &LoadOptions { batches: true, ..LoadOptions::default() })?;
    let mut values = Vec::new();
    let mut classes = 0;
    let order: Vec<usize> = (0..data.len()).collect();
    for chunk in order.chunks(batch) {
        // A model with a fixed batch size gets whole batches: the last one is padded.
        let padded: Vec<usize> =
            chunk.iter().chain(std::iter::repeat(&chunk[0])).take(batch).copied().collect();
        let feed = if input.dims.first().is_some_and(|&d| d > 0) { &padded[..] } else { chunk };
        let outputs =
            instance.infer(&data.engine_batch(feed, &input.name)?, std::slice::from_ref(&output))?;
        let out = output_values(&outputs, &output, path)?;
        if out.is_empty() || out.len() % feed.len() != 0 {
            return Err(OptimizeError::model(format!(
                "{}: output '{output}' has {} values for a batch of {}",
                path.display(),
                out.len(),
                feed.len()
            )));
        }
        classes = out.len() / feed.len();
        values.extend_from_slice(&out[..chunk.len() * classes]);
        progress(chunk.len());
    }
    Ok(Logits { classes, values })
}

/// Checks that teacher and student declare the same output shape (dimensions either leaves
/// open are not compared).
pub fn check_outputs(teacher: &ModelProto, student: &ModelProto) -> Result<()> {
    let first_output = |m: &ModelProto| m.graph.as_ref().and_then(|g| g.output.first()).cloned();
    let (Some(t), Some(s)) = (first_output(teacher), first_output(student)) else {
        return Err(OptimizeError::model("the teacher and the student must each have an output"));
    };
    let (Some(td), Some(sd)) = (tensor_dims(&t), tensor_dims(&s)) else { return Ok(()) };
    let agree =
        td.len() == sd.len() && td.iter().zip(&sd).skip(1).all(|(a, b)| a.is_none() || b.is_none() || a == b);
    if agree {
        return Ok(());
    }
    let show = |d: &[Option<usize>]| {
        let dims: Vec<String> =
            d.iter().map(|x| x.map(|v| v.to_string()).unwrap_or_else(|| "?".into())).collect();
        format!("[{}]", dims.join(", "))
    };
    Err(OptimizeError::model(format!(
        "the teacher's output '{}' has shape {} and the student's '{}' {}: they must be the same",
        t.name,
        show(&td),
        s.name,
        show(&sd)
    )))
}

/// A student made from the teacher: every prunable channel group narrowed to `width` of its
/// channels (by L2 norm), the weights kept as a start.
pub fn student_from_teacher(teacher: &ModelProto, width: f64) -> Result<(ModelProto, Vec<GroupReport>)> {
    if !(width > 0.0 && width < 1.0) {
        return Err(OptimizeError::Option(format!(
            "the student width {width} must be between 0 and 1 (exclusive)"
        )));
    }
    prune_channels(teacher, &ChannelOptions::new(1.0 - width, Criterion::L2))
}

/// The distillation [`Objective`]: the teacher's logits of the training set, by sample index.
pub struct Distillation {
    teacher: Logits,
    options: DistillOptions,
}

impl Distillation {
    pub fn new(teacher: Logits, options: DistillOptions) -> Result<Distillation> {
        options.check()?;
        Ok(Distillation { teacher, options })
    }
}

impl Objective for Distillation {
    fn loss(&mut self, logits: &Tensor, batch: &Batch<'_>) -> Result<Tensor> {
        let teacher = self.teacher.rows(batch.indices)?;
        distillation_loss(logits, &teacher, batch.labels, &self.options)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::DType;

    fn tensor(rows: &[&[f64]]) -> Tensor {
        let flat: Vec<f64> = rows.iter().flat_map(|r| r.iter().copied()).collect();
        Tensor::from_vec(flat, (rows.len(), rows[0].len()), &Device::Cpu).expect("tensor")
    }

    /// The loss written out with plain floats, term by term, as NumPy would compute it.
    fn reference(student: &[&[f64]], teacher: &[&[f64]], labels: &[usize], t: f64, alpha: f64) -> f64 {
        let softmax = |row: &[f64], t: f64| {
            let m = row.iter().fold(f64::MIN, |a, &b| a.max(b / t));
            let e: Vec<f64> = row.iter().map(|v| (v / t - m).exp()).collect();
            let s: f64 = e.iter().sum();
            e.into_iter().map(|v| v / s).collect::<Vec<_>>()
        };
        let n = student.len() as f64;
        let mut kl = 0.0;
        let mut ce = 0.0;
        for ((s, tch), &label) in student.iter().zip(teacher).zip(labels) {
            let (p, q) = (softmax(tch, t), softmax(s, t));
            kl += p.iter().zip(&q).map(|(p, q)| p * (p / q).ln()).sum::<f64>() / n;
            ce -= softmax(s, 1.0)[label].ln() / n;
        }
        alpha * t * t * kl + (1.0 - alpha) * ce
    }

    #[test]
    fn the_loss_matches_a_reference_written_out_by_hand() {
        let student: &[&[f64]] = &[&[1.0, -0.5, 2.0, 0.1], &[0.3, 0.2, -1.2, 4.0], &[-2.0, 0.0, 0.5, 0.5]];
        let teacher: &[&[f64]] = &[&[3.0, -1.0, 1.0, 0.0], &[0.0, 0.0, 0.0, 6.0], &[1.5, -0.5, 2.5, -3.0]];
        let labels = [2u32, 3, 0];
        let label_tensor = Tensor::new(&labels, &Device::Cpu).expect("labels");
        for (t, alpha) in [(3.0, 0.7), (1.0, 0.0), (5.0, 1.0), (0.5, 0.3)] {
            let options = DistillOptions { temperature: t, alpha };
            let got = distillation_loss(&tensor(student), &tensor(teacher), &label_tensor, &options)
                .expect("loss")
                .to_dtype(DType::F64)
                .expect("f64")
                .to_scalar::<f64>()
                .expect("scalar");
            let want = reference(student, teacher, &[2, 3, 0], t, alpha);
            assert!((got - want).abs() < 1e-9 * want.abs().max(1.0), "T {t} alpha {alpha}: {got} vs {want}");
        }
        // A student equal to its teacher has nothing left to learn from it.
        let options = DistillOptions { temperature: 3.0, alpha: 1.0 };
        let same = distillation_loss(&tensor(teacher), &tensor(teacher), &label_tensor, &options)
            .expect("loss")
            .to_scalar::<f64>()
            .expect("scalar");
        assert!(same.abs() < 1e-12, "{same}");
    }

    #[test]
    fn the_soft_term_pulls_the_student_towards_the_teacher() {
        let student = candle_core::Var::from_tensor(&tensor(&[&[0.0, 0.0, 0.0]])).expect("var");
        let teacher = tensor(&[&[2.0, 0.0, -1.0]]);
        let labels = Tensor::new(&[0u32], &Device::Cpu).expect("labels");
        let options = DistillOptions { temperature: 2.0, alpha: 1.0 };
        let loss = distillation_loss(student.as_tensor(), &teacher, &labels, &options).expect("loss");
        let grad =
            loss.backward().expect("backward").get(student.as_tensor()).expect("grad").to_vec2::<f64>();
        let grad = grad.expect("values")[0].clone();
        // d/ds of T²·KL = T·(softmax(s/T) − softmax(t/T)): negative where the teacher is surer.
        assert!(grad[0] < 0.0 && grad[2] > 0.0, "{grad:?}");
        assert!(grad.iter().sum::<f64>().abs() < 1e-12, "{grad:?}");
    }

    #[test]
    fn bad_settings_are_refused_with_their_value() {
        for (t, alpha, what) in [
            (0.0, 0.5, "temperature"),
            (-1.0, 0.5, "temperature"),
            (f64::NAN, 0.5, "temperature"),
            (3.0, 1.5, "alpha"),
            (3.0, -0.1, "alpha"),
        ] {
            let err = DistillOptions { temperature: t, alpha }.check().expect_err("refused").to_string();
            assert!(err.contains(what), "{err}");
        }
        let shapes = distillation_loss(
            &tensor(&[&[1.0, 2.0]]),
            &tensor(&[&[1.0, 2.0, 3.0]]),
            &Tensor::new(&[0u32], &Device::Cpu).expect("labels"),
            &DistillOptions::default(),
        );
        assert!(shapes.expect_err("shapes").to_string().contains("must be the same"));
    }

    #[test]
    fn logits_rows_argmax_and_accuracy() {
        let l = Logits { classes: 3, values: vec![0.1, 0.9, 0.0, 5.0, 1.0, 2.0] };
        assert_eq!(l.argmax(), vec![1, 0]);
        assert_eq!(l.accuracy(&[1, 2]), 0.5);
        assert_eq!(
            l.rows(&[1, 0]).expect("rows").to_vec2::<f32>().expect("v"),
            vec![vec![5.0, 1.0, 2.0], vec![0.1, 0.9, 0.0]]
        );
        assert!(l.rows(&[2]).is_err());
    }
}
