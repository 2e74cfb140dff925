//! Batch kernels: plain Rust on slices, no Python types.
//!
//! A batch is a row-major slice of `rows * vocab` elements. Every function checks each row it
//! reads (NaN or `+inf`: [`KernelError::NonFinite`]; every token `-inf`:
//! [`KernelError::AllMasked`]) and reports the lowest failing row. Rows are independent: a row's
//! result never depends on the other rows, on the batch size or on the thread count.
//!
//! Semantics (the contract shared with `tests/oracle.py` and the README):
//! * ranking: larger logit first; equal logits, lower token id first;
//! * `-inf` is a masked token: probability exactly 0, never kept, never drawn;
//! * top-p keeps the shortest rank-order prefix whose probability reaches `top_p`;
//! * min-p keeps `p >= min_p * p_max`, i.e. `z >= z_max + ln(min_p)` on tempered logits;
//! * `min_keep` applies after top-p and after min-p and never revives a removed token;
//! * the draw returns the first kept id, in increasing id order, whose cumulative probability
//!   exceeds the uniform `u`.

pub mod batch;
pub mod elem;
pub mod parallel;
pub mod penalties;
pub mod pipeline;
pub mod prims;
pub mod select;

#[cfg(test)]
mod reference;
#[cfg(test)]
mod tests;

use elem::Elem;
pub use penalties::Penalties;
use pipeline::ALL_FINITE;
pub use pipeline::{Filters, Mask, Order};

use crate::error::{shown, KernelError};
use parallel::for_rows;
use select::Cand;

/// Token ids of every row of a batch, flattened: row `r` owns `ids[offsets[r]..offsets[r + 1]]`.
#[derive(Clone, Debug, Default)]
pub struct TokenLists {
    ids: Vec<u32>,
    offsets: Vec<usize>,
}

impl TokenLists {
    /// Checks that every id is in `[0, vocab)`.
    ///
    /// # Errors
    /// [`KernelError::InvalidParam`] naming `name` and the row.
    pub fn new(name: &'static str, rows: Vec<Vec<i64>>, vocab: usize) -> Result<Self, KernelError> {
        let mut lists = Self::empty(0);
        lists.ids.reserve(rows.iter().map(Vec::len).sum());
        for row in &rows {
            lists.push_row(name, row, vocab)?;
        }
        Ok(lists)
    }

    /// Appends one row of ids after checking that every id is in `[0, vocab)`.
    ///
    /// # Errors
    /// [`KernelError::InvalidParam`] naming `name`, the new row and its first id out of range
    /// (nothing is appended then).
    pub fn push_row<I: Copy + Into<i64>>(
        &mut self,
        name: &'static str,
        row: &[I],
        vocab: usize,
    ) -> Result<(), KernelError> {
        // One branch-free pass checks the row (a negative id is a huge `u64`); only a bad row
        // looks for the id to name.
        let in_range = |t: I| (t.into() as u64) < vocab as u64;
        if !row.iter().fold(true, |ok, &t| ok & in_range(t)) {
            let bad = row
                .iter()
                .map(|&t| t.into())
                .find(|&t| (t as u64) >= vocab as u64);
            return Err(KernelError::param(
                name,
                Some(self.rows()),
                format!("token id {} is outside [0, {vocab})", bad.unwrap_or(-1)),
            ));
        }
        self.ids.extend(row.iter().map(|&t| t.into() as u32));
        self.offsets.push(self.ids.len());
        Ok(())
    }

    /// No tokens for `rows` rows.
    #[must_use]
    pub fn empty(rows: usize) -> Self {
        Self {
            ids: Vec::new(),
            offsets: vec![0; rows + 1],
        }
    }

    /// The tokens of row `r`.
    #[must_use]
    pub fn row(&self, r: usize) -> &[u32] {
        &self.ids[self.offsets[r]..self.offsets[r + 1]]
    }

    /// Number of rows.
    #[must_use]
    pub fn rows(&self) -> usize {
        self.offsets.len() - 1
    }
}

/// A value given once for the whole batch or once per row.
#[derive(Clone, Debug)]
pub enum PerRow<V> {
    /// The same value for every row.
    All(V),
    /// One value per row.
    Each(Vec<V>),
}

impl<V: Clone> PerRow<V> {
    /// The value of row `r`.
    #[must_use]
    pub fn get(&self, r: usize) -> &V {
        match self {
            Self::All(v) => v,
            Self::Each(v) => &v[r],
        }
    }

    /// Every value, with the row it belongs to (`None` when shared).
    pub fn iter(&self) -> Box<dyn Iterator<Item = (Option<usize>, &V)> + '_> {
        match self {
            Self::All(v) => Box::new(std::iter::once((None, v))),
            Self::Each(v) => Box::new(v.iter().enumerate().map(|(r, x)| (Some(r), x))),
        }
    }
}

fn rows_of<T>(x: &[T], vocab: usize) -> usize {
    x.len().checked_div(vocab).unwrap_or(0)
}

fn check_temperature(t: f64) -> Result<(), KernelError> {
    if t.is_finite() && t > 0.0 {
        Ok(())
    } else {
        Err(KernelError::param(
            "temperature",
            None,
            format!("must be finite and > 0, got {}", shown(t)),
        ))
    }
}

/// `softmax(x / temperature)` (or its logarithm when `log`) of every row into `out`.
///
/// # Errors
/// Invalid temperature, NaN/`+inf`, all-masked rows.
pub fn softmax<T: Elem>(
    x: &[T],
    vocab: usize,
    temperature: f64,
    log: bool,
    out: &mut [f32],
) -> Result<(), KernelError> {
    check_temperature(temperature)?;
    for_rows(rows_of(x, vocab), vocab, out, vocab, |r, o, scr| {
        let row = &x[r * vocab..(r + 1) * vocab];
        if pipeline::halves(row, temperature) {
            softmax_halved(row, temperature, log, o, scr)
        } else {
            softmax_row(row, pipeline::scale_of(temperature), log, o, scr)
        }
    })
}

/// [`softmax`] of `x` into `x` itself (`out=logits`): each row is read from a copy in the
/// thread's scratch, so a batch needs no copy of its own.
///
/// # Errors
/// As [`softmax`].
pub fn softmax_in_place(
    x: &mut [f32],
    vocab: usize,
    temperature: f64,
    log: bool,
) -> Result<(), KernelError> {
    check_temperature(temperature)?;
    for_rows(rows_of(x, vocab), vocab, x, vocab, |_, o, scr| {
        if pipeline::halves(o, temperature) {
            in_place(o, scr, |row, o, scr| {
                softmax_halved(row, temperature, log, o, scr)
            })
        } else if log {
            // No copy: the row is read for its terms, then each element is replaced by its
            // log-probability (the operations of `prims::write_log_softmax`).
            let scale = pipeline::scale_of(temperature);
            let (m, lse) = log_softmax_terms(&*o, scale, scr)?;
            prims::write_log_softmax_in_place(o, m, scale, lse);
            Ok(())
        } else {
            in_place(o, scr, |row, o, scr| {
                softmax_row(row, pipeline::scale_of(temperature), false, o, scr)
            })
        }
    })
}

/// Runs `f` on a copy of the row `o` (in the scratch's `input`), writing `o`.
fn in_place(
    o: &mut [f32],
    scr: &mut pipeline::Scratch,
    f: impl FnOnce(&[f32], &mut [f32], &mut pipeline::Scratch) -> Result<(), KernelError>,
) -> Result<(), KernelError> {
    let mut row = std::mem::take(&mut scr.input);
    row.clear();
    row.extend_from_slice(o);
    let res = f(&row, o, scr);
    scr.input = row;
    res
}

/// `softmax(row / temperature)` (or its logarithm when `log`) of a row that
/// [`pipeline::halves`] into `o`: weighed on a halved copy at `t / 2`.
fn softmax_halved<T: Elem>(
    row: &[T],
    temperature: f64,
    log: bool,
    o: &mut [f32],
    scr: &mut pipeline::Scratch,
) -> Result<(), KernelError> {
    let mut half = std::mem::take(&mut scr.half);
    pipeline::halve_into(row, &mut half);
    let scale = pipeline::scale_of(pipeline::in_units(temperature, 0.5));
    let res = softmax_row(&half[..], scale, log, o, scr);
    scr.half = half;
    res
}

/// `softmax(row * scale)` (or its logarithm when `log`) of one row into `o`.
fn softmax_row<T: Elem>(
    row: &[T],
    scale: f32,
    log: bool,
    o: &mut [f32],
    scr: &mut pipeline::Scratch,
) -> Result<(), KernelError> {
    if log {
        // With T so large that 1/T is 0 in f32 (the uniform distribution over the finite
        // tokens), masked tokens still get -inf (`prims::finite_logprob`).
        let (m, lse) = log_softmax_terms(row, scale, scr)?;
        prims::write_log_softmax(row, m, scale, lse, o);
        return Ok(());
    }
    let mut bmax = std::mem::take(&mut scr.bmax);
    let res = if prims::fused_pays(scale) {
        softmax_fused(row, scale, &mut bmax, o, scr)
    } else {
        pipeline::scan(row, &mut bmax).map(|s| {
            let total = prims::write_weights(row, s.bmax, s.m, scale, o);
            prims::scale_in_place(o, (1.0 / total) as f32);
        })
    };
    scr.bmax = bmax;
    res
}

/// The maximum of `row` and `ln` of its weight total at `scale`: the terms of its log-softmax,
/// `(v - m) * scale - lse`.
fn log_softmax_terms<T: Elem>(
    row: &[T],
    scale: f32,
    scr: &mut pipeline::Scratch,
) -> Result<(f32, f64), KernelError> {
    let mut bmax = std::mem::take(&mut scr.bmax);
    let res = pipeline::scan_with(row, &mut bmax, Some(scale), scr).map(|s| {
        let (total, _) = pipeline::weight_sums(&s, scale, ALL_FINITE, scr);
        (s.m, total.ln())
    });
    scr.bmax = bmax;
    res
}

/// Softmax of one row in two passes: the scan fused with the weights' write, then their
/// normalisation ([`prims::scan_write_weights`], [`prims::normalize_weights`]).
fn softmax_fused<T: Elem>(
    row: &[T],
    scale: f32,
    bmax: &mut Vec<f32>,
    o: &mut [f32],
    scr: &mut pipeline::Scratch,
) -> Result<(), KernelError> {
    let nb = prims::n_blocks(row.len());
    bmax.resize(nb, 0.0);
    scr.bsum.resize(nb, 0.0);
    scr.gref.resize(nb.div_ceil(prims::GROUP), 0.0);
    let scan = prims::scan_write_weights(row, bmax, &mut scr.bsum, &mut scr.gref, scale, o);
    let m = pipeline::checked_max(scan)?;
    prims::normalize_weights(bmax, &mut scr.bsum, &scr.gref, m, scale, o, &mut scr.wts);
    Ok(())
}

/// Checks one row (no NaN or `+inf`, at least one finite token) and returns its maximum.
fn check_row<T: Elem>(row: &[T]) -> Result<f32, KernelError> {
    pipeline::checked_max(prims::max(row))
}

/// Index of the largest logit of every row (ties: lowest index).
///
/// # Errors
/// NaN/`+inf`, all-masked rows.
pub fn argmax<T: Elem>(x: &[T], vocab: usize, out: &mut [i64]) -> Result<(), KernelError> {
    for_rows(rows_of(x, vocab), vocab, out, 1, |r, o, _| {
        o[0] = argmax_row(&x[r * vocab..(r + 1) * vocab])? as i64;
        Ok(())
    })
}

/// Elements per chunk of [`argmax_row`]: small enough that the winning chunk is still in the
/// L1 or L2 cache when it is read a second time.
const ARGMAX_CHUNK: usize = 4096;

/// Index of the first maximum of a checked row, in one pass: the maximum of every chunk, then
/// a search for the first equal element in the first chunk that holds the row maximum.
fn argmax_row<T: Elem>(row: &[T]) -> Result<usize, KernelError> {
    let mut best = f32::NEG_INFINITY;
    let mut start = None;
    for (c, chunk) in row.chunks(ARGMAX_CHUNK).enumerate() {
        match prims::max(chunk) {
            prims::Scan::Bad(index, value) => {
                return Err(KernelError::NonFinite {
                    row: 0,
                    index: c * ARGMAX_CHUNK + index,
                    value,
                })
            }
            prims::Scan::Max(m) if m > best => {
                best = m;
                start = Some(c * ARGMAX_CHUNK);
            }
            prims::Scan::Max(_) => {}
        }
    }
    let start = start.ok_or(KernelError::AllMasked { row: 0 })?;
    let chunk = &row[start..row.len().min(start + ARGMAX_CHUNK)];
    Ok(start + prims::find_eq(chunk, best))
}

/// The `k` largest logits of every row and their ids, largest first (ties: lower id first).
///
/// # Errors
/// `k` outside `[1, vocab]`, NaN/`+inf`, all-masked rows.
pub fn top_k<T: Elem>(
    x: &[T],
    vocab: usize,
    k: usize,
    values: &mut [f32],
    indices: &mut [i64],
) -> Result<(), KernelError> {
    if k < 1 || k > vocab {
        return Err(KernelError::param(
            "k",
            None,
            format!("must be in [1, {vocab}], got {k}"),
        ));
    }
    parallel::check_vocab(vocab)?; // before the candidates are allocated
    let rows = rows_of(x, vocab);
    let mut cands = vec![Cand { v: 0.0, id: 0 }; rows * k];
    for_rows(rows, vocab, &mut cands, k, |r, o, scr| {
        let row = &x[r * vocab..(r + 1) * vocab];
        let mut bmax = std::mem::take(&mut scr.bmax);
        let res = pipeline::scan(row, &mut bmax).map(|s| {
            let mut list = std::mem::take(&mut scr.cands);
            select::top_k(
                row,
                s.bmax,
                k,
                &mut scr.sel,
                &mut scr.ids,
                &mut scr.keys,
                &mut list,
            );
            o.copy_from_slice(&list);
            scr.cands = list;
        });
        scr.bmax = bmax;
        res
    })?;
    for ((c, v), i) in cands.iter().zip(values.iter_mut()).zip(indices.iter_mut()) {
        *v = c.v;
        *i = i64::from(c.id);
    }
    Ok(())
}

/// Writes a top-k, top-p or min-p mask of every row into `out`.
///
/// # Errors
/// Parameters out of range, NaN/`+inf`, all-masked rows.
pub fn mask<T: Elem>(x: &[T], vocab: usize, m: Mask, out: &mut [f32]) -> Result<(), KernelError> {
    check_mask(m)?;
    for_rows(rows_of(x, vocab), vocab, out, vocab, |r, o, scr| {
        pipeline::mask_row(&x[r * vocab..(r + 1) * vocab], m, o, scr)
    })
}

/// [`mask`] of `x` into `x` itself (`out=logits`), row by row from a copy as
/// [`softmax_in_place`] does.
///
/// # Errors
/// As [`mask`].
pub fn mask_in_place(x: &mut [f32], vocab: usize, m: Mask) -> Result<(), KernelError> {
    check_mask(m)?;
    for_rows(rows_of(x, vocab), vocab, x, vocab, |_, o, scr| {
        in_place(o, scr, |row, o, scr| pipeline::mask_row(row, m, o, scr))
    })
}

/// Refuses a mask's parameters out of range.
fn check_mask(m: Mask) -> Result<(), KernelError> {
    match m {
        Mask::TopK(k) if k < 1 => {
            return Err(KernelError::param(
                "k",
                None,
                format!("must be >= 1, got {k}"),
            ))
        }
        Mask::TopP {
            top_p,
            temperature,
            min_keep,
        }
        | Mask::MinP {
            min_p: top_p,
            temperature,
            min_keep,
        } => {
            let name = if matches!(m, Mask::TopP { .. }) {
                "top_p"
            } else {
                "min_p"
            };
            if !(0.0..=1.0).contains(&top_p) {
                return Err(KernelError::param(
                    name,
                    None,
                    format!("must be in [0, 1], got {}", shown(top_p)),
                ));
            }
            check_temperature(temperature)?;
            if min_keep < 1 {
                return Err(KernelError::param("min_keep", None, "must be >= 1"));
            }
        }
        Mask::TopK(_) => {}
    }
    Ok(())
}

/// The logit bias of one row: ids (in range) and values (finite or `-inf`).
pub type Bias = (Vec<u32>, Vec<f64>);

/// Why the bias `v` of token `id` is refused (NaN or `+inf`), or `None` when it is finite or
/// `-inf`.
#[must_use]
pub fn bad_bias_value(id: u32, v: f64) -> Option<String> {
    (v.is_nan() || v == f64::INFINITY)
        .then(|| format!("value {v} for token {id} must be finite or -inf"))
}

/// Checks bias entries: ids in `[0, vocab)`, values finite or `-inf`.
///
/// # Errors
/// [`KernelError::InvalidParam`] naming `bias`.
pub fn check_bias(bias: &PerRow<Bias>, vocab: usize) -> Result<(), KernelError> {
    for (r, (ids, vals)) in bias.iter() {
        for (&id, &v) in ids.iter().zip(vals) {
            if id as usize >= vocab {
                return Err(KernelError::param(
                    "bias",
                    r,
                    format!("token id {id} is outside [0, {vocab})"),
                ));
            }
            if let Some(why) = bad_bias_value(id, v) {
                return Err(KernelError::param("bias", r, why));
            }
        }
    }
    Ok(())
}

/// Checks penalty parameters (SPEC §4 ranges).
///
/// # Errors
/// [`KernelError::InvalidParam`] naming the parameter.
pub fn check_penalties(p: &PerRow<Penalties>) -> Result<(), KernelError> {
    for (r, p) in p.iter() {
        if !(p.repetition.is_finite() && p.repetition > 0.0) {
            return Err(KernelError::param(
                "repetition_penalty",
                r,
                format!("must be finite and > 0, got {}", shown(p.repetition)),
            ));
        }
        if !p.presence.is_finite() {
            return Err(KernelError::param(
                "presence_penalty",
                r,
                format!("must be finite, got {}", shown(p.presence)),
            ));
        }
        if !p.frequency.is_finite() {
            return Err(KernelError::param(
                "frequency_penalty",
                r,
                format!("must be finite, got {}", shown(p.frequency)),
            ));
        }
    }
    Ok(())
}

/// Copies every row (or, with `x = None`, keeps `out` as the input: the in-place form), checks
/// it, then applies the logit bias and the penalties.
///
/// # Errors
/// Invalid bias or penalties, NaN/`+inf`, all-masked rows.
pub fn bias_and_penalties<T: Elem>(
    x: Option<&[T]>,
    vocab: usize,
    bias: Option<&PerRow<Bias>>,
    pen: Option<(&TokenLists, &TokenLists, &PerRow<Penalties>)>,
    out: &mut [f32],
) -> Result<(), KernelError> {
    if let Some(b) = bias {
        check_bias(b, vocab)?;
    }
    if let Some((_, _, p)) = pen {
        check_penalties(p)?;
    }
    let rows = rows_of(out, vocab);
    for_rows(rows, vocab, out, vocab, |r, o, scr| {
        match x {
            Some(x) => {
                let row = &x[r * vocab..(r + 1) * vocab];
                pipeline::checked_max(prims::widen_checked(row, o))?;
            }
            None => {
                check_row(&*o)?;
            }
        }
        if let Some(b) = bias {
            let (ids, vals) = b.get(r);
            penalties::apply_bias(o, ids, vals);
        }
        if let Some((prompt, output, p)) = pen {
            penalties::apply_penalties(o, prompt.row(r), output.row(r), p.get(r), &mut scr.seen);
        }
        Ok(())
    })
}

/// Validates per-row filters.
///
/// # Errors
/// The first parameter out of range, with its row when given per row.
pub fn check_filters(f: &PerRow<Filters>) -> Result<(), KernelError> {
    for (r, f) in f.iter() {
        f.validate().map_err(|e| match r {
            Some(r) => e.at_row(r),
            None => e,
        })?;
    }
    Ok(())
}

/// Samples one token per row (SPEC §4 steps 4-9) with the uniform `u[r]` of each row.
///
/// # Errors
/// Parameters out of range, NaN/`+inf`, all-masked rows.
pub fn sample<T: Elem>(
    x: &[T],
    vocab: usize,
    filters: &PerRow<Filters>,
    u: &[f64],
    out: &mut [i64],
) -> Result<(), KernelError> {
    check_filters(filters)?;
    for (r, &ur) in u.iter().enumerate() {
        if !(0.0..1.0).contains(&ur) {
            return Err(KernelError::param(
                "uniforms",
                Some(r),
                format!("must be in [0, 1), got {}", shown(ur)),
            ));
        }
    }
    for_rows(rows_of(x, vocab), vocab, out, 1, |r, o, scr| {
        let row = &x[r * vocab..(r + 1) * vocab];
        o[0] = pipeline::sample_row(row, filters.get(r), u[r], scr)? as i64;
        Ok(())
    })
}

/// Log-probabilities of given tokens under `log_softmax(row)`, their ranks, and the top `n`.
#[derive(Clone, Debug, Default)]
pub struct RowLogprobs {
    /// Log-probability of each requested token.
    pub token_logprobs: Vec<f32>,
    /// `1 +` the number of tokens with a strictly larger log-probability.
    pub ranks: Vec<i64>,
    /// The `n` most probable ids, rank order.
    pub top_ids: Vec<i64>,
    /// Their log-probabilities.
    pub top_logprobs: Vec<f32>,
}

/// How many rows' worth of elements [`logprobs`] reads to rank a row's tokens by counting
/// before it sorts the row instead (sorting a row costs about 40 counting reads of it).
const RANK_SORT_READS: usize = 32;

/// A key whose unsigned order is the order of the (non-NaN) floats, `-0.0` equal to `0.0`.
fn order_key(v: f32) -> u32 {
    let b = (v + 0.0).to_bits(); // -0.0 + 0.0 is 0.0
    if b >> 31 == 1 {
        !b
    } else {
        b | 0x8000_0000
    }
}

/// Log-probabilities of `tokens` (row by row) and the top `top_n` of every row.
///
/// # Errors
/// `top_n > vocab`, NaN/`+inf`, all-masked rows.
pub fn logprobs<T: Elem>(
    x: &[T],
    vocab: usize,
    tokens: &TokenLists,
    top_n: usize,
    out: &mut [RowLogprobs],
) -> Result<(), KernelError> {
    if top_n > vocab {
        return Err(KernelError::param(
            "top_n",
            None,
            format!("must be in [0, {vocab}], got {top_n}"),
        ));
    }
    for_rows(rows_of(x, vocab), vocab, out, 1, |r, o, scr| {
        let row = &x[r * vocab..(r + 1) * vocab];
        let mut bmax = std::mem::take(&mut scr.bmax);
        let res = pipeline::scan_with(row, &mut bmax, Some(1.0), scr).map(|s| {
            let (total, _) = pipeline::weight_sums(&s, 1.0, ALL_FINITE, scr);
            // The values of log_softmax(row), bit for bit.
            let (m, log_total) = (s.m, total.ln());
            let lp = |v: f32| prims::log_softmax_at(v, m, 1.0, log_total);
            let res = &mut o[0];
            res.token_logprobs.clear();
            res.ranks.clear();
            let toks = tokens.row(r);
            // Ranks count the larger tokens, reading only the blocks that can hold one; once
            // that has read RANK_SORT_READS rows' worth, the rest come from one sorted copy of
            // the row (as order keys), which costs about that much: never much more than the
            // cheaper of the two for the row's tokens.
            let mut budget = RANK_SORT_READS.saturating_mul(row.len());
            let mut sorted: Option<Vec<u32>> = None;
            for &t in toks {
                let v = row[t as usize].to_f32();
                res.token_logprobs.push(lp(v));
                if sorted.is_none() && budget == 0 {
                    let mut keys = std::mem::take(&mut scr.ids);
                    keys.clear();
                    keys.extend(row.iter().map(|z| order_key(z.to_f32())));
                    keys.sort_unstable();
                    sorted = Some(keys);
                }
                let larger = if let Some(keys) = &sorted {
                    let k = order_key(v);
                    keys.len() - keys.partition_point(|&y| y <= k)
                } else {
                    let (n, read) = prims::count_ge_read(row, s.bmax, v.next_up());
                    budget = budget.saturating_sub(read.max(s.bmax.len()));
                    n
                };
                res.ranks.push(1 + larger as i64);
            }
            if let Some(keys) = sorted {
                scr.ids = keys;
            }
            res.top_ids.clear();
            res.top_logprobs.clear();
            if top_n > 0 {
                let mut list = std::mem::take(&mut scr.cands);
                select::top_k(
                    row,
                    s.bmax,
                    top_n,
                    &mut scr.sel,
                    &mut scr.ids,
                    &mut scr.keys,
                    &mut list,
                );
                res.top_ids.extend(list.iter().map(|c| i64::from(c.id)));
                res.top_logprobs.extend(list.iter().map(|c| lp(c.v)));
                scr.cands = list;
            }
        });
        scr.bmax = bmax;
        res
    })
}

/// One step of a continuous-batching server: every row its own [`batch::Request`].
///
/// `req_of[r]` indexes `requests`; `u[r]` is row r's uniform; `bitmask` holds `words` int32
/// words per row when given.
///
/// # Errors
/// Ids out of range, NaN/`+inf`, rows left with no token.
#[allow(clippy::too_many_arguments)]
pub fn sample_batch<T: Elem>(
    x: &[T],
    vocab: usize,
    requests: &[&batch::Request],
    req_of: &[usize],
    prompt: &TokenLists,
    output: &TokenLists,
    bitmask: Option<(&[i32], usize)>,
    u: &[f64],
    out: &mut [batch::RowResult],
) -> Result<(), KernelError> {
    for r in requests {
        r.check_ids(vocab)?;
        check_filters(&PerRow::All(r.filters))?;
        check_penalties(&PerRow::All(r.penalties))?;
        check_bias(
            &PerRow::All((r.bias_ids.clone(), r.bias_values.clone())),
            vocab,
        )?;
    }
    for_rows(rows_of(x, vocab), vocab, out, 1, |r, o, scr| {
        let inp = batch::RowInput {
            req: requests[req_of[r]],
            prompt: prompt.row(r),
            output: output.row(r),
            bitmask: bitmask.map(|(b, words)| &b[r * words..(r + 1) * words]),
            u: u[r],
        };
        o[0] = batch::sample_request(&x[r * vocab..(r + 1) * vocab], &inp, scr)?;
        Ok(())
    })
}

/// The floor of softmax-class work, for benchmarks: `sum(exp(x - m))` of every row with its
/// maximum `m = maxes[r]` given, summing every block (none skipped), on one thread. This is the
/// exp-and-sum pass that [`softmax`] and the draw from the whole vocabulary cannot avoid.
pub fn exp_sum_floor(x: &[f32], vocab: usize, maxes: &[f32], out: &mut [f64]) {
    let mut bmax = vec![0.0f32; prims::n_blocks(vocab)];
    let mut bsum = vec![0.0f32; bmax.len()];
    for ((row, &m), o) in x.chunks_exact(vocab).zip(maxes).zip(out.iter_mut()) {
        bmax.fill(m);
        *o = prims::weight_sums(row, &bmax, m, 1.0, f32::NEG_INFINITY, &mut bsum);
    }
}
