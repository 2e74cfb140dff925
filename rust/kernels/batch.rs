//! One decoding step of a continuous-batching server (SPEC §7): every row its own request.
//!
//! Per row, in one pass over the vocabulary for the edits plus the pipeline's own passes:
//! masks (allowed ids, stop ids before `min_tokens`, the packed grammar bitmask), logit bias,
//! penalties, then SPEC §4 steps 4-9, then the requested log-probabilities. A row that needs no
//! edit is read in place; otherwise it is widened once into a per-thread `f32` scratch row.

use super::elem::Elem;
use super::penalties::{self, Penalties};
use super::pipeline::{self, Filters, Kept, Scratch, ALL_FINITE};
use super::prims;
use super::select::{self, Cand};
use crate::error::KernelError;

/// The parsed parameters of one request (one `SamplingParams`).
#[derive(Clone, Debug, Default)]
pub struct Request {
    /// Temperature, top-k, top-p, min-p, min_keep, order.
    pub filters: Filters,
    /// Repetition, presence and frequency penalties.
    pub penalties: Penalties,
    /// Logit bias: ids and values (finite or `-inf`).
    pub bias_ids: Vec<u32>,
    /// Logit bias values.
    pub bias_values: Vec<f64>,
    /// Only these ids may be sampled, when given.
    pub allowed: Option<Vec<u32>>,
    /// Banned while fewer than `min_tokens` tokens were generated.
    pub stop_ids: Vec<u32>,
    /// See `stop_ids`.
    pub min_tokens: usize,
    /// Number of top log-probabilities wanted; `None`: no log-probabilities.
    pub logprobs: Option<usize>,
    /// `true`: log-probabilities of the distribution sampled from; `false`: of the raw logits.
    pub processed: bool,
}

impl Request {
    /// Checks every id against the vocabulary size.
    ///
    /// # Errors
    /// [`KernelError::InvalidParam`] naming the field.
    pub fn check_ids(&self, vocab: usize) -> Result<(), KernelError> {
        let check =
            |name: &'static str, ids: &[u32]| match ids.iter().find(|&&t| t as usize >= vocab) {
                Some(t) => Err(KernelError::param(
                    name,
                    None,
                    format!("token id {t} is outside [0, {vocab})"),
                )),
                None => Ok(()),
            };
        check("logit_bias", &self.bias_ids)?;
        check("stop_token_ids", &self.stop_ids)?;
        if let Some(a) = &self.allowed {
            check("allowed_token_ids", a)?;
        }
        Ok(())
    }

    fn edits_row(&self, n_out: usize, has_bitmask: bool) -> bool {
        has_bitmask
            || self.allowed.is_some()
            || (n_out < self.min_tokens && !self.stop_ids.is_empty())
            || !self.bias_ids.is_empty()
            || self.penalties != Penalties::default()
    }
}

/// Everything one row of `sample_batch` needs besides its logits.
pub struct RowInput<'a> {
    /// The request.
    pub req: &'a Request,
    /// Prompt tokens (for the repetition penalty).
    pub prompt: &'a [u32],
    /// Generated tokens so far.
    pub output: &'a [u32],
    /// The packed allow-bitmask words of this row, if any.
    pub bitmask: Option<&'a [i32]>,
    /// The uniform of this row's draw.
    pub u: f64,
}

/// The result of one row.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RowResult {
    /// The sampled token.
    pub token: i64,
    /// Its log-probability (NaN when not requested).
    pub logprob: f32,
    /// Its rank (0 when not requested).
    pub rank: i64,
    /// Top ids (rank order).
    pub top_ids: Vec<i64>,
    /// Their log-probabilities.
    pub top_logprobs: Vec<f32>,
}

/// Applies the masks, the bias and the penalties of `inp` to `row` (already a copy).
fn edit_row(row: &mut [f32], inp: &RowInput<'_>, scr: &mut Scratch) {
    let req = inp.req;
    if let Some(allowed) = &req.allowed {
        scr.wts.clear();
        scr.wts.extend(allowed.iter().map(|&t| row[t as usize]));
        row.fill(f32::NEG_INFINITY);
        for (&t, &v) in allowed.iter().zip(&scr.wts) {
            row[t as usize] = v;
        }
    }
    if inp.output.len() < req.min_tokens {
        for &t in &req.stop_ids {
            row[t as usize] = f32::NEG_INFINITY;
        }
    }
    if let Some(words) = inp.bitmask {
        for (chunk, &word) in row.chunks_mut(32).zip(words) {
            let word = word as u32;
            for (j, z) in chunk.iter_mut().enumerate() {
                if word >> j & 1 == 0 {
                    *z = f32::NEG_INFINITY;
                }
            }
        }
    }
    penalties::apply_bias(row, &req.bias_ids, &req.bias_values);
    penalties::apply_penalties(row, inp.prompt, inp.output, &req.penalties, &mut scr.seen);
}

/// Log-probabilities of the token `tok` and the top `n`, under `log_softmax(z / t)` restricted
/// to `kept` (every finite token for raw log-probabilities, with `t = 1`). The weights and the
/// log-probabilities use the scale of [`pipeline::scale_of`], as `log_softmax` does, so the kept
/// set's probabilities sum to 1. `total`, when given, is the weight total of a
/// threshold set, already taken.
#[allow(clippy::too_many_arguments)]
fn logprobs_of<T: Elem>(
    s: &pipeline::Scanned<'_, T>,
    total: Option<f64>,
    kept: &Kept,
    t: f64,
    tok: usize,
    n: usize,
    scr: &mut Scratch,
    res: &mut RowResult,
) {
    let v_tok = s.x[tok].to_f32();
    let t = pipeline::in_units(t, s.unit);
    let scale = pipeline::scale_of(t);
    let (vmax, log_total) = match kept {
        Kept::Threshold(thr) => {
            let total = total.unwrap_or_else(|| pipeline::weight_sums(s, scale, *thr, scr).0);
            (s.m, total.ln())
        }
        Kept::List(l) | Kept::Ids(l) => {
            let vmax = pipeline::list_max(l);
            scr.wts.resize(l.len(), 0.0);
            prims::weights(l, vmax, scale, &mut scr.wts);
            (vmax, prims::sum_f64(&scr.wts).ln())
        }
    };
    // The operations of log_softmax(row, t): the same bits where no filter is on (with one on,
    // `log_total` is the kept set's own sum).
    let lp = |v: f32| prims::log_softmax_at(v, vmax, scale, log_total);
    res.logprob = lp(v_tok);
    res.rank = 1 + match kept {
        Kept::Threshold(_) => prims::count_ge(s.x, s.bmax, v_tok.next_up()),
        Kept::List(l) | Kept::Ids(l) => l.iter().filter(|c| c.v > v_tok).count(),
    } as i64;
    res.top_ids.clear();
    res.top_logprobs.clear();
    if n == 0 {
        return;
    }
    let top: Vec<Cand> = match kept {
        Kept::Threshold(thr) => {
            let mut list = std::mem::take(&mut scr.cands);
            select::top_k(
                s.x,
                s.bmax,
                n.min(s.x.len()),
                &mut scr.sel,
                &mut scr.ids,
                &mut scr.keys,
                &mut list,
            );
            let t: Vec<Cand> = list.iter().copied().filter(|c| c.v >= *thr).collect();
            scr.cands = list;
            t
        }
        Kept::List(l) => l.iter().copied().take(n).collect(),
        Kept::Ids(l) => {
            let mut top = l.clone();
            if n < top.len() {
                top.select_nth_unstable_by(n - 1, select::by_rank);
                top.truncate(n);
            }
            top.sort_unstable_by(select::by_rank);
            top
        }
    };
    res.top_ids.extend(top.iter().map(|c| i64::from(c.id)));
    res.top_logprobs.extend(top.iter().map(|c| lp(c.v)));
    // Fewer finite (raw) or kept (processed) tokens than asked for: the rest of the top `n` are
    // tokens of log-probability `-inf`, ties in increasing id order.
    let want = n.min(s.x.len());
    if res.top_ids.len() < want {
        let mut listed: Vec<u32> = top.iter().map(|c| c.id).collect();
        listed.sort_unstable();
        let missing = (0..s.x.len() as u32).filter(|id| listed.binary_search(id).is_err());
        for id in missing.take(want - res.top_ids.len()) {
            res.top_ids.push(i64::from(id));
            res.top_logprobs.push(f32::NEG_INFINITY);
        }
    }
}

/// Samples one row of a batch step and computes its requested log-probabilities.
///
/// # Errors
/// NaN/`+inf` in the logits, or a row left with no token (row number 0; the caller renumbers).
pub fn sample_request<T: Elem>(
    x: &[T],
    inp: &RowInput<'_>,
    scr: &mut Scratch,
) -> Result<RowResult, KernelError> {
    let mut bmax = std::mem::take(&mut scr.bmax);
    let mut bmax2 = std::mem::take(&mut scr.bmax2);
    let mut row = std::mem::take(&mut scr.row);
    let result = sample_request_in(x, inp, &mut bmax, &mut bmax2, &mut row, scr);
    scr.bmax = bmax;
    scr.bmax2 = bmax2;
    scr.row = row;
    result
}

fn sample_request_in<T: Elem>(
    x: &[T],
    inp: &RowInput<'_>,
    bmax: &mut Vec<f32>,
    bmax2: &mut Vec<f32>,
    row: &mut Vec<f32>,
    scr: &mut Scratch,
) -> Result<RowResult, KernelError> {
    let req = inp.req;
    let edits = req.edits_row(inp.output.len(), inp.bitmask.is_some());
    let t = req.filters.temperature;
    // A row weighed on a halved copy (`pipeline::halves`) takes the copy's path; an edited row
    // is judged after its edits.
    let halve_x = !edits && pipeline::halves(x, t);
    let copy = edits || halve_x;
    // The weight sums the pipeline takes first (or the raw log-probabilities' ones) come with
    // the scan of the row they are taken on.
    let first = pipeline::first_sums_scale(&req.filters, x.len(), 1.0);
    let raw_lp = req.logprobs.is_some() && !req.processed;
    let raw_sums = if copy {
        raw_lp.then_some(1.0)
    } else {
        first.or(raw_lp.then_some(1.0))
    };
    let mut res = RowResult {
        logprob: f32::NAN,
        ..RowResult::default()
    };
    if copy && !raw_lp {
        // The caller's row is checked while it is copied, so NaN/+inf errors name the caller's
        // index; the copy is all that is read of it.
        row.resize(x.len(), 0.0);
        pipeline::checked_max(prims::widen_checked(x, row))?;
        edit_and_step(inp, edits, halve_x, bmax2, row, scr, &mut res)?;
        return Ok(res);
    }
    // The caller's row is checked first, so NaN/+inf errors name the caller's index.
    let raw = pipeline::scan_with(x, bmax, raw_sums, scr)?;
    // Raw log-probabilities depend on the logits alone: they are always normalised by the total
    // of the fused scan at scale 1 (as in `kernels::logprobs`), never by sums that this row's
    // temperature, filters, edits or bitmask made the pipeline take otherwise. Taken now, while
    // `bsum` still holds that scan's sums.
    let raw_total = (raw_lp && raw_sums == Some(1.0))
        .then(|| pipeline::weight_sums(&raw, 1.0, ALL_FINITE, scr).0);
    if copy {
        row.resize(x.len(), 0.0);
        prims::widen(x, row);
        edit_and_step(inp, edits, halve_x, bmax2, row, scr, &mut res)?;
    } else {
        step(&raw, inp, scr, &mut res);
    }
    if let (Some(n), false) = (req.logprobs, req.processed) {
        // The pipeline's first sums used another scale: the fused scan at 1 once more.
        let again;
        let (lp_scan, total) = if let Some(total) = raw_total {
            (&raw, total)
        } else {
            again = pipeline::scan_with(x, bmax2, Some(1.0), scr)?;
            let total = pipeline::weight_sums(&again, 1.0, ALL_FINITE, scr).0;
            (&again, total)
        };
        logprobs_of(
            lp_scan,
            Some(total),
            &Kept::Threshold(ALL_FINITE),
            1.0,
            res.token as usize,
            n,
            scr,
            &mut res,
        );
    }
    Ok(res)
}

/// The copy path of [`sample_request`]: `row` holds the checked caller's row, widened; applies
/// the edits of `inp` (when `edits`), halves the row where its spread needs it (or `halve_x` said
/// so), scans it and runs SPEC §4 steps 4-9 on it.
fn edit_and_step(
    inp: &RowInput<'_>,
    edits: bool,
    halve_x: bool,
    bmax2: &mut Vec<f32>,
    row: &mut [f32],
    scr: &mut Scratch,
    res: &mut RowResult,
) -> Result<(), KernelError> {
    if edits {
        edit_row(row, inp, scr);
    }
    let f = &inp.req.filters;
    let unit = if halve_x || (edits && pipeline::halves(&row[..], f.temperature)) {
        row.iter_mut().for_each(|v| *v *= 0.5);
        0.5
    } else {
        1.0
    };
    let first = pipeline::first_sums_scale(f, row.len(), unit);
    let mut s = pipeline::scan_with(&row[..], bmax2, first, scr)?;
    s.unit = unit;
    step(&s, inp, scr, res);
    Ok(())
}

/// SPEC §4 steps 4-9 on an edited row, then the processed log-probabilities if requested.
fn step<T: Elem>(
    s: &pipeline::Scanned<'_, T>,
    inp: &RowInput<'_>,
    scr: &mut Scratch,
    res: &mut RowResult,
) {
    let f = &inp.req.filters;
    let (kept, tok, t_lp) = if f.temperature == 0.0 {
        let t = select::argmax(s.x, s.bmax, s.m);
        (
            Kept::List(vec![Cand {
                v: s.x[t].to_f32(),
                id: t as u32,
            }]),
            t,
            1.0,
        )
    } else {
        let kept = pipeline::kept_set(s, f, scr);
        let t = pipeline::draw(s, &kept, f.temperature, inp.u, scr);
        (kept, t, f.temperature)
    };
    res.token = tok as i64;
    if let (Some(n), true) = (inp.req.logprobs, inp.req.processed) {
        logprobs_of(s, None, &kept, t_lp, tok, n, scr, res);
    }
}
