//! `rtserve optimize distill`: a student trained on a teacher's softened outputs (and labels,
//! when there are any); the teacher runs once, on the engine.

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use rtserve_optimize::model;
use rtserve_optimize::onnx::{tensor_proto::DataType, ModelProto};
use rtserve_optimize::prune::channels::GroupReport;
use rtserve_optimize::train::cost::multiply_adds;
use rtserve_optimize::train::data::Dataset;
use rtserve_optimize::train::distill::{self, DistillOptions, Distillation, Logits};
use rtserve_optimize::train::TrainGraph;
use serde::Serialize;

use super::train::{check_data, fit, fit_text, percent, DataArgs, FitArgs, FitReport, Splits};
use super::{create_engine, print_report, progress_bar, EngineArgs};

/// The teacher and the distillation loss.
#[derive(Args)]
pub struct TeacherArgs {
    /// Temperature T of the soft targets: both models' logits are divided by it before the
    /// softmax (higher: softer targets that show more of the teacher's view of similar
    /// classes). Must be positive.
    #[arg(long, default_value_t = 3.0)]
    temperature: f64,
    /// Weight of the soft (teacher) term in [0, 1]; 1 − alpha weighs cross-entropy against the
    /// labels. Forced to 1 when there are no labels.
    #[arg(long, default_value_t = 0.7)]
    alpha: f64,
    /// Ignore the labels the data has (--fashion-mnist or --labels): pure distillation, the
    /// best epoch chosen by agreement with the teacher on the held-out data. The test data keeps
    /// its labels for the report.
    #[arg(long)]
    unlabelled: bool,
}

#[derive(Args)]
pub struct DistillArgs {
    /// The teacher: any model the engine runs, one input, logits as its first output.
    #[arg(long)]
    teacher: PathBuf,
    /// The student to train (its float initializers are the starting weights; its operators
    /// must be ones the trainer supports). Its output must have the teacher's shape.
    #[arg(long, required_unless_present = "student_width", conflicts_with = "student_width")]
    student: Option<PathBuf>,
    /// Make the student from the teacher instead: every prunable channel group of every layer
    /// keeps this fraction of its channels (structured pruning by L2 norm, as `prune --method
    /// channels`), in (0, 1). Its weights start from the teacher's.
    #[arg(long)]
    student_width: Option<f64>,
    /// Where to write the trained student (the best epoch on the held-out data).
    #[arg(long)]
    out: PathBuf,
    #[command(flatten)]
    teacher_args: TeacherArgs,
    #[command(flatten)]
    data: DataArgs,
    #[command(flatten)]
    fit: FitArgs,
    /// Engine that runs the teacher.
    #[command(flatten)]
    engine: EngineArgs,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Serialize)]
struct DistillReport {
    temperature: f64,
    alpha: f64,
    /// Whether the labels were left out (pure distillation).
    unlabelled: bool,
    /// With --student-width: each channel group of the teacher, its channels before and after.
    groups: Vec<GroupReport>,
    /// Float values in each model's initializers (BatchNorm running statistics included).
    teacher_params: usize,
    student_params: usize,
    /// Multiply-adds per sample of Conv, Gemm and MatMul (the teacher's when the trainer can
    /// run it).
    teacher_multiply_adds: Option<u64>,
    student_multiply_adds: u64,
    /// The teacher's accuracy on the test data, on the engine.
    teacher_test_accuracy: Option<f64>,
    teacher_seconds: f64,
    fit: FitReport,
}

fn float_params(model: &ModelProto) -> usize {
    let inits = model.graph.iter().flat_map(|g| &g.initializer);
    inits
        .filter(|t| t.data_type == DataType::Float as i32)
        .map(|t| t.dims.iter().product::<i64>().max(0) as usize)
        .sum()
}

/// The teacher, ready to label and score data sets on the engine.
pub(super) struct Teacher {
    path: PathBuf,
    engine: std::sync::Arc<dyn rtserve_core::Engine>,
}

impl Teacher {
    pub(super) fn new(path: PathBuf, engine: &EngineArgs) -> anyhow::Result<Teacher> {
        Ok(Teacher { path, engine: create_engine(engine)? })
    }

    /// The teacher's logits of every sample of `data`, with a progress bar.
    pub(super) fn logits(&self, data: &Dataset, what: &str) -> anyhow::Result<Logits> {
        let bar = progress_bar(data.len(), what);
        let logits = distill::engine_logits(&self.path, self.engine.as_ref(), data, &|n| bar.inc(n as u64))
            .with_context(|| format!("running the teacher {}", self.path.display()))?;
        bar.finish_and_clear();
        Ok(logits)
    }

    /// The distillation objective over the training set; without labels (or with `unlabelled`)
    /// the training and held-out labels become the teacher's predictions and alpha 1.
    pub(super) fn objective(
        &self,
        splits: &mut Splits,
        args: &TeacherArgs,
    ) -> anyhow::Result<(Distillation, DistillOptions, bool)> {
        let unlabelled = args.unlabelled || !splits.labelled;
        let mut options = DistillOptions { temperature: args.temperature, alpha: args.alpha };
        options.check()?;
        let logits = self.logits(&splits.train, "teacher")?;
        if unlabelled {
            if options.alpha != 1.0 {
                eprintln!("no labels: pure distillation (alpha 1 instead of {})", options.alpha);
            }
            options.alpha = 1.0;
            splits.train.relabel(logits.argmax())?;
            if let Some(heldout) = splits.heldout.as_mut() {
                let predicted = self.logits(heldout, "teacher (held-out)")?.argmax();
                heldout.relabel(predicted)?;
            }
        }
        Ok((Distillation::new(logits, options)?, options, unlabelled))
    }

    /// The teacher's accuracy on the labelled test data.
    pub(super) fn test_accuracy(&self, splits: &Splits) -> anyhow::Result<Option<f64>> {
        splits.test.as_ref().map(|t| Ok(self.logits(t, "teacher (test)")?.accuracy(&t.labels))).transpose()
    }
}

pub fn run_distill(a: DistillArgs) -> anyhow::Result<()> {
    let fit_options = a.fit.options()?;
    DistillOptions { temperature: a.teacher_args.temperature, alpha: a.teacher_args.alpha }.check()?;
    let teacher_onnx = model::load(&a.teacher)?;
    let (student_onnx, groups) = match (&a.student, a.student_width) {
        (Some(path), _) => (model::load(path)?, Vec::new()),
        (None, Some(width)) => distill::student_from_teacher(&teacher_onnx, width)
            .context("making the student from the teacher (--student-width)")?,
        (None, None) => anyhow::bail!("give a student: --student FILE or --student-width W"),
    };
    let student = TrainGraph::new(&student_onnx).context("the student cannot be trained")?;
    distill::check_outputs(&teacher_onnx, &student_onnx)?;
    let mut splits = a.data.load(student.inputs().first().map(String::as_str).unwrap_or(""), true)?;
    check_data(&student, &student_onnx, &splits)?;
    let teacher = Teacher::new(a.teacher.clone(), &a.engine)?;
    let started = std::time::Instant::now();
    let (mut objective, options, unlabelled) = teacher.objective(&mut splits, &a.teacher_args)?;
    let teacher_seconds = started.elapsed().as_secs_f64();
    let teacher_test_accuracy = teacher.test_accuracy(&splits)?;
    let student_multiply_adds = multiply_adds(&student, &splits.train)?;
    let teacher_multiply_adds =
        TrainGraph::new(&teacher_onnx).ok().and_then(|t| multiply_adds(&t, &splits.train).ok());
    let fit = fit(&student, &splits, &fit_options, &mut objective, Vec::new())?;
    model::save(&student.to_model()?, &a.out)?;
    let report = DistillReport {
        temperature: options.temperature,
        alpha: options.alpha,
        unlabelled,
        groups,
        teacher_params: float_params(&teacher_onnx),
        student_params: float_params(&student_onnx),
        teacher_multiply_adds,
        student_multiply_adds,
        teacher_test_accuracy,
        teacher_seconds,
        fit,
    };
    print_report(a.json, &report, || {
        format!(
            "wrote {}: student of {} float values (teacher {}), {} multiply-adds per sample{}, T {}, alpha {}{}; \
             teacher test accuracy {}\n{}",
            a.out.display(),
            report.student_params,
            report.teacher_params,
            report.student_multiply_adds,
            match report.teacher_multiply_adds {
                Some(t) if t > 0 => format!(" ({:.3}× the teacher's {t})", report.student_multiply_adds as f64 / t as f64),
                _ => String::new(),
            },
            report.temperature,
            report.alpha,
            if report.unlabelled { " (no labels)" } else { "" },
            percent(report.teacher_test_accuracy),
            fit_text(&report.fit)
        )
    })
}
