//! logitkit: LLM logits to tokens on the CPU, fast and exactly specified.
//!
//! * [`kernels`]: batch kernels on plain slices (softmax, argmax, top-k, masks, bias and
//!   penalties, the sampling pipeline, log-probabilities);
//! * [`simd`]: the run-time SIMD level;
//! * [`philox`]: the documented uniform draw;
//! * `python` (feature `python`): the `logitkit._core` extension module, conversions only.

pub mod error;
pub mod kernels;
pub mod philox;
pub mod simd;

#[cfg(feature = "python")]
mod outputs;
#[cfg(feature = "python")]
mod python;

pub use error::KernelError;
