//! The sampling pipeline of one row (SPEC §4 steps 4-9) and the mask functions built on it.
//!
//! The kept set is held in one of two forms and never as a V-sized array:
//!
//! * [`Kept::Threshold`]: every token with `logit >= thr` (and `thr >= -f32::MAX`, so `-inf`
//!   tokens are never kept). Min-p produces this form exactly: its rule is a threshold in logit
//!   space. The draw then needs one pass of `exp` over the blocks that can contribute.
//! * [`Kept::List`]: an explicit list in rank order (larger logit first, ties by lower id), which
//!   top-k produces and top-p produces from a window of the best candidates.
//! * [`Kept::Ids`]: an explicit list in id order, which top-p produces when its nucleus ends
//!   inside a run of equal logits (a threshold plus the first ties); the draw and the masks need
//!   no other order, so a long list is not sorted unless a later step ranks it.
//!
//! Weights are `e^((v - v_max) * scale)` computed by [`prims::exp2_neg`] and summed in `f64`.

use super::elem::{f32_key, f32_of_key, Elem};
use super::prims::{self, n_blocks, BLOCK};
use super::select::{self, Cand};
use crate::error::{shown, KernelError};

/// The threshold that keeps every finite token (and no `-inf` token).
pub const ALL_FINITE: f32 = prims::ALL_FINITE;

/// Where min-p and temperature sit in the pipeline.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Order {
    /// temperature, top-k, top-p, min-p (Hugging Face transformers, mistral.rs).
    Default,
    /// temperature, min-p, top-k, top-p (vLLM).
    Vllm,
    /// top-k, top-p, min-p on untempered logits, then temperature (llama.cpp's default chain).
    LlamaCpp,
}

impl Order {
    /// Parses `"default"`, `"vllm"` or `"llama.cpp"`.
    #[must_use]
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "default" => Some(Self::Default),
            "vllm" => Some(Self::Vllm),
            "llama.cpp" => Some(Self::LlamaCpp),
            _ => None,
        }
    }
}

/// The filter and temperature parameters of one row.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Filters {
    /// `0` means greedy.
    pub temperature: f64,
    /// `<= 0` or `>= V` disables top-k.
    pub top_k: i64,
    /// `1` disables top-p.
    pub top_p: f64,
    /// `0` disables min-p.
    pub min_p: f64,
    /// Applied after top-p and after min-p; at least 1.
    pub min_keep: usize,
    /// Step order.
    pub order: Order,
}

impl Default for Filters {
    fn default() -> Self {
        Self {
            temperature: 1.0,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.0,
            min_keep: 1,
            order: Order::Default,
        }
    }
}

impl Filters {
    /// Checks every parameter range of SPEC §4.
    ///
    /// # Errors
    /// [`KernelError::InvalidParam`] naming the first parameter out of range.
    pub fn validate(&self) -> Result<(), KernelError> {
        let t = self.temperature;
        if !(t.is_finite() && t >= 0.0) {
            return Err(KernelError::param(
                "temperature",
                None,
                format!("must be finite and >= 0, got {}", shown(t)),
            ));
        }
        if !(0.0..=1.0).contains(&self.top_p) {
            return Err(KernelError::param(
                "top_p",
                None,
                format!("must be in [0, 1], got {}", shown(self.top_p)),
            ));
        }
        if !(0.0..=1.0).contains(&self.min_p) {
            return Err(KernelError::param(
                "min_p",
                None,
                format!("must be in [0, 1], got {}", shown(self.min_p)),
            ));
        }
        if self.min_keep < 1 {
            return Err(KernelError::param("min_keep", None, "must be >= 1"));
        }
        Ok(())
    }
}

/// The kept set of a row (see the module docs).
#[derive(Clone, Debug, PartialEq)]
pub enum Kept {
    /// Tokens with `logit >= thr`.
    Threshold(f32),
    /// Tokens in rank order.
    List(Vec<Cand>),
    /// Tokens in increasing id order.
    Ids(Vec<Cand>),
}

impl Kept {
    /// The same set with an explicit list in rank order.
    fn ranked(self) -> Self {
        match self {
            Kept::Ids(mut l) => {
                l.sort_unstable_by(select::by_rank);
                Kept::List(l)
            }
            k => k,
        }
    }
}

/// The largest logit of a non-empty list.
pub fn list_max(l: &[Cand]) -> f32 {
    l.iter().fold(f32::NEG_INFINITY, |m, c| m.max(c.v))
}

/// Per-thread buffers, reused from row to row.
#[derive(Default)]
pub struct Scratch {
    /// Block maxima of the current row.
    pub bmax: Vec<f32>,
    /// Block maxima of an edited copy of the row.
    pub bmax2: Vec<f32>,
    /// An edited `f32` copy of the row.
    pub row: Vec<f32>,
    /// A halved `f32` copy of the row ([`halves`]).
    pub half: Vec<f32>,
    /// A copy of the row that an in-place kernel overwrites.
    pub input: Vec<f32>,
    /// Block weight sums.
    pub bsum: Vec<f32>,
    /// Counts the fillings of `bsum` (a [`Scanned`] remembers which one holds its sums).
    pub bsum_gen: u64,
    /// Selection scratch.
    pub sel: Vec<f32>,
    /// Candidates.
    pub cands: Vec<Cand>,
    /// Candidate ids.
    pub ids: Vec<u32>,
    /// Rank keys of candidates.
    pub keys: Vec<u64>,
    /// Token counts of the penalties.
    pub seen: super::penalties::TokenCounts,
    /// Candidate values.
    pub vals: Vec<f32>,
    /// Weights of a candidate list.
    pub wts: Vec<f32>,
    /// Group references of the fused scan.
    pub gref: Vec<f32>,
    /// Buffers of the nucleus search.
    pub nucleus: NucleusScratch,
}

/// Buffers of the nucleus search ([`nucleus_by_buckets`]).
#[derive(Default)]
pub struct NucleusScratch {
    /// Bucket of each value.
    idx: Vec<u16>,
    /// Weight per bucket, in four interleaved histograms.
    mass: Vec<[f64; 4]>,
    /// Candidates still in play, and those of the next round.
    members: Vec<u32>,
    next: Vec<u32>,
    /// Their values and weights.
    vals: Vec<f32>,
    wts: Vec<f32>,
    /// Ids of a collect.
    ids: Vec<u32>,
}

/// A row after its scan: the maximum is known and the row holds no NaN or `+inf`.
pub struct Scanned<'a, T> {
    /// The row.
    pub x: &'a [T],
    /// Block maxima.
    pub bmax: &'a [f32],
    /// The row maximum (finite).
    pub m: f32,
    /// The sums of this row last put in [`Scratch::bsum`] (by the fused scan or
    /// [`weight_sums`]), if they are still there.
    pub held: std::cell::Cell<Option<Held>>,
    /// What the row's values are in units of the logits: 1, or `0.5` for a halved copy
    /// ([`halves`]). Every temperature that weighs the row is taken in these units ([`in_units`]).
    pub unit: f64,
}

/// Temperatures above this (`2^100`) weigh a row on a halved copy when its finite logits are
/// more than `f32::MAX` apart ([`halves`]). Below it such a difference weighs at most
/// `e^(-2^28)`, which is 0 in every float format.
const HALVE_ABOVE: f64 = 1.267_650_600_228_229_4e30;

/// Whether a row weighed at temperature `t` is weighed on a halved copy ([`halve_into`]): `t`
/// above [`HALVE_ABOVE`] and finite logits more than `f32::MAX` apart, whose `f32` difference
/// would overflow. Halving is exact for every value of magnitude `2^-125` or more and keeps the
/// order of the values, and the kernels weigh a halved copy at `t / 2`, so the weights are those
/// of the row, `e^((v - v_max) / t)` ([`in_units`]).
#[must_use]
pub fn halves<T: Elem>(x: &[T], t: f64) -> bool {
    if t <= HALVE_ABOVE {
        return false;
    }
    let (mut lo, mut hi) = (f32::INFINITY, f32::NEG_INFINITY);
    for v in x.iter().map(|e| e.to_f32()).filter(|v| v.is_finite()) {
        lo = lo.min(v);
        hi = hi.max(v);
    }
    // In f64: an f32 difference just above f32::MAX rounds down to it.
    f64::from(hi) - f64::from(lo) > f64::from(f32::MAX)
}

/// A temperature `t` of the logits for a row in units of `unit` ([`Scanned::unit`]): `t * unit`,
/// or `t` itself where `1 / t` is 0 in `f32`, so that the uniform limit of [`scale_of`] does not
/// depend on whether the row was halved.
#[must_use]
pub fn in_units(t: f64, unit: f64) -> f64 {
    if scale_of(t) == 0.0 {
        t
    } else {
        t * unit
    }
}

/// `out = x / 2` in `f32` (NaN and infinities stay what they are).
pub fn halve_into<T: Elem>(x: &[T], out: &mut Vec<f32>) {
    out.clear();
    out.extend(x.iter().map(|e| e.to_f32() * 0.5));
}

/// Which block weight sums of a row [`Scratch::bsum`] holds: `e^((v - m) * scale)` over the
/// tokens `>= thr` (bits of `scale` and `thr`), their total, and the filling of `bsum`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Held {
    scale: u32,
    thr: u32,
    total: f64,
    gen: u64,
}

/// The row maximum of a scan's result.
///
/// # Errors
/// NaN or `+inf` anywhere; every element `-inf` (row number 0; the caller renumbers).
pub fn checked_max(scan: prims::Scan) -> Result<f32, KernelError> {
    match scan {
        prims::Scan::Bad(index, value) => Err(KernelError::NonFinite {
            row: 0,
            index,
            value,
        }),
        prims::Scan::Max(m) if m == f32::NEG_INFINITY => Err(KernelError::AllMasked { row: 0 }),
        prims::Scan::Max(m) => Ok(m),
    }
}

/// Scans a row into `bmax` (row number 0 in errors; the caller renumbers).
///
/// # Errors
/// NaN or `+inf` anywhere; every element `-inf`.
pub fn scan<'a, T: Elem>(
    x: &'a [T],
    bmax: &'a mut Vec<f32>,
) -> Result<Scanned<'a, T>, KernelError> {
    bmax.resize(n_blocks(x.len()), 0.0);
    let m = checked_max(prims::scan(x, bmax))?;
    Ok(Scanned {
        x,
        bmax,
        m,
        held: std::cell::Cell::new(None),
        unit: 1.0,
    })
}

/// [`scan`], and with `sums = Some(scale)` (when [`prims::fused_pays`]) the weight sums over
/// every finite token at `scale` in the same read ([`prims::scan_weights`]), held in
/// `scr.bsum` for [`weight_sums`].
///
/// # Errors
/// As [`scan`].
pub fn scan_with<'a, T: Elem>(
    x: &'a [T],
    bmax: &'a mut Vec<f32>,
    sums: Option<f32>,
    scr: &mut Scratch,
) -> Result<Scanned<'a, T>, KernelError> {
    let Some(scale) = sums.filter(|&sc| prims::fused_pays(sc)) else {
        return scan(x, bmax);
    };
    let nb = n_blocks(x.len());
    bmax.resize(nb, 0.0);
    scr.bsum.resize(nb, 0.0);
    scr.gref.resize(nb.div_ceil(prims::GROUP), 0.0);
    let (res, total) = prims::scan_weights(x, bmax, &mut scr.bsum, &mut scr.gref, scale);
    let s = Scanned {
        x,
        bmax,
        m: checked_max(res)?,
        held: std::cell::Cell::new(None),
        unit: 1.0,
    };
    hold(&s, scale, ALL_FINITE, total, scr);
    Ok(s)
}

/// The scale of the first weight sums that [`kept_set`] and [`draw`] take over every finite
/// token, if they take them first (a temperature-only draw, or top-p before any other filter):
/// those the scan can take in the same read ([`scan_with`]), for a row in units of `unit`
/// ([`Scanned::unit`]).
#[must_use]
pub fn first_sums_scale(f: &Filters, vocab: usize, unit: f64) -> Option<f32> {
    let top_k_on = f.top_k > 0 && (f.top_k as u64) < vocab as u64;
    if f.temperature == 0.0 || top_k_on {
        return None;
    }
    let fs = in_units(
        if f.order == Order::LlamaCpp {
            1.0
        } else {
            f.temperature
        },
        unit,
    );
    let (top_p_on, min_p_on) = (f.top_p < 1.0, f.min_p > 0.0);
    let min_p_first = min_p_on && (f.order == Order::Vllm || !top_p_on);
    if min_p_first {
        None
    } else if top_p_on {
        Some(scale_of(fs))
    } else {
        Some(scale_of(in_units(f.temperature, unit)))
    }
}

/// The total weight `e^((v - m) * scale)` of the tokens `>= thr`, and the block sums: those
/// `scr.bsum` still holds for this row when they match (taken by the scan or an earlier call),
/// else computed into `scr.bsum`.
pub fn weight_sums<'s, T: Elem>(
    s: &Scanned<'_, T>,
    scale: f32,
    thr: f32,
    scr: &'s mut Scratch,
) -> (f64, &'s [f32]) {
    if let Some(h) = s.held.get() {
        if (h.scale, h.thr, h.gen) == (scale.to_bits(), thr.to_bits(), scr.bsum_gen) {
            return (h.total, &scr.bsum[..]);
        }
    }
    scr.bsum.resize(s.bmax.len(), 0.0);
    let total = prims::weight_sums(s.x, s.bmax, s.m, scale, thr, &mut scr.bsum);
    hold(s, scale, thr, total, scr);
    (total, &scr.bsum[..])
}

/// Records that `scr.bsum` now holds the sums of `s` at `scale` over the tokens `>= thr`.
fn hold<T>(s: &Scanned<'_, T>, scale: f32, thr: f32, total: f64, scr: &mut Scratch) {
    scr.bsum_gen += 1;
    s.held.set(Some(Held {
        scale: scale.to_bits(),
        thr: thr.to_bits(),
        total,
        gen: scr.bsum_gen,
    }));
}

/// The largest scale of logits: the exp kernels take `e^((v - m) * scale)` as
/// `2^((v - m) * (scale * log2 e))`, and `MAX_SCALE * log2 e` is the largest such factor that
/// is finite in `f32`, so every kernel (weights, sums, log-softmax) uses the same scale.
pub const MAX_SCALE: f32 = f32::MAX / prims::LOG2_E;

/// `1 / t` as an `f32` scale (`t > 0`), clamped to [`MAX_SCALE`] (`2.3586574e38`). A tiny
/// temperature thus puts all the mass on the maximum (shared among ties) and a huge one gives a
/// scale of 0: the uniform distribution over the finite tokens, the two limits of
/// `softmax(z / t)`.
#[must_use]
pub fn scale_of(t: f64) -> f32 {
    ((1.0 / t) as f32).min(MAX_SCALE)
}

/// Weights `e^((v - vmax) * scale)` of `list` into `wts`.
fn list_weights<E: Elem>(list: &[E], vmax: f32, scale: f32, wts: &mut Vec<f32>) {
    wts.resize(list.len(), 0.0);
    prims::weights(list, vmax, scale, wts);
}

/// The smallest `f32` value `v` with `(v - vmax) / fs >= ln_min_p` (computed in `f64`), at
/// least [`ALL_FINITE`]. The test is monotone in `v` and `vmax` passes it (`ln_min_p <= 0`), so
/// the answer is the first guess or one ulp from it in the common case, and otherwise found by
/// bisection over the ordered `f32` values (at most 32 steps, whatever the temperature).
fn min_p_threshold(vmax: f32, fs: f64, ln_min_p: f64) -> f32 {
    let pass = |v: f32| (f64::from(v) - f64::from(vmax)) / fs >= ln_min_p;
    let guess = ((f64::from(vmax) + fs * ln_min_p) as f32)
        .max(ALL_FINITE)
        .min(vmax);
    let (mut lo, mut hi) = if pass(guess) {
        if guess == ALL_FINITE || !pass(guess.next_down()) {
            return guess;
        }
        if pass(ALL_FINITE) {
            return ALL_FINITE;
        }
        (order_key(ALL_FINITE), order_key(guess))
    } else {
        if pass(guess.next_up()) {
            return guess.next_up();
        }
        (order_key(guess), order_key(vmax))
    };
    // Invariant: `lo` fails, `hi` passes.
    while hi - lo > 1 {
        let mid = lo + (hi - lo) / 2;
        if pass(from_order_key(mid)) {
            hi = mid;
        } else {
            lo = mid;
        }
    }
    from_order_key(hi)
}

/// [`f32_key`] widened, so that the bisection's midpoints cannot overflow.
fn order_key(v: f32) -> i64 {
    i64::from(f32_key(v))
}

/// The inverse of [`order_key`].
fn from_order_key(k: i64) -> f32 {
    f32_of_key(k as i32)
}

/// The top `k` tokens with `logit >= thr` (`k` clamped to `V`).
fn top_alive<T: Elem>(s: &Scanned<'_, T>, k: usize, thr: f32, scr: &mut Scratch) -> Vec<Cand> {
    let k = k.min(s.x.len());
    let mut out = std::mem::take(&mut scr.cands);
    select::top_k(
        s.x,
        s.bmax,
        k,
        &mut scr.sel,
        &mut scr.ids,
        &mut scr.keys,
        &mut out,
    );
    let mut list = Vec::with_capacity(out.len());
    list.extend(out.iter().copied().filter(|c| c.v >= thr));
    scr.cands = out;
    list
}

/// Length of the shortest rank-order prefix of `list` whose weight reaches `top_p` of the total
/// (`None`: none does), and that total.
fn nucleus_len(list: &[Cand], scale: f32, top_p: f64, wts: &mut Vec<f32>) -> (Option<usize>, f64) {
    list_weights(list, list[0].v, scale, wts);
    let total: f64 = wts.iter().map(|&x| f64::from(x)).sum();
    let target = top_p_target(top_p, total);
    let mut cum = 0.0;
    for (i, &x) in wts.iter().enumerate() {
        cum += f64::from(x);
        if cum >= target {
            return (Some(i + 1), total);
        }
    }
    (None, total)
}

fn apply_top_k<T: Elem>(s: &Scanned<'_, T>, kept: Kept, k: i64, scr: &mut Scratch) -> Kept {
    if k <= 0 || k as u64 >= s.x.len() as u64 {
        return kept;
    }
    let k = k as usize;
    match kept.ranked() {
        Kept::Threshold(thr) => Kept::List(top_alive(s, k, thr, scr)),
        Kept::List(mut l) | Kept::Ids(mut l) => {
            l.truncate(k);
            Kept::List(l)
        }
    }
}

/// In rows of up to this many tokens, a top-p or draw decision whose cumulative weight lies
/// within [`NEAR`] of its target (probabilities built by hand, such as `log([0.1, 0.2, 0.7])`
/// against `top_p = 0.7`) is taken again in `f64`, on weights `e^((v - vmax) / t)` with the `f64`
/// temperature and error-free sums: it then falls on the side that the exact value of the row
/// gives (and an exact tie is a tie). Longer rows, and decisions farther from their target, use
/// the `f32` weights (summed in `f64`).
pub const EXACT_V: usize = 1024;

/// Relative distance (to the total weight) below which [`EXACT_V`] rows decide in `f64`: above
/// the error of the `f32` weights and of their block sums.
const NEAR: f64 = 1e-5;

/// Whether the decision "the first `n` weights of `w` reach `target`" (`None`: none did) lies
/// within [`NEAR`] of `target`.
fn near_boundary(w: &[f32], n: Option<usize>, target: f64, total: f64) -> bool {
    let Some(n) = n else { return true };
    let cum: f64 = w[..n].iter().map(|&x| f64::from(x)).sum();
    let before = cum - f64::from(w[n - 1]);
    cum - target < NEAR * total || target - before < NEAR * total
}

/// Weights `e^((v - vmax) / fs)` in `f64`, with the limits of the `f32` weights (see
/// [`scale_of`]): a scale `1 / fs` that is 0 in `f32` weighs every token 1 (the uniform
/// distribution), one clamped to [`MAX_SCALE`] is `MAX_SCALE`, and a difference `v - vmax`
/// beyond the `f32` range weighs 0 (as the `f32` weights do: a row weighed at a temperature
/// where that weight is not 0 is a halved copy, see [`halves`]).
fn exact_weights(vals: impl Iterator<Item = f32>, vmax: f32, fs: f64) -> Vec<f64> {
    let vmax = f64::from(vmax);
    let scale = scale_of(fs);
    vals.map(|v| {
        let d = f64::from(v) - vmax;
        if scale == 0.0 {
            1.0
        } else if d < -f64::from(f32::MAX) {
            0.0
        } else {
            tempered(d, fs).exp()
        }
    })
    .collect()
}

/// `d / fs` in `f64`, at the scale of [`scale_of`]: `d * MAX_SCALE` where that clamps `1 / fs`.
#[must_use]
pub fn tempered(d: f64, fs: f64) -> f64 {
    if scale_of(fs) == MAX_SCALE {
        d * f64::from(MAX_SCALE)
    } else {
        d / fs
    }
}

/// A sum of `f64` values carried as `hi + lo` (error-free additions): the cumulative weights
/// of [`EXACT_V`] rows are compared with `top_p` or `u` times the total without rounding, so a
/// tie that holds for the weights (a cumulative probability of exactly `1/2` against
/// `u = 0.5`) is a tie.
#[derive(Clone, Copy, Default)]
struct Sum2 {
    hi: f64,
    lo: f64,
}

impl Sum2 {
    fn add(&mut self, x: f64) {
        let s = self.hi + x;
        let b = s - self.hi;
        self.lo += (self.hi - (s - b)) + (x - b);
        self.hi = s;
    }

    fn of(w: &[f64]) -> Self {
        let mut t = Self::default();
        w.iter().for_each(|&x| t.add(x));
        t
    }

    /// `k * self` (`k <= 1`), its product rounding kept in `lo`.
    fn times(self, k: f64) -> Self {
        let hi = k * self.hi;
        Self {
            hi,
            lo: k.mul_add(self.hi, -hi) + k * self.lo,
        }
    }

    /// The sign of `self - o` (`self` and `o` within a factor of two of each other, or apart).
    fn cmp(self, o: Self) -> std::cmp::Ordering {
        let d = (self.hi - o.hi) + (self.lo - o.lo);
        d.partial_cmp(&0.0).unwrap_or(std::cmp::Ordering::Equal)
    }
}

/// How far (relative to the total) a prefix's exact mass may fall short of `top_p` and still
/// reach it: float32's machine epsilon, `2^-23` (about `1.2e-7`). Equality is judged at the
/// precision of the float32 logits: probabilities written as float32 logs carry their rounding
/// (`log([0.4, 0.3, 0.2, 0.1])` puts the first token's mass `1e-9` below 0.4), and `top_p` is a
/// decimal stored as a float64 (`0.4` is stored `2.2e-17` above `2/5`). So `top_p = 0.4` keeps
/// one token of that row, and `top_p = j / V` keeps `j` of `V` equal logits, as written.
pub const TOP_P_SLACK: f64 = f32::EPSILON as f64;

/// The weight that a nucleus of `top_p` of `total` must reach: `top_p` of it, less
/// [`TOP_P_SLACK`] of it.
fn top_p_target(top_p: f64, total: f64) -> f64 {
    (top_p - TOP_P_SLACK) * total
}

/// [`nucleus_len`] in `f64` (see [`EXACT_V`]): the shortest rank-order prefix of `list` whose
/// weight reaches `top_p` of the total (less [`TOP_P_SLACK`] of it).
fn exact_nucleus_len(list: &[Cand], fs: f64, top_p: f64) -> usize {
    let w = exact_weights(list.iter().map(|c| c.v), list[0].v, fs);
    let target = Sum2::of(&w).times(top_p - TOP_P_SLACK);
    let mut cum = Sum2::default();
    for (i, &x) in w.iter().enumerate() {
        cum.add(x);
        if cum.cmp(target).is_ge() {
            return i + 1;
        }
    }
    list.len()
}

/// Top-p with `scale = 1 / fs` (`scale_of(fs)`), then `min_keep`.
fn apply_top_p<T: Elem>(
    s: &Scanned<'_, T>,
    kept: Kept,
    top_p: f64,
    fs: f64,
    min_keep: usize,
    scr: &mut Scratch,
) -> Kept {
    if top_p >= 1.0 {
        return kept;
    }
    let scale = scale_of(fs);
    let small = s.x.len() <= EXACT_V;
    let exact = |mut l: Vec<Cand>| {
        let n = exact_nucleus_len(&l, fs, top_p);
        l.truncate(n.max(min_keep));
        Kept::List(l)
    };
    match kept.ranked() {
        Kept::List(mut l) | Kept::Ids(mut l) => {
            let (n, total) = nucleus_len(&l, scale, top_p, &mut scr.wts);
            if small && top_p > 0.0 && near_boundary(&scr.wts, n, top_p_target(top_p, total), total)
            {
                return exact(l);
            }
            l.truncate(n.unwrap_or(l.len()).max(min_keep));
            Kept::List(l)
        }
        Kept::Threshold(thr) => {
            let (total, _) = weight_sums(s, scale, thr, scr);
            let target = top_p_target(top_p, total);
            if target <= 0.0 {
                return keep_top(s, Kept::Threshold(thr), min_keep, scr);
            }
            let kept = nucleus_of_threshold(s, thr, scale, total, target, scr);
            if small && nucleus_near_boundary(s, &kept, scale, target, total) {
                let mut l = Vec::new();
                select::collect_ge(s.x, s.bmax, thr, &mut l);
                l.sort_unstable_by(select::by_rank);
                return exact(l);
            }
            // The nucleus holds at least one token, so only `min_keep > 1` needs the count.
            let count = match &kept {
                _ if min_keep <= 1 => 1,
                Kept::List(l) | Kept::Ids(l) => l.len(),
                Kept::Threshold(t) => prims::count_ge(s.x, s.bmax, *t),
            };
            if count < min_keep {
                Kept::List(top_alive(s, min_keep, thr, scr))
            } else {
                kept
            }
        }
    }
}

/// Whether the weight of the nucleus `kept` (found against `target` of `total`), or that weight
/// less its last token's, lies within [`NEAR`] of `target`.
fn nucleus_near_boundary<T: Elem>(
    s: &Scanned<'_, T>,
    kept: &Kept,
    scale: f32,
    target: f64,
    total: f64,
) -> bool {
    let (mass, last) = match kept {
        Kept::Threshold(tau) => {
            let mut bsum = vec![0.0f32; s.bmax.len()];
            let mass = prims::weight_sums(s.x, s.bmax, s.m, scale, *tau, &mut bsum);
            (mass, *tau)
        }
        Kept::List(l) | Kept::Ids(l) => {
            let mut w = Vec::new();
            list_weights(l, s.m, scale, &mut w);
            let lightest = l.iter().fold(f32::INFINITY, |m, c| m.min(c.v));
            (prims::sum_f64(&w), lightest)
        }
    };
    let mut w_last = [0.0f32];
    prims::weights(&[last], s.m, scale, &mut w_last);
    mass - target < NEAR * total || target - (mass - f64::from(w_last[0])) < NEAR * total
}

/// The nucleus of the tokens `>= thr` whose weights sum to `total`: the shortest rank-order
/// prefix whose weight reaches `target` (`0 < target`).
///
/// Tokens lighter than `(total - target) / (2V)` weigh less than `total - target` all together,
/// so they lie past the nucleus: only heavier ones are collected. Their weights go into
/// [`NUCLEUS_BUCKETS`] buckets by logit (equal logits share a bucket); the bucket where the
/// cumulative weight crosses `target` is the only part that is sorted.
fn nucleus_of_threshold<T: Elem>(
    s: &Scanned<'_, T>,
    thr: f32,
    scale: f32,
    total: f64,
    target: f64,
    scr: &mut Scratch,
) -> Kept {
    let budget = total - target;
    let mut floor = if budget > 0.0 {
        let c = f64::from(s.m) + (budget * 0.5 / s.x.len() as f64).ln() / f64::from(scale);
        ((c as f32).next_down()).max(thr)
    } else {
        thr
    };
    let Some(f) = block_floor(s, thr, scale, target, scr) else {
        return nucleus_by_rounds(s, thr, scale, target, floor, scr);
    };
    floor = floor.max(f);
    let (mut vals, mut ids) = (std::mem::take(&mut scr.vals), std::mem::take(&mut scr.ids));
    vals.clear();
    ids.clear();
    select::collect_range_soa(s.x, s.bmax, floor, f32::INFINITY, &mut vals, &mut ids);
    list_weights(&vals, s.m, scale, &mut scr.wts);
    let (wts, ns) = (&scr.wts, &mut scr.nucleus);
    let kept = nucleus_by_buckets(&vals, &ids, wts, target, s, thr, ns);
    (scr.vals, scr.ids) = (vals, ids);
    kept
}

/// Rounds of [`nucleus_by_rounds`] before the last one goes down to the floor.
const MAX_ROUNDS: u32 = 24;

/// The nucleus of a long-tailed row, whose heaviest block maxima do not reach `target` (so the
/// nucleus reaches deep into the bulk): the tokens are collected one nat of weight at a time
/// from the top, round `k` taking the values in `[m - k / scale, m - (k - 1) / scale)`, until the
/// weight collected reaches `target`. Earlier rounds lie wholly inside the nucleus; only the
/// round that crosses is ranked. No round goes below `floor`, above which the weight reaches
/// `target` (after [`MAX_ROUNDS`] rounds the next one takes everything down to it).
fn nucleus_by_rounds<T: Elem>(
    s: &Scanned<'_, T>,
    thr: f32,
    scale: f32,
    target: f64,
    floor: f32,
    scr: &mut Scratch,
) -> Kept {
    let (mut vals, mut ids) = (std::mem::take(&mut scr.vals), std::mem::take(&mut scr.ids));
    let mut wts = std::mem::take(&mut scr.wts);
    vals.clear();
    ids.clear();
    wts.clear();
    let step = 1.0 / f64::from(scale);
    let mut hi = f32::INFINITY;
    let mut above = 0.0f64;
    let mut round = 1u32;
    let kept = loop {
        let lo = if round > MAX_ROUNDS {
            floor
        } else {
            ((f64::from(s.m) - f64::from(round) * step) as f32).max(floor)
        };
        // This round's candidates follow those of the earlier rounds.
        let start = vals.len();
        select::collect_range_soa(s.x, s.bmax, lo, hi, &mut vals, &mut ids);
        wts.resize(vals.len(), 0.0);
        prims::weights(&vals[start..], s.m, scale, &mut wts[start..]);
        let mass = prims::sum_f64(&wts[start..]);
        if above + mass >= target || lo <= floor {
            if vals.len() == start {
                // Only rounding can leave the weight above the floor short of the target.
                break Kept::Threshold(if hi.is_finite() { hi } else { thr });
            }
            let rest = target - above;
            let (v, i, w) = (&vals[start..], &ids[start..], &wts[start..]);
            let kept = nucleus_by_buckets(v, i, w, rest, s, thr, &mut scr.nucleus);
            // Summing many candidates into blocks one by one costs more than the draw's own
            // vector pass. (The choice depends on the row alone: the block sums, and so the
            // drawn token, are the same on every SIMD level.) The candidates hold every token
            // `>= lo`, not those of a threshold below it (a rounding miss keeps every token).
            match kept {
                Kept::Threshold(tau) if tau >= lo && vals.len() < s.x.len() / 8 => {
                    hold_candidate_sums(s, scale, tau, (&vals, &ids, &wts), scr);
                }
                _ => {}
            }
            break kept;
        }
        above += mass;
        hi = lo;
        round += 1;
    };
    (scr.vals, scr.ids, scr.wts) = (vals, ids, wts);
    kept
}

/// Fills `scr.bsum` with the block sums of the candidates `>= tau` (every token `>= tau` is
/// among them) and records them for the draw, which then need not weigh those blocks again.
fn hold_candidate_sums<T>(
    s: &Scanned<'_, T>,
    scale: f32,
    tau: f32,
    (vals, ids, wts): (&[f32], &[u32], &[f32]),
    scr: &mut Scratch,
) {
    scr.bsum.clear();
    scr.bsum.resize(s.bmax.len(), 0.0);
    // Each round's candidates come in id order: a block's weights are summed in a register
    // and stored when the block changes (not one dependent store per candidate).
    let (mut blk, mut acc) = (0usize, 0.0f32);
    for ((&v, &id), &w) in vals.iter().zip(ids).zip(wts) {
        let b = id as usize / BLOCK;
        if b != blk {
            scr.bsum[blk] += acc;
            (blk, acc) = (b, 0.0);
        }
        acc += if v >= tau { w } else { 0.0 };
    }
    scr.bsum[blk] += acc;
    let total = scr.bsum.iter().map(|&b| f64::from(b)).sum();
    hold(s, scale, tau, total, scr);
}

/// Block maxima that [`block_floor`] examines.
const FLOOR_BLOCKS: usize = 32;

/// A second candidate floor for the nucleus, from the block maxima: the largest value `f` such
/// that the maxima `>= f` of the [`FLOOR_BLOCKS`] heaviest blocks alive (`>= thr`, with any ties)
/// already weigh `target` (with a margin for the order of summation). The tokens `>= f` then
/// weigh at least `target` and, being a prefix in rank order, hold the whole nucleus. `None`
/// when those maxima weigh less (a long-tailed row: see [`nucleus_by_rounds`]).
fn block_floor<T: Elem>(
    s: &Scanned<'_, T>,
    thr: f32,
    scale: f32,
    target: f64,
    scr: &mut Scratch,
) -> Option<f32> {
    let desc = |a: &f32, b: &f32| b.partial_cmp(a).unwrap_or(std::cmp::Ordering::Equal);
    let sel = &mut scr.sel;
    sel.clear();
    prims::for_live_blocks(s.bmax, prims::Live::Ge(thr), |b| sel.push(s.bmax[b]));
    if sel.len() > FLOOR_BLOCKS {
        // The heaviest FLOOR_BLOCKS maxima, and any tied with the last of them (more maxima
        // only tighten the floor).
        let kth = select::kth_largest(sel, FLOOR_BLOCKS, &mut scr.ids);
        sel.retain(|&b| b >= kth);
    }
    sel.sort_unstable_by(desc);
    list_weights(&sel[..], s.m, scale, &mut scr.wts);
    let need = target * (1.0 + 1e-9);
    let mut cum = 0.0f64;
    for (&b, &w) in sel.iter().zip(&scr.wts) {
        cum += f64::from(w);
        if cum >= need {
            return Some(b);
        }
    }
    None
}

/// Buckets of the nucleus search.
const NUCLEUS_BUCKETS: usize = 1024;

/// Up to this many candidates the nucleus search sorts them instead of bucketing them (again).
const NUCLEUS_DIRECT: usize = 128;

/// The bucket (of [`NUCLEUS_BUCKETS`] by logit over `[lo, hi]`, bucket 0 the largest) in which
/// the cumulative weight crosses `target`: `(weight above it, bucket)`, with the bucket of every
/// value in `idx`.
fn crossing_bucket(
    vals: &[f32],
    wts: &[f32],
    lo: f32,
    hi: f32,
    target: f64,
    idx: &mut Vec<u16>,
    mass: &mut Vec<[f64; 4]>,
) -> Option<(f64, u16)> {
    let span = f64::from(hi) - f64::from(lo);
    let inv = if span > 0.0 {
        // At most f32::MAX: `(hi - x) * inv` stays finite (and 0 for `x = hi`).
        (NUCLEUS_BUCKETS as f64 / span).min(f64::from(f32::MAX)) as f32
    } else {
        0.0
    };
    // The index never increases with the logit.
    idx.clear();
    idx.resize(vals.len(), 0);
    prims::bucket_indices(vals, hi, inv, NUCLEUS_BUCKETS as u16 - 1, idx);
    // Four interleaved histograms, so consecutive updates of one bucket do not serialise.
    mass.clear();
    mass.resize(NUCLEUS_BUCKETS, [0.0; 4]);
    for (i, (&b, &w)) in idx.iter().zip(wts).enumerate() {
        mass[usize::from(b)][i & 3] += f64::from(w);
    }
    let mut above = 0.0f64;
    for (b, m4) in mass.iter().enumerate() {
        let m = (m4[0] + m4[1]) + (m4[2] + m4[3]);
        if above + m >= target {
            return Some((above, b as u16));
        }
        above += m;
    }
    None
}

/// How many leading weights of `w`, taken 64 at a time, add to `cum` without `crossed` turning
/// true, and the sum they reach: a walk over a long list starts one by one from there.
fn skip_chunks(w: &[f32], mut cum: f64, crossed: impl Fn(f64) -> bool) -> (usize, f64) {
    let mut start = 0;
    for chunk in w.chunks(64) {
        let sum = prims::sum_f64(chunk);
        if crossed(cum + sum) {
            break;
        }
        cum += sum;
        start += chunk.len();
    }
    (start, cum)
}

/// The first `i` at which `above + w[0] + ... + w[i]` reaches `target` (`None`: none does).
fn crossing_index(w: &[f32], above: f64, target: f64) -> Option<usize> {
    let (start, mut cum) = skip_chunks(w, above, |c| c >= target);
    // One by one from the crossing chunk (to the end, if its sum reached `target` only by
    // rounding).
    for (i, &x) in w[start..].iter().enumerate() {
        cum += f64::from(x);
        if cum >= target {
            return Some(start + i);
        }
    }
    None
}

/// The nucleus from candidates `vals` (ids `ids`, weights `wts`, values in `[lo, hi]`, in
/// increasing id order) that hold every token `>= lo` of the row, whose weight in rank order
/// crosses `target` (after the weight of any tokens above `hi`, which `target` excludes).
///
/// The candidates go into buckets by logit, and those of the crossing bucket into buckets again
/// until a few are left, which are sorted; a bucket of equal logits is ranked by id as it is.
#[allow(clippy::too_many_arguments)]
fn nucleus_by_buckets<T: Elem>(
    vals: &[f32],
    ids: &[u32],
    wts: &[f32],
    target: f64,
    s: &Scanned<'_, T>,
    thr: f32,
    ns: &mut NucleusScratch,
) -> Kept {
    // The weight ranked above the members; the members (indices into `vals`, increasing, in
    // `ns.members`; every candidate while `all`), their values and weights.
    let mut above = 0.0f64;
    let mut all = true;
    // The buckets span the values in play.
    let (mut lo, mut hi) = prims::min_max(vals);
    let tied = loop {
        let (v, w) = if all {
            (vals, wts)
        } else {
            (&ns.vals[..], &ns.wts[..])
        };
        if lo == hi || v.len() <= NUCLEUS_DIRECT {
            break lo == hi;
        }
        let Some((up, b)) =
            crossing_bucket(v, w, lo, hi, target - above, &mut ns.idx, &mut ns.mass)
        else {
            if all {
                // Rounding leaves the weight of every candidate short of the target.
                return Kept::Threshold(thr);
            }
            break false;
        };
        let inside = ns.idx.iter().enumerate().filter(|&(_, &ib)| ib == b);
        ns.next.clear();
        if all {
            ns.next.extend(inside.map(|(i, _)| i as u32));
        } else {
            ns.next.extend(inside.map(|(i, _)| ns.members[i]));
        }
        if ns.next.len() == v.len() {
            // One bucket holds them all: values too close for the buckets to split.
            break false;
        }
        above += up;
        std::mem::swap(&mut ns.members, &mut ns.next);
        all = false;
        ns.vals.clear();
        ns.vals.extend(ns.members.iter().map(|&i| vals[i as usize]));
        ns.wts.clear();
        ns.wts.extend(ns.members.iter().map(|&i| wts[i as usize]));
        (lo, hi) = prims::min_max(&ns.vals);
    };
    // The members in rank order: as they are when tied (increasing id), else sorted.
    let direct = all && tied;
    if !direct {
        if all {
            ns.members.clear();
            ns.members.extend(0..vals.len() as u32);
        }
        if !tied {
            ns.members.sort_unstable_by(|&a, &b| {
                let c = |i: u32| Cand {
                    v: vals[i as usize],
                    id: ids[i as usize],
                };
                select::by_rank(&c(a), &c(b))
            });
        }
        ns.wts.clear();
        ns.wts.extend(ns.members.iter().map(|&i| wts[i as usize]));
    }
    let (n, member_wts) = if direct {
        (vals.len(), wts)
    } else {
        (ns.members.len(), &ns.wts[..])
    };
    let cross = crossing_index(member_wts, above, target).unwrap_or(n - 1);
    let members = &ns.members;
    let at = |j: usize| if direct { j } else { members[j] as usize };
    let tau = vals[at(cross)];
    let last_tie = cross + 1 == n || vals[at(cross + 1)] < tau;
    if last_tie {
        return Kept::Threshold(tau);
    }
    // The nucleus ends inside a run of equal logits: keep the run up to the crossing id.
    let cut_id = ids[at(cross)];
    ns.vals.clear();
    ns.ids.clear();
    select::collect_range_soa(s.x, s.bmax, tau, f32::INFINITY, &mut ns.vals, &mut ns.ids);
    // Ids up to `cut_id` all stay (they are `>= tau`); after it, those above `tau`.
    let upto = ns.ids.partition_point(|&id| id <= cut_id);
    let pair = |(&v, &id): (&f32, &u32)| Cand { v, id };
    let mut list = Vec::with_capacity(ns.ids.len());
    list.extend(ns.vals[..upto].iter().zip(&ns.ids[..upto]).map(pair));
    let rest = ns.vals[upto..].iter().zip(&ns.ids[upto..]).map(pair);
    list.extend(rest.filter(|c| c.v > tau));
    Kept::Ids(list)
}

/// Keeps at least the best `n` tokens of `kept` (all of them if it has fewer).
fn keep_top<T: Elem>(s: &Scanned<'_, T>, kept: Kept, n: usize, scr: &mut Scratch) -> Kept {
    match kept.ranked() {
        Kept::List(mut l) | Kept::Ids(mut l) => {
            l.truncate(n);
            Kept::List(l)
        }
        Kept::Threshold(thr) => Kept::List(top_alive(s, n, thr, scr)),
    }
}

/// The spacing of `f32` values at the magnitude of `x` (finite).
fn f32_ulp(x: f32) -> f64 {
    let a = x.abs().min(f32::MAX.next_down());
    f64::from(a.next_up()) - f64::from(a)
}

/// Min-p's threshold on the logits of a row whose maximum is `vmax`: the smallest `f32` value
/// `v` with `v >= vmax + fs * ln_min_p - delta`, where `delta` is one `f32` ulp at the larger
/// magnitude of `vmax` and of that threshold (for `min_p < 1`; at most half the way to `vmax`,
/// which matters only at temperatures so small that min-p keeps the maximum alone). Equality is
/// judged at the precision of the float32 logits: `log(p)` and `log(min_p * p_max)` written as
/// float32 differ by their rounding, which would otherwise decide whether an equal token is
/// kept (with `log([0.5, 0.25, 0.25])` and `min_p = 0.5`, every token is kept).
fn min_p_cut(vmax: f32, fs: f64, ln_min_p: f64) -> f32 {
    if ln_min_p >= 0.0 {
        return min_p_threshold(vmax, fs, ln_min_p);
    }
    let t = (f64::from(vmax) + fs * ln_min_p).max(f64::from(ALL_FINITE)) as f32;
    let delta = f32_ulp(vmax).max(f32_ulp(t)).min(-0.5 * fs * ln_min_p);
    min_p_threshold(vmax, fs, ln_min_p - delta / fs)
}

/// Min-p with the filter temperature `fs`, then `min_keep`.
fn apply_min_p<T: Elem>(
    s: &Scanned<'_, T>,
    kept: Kept,
    min_p: f64,
    fs: f64,
    min_keep: usize,
    scr: &mut Scratch,
) -> Kept {
    if min_p <= 0.0 {
        return kept;
    }
    let ln_min_p = min_p.ln();
    match kept {
        Kept::List(mut l) => {
            let t = min_p_cut(l[0].v, fs, ln_min_p);
            let n = l.iter().take_while(|c| c.v >= t).count();
            l.truncate(n.max(min_keep));
            Kept::List(l)
        }
        Kept::Ids(mut l) => {
            let t = min_p_cut(list_max(&l), fs, ln_min_p);
            if l.iter().filter(|c| c.v >= t).count() >= min_keep {
                l.retain(|c| c.v >= t);
                Kept::Ids(l)
            } else {
                apply_min_p(s, Kept::Ids(l).ranked(), min_p, fs, min_keep, scr)
            }
        }
        Kept::Threshold(thr) => {
            let t = min_p_cut(s.m, fs, ln_min_p).max(thr);
            if min_keep > 1 && prims::count_ge(s.x, s.bmax, t) < min_keep {
                Kept::List(top_alive(s, min_keep, thr, scr))
            } else {
                Kept::Threshold(t)
            }
        }
    }
}

/// The kept set after temperature, top-k, top-p and min-p in `f.order` (`f.temperature > 0`).
pub fn kept_set<T: Elem>(s: &Scanned<'_, T>, f: &Filters, scr: &mut Scratch) -> Kept {
    let fs = in_units(
        if f.order == Order::LlamaCpp {
            1.0
        } else {
            f.temperature
        },
        s.unit,
    );
    let mut kept = Kept::Threshold(ALL_FINITE);
    let top_k = |k: Kept, scr: &mut Scratch| apply_top_k(s, k, f.top_k, scr);
    let top_p = |k: Kept, scr: &mut Scratch| apply_top_p(s, k, f.top_p, fs, f.min_keep, scr);
    let min_p = |k: Kept, scr: &mut Scratch| apply_min_p(s, k, f.min_p, fs, f.min_keep, scr);
    match f.order {
        Order::Default | Order::LlamaCpp => {
            kept = top_k(kept, scr);
            kept = top_p(kept, scr);
            kept = min_p(kept, scr);
        }
        Order::Vllm => {
            kept = min_p(kept, scr);
            kept = top_k(kept, scr);
            kept = top_p(kept, scr);
        }
    }
    kept
}

/// Draws from `kept` with temperature `t > 0` and uniform `u` in `[0, 1)`: the first kept id, in
/// increasing id order, whose cumulative probability exceeds `u` (`t` in units of the logits,
/// whatever [`Scanned::unit`] is).
pub fn draw<T: Elem>(s: &Scanned<'_, T>, kept: &Kept, t: f64, u: f64, scr: &mut Scratch) -> usize {
    let t = in_units(t, s.unit);
    let scale = scale_of(t);
    let small = s.x.len() <= EXACT_V;
    // The kept `(id, logit)` pairs of a threshold, in id order, for [`exact_draw`].
    let alive = |thr: f32| -> Vec<(u32, f32)> {
        (0..s.x.len() as u32)
            .map(|i| (i, s.x[i as usize].to_f32()))
            .filter(|&(_, v)| v >= thr)
            .collect()
    };
    match kept {
        Kept::List(l) | Kept::Ids(l) => {
            let vmax = list_max(l);
            let mut sorted = std::mem::take(&mut scr.cands);
            let by_id = if let Kept::List(_) = kept {
                sorted.clear();
                sorted.extend_from_slice(l);
                sorted.sort_unstable_by_key(|c| c.id);
                &sorted[..]
            } else {
                l
            };
            list_weights(by_id, vmax, scale, &mut scr.wts);
            let total = prims::sum_f64(&scr.wts);
            let target = u * total;
            // In `f64` for a tiny `u` (tokens too light for an `f32` weight may come first) and,
            // in a short row, for a cumulative weight near `u` or a walk past the end.
            let mut exact = target < NEAR * total;
            let mut cum = 0.0;
            let mut chosen = None;
            let mut start = 0;
            if !exact && !small {
                // A long list: whole chunks before the crossing one go by their sums.
                (start, cum) = skip_chunks(&scr.wts, 0.0, |c| c > target);
                if start == by_id.len() {
                    // Rounding left the target unreached: the last token with a weight.
                    let w = by_id.iter().zip(&scr.wts).rev().find(|&(_, &wc)| wc > 0.0);
                    chosen = w.map(|(c, _)| c.id);
                }
            }
            if !exact {
                for (c, &wc) in by_id[start..].iter().zip(&scr.wts[start..]) {
                    if wc > 0.0 {
                        cum += f64::from(wc);
                        if small && (cum - target).abs() < NEAR * total {
                            exact = true;
                            break;
                        }
                        chosen = Some(c.id);
                        if cum > target {
                            break;
                        }
                    }
                }
                exact |= small && cum <= target;
            }
            let tok = if exact {
                let ids: Vec<(u32, f32)> = by_id.iter().map(|c| (c.id, c.v)).collect();
                exact_draw(&ids, vmax, t, u)
            } else {
                chosen.unwrap_or(l[0].id) as usize
            };
            scr.cands = sorted;
            tok
        }
        &Kept::Threshold(thr) => {
            let (total, bsum) = weight_sums(s, scale, thr, scr);
            let target = u * total;
            if target < NEAR * total {
                // A tiny `u` (any row length; one draw in 1e5): tokens too light for an `f32`
                // weight may come first.
                return exact_draw(&alive(thr), s.m, t, u);
            }
            let mut cum = 0.0f64;
            let mut last = 0;
            let mut crossed = false;
            // Blocks with a positive sum (every sum is >= 0), in order, up to the crossing.
            prims::for_live_blocks(bsum, prims::Live::Ge(f32::from_bits(1)), |b| {
                if !crossed {
                    let bs = f64::from(bsum[b]);
                    last = b;
                    if cum + bs > target {
                        crossed = true;
                    } else {
                        cum += bs;
                    }
                }
            });
            if !small {
                let blk = prims::block(s.x, last);
                return last * BLOCK + prims::find_in_block(blk, s.m, scale, thr, target - cum);
            }
            // Within the crossing block, with every cumulative weight checked for nearness to
            // the target (see [`EXACT_V`]).
            let near = |c: f64| (c - target).abs() < NEAR * total;
            if !crossed || near(cum) {
                return exact_draw(&alive(thr), s.m, t, u);
            }
            let blk = prims::block(s.x, last);
            let mut w = [0.0f32; BLOCK];
            prims::weights(blk, s.m, scale, &mut w[..blk.len()]);
            for (i, (e, &wi)) in blk.iter().zip(&w).enumerate() {
                if wi > 0.0 && e.to_f32() >= thr {
                    cum += f64::from(wi);
                    if near(cum) {
                        return exact_draw(&alive(thr), s.m, t, u);
                    }
                    if cum > target {
                        return last * BLOCK + i;
                    }
                }
            }
            exact_draw(&alive(thr), s.m, t, u)
        }
    }
}

/// [`draw`] in `f64` (see [`EXACT_V`]) over the kept `(id, logit)` pairs in increasing id order.
fn exact_draw(ids: &[(u32, f32)], vmax: f32, t: f64, u: f64) -> usize {
    let w = exact_weights(ids.iter().map(|&(_, v)| v), vmax, t);
    let target = Sum2::of(&w).times(u);
    let mut cum = Sum2::default();
    let mut chosen = ids[0].0;
    for (&(id, _), &wc) in ids.iter().zip(&w) {
        if wc > 0.0 {
            cum.add(wc);
            chosen = id;
            if cum.cmp(target).is_gt() {
                break;
            }
        }
    }
    chosen as usize
}

/// SPEC §4 steps 4-9 on one row.
///
/// # Errors
/// NaN/`+inf`, or an all-masked row (row number 0; the caller renumbers).
pub fn sample_row<T: Elem>(
    x: &[T],
    f: &Filters,
    u: f64,
    scr: &mut Scratch,
) -> Result<usize, KernelError> {
    if halves(x, f.temperature) {
        let mut half = std::mem::take(&mut scr.half);
        halve_into(x, &mut half);
        let result = sample_row_at(&half[..], 0.5, f, u, scr);
        scr.half = half;
        return result;
    }
    sample_row_at(x, 1.0, f, u, scr)
}

/// [`sample_row`] on a row in units of `unit` ([`Scanned::unit`]).
fn sample_row_at<T: Elem>(
    x: &[T],
    unit: f64,
    f: &Filters,
    u: f64,
    scr: &mut Scratch,
) -> Result<usize, KernelError> {
    let mut bmax = std::mem::take(&mut scr.bmax);
    let result = (|| {
        let mut s = scan_with(x, &mut bmax, first_sums_scale(f, x.len(), unit), scr)?;
        s.unit = unit;
        if f.temperature == 0.0 {
            return Ok(select::argmax(s.x, s.bmax, s.m));
        }
        let kept = kept_set(&s, f, scr);
        Ok(draw(&s, &kept, f.temperature, u, scr))
    })();
    scr.bmax = bmax;
    result
}

/// Writes `kept` as a mask: kept tokens keep their logit, every other token is `-inf`.
pub fn write_kept<T: Elem>(x: &[T], kept: &Kept, out: &mut [f32]) {
    match kept {
        Kept::Threshold(thr) => prims::write_masked(x, *thr, out),
        Kept::List(l) | Kept::Ids(l) => {
            out.fill(f32::NEG_INFINITY);
            for c in l {
                out[c.id as usize] = c.v;
            }
        }
    }
}

/// Which mask a call of [`mask_row`] writes.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Mask {
    /// Keep the `k` best (`k >= 1`).
    TopK(usize),
    /// Nucleus with temperature and `min_keep`.
    TopP {
        top_p: f64,
        temperature: f64,
        min_keep: usize,
    },
    /// Min-p with temperature and `min_keep`.
    MinP {
        min_p: f64,
        temperature: f64,
        min_keep: usize,
    },
}

/// Writes one of the masks of SPEC §3 for one row.
///
/// # Errors
/// NaN/`+inf`, or an all-masked row.
pub fn mask_row<T: Elem>(
    x: &[T],
    mask: Mask,
    out: &mut [f32],
    scr: &mut Scratch,
) -> Result<(), KernelError> {
    if let Mask::TopP {
        top_p, temperature, ..
    } = mask
    {
        if top_p < 1.0 && halves(x, temperature) {
            let mut half = std::mem::take(&mut scr.half);
            halve_into(x, &mut half);
            let result = mask_kept(&half[..], 0.5, mask, scr).map(|kept| {
                // Kept tokens keep their logit: the caller's value, not the halved one.
                match kept {
                    Kept::Threshold(thr) => {
                        for ((o, e), &h) in out.iter_mut().zip(x).zip(&half) {
                            *o = if h >= thr {
                                e.to_f32()
                            } else {
                                f32::NEG_INFINITY
                            };
                        }
                    }
                    Kept::List(l) | Kept::Ids(l) => {
                        out.fill(f32::NEG_INFINITY);
                        for c in l {
                            out[c.id as usize] = x[c.id as usize].to_f32();
                        }
                    }
                }
            });
            scr.half = half;
            return result;
        }
    }
    let kept = mask_kept(x, 1.0, mask, scr)?;
    write_kept(x, &kept, out);
    Ok(())
}

/// The kept set of one of the masks of SPEC §3, on a row in units of `unit`
/// ([`Scanned::unit`]).
fn mask_kept<T: Elem>(
    x: &[T],
    unit: f64,
    mask: Mask,
    scr: &mut Scratch,
) -> Result<Kept, KernelError> {
    let mut bmax = std::mem::take(&mut scr.bmax);
    let result = (|| {
        // Top-p weighs every finite token first.
        let sums = match mask {
            Mask::TopP {
                top_p, temperature, ..
            } if top_p < 1.0 => Some(scale_of(in_units(temperature, unit))),
            _ => None,
        };
        let mut s = scan_with(x, &mut bmax, sums, scr)?;
        s.unit = unit;
        let all = Kept::Threshold(ALL_FINITE);
        Ok(match mask {
            Mask::TopK(k) if k >= x.len() => all,
            Mask::TopK(k) => Kept::List(top_alive(&s, k, ALL_FINITE, scr)),
            Mask::TopP {
                top_p,
                temperature,
                min_keep,
            } => apply_top_p(&s, all, top_p, in_units(temperature, unit), min_keep, scr),
            Mask::MinP {
                min_p,
                temperature,
                min_keep,
            } => apply_min_p(&s, all, min_p, in_units(temperature, unit), min_keep, scr),
        })
    })();
    scr.bmax = bmax;
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn is_first_pass(t: f32, vmax: f32, fs: f64, ln_min_p: f64) -> bool {
        let pass = |v: f32| (f64::from(v) - f64::from(vmax)) / fs >= ln_min_p;
        pass(t) && (t == ALL_FINITE || !pass(t.next_down()))
    }

    #[test]
    fn the_largest_scale_keeps_the_exp_factor_finite() {
        assert!((MAX_SCALE * prims::LOG2_E).is_finite());
        assert!((MAX_SCALE.next_up() * prims::LOG2_E).is_infinite());
        assert_eq!(scale_of(1e-300), MAX_SCALE);
        assert_eq!(scale_of(3e-39), MAX_SCALE);
        assert_eq!(scale_of(0.5), 2.0);
        assert_eq!(scale_of(1e300), 0.0);
    }

    proptest! {
        #[test]
        fn min_p_threshold_is_the_first_passing_value(
            vmax in prop_oneof![-1e3f32..1e3, Just(0.0f32), Just(f32::MAX), Just(-f32::MAX)],
            log_fs in -40.0f64..300.0,
            min_p in prop_oneof![1e-6f64..=1.0, Just(1.0)],
        ) {
            let fs = 10f64.powf(log_fs);
            let t = min_p_threshold(vmax, fs, min_p.ln());
            prop_assert!(is_first_pass(t, vmax, fs, min_p.ln()), "{vmax} {fs} {min_p} -> {t}");
        }

        #[test]
        fn min_p_cut_adds_at_most_the_values_one_ulp_below_the_threshold(
            vmax in prop_oneof![-1e3f32..1e3, Just(0.0f32), Just(f32::MAX), Just(-f32::MAX)],
            log_fs in -40.0f64..300.0,
            min_p in prop_oneof![1e-6f64..=1.0, Just(1.0)],
        ) {
            let (fs, ln) = (10f64.powf(log_fs), min_p.ln());
            let exact = min_p_threshold(vmax, fs, ln);
            let cut = min_p_cut(vmax, fs, ln);
            // never fewer tokens than the exact rule; min_p = 1 is exact
            prop_assert!(cut <= exact);
            if min_p == 1.0 {
                prop_assert_eq!(cut, exact);
            }
            // what it adds lies within one ulp (of the larger of |vmax| and |cut|) below the
            // exact threshold, and less than half the way from it to vmax
            if cut < exact {
                let below = f64::from(vmax) + fs * ln - f64::from(cut);
                prop_assert!(below <= f32_ulp(vmax).max(f32_ulp(cut)) * (1.0 + 1e-9));
                prop_assert!(below <= -0.5 * fs * ln * (1.0 + 1e-9) + 1e-300);
            }
        }
    }

    #[test]
    fn min_p_equality_is_judged_at_float32_precision() {
        // log(0.5) and log(0.25) written as float32: min_p 0.5 keeps both (they are equal at
        // float32 precision), as it keeps 0.25 against 0.5.
        let ln = 0.5f64.ln();
        let (lh, lq) = (ln as f32, 0.25f64.ln() as f32);
        assert!(
            f64::from(lh) < ln,
            "the float32 log(0.5) lies below log(0.5)"
        );
        assert_eq!(min_p_cut(0.0, 1.0, ln), lh);
        assert!(lq - lh >= min_p_cut(lh, 1.0, ln));
        // the next float32 down is 6e-8 below the threshold, beyond one ulp (6e-8 at 0.69)
        assert!(lh.next_down() < min_p_cut(0.0, 1.0, ln));
        // min_p = 1 keeps only the maximum, and a tiny temperature only what min-p keeps exactly
        assert_eq!(min_p_cut(1.0, 1.0, 0.0), 1.0);
        assert_eq!(min_p_cut(1.0, 1e-30, ln), 1.0);
    }

    #[test]
    fn crossing_index_counts_each_weight_once() {
        // The chunk sum reaches the target only by rounding: one by one the weights fall short,
        // and the next chunk's weights are then added to that shortfall, not to the chunk sum.
        let tiny = (2.0f64).powi(-53) as f32;
        let mut w = vec![1.0f32];
        w.extend([tiny; 127]);
        let target = 1.0 + (2.0f64).powi(-50);
        assert_eq!(crossing_index(&w, 0.0, target), None);
        w.push(1.0);
        assert_eq!(crossing_index(&w, 0.0, target), Some(128));
        assert_eq!(crossing_index(&[1.0, 2.0, 3.0], 0.5, 3.5), Some(1));
        assert_eq!(crossing_index(&[1.0; 200], 0.0, 130.0), Some(129));
    }

    #[test]
    fn huge_filter_temperatures_need_no_walk() {
        // (v - vmax) / fs underflows to 0 for every v within ~1e-24 of vmax: about 2^31 f32
        // values pass, and bisection finds the first in a few dozen steps.
        for vmax in [0.0f32, 1.0, -5.0, 3e38] {
            for fs in [1e280, 1e300, f64::MAX] {
                let t = min_p_threshold(vmax, fs, 0.0);
                assert!(is_first_pass(t, vmax, fs, 0.0), "{vmax} {fs} -> {t}");
            }
        }
    }

    #[test]
    fn order_keys_follow_the_values() {
        let vals = [-f32::MAX, -1.0, -1e-45, -0.0, 0.0, 1e-45, 1.0, f32::MAX];
        for w in vals.windows(2) {
            assert!(order_key(w[0]) < order_key(w[1]));
            assert_eq!(from_order_key(order_key(w[0])).to_bits(), w[0].to_bits());
        }
    }
}
