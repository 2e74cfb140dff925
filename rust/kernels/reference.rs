//! Scalar reference implementations of the batch kernels, for the tests.
//!
//! Every function works on one row of `f32` values (16-bit rows widened first), computes in
//! `f64` with plain loops and full sorts, and follows SPEC §3-§6 literally. Where the exact
//! result sits on a rounding boundary (top-p mass, min-p threshold, the draw), the reference also
//! returns every answer that a computation within a small relative tolerance of the exact one may
//! give; away from boundaries that set holds the exact answer alone.

use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet};

use super::penalties::Penalties;
use super::pipeline::{Filters, Order};
use crate::error::KernelError;

/// Relative tolerance on probability mass at top-p and draw boundaries.
pub const MASS_TOL: f64 = 1e-5;
/// Absolute tolerance, in tempered-logit space, at the min-p boundary.
pub const LOG_TOL: f64 = 1e-9;

fn masked(v: f32) -> bool {
    v == f32::NEG_INFINITY
}

/// The largest value of a row (`-inf` when every value is `-inf`).
#[must_use]
pub fn max(row: &[f32]) -> f32 {
    let mut m = f32::NEG_INFINITY;
    for &v in row {
        if v > m {
            m = v;
        }
    }
    m
}

/// The row maximum, or the error a kernel must report for row `r`.
///
/// # Errors
/// The first NaN or `+inf` ([`KernelError::NonFinite`]), else an all-`-inf` row.
pub fn check_row(row: &[f32], r: usize) -> Result<f32, KernelError> {
    for (index, &value) in row.iter().enumerate() {
        if value.is_nan() || value == f32::INFINITY {
            return Err(KernelError::NonFinite {
                row: r,
                index,
                value,
            });
        }
    }
    let m = max(row);
    if masked(m) {
        Err(KernelError::AllMasked { row: r })
    } else {
        Ok(m)
    }
}

/// The error of the lowest failing row of a batch.
///
/// # Errors
/// See [`check_row`].
pub fn check_batch(x: &[f32], vocab: usize) -> Result<(), KernelError> {
    for (r, row) in x.chunks(vocab).enumerate() {
        check_row(row, r)?;
    }
    Ok(())
}

/// `(v - m) / t` in `f64`.
fn tempered(v: f32, m: f32, t: f64) -> f64 {
    (f64::from(v) - f64::from(m)) / t
}

/// `softmax(row / t)`.
#[must_use]
pub fn softmax(row: &[f32], t: f64) -> Vec<f64> {
    let m = max(row);
    let w: Vec<f64> = row
        .iter()
        .map(|&v| {
            if masked(v) {
                0.0
            } else {
                tempered(v, m, t).exp()
            }
        })
        .collect();
    let total: f64 = w.iter().sum();
    w.iter().map(|&x| x / total).collect()
}

/// `log(softmax(row / t))`, `-inf` for masked tokens.
#[must_use]
pub fn log_softmax(row: &[f32], t: f64) -> Vec<f64> {
    let m = max(row);
    let mut total = 0.0f64;
    for &v in row {
        if !masked(v) {
            total += tempered(v, m, t).exp();
        }
    }
    let lse = total.ln();
    row.iter()
        .map(|&v| {
            if masked(v) {
                f64::NEG_INFINITY
            } else {
                tempered(v, m, t) - lse
            }
        })
        .collect()
}

/// Rank order: larger value first; equal values, lower id first.
#[must_use]
pub fn by_rank(row: &[f32], a: usize, b: usize) -> Ordering {
    row[b]
        .partial_cmp(&row[a])
        .expect("the reference ranks rows without NaN")
        .then(a.cmp(&b))
}

/// Every id of the row in rank order.
#[must_use]
pub fn rank(row: &[f32]) -> Vec<usize> {
    let mut ids: Vec<usize> = (0..row.len()).collect();
    ids.sort_by(|&a, &b| by_rank(row, a, b));
    ids
}

/// The ids of the finite tokens in rank order.
#[must_use]
pub fn ranked_finite(row: &[f32]) -> Vec<usize> {
    rank(row).into_iter().filter(|&i| !masked(row[i])).collect()
}

/// Index of the largest value, lowest index among equals.
#[must_use]
pub fn argmax(row: &[f32]) -> usize {
    let mut best = 0;
    for (i, &v) in row.iter().enumerate() {
        if v > row[best] {
            best = i;
        }
    }
    best
}

/// The `k` best `(value, id)` pairs, rank order.
#[must_use]
pub fn top_k(row: &[f32], k: usize) -> Vec<(f32, usize)> {
    rank(row).into_iter().take(k).map(|i| (row[i], i)).collect()
}

/// The row with every token outside the `k` best set to `-inf`.
#[must_use]
pub fn mask_top_k(row: &[f32], k: usize) -> Vec<f32> {
    let mut out = vec![f32::NEG_INFINITY; row.len()];
    for i in rank(row).into_iter().take(k) {
        out[i] = row[i];
    }
    out
}

/// A kept set: always a prefix of the finite tokens in rank order.
#[derive(Clone, Debug)]
pub struct KeptRef {
    /// Finite token ids in rank order.
    pub order: Vec<usize>,
    /// The prefix length the exact computation keeps.
    pub exact: usize,
    /// Every prefix length a computation within tolerance may keep (holds `exact`).
    pub lengths: BTreeSet<usize>,
}

impl KeptRef {
    fn all(row: &[f32]) -> Self {
        let order = ranked_finite(row);
        let n = order.len();
        Self {
            order,
            exact: n,
            lengths: BTreeSet::from([n]),
        }
    }

    /// The ids of the prefix of length `len`, in increasing id order.
    #[must_use]
    pub fn ids(&self, len: usize) -> Vec<usize> {
        let mut ids = self.order[..len].to_vec();
        ids.sort_unstable();
        ids
    }

    /// The length of the kept prefix equal to `ids` (any order), if it is an acceptable one.
    #[must_use]
    pub fn accepts(&self, ids: &[usize]) -> Option<usize> {
        let mut sorted = ids.to_vec();
        sorted.sort_unstable();
        let n = sorted.len();
        (self.lengths.contains(&n) && self.ids(n) == sorted).then_some(n)
    }

    /// Applies a step that maps a prefix length to (its exact image, every tolerable image).
    fn step(&mut self, f: impl Fn(usize) -> (usize, Vec<usize>)) {
        let exact = f(self.exact).0;
        let mut lengths = BTreeSet::from([exact]);
        for &len in &self.lengths {
            lengths.extend(f(len).1);
        }
        self.exact = exact;
        self.lengths = lengths;
    }

    /// Top-k: `k <= 0` or `k >= vocab` keeps everything.
    fn top_k(&mut self, k: i64, vocab: usize) {
        if k <= 0 || k as u64 >= vocab as u64 {
            return;
        }
        let k = k as usize;
        self.step(|len| (len.min(k), vec![len.min(k)]));
    }

    /// Top-p on the tempered distribution (temperature `fs`) of the kept prefix, then `min_keep`.
    fn top_p(&mut self, row: &[f32], top_p: f64, fs: f64, min_keep: usize) {
        if top_p >= 1.0 {
            return;
        }
        let top = row[self.order[0]];
        let mut sums = vec![0.0f64];
        let mut acc = 0.0f64;
        for &i in &self.order {
            acc += tempered(row[i], top, fs).exp();
            sums.push(acc);
        }
        let keep = |n: usize, len: usize| n.max(min_keep).min(len);
        self.step(|len| {
            if top_p <= 0.0 {
                return (keep(1, len), vec![keep(1, len)]);
            }
            let target = top_p * sums[len];
            let slack = MASS_TOL * sums[len];
            let exact = (1..=len).find(|&j| sums[j] >= target).unwrap_or(len);
            let mut near = Vec::new();
            for j in 1..=len {
                if sums[j - 1] > target + slack {
                    break;
                }
                if sums[j] >= target - slack {
                    near.push(keep(j, len));
                }
            }
            (keep(exact, len), near)
        });
    }

    /// Min-p: `(z - z_max) / fs >= ln(min_p)` within the kept prefix, then `min_keep`. For
    /// `min_p < 1`, equality at float32 precision: a logit up to one float32 ulp (at the larger
    /// magnitude of `z_max` and of `z_max + fs ln(min_p)`, at most half the way to `z_max`)
    /// below that threshold passes too.
    fn min_p(&mut self, row: &[f32], min_p: f64, fs: f64, min_keep: usize) {
        if min_p <= 0.0 {
            return;
        }
        let top = row[self.order[0]];
        let ulp = |x: f64| {
            let a = (x.abs() as f32).min(f32::MAX.next_down());
            f64::from(a.next_up()) - f64::from(a)
        };
        let mut ln_min_p = min_p.ln();
        if min_p < 1.0 {
            let thr = (f64::from(top) + fs * ln_min_p).max(-f64::from(f32::MAX));
            ln_min_p -= ulp(f64::from(top)).max(ulp(thr)).min(-0.5 * fs * ln_min_p) / fs;
        }
        let margin: Vec<f64> = self
            .order
            .iter()
            .map(|&i| tempered(row[i], top, fs) - ln_min_p)
            .collect();
        let keep = |n: usize, len: usize| n.max(min_keep).min(len);
        self.step(|len| {
            let exact = margin[..len].iter().filter(|&&d| d >= 0.0).count();
            let lo = margin[..len].iter().filter(|&&d| d > LOG_TOL).count();
            let hi = margin[..len].iter().filter(|&&d| d >= -LOG_TOL).count();
            (keep(exact, len), (lo..=hi).map(|n| keep(n, len)).collect())
        });
    }
}

/// The kept set of `mask_top_p(row, top_p, temperature = t, min_keep)`.
#[must_use]
pub fn top_p_kept(row: &[f32], top_p: f64, t: f64, min_keep: usize) -> KeptRef {
    let mut k = KeptRef::all(row);
    k.top_p(row, top_p, t, min_keep);
    k
}

/// The kept set of `mask_min_p(row, min_p, temperature = t, min_keep)`.
#[must_use]
pub fn min_p_kept(row: &[f32], min_p: f64, t: f64, min_keep: usize) -> KeptRef {
    let mut k = KeptRef::all(row);
    k.min_p(row, min_p, t, min_keep);
    k
}

/// The kept set of the sampling pipeline (SPEC §4 steps 5-8; `f.temperature > 0`).
#[must_use]
pub fn pipeline_kept(row: &[f32], f: &Filters) -> KeptRef {
    let fs = if f.order == Order::LlamaCpp {
        1.0
    } else {
        f.temperature
    };
    let mut k = KeptRef::all(row);
    match f.order {
        Order::Default | Order::LlamaCpp => {
            k.top_k(f.top_k, row.len());
            k.top_p(row, f.top_p, fs, f.min_keep);
            k.min_p(row, f.min_p, fs, f.min_keep);
        }
        Order::Vllm => {
            k.min_p(row, f.min_p, fs, f.min_keep);
            k.top_k(f.top_k, row.len());
            k.top_p(row, f.top_p, fs, f.min_keep);
        }
    }
    k
}

/// A drawn token: the exact answer and every answer within tolerance of a cumulative boundary.
#[derive(Clone, Debug)]
pub struct DrawRef {
    /// The token of the exact computation.
    pub exact: usize,
    /// Every acceptable token (holds `exact`).
    pub plausible: BTreeSet<usize>,
}

/// The draw of SPEC §4 step 9 from the tokens `kept` with temperature `t > 0` and uniform `u`:
/// the first kept id, in increasing id order, whose cumulative probability exceeds `u`.
#[must_use]
pub fn draw(row: &[f32], kept: &[usize], t: f64, u: f64) -> DrawRef {
    let mut ids = kept.to_vec();
    ids.sort_unstable();
    let top = ids
        .iter()
        .map(|&i| row[i])
        .fold(f32::NEG_INFINITY, f32::max);
    let w: Vec<f64> = ids
        .iter()
        .map(|&i| tempered(row[i], top, t).exp())
        .collect();
    let total: f64 = w.iter().sum();
    let target = u * total;
    let slack = MASS_TOL * total;
    let mut cum = 0.0f64;
    let mut exact = None;
    let mut last_weighted = ids[0];
    let mut plausible = BTreeSet::new();
    for (&id, &wi) in ids.iter().zip(&w) {
        let before = cum;
        cum += wi;
        if wi > 0.0 {
            last_weighted = id;
        }
        if exact.is_none() && cum > target {
            exact = Some(id);
        }
        if cum > target - slack && before <= target + slack {
            plausible.insert(id);
        }
    }
    let exact = exact.unwrap_or(last_weighted);
    plausible.insert(exact);
    DrawRef { exact, plausible }
}

/// The whole of `sample` for one row: the kept set (`None` when greedy) and the draw from the
/// exact kept set.
#[must_use]
pub fn sample(row: &[f32], f: &Filters, u: f64) -> (Option<KeptRef>, DrawRef) {
    if f.temperature == 0.0 {
        let a = argmax(row);
        return (
            None,
            DrawRef {
                exact: a,
                plausible: BTreeSet::from([a]),
            },
        );
    }
    let kept = pipeline_kept(row, f);
    let d = draw(row, &kept.ids(kept.exact), f.temperature, u);
    (Some(kept), d)
}

/// SPEC §4 steps 2-3: `row + bias`, then repetition, then frequency and presence.
#[must_use]
pub fn bias_and_penalties(
    row: &[f32],
    bias: Option<(&[u32], &[f64])>,
    pen: Option<(&[u32], &[u32], &Penalties)>,
) -> Vec<f32> {
    let mut z = row.to_vec();
    if let Some((ids, vals)) = bias {
        for (&id, &b) in ids.iter().zip(vals) {
            let i = id as usize;
            z[i] = (f64::from(z[i]) + b) as f32;
        }
    }
    if let Some((prompt, output, p)) = pen {
        if p.repetition != 1.0 {
            let seen: BTreeSet<u32> = prompt.iter().chain(output).copied().collect();
            for t in seen {
                let i = t as usize;
                let v = f64::from(z[i]);
                z[i] = if v > 0.0 {
                    (v / p.repetition) as f32
                } else {
                    (v * p.repetition) as f32
                };
            }
        }
        if p.frequency != 0.0 || p.presence != 0.0 {
            let mut counts: BTreeMap<u32, u32> = BTreeMap::new();
            for &t in output {
                *counts.entry(t).or_insert(0) += 1;
            }
            for (t, c) in counts {
                let i = t as usize;
                z[i] = (f64::from(z[i]) - f64::from(c) * p.frequency - p.presence) as f32;
            }
        }
    }
    z
}

/// Log-probabilities of one row: per requested token (value, rank), and the top `n`.
#[derive(Clone, Debug)]
pub struct LogprobsRef {
    /// `log_softmax(row)[t]` for each requested token.
    pub token_logprobs: Vec<f64>,
    /// `1 +` the number of tokens with a strictly larger logit.
    pub ranks: Vec<i64>,
    /// The `n` best ids, rank order.
    pub top_ids: Vec<usize>,
    /// Their log-probabilities.
    pub top_logprobs: Vec<f64>,
}

/// `logprobs(row, tokens, top_n)`.
#[must_use]
pub fn logprobs(row: &[f32], tokens: &[u32], top_n: usize) -> LogprobsRef {
    let lp = log_softmax(row, 1.0);
    let mut token_logprobs = Vec::new();
    let mut ranks = Vec::new();
    for &t in tokens {
        let v = row[t as usize];
        token_logprobs.push(lp[t as usize]);
        ranks.push(1 + row.iter().filter(|&&x| x > v).count() as i64);
    }
    let top_ids: Vec<usize> = rank(row).into_iter().take(top_n).collect();
    let top_logprobs = top_ids.iter().map(|&i| lp[i]).collect();
    LogprobsRef {
        token_logprobs,
        ranks,
        top_ids,
        top_logprobs,
    }
}
