//! The one error type of the kernels. The Python binding maps every variant to `ValueError`
//! with the `Display` text, which always names the offending parameter.

use std::fmt;

/// Why a kernel refused its input.
#[derive(Debug, Clone, PartialEq)]
pub enum KernelError {
    /// A logit is NaN or `+inf` (only finite values and `-inf` are legal).
    NonFinite {
        row: usize,
        index: usize,
        value: f32,
    },
    /// Every token of the row is masked (all `-inf`, or removed before the draw).
    AllMasked { row: usize },
    /// A parameter is outside its documented range.
    InvalidParam {
        name: &'static str,
        row: Option<usize>,
        reason: String,
    },
}

impl KernelError {
    /// An [`KernelError::InvalidParam`] for `name` (and the row when the value was per row).
    pub fn param(name: &'static str, row: Option<usize>, reason: impl Into<String>) -> Self {
        Self::InvalidParam {
            name,
            row,
            reason: reason.into(),
        }
    }

    /// The same error with its row number shifted by `base` (rows are numbered per call).
    #[must_use]
    pub fn at_row(self, row: usize) -> Self {
        match self {
            Self::NonFinite { index, value, .. } => Self::NonFinite { row, index, value },
            Self::AllMasked { .. } => Self::AllMasked { row },
            Self::InvalidParam { name, reason, .. } => Self::InvalidParam {
                name,
                row: Some(row),
                reason,
            },
        }
    }
}

impl fmt::Display for KernelError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NonFinite { row, index, value } => write!(
                f,
                "logits: row {row}, index {index} is {value} (logits must be finite or -inf)"
            ),
            Self::AllMasked { row } => write!(
                f,
                "logits: row {row} has no token left to choose from (every token is -inf or was removed)"
            ),
            Self::InvalidParam {
                name,
                row: Some(row),
                reason,
            } => write!(f, "{name}: {reason} (row {row})"),
            Self::InvalidParam {
                name,
                row: None,
                reason,
            } => write!(f, "{name}: {reason}"),
        }
    }
}

impl std::error::Error for KernelError {}

/// `v` as Python's `repr(float)` writes it (`0.5`, `1e-300`, `1e+300`, `nan`, `-inf`), so that
/// the messages of the kernels' checks read like those of the Python layer.
#[must_use]
pub fn shown(v: f64) -> String {
    if v.is_nan() {
        return "nan".to_owned();
    }
    // `{:?}` is the shortest round-trip form, in scientific notation exactly where Python's is
    // (below 1e-4 and from 1e16 on); only the exponent is written differently (`e16`, `e-5`).
    let s = format!("{v:?}");
    match s.split_once('e') {
        Some((mantissa, exp)) => {
            let (sign, digits) = exp.strip_prefix('-').map_or(("+", exp), |d| ("-", d));
            format!("{mantissa}e{sign}{digits:0>2}")
        }
        None => s,
    }
}

#[cfg(test)]
mod tests {
    use super::shown;

    #[test]
    fn floats_are_shown_as_python_writes_them() {
        let cases = [
            (0.5, "0.5"),
            (1.0, "1.0"),
            (-2.0, "-2.0"),
            (1e-300, "1e-300"),
            (-1e-300, "-1e-300"),
            (1e300, "1e+300"),
            (1e16, "1e+16"),
            (1.5e16, "1.5e+16"),
            (1e15, "1000000000000000.0"),
            (1e-5, "1e-05"),
            (0.0001, "0.0001"),
            (f64::NAN, "nan"),
            (f64::INFINITY, "inf"),
            (f64::NEG_INFINITY, "-inf"),
            (-0.0, "-0.0"),
            (5e-324, "5e-324"),
            (0.1 + 0.2, "0.30000000000000004"),
            (9.999e-5, "9.999e-05"),
            (1.2345678901234568e17, "1.2345678901234568e+17"),
        ];
        for (v, want) in cases {
            assert_eq!(shown(v), want, "{v:?}");
        }
    }
}
