//! A model's latency objective, read from its config parameters: `slo_ms` (milliseconds) or
//! `slo` (a preset named after a use case, or milliseconds).

use std::collections::BTreeMap;
use std::time::Duration;

/// The latency objective of each use-case preset, in milliseconds.
pub const SLO_PRESETS: [(&str, u64); 6] = [
    ("autonomous", 10),
    ("recommendation", 50),
    ("voice", 100),
    ("search", 100),
    ("mobile", 200),
    ("video", 500),
];

/// The parameter holding the objective in milliseconds.
pub const SLO_MS_PARAMETER: &str = "slo_ms";
/// The parameter holding a preset name (or milliseconds).
pub const SLO_PARAMETER: &str = "slo";

/// The latency objective a model declares in its parameters, `None` when it declares none.
/// The error names the parameter and what was expected.
pub fn slo_from_parameters(parameters: &BTreeMap<String, String>) -> Result<Option<Duration>, String> {
    let by_ms = parameters.get(SLO_MS_PARAMETER);
    let by_name = parameters.get(SLO_PARAMETER);
    match (by_ms, by_name) {
        (None, None) => Ok(None),
        (Some(_), Some(_)) => {
            Err(format!("give either parameter '{SLO_MS_PARAMETER}' or '{SLO_PARAMETER}', not both"))
        }
        (Some(ms), None) => parse_ms(ms).map(Some).ok_or_else(|| {
            format!("parameter '{SLO_MS_PARAMETER}' is '{ms}' but must be a positive number of milliseconds")
        }),
        (None, Some(name)) => slo_preset(name).or_else(|| parse_ms(name)).map(Some).ok_or_else(|| {
            let names: Vec<&str> = SLO_PRESETS.iter().map(|(n, _)| *n).collect();
            format!(
                "parameter '{SLO_PARAMETER}' is '{name}' but must be one of {} or a number of milliseconds",
                names.join(", ")
            )
        }),
    }
}

/// The objective of a preset, by case-insensitive name.
pub fn slo_preset(name: &str) -> Option<Duration> {
    let name = name.trim();
    SLO_PRESETS
        .iter()
        .find(|(preset, _)| preset.eq_ignore_ascii_case(name))
        .map(|(_, ms)| Duration::from_millis(*ms))
}

fn parse_ms(text: &str) -> Option<Duration> {
    let ms: f64 = text.trim().parse().ok()?;
    (ms.is_finite() && ms > 0.0 && ms < 1e9).then(|| Duration::from_secs_f64(ms / 1000.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parameters(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn reads_milliseconds_and_presets() {
        let ms = |n| Ok(Some(Duration::from_millis(n)));
        assert_eq!(slo_from_parameters(&parameters(&[])), Ok(None));
        assert_eq!(slo_from_parameters(&parameters(&[("slo_ms", "50")])), ms(50));
        assert_eq!(
            slo_from_parameters(&parameters(&[("slo_ms", " 2.5 ")])),
            Ok(Some(Duration::from_micros(2500)))
        );
        for (name, expected) in SLO_PRESETS {
            assert_eq!(slo_from_parameters(&parameters(&[("slo", name)])), ms(expected));
        }
        assert_eq!(slo_from_parameters(&parameters(&[("slo", "Voice")])), ms(100));
        assert_eq!(slo_from_parameters(&parameters(&[("slo", "30")])), ms(30));
    }

    #[test]
    fn names_what_is_wrong() {
        let cases = [
            (vec![("slo_ms", "0")], "'slo_ms' is '0' but must be a positive number"),
            (vec![("slo_ms", "fast")], "'slo_ms' is 'fast'"),
            (vec![("slo", "gaming")], "'slo' is 'gaming' but must be one of autonomous, recommendation"),
            (vec![("slo", "-3")], "'slo' is '-3'"),
            (vec![("slo", "voice"), ("slo_ms", "10")], "either parameter 'slo_ms' or 'slo'"),
        ];
        for (pairs, expected) in cases {
            let err = slo_from_parameters(&parameters(&pairs)).expect_err(expected);
            assert!(err.contains(expected), "'{err}' should contain '{expected}'");
        }
    }
}
