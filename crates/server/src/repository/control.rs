//! Model control, in Triton's words (`--model-control-mode none|explicit|poll`): which models
//! load at start, whether the repository API may load and unload, and whether the repository
//! is polled for changes.

use std::time::Duration;

/// The `--model-control-mode` choice.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModelControlMode {
    None,
    Explicit,
    Poll,
}

impl std::str::FromStr for ModelControlMode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "none" => Ok(ModelControlMode::None),
            "explicit" => Ok(ModelControlMode::Explicit),
            "poll" => Ok(ModelControlMode::Poll),
            other => Err(format!("unknown model control mode '{other}' (expected none, explicit or poll)")),
        }
    }
}

/// Triton's default poll period.
const DEFAULT_POLL_SECONDS: f64 = 15.0;

/// The models loaded at start in explicit mode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StartupModels {
    All,
    Named(Vec<String>),
}

/// How the set of served models changes; validated from the flags by [`ModelControl::from_flags`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModelControl {
    /// Every model loads at start and stays; the load/unload API is refused.
    None,
    /// The models named at start load; the load/unload API changes what is served.
    Explicit(StartupModels),
    /// Every model loads at start; the repository is read every `interval` and new, changed
    /// and removed models follow it; the load/unload API is refused.
    Poll { interval: Duration },
}

impl Default for ModelControl {
    /// rtserve's default, without `--model-control-mode`: every model loads at start and the
    /// load/unload API works (Triton's default is `none`, which refuses the API).
    fn default() -> Self {
        ModelControl::Explicit(StartupModels::All)
    }
}

impl ModelControl {
    /// The control the flags ask for. `--load-model` belongs to explicit mode and
    /// `--repository-poll-seconds` to poll mode; without `--model-control-mode` rtserve loads
    /// every model and allows load/unload ([`ModelControl::default`]).
    pub fn from_flags(
        mode: Option<ModelControlMode>,
        load_models: &[String],
        poll_seconds: Option<f64>,
    ) -> Result<ModelControl, String> {
        if !load_models.is_empty() && mode != Some(ModelControlMode::Explicit) {
            return Err("--load-model needs --model-control-mode explicit (the other modes load every \
                        model at start)"
                .to_string());
        }
        if poll_seconds.is_some() && mode != Some(ModelControlMode::Poll) {
            return Err("--repository-poll-seconds needs --model-control-mode poll".to_string());
        }
        if let Some(bad) = load_models.iter().find(|name| name.is_empty() || name.contains('/')) {
            return Err(format!("--load-model '{bad}' is not a model name (a folder of the repository)"));
        }
        Ok(match mode {
            None => ModelControl::default(),
            Some(ModelControlMode::None) => ModelControl::None,
            Some(ModelControlMode::Explicit) if load_models.iter().any(|name| name == "*") => {
                ModelControl::Explicit(StartupModels::All)
            }
            Some(ModelControlMode::Explicit) => {
                ModelControl::Explicit(StartupModels::Named(load_models.to_vec()))
            }
            Some(ModelControlMode::Poll) => {
                let seconds = poll_seconds.unwrap_or(DEFAULT_POLL_SECONDS);
                let interval = Duration::try_from_secs_f64(seconds)
                    .ok()
                    .filter(|interval| !interval.is_zero())
                    .ok_or_else(|| {
                        format!("--repository-poll-seconds {seconds} must be a positive number")
                    })?;
                ModelControl::Poll { interval }
            }
        })
    }

    /// Whether the load/unload API may change what is served.
    pub fn api_allowed(&self) -> bool {
        matches!(self, ModelControl::Explicit(_))
    }

    /// The mode's flag value, for messages.
    pub fn mode_name(&self) -> &'static str {
        match self {
            ModelControl::None => "none",
            ModelControl::Explicit(_) => "explicit",
            ModelControl::Poll { .. } => "poll",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(names: &[&str]) -> Vec<String> {
        names.iter().map(|n| n.to_string()).collect()
    }

    #[test]
    fn flags_become_a_control() {
        assert_eq!(ModelControl::from_flags(None, &[], None), Ok(ModelControl::Explicit(StartupModels::All)));
        assert_eq!(ModelControl::from_flags(Some(ModelControlMode::None), &[], None), Ok(ModelControl::None));
        assert_eq!(
            ModelControl::from_flags(Some(ModelControlMode::Explicit), &[], None),
            Ok(ModelControl::Explicit(StartupModels::Named(Vec::new()))),
            "explicit without --load-model loads nothing, as Triton"
        );
        assert_eq!(
            ModelControl::from_flags(Some(ModelControlMode::Explicit), &names(&["a", "*"]), None),
            Ok(ModelControl::Explicit(StartupModels::All))
        );
        assert_eq!(
            ModelControl::from_flags(Some(ModelControlMode::Poll), &[], Some(0.5)),
            Ok(ModelControl::Poll { interval: Duration::from_millis(500) })
        );
        assert_eq!(
            ModelControl::from_flags(Some(ModelControlMode::Poll), &[], None),
            Ok(ModelControl::Poll { interval: Duration::from_secs(15) })
        );
    }

    #[test]
    fn flags_of_another_mode_are_refused_by_name() {
        let err = |mode, load: &[&str], poll| {
            ModelControl::from_flags(mode, &names(load), poll).expect_err("refused")
        };
        assert!(err(Some(ModelControlMode::Poll), &["a"], None)
            .contains("--load-model needs --model-control-mode explicit"));
        assert!(err(None, &["a"], None).contains("--load-model"));
        assert!(
            err(Some(ModelControlMode::Explicit), &[], Some(1.0)).contains("--repository-poll-seconds needs")
        );
        assert!(err(Some(ModelControlMode::Poll), &[], Some(0.0)).contains("must be a positive number"));
        assert!(err(Some(ModelControlMode::Poll), &[], Some(-1.0)).contains("must be a positive number"));
        assert!(err(Some(ModelControlMode::Explicit), &["../x"], None).contains("is not a model name"));
        assert_eq!("poll".parse::<ModelControlMode>(), Ok(ModelControlMode::Poll));
        assert!("sometimes"
            .parse::<ModelControlMode>()
            .expect_err("unknown")
            .contains("none, explicit or poll"));
    }
}
