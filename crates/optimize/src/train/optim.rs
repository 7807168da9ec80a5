//! Optimizers (SGD with momentum as PyTorch defines it, candle-nn's AdamW) and the
//! learning-rate schedule.

use candle_core::backprop::GradStore;
use candle_core::{Tensor, Var};
use candle_nn::Optimizer as _;

use crate::error::{OptimizeError, Result};

/// Which optimizer, with its settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum OptimizerKind {
    /// `v = momentum·v + g + wd·w; w -= lr·v`.
    Sgd { momentum: f64, weight_decay: f64 },
    /// Adam with decoupled weight decay.
    AdamW { weight_decay: f64 },
}

/// How the learning rate moves over the run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Schedule {
    Constant,
    /// Cosine decay from the base rate to zero over all steps.
    Cosine,
    /// Divides the rate by 10 at 50 % and at 75 % of the steps.
    Step,
}

impl Schedule {
    /// The rate at `step` of `total` steps, starting from `base`.
    pub fn rate(self, base: f64, step: usize, total: usize) -> f64 {
        let progress = if total == 0 { 0.0 } else { step as f64 / total as f64 };
        match self {
            Schedule::Constant => base,
            Schedule::Cosine => base * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos()),
            Schedule::Step if progress >= 0.75 => base / 100.0,
            Schedule::Step if progress >= 0.5 => base / 10.0,
            Schedule::Step => base,
        }
    }
}

impl std::str::FromStr for Schedule {
    type Err = OptimizeError;

    fn from_str(s: &str) -> Result<Self> {
        match s {
            "constant" => Ok(Schedule::Constant),
            "cosine" => Ok(Schedule::Cosine),
            "step" => Ok(Schedule::Step),
            _ => Err(OptimizeError::Option(format!("unknown schedule '{s}' (constant, cosine, step)"))),
        }
    }
}

/// An optimizer over a fixed set of variables.
pub enum Optimizer {
    Sgd { vars: Vec<Var>, velocity: Vec<Option<Tensor>>, momentum: f64, weight_decay: f64 },
    AdamW(Box<candle_nn::AdamW>),
}

impl Optimizer {
    pub fn new(kind: OptimizerKind, vars: Vec<Var>, lr: f64) -> Result<Optimizer> {
        Ok(match kind {
            OptimizerKind::Sgd { momentum, weight_decay } => {
                Optimizer::Sgd { velocity: vec![None; vars.len()], vars, momentum, weight_decay }
            }
            OptimizerKind::AdamW { weight_decay } => {
                let params = candle_nn::ParamsAdamW { lr, weight_decay, ..Default::default() };
                Optimizer::AdamW(Box::new(candle_nn::AdamW::new(vars, params)?))
            }
        })
    }

    /// One update with the gradients of the last backward pass, at rate `lr`.
    pub fn step(&mut self, grads: &GradStore, lr: f64) -> Result<()> {
        match self {
            Optimizer::Sgd { vars, velocity, momentum, weight_decay } => {
                for (var, v) in vars.iter().zip(velocity.iter_mut()) {
                    let Some(g) = grads.get(var.as_tensor()) else { continue };
                    let g = if *weight_decay > 0.0 {
                        (g + (var.as_tensor() * *weight_decay)?)?
                    } else {
                        g.clone()
                    };
                    let next = match v.take() {
                        Some(prev) if *momentum > 0.0 => ((prev * *momentum)? + g)?,
                        _ => g,
                    };
                    var.set(&(var.as_tensor() - (&next * lr)?)?)?;
                    *v = Some(next);
                }
            }
            Optimizer::AdamW(adam) => {
                adam.set_learning_rate(lr);
                adam.step(grads)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn schedules_start_at_the_base_rate_and_decay() {
        for s in [Schedule::Constant, Schedule::Cosine, Schedule::Step] {
            assert_eq!(s.rate(0.1, 0, 100), 0.1);
        }
        assert!(Schedule::Cosine.rate(0.1, 99, 100) < 0.001);
        assert!((Schedule::Step.rate(0.1, 60, 100) - 0.01).abs() < 1e-12);
    }

    #[test]
    fn sgd_with_momentum_follows_the_pytorch_update() {
        // w = 1, loss = w² → g = 2w. Step 1: v = 2, w = 1 - 0.1·2 = 0.8.
        // Step 2: g = 1.6, v = 0.9·2 + 1.6 = 3.4, w = 0.8 - 0.34 = 0.46.
        let w = Var::new(&[1f64], &Device::Cpu).expect("var");
        let mut opt =
            Optimizer::new(OptimizerKind::Sgd { momentum: 0.9, weight_decay: 0.0 }, vec![w.clone()], 0.1)
                .expect("sgd");
        for _ in 0..2 {
            let grads = w.as_tensor().sqr().expect("sqr").sum_all().expect("sum").backward().expect("grad");
            opt.step(&grads, 0.1).expect("step");
        }
        let got = w.as_tensor().to_vec1::<f64>().expect("w")[0];
        assert!((got - 0.46).abs() < 1e-12, "{got}");
    }
}
