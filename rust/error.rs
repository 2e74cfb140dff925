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
