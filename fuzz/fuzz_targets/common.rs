//! Shared by every fuzz target (not a target itself): bytes -> rows and parameters, the
//! independent reference rules, and the "same bits on every SIMD level" harness.
#![allow(dead_code)]

use logitkit::kernels::elem::{as_bf16, as_f16};
use logitkit::simd::{self, Level};
use logitkit::KernelError;

// ---------------------------------------------------------------------------------------------
// Reading the input

/// A cursor over the fuzz input; reads past the end give zeros.
pub struct Bytes<'a> {
    d: &'a [u8],
    pos: usize,
}

impl<'a> Bytes<'a> {
    pub fn new(d: &'a [u8]) -> Self {
        Self { d, pos: 0 }
    }
    pub fn u8(&mut self) -> u8 {
        let b = self.d.get(self.pos).copied().unwrap_or(0);
        self.pos += 1;
        b
    }
    pub fn u16(&mut self) -> u16 {
        u16::from_le_bytes([self.u8(), self.u8()])
    }
    pub fn u32(&mut self) -> u32 {
        u32::from(self.u16()) | (u32::from(self.u16()) << 16)
    }
    pub fn u64(&mut self) -> u64 {
        u64::from(self.u32()) | (u64::from(self.u32()) << 32)
    }
    pub fn bool(&mut self) -> bool {
        self.u8() & 1 == 1
    }
    /// What is left (the logits are decoded from it, last).
    pub fn rest(&self) -> &'a [u8] {
        &self.d[self.pos.min(self.d.len())..]
    }
}

/// One of `typical` (most of the time), a neighbour of one a few ulps away, or raw bits.
pub fn f64_param(b: &mut Bytes, typical: &[f64]) -> f64 {
    let c = b.u8();
    match c {
        0..=199 => typical[usize::from(c) % typical.len()],
        200..=239 => {
            let t = typical[usize::from(b.u8()) % typical.len()];
            let k = i64::from(b.u8() as i8);
            f64::from_bits((t.to_bits() as i64).wrapping_add(k) as u64)
        }
        _ => f64::from_bits(b.u64()),
    }
}

pub const TEMPERATURES: &[f64] = &[
    1.0,
    1.0,
    0.7,
    0.8,
    1.5,
    0.0,
    0.0,
    2.0,
    0.1,
    1e-3,
    10.0,
    1e3,
    1e-30,
    1e-38,
    1e-40,
    5e-324,
    1e30,
    1e46,
    1e300,
    f64::MAX,
    -1.0,
    -0.0,
    f64::NAN,
    f64::INFINITY,
];
pub const PROBS: &[f64] = &[
    1.0,
    0.0,
    0.5,
    0.9,
    0.95,
    0.999,
    0.05,
    0.1,
    0.3,
    0.7,
    1e-9,
    1.0 - 1e-12,
    0.999_999_9,
    5e-324,
    -0.0,
    f64::NAN,
    1.000_000_1,
    -1e-300,
    f64::INFINITY,
    2.0,
];

/// A token id: mostly in `[0, vocab)`, sometimes anything.
pub fn token_id(b: &mut Bytes, vocab: usize) -> i64 {
    match b.u8() {
        0..=239 => i64::from(b.u16()) % (vocab.max(1) as i64),
        240..=247 => vocab as i64 - 1 + i64::from(b.u8() % 3),
        _ => b.u64() as i64,
    }
}

/// Lists of token ids for `rows` rows (each 0..=max_len long).
pub fn token_lists(b: &mut Bytes, rows: usize, vocab: usize, max_len: u8) -> Vec<Vec<i64>> {
    (0..rows)
        .map(|_| {
            let n = b.u8() % (max_len + 1);
            (0..n).map(|_| token_id(b, vocab)).collect()
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Rows of logits

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dtype {
    F32,
    F16,
    Bf16,
}

/// The shape and encoding of the logits, read before the parameters.
#[derive(Clone, Copy, Debug)]
pub struct Shape {
    pub dtype: Dtype,
    pub rows: usize,
    pub vocab: usize,
    mode: u8,
    scale: f32,
}

/// The logits, as stored and widened to `f32` (the widening is exact).
pub struct Rows {
    pub dtype: Dtype,
    pub rows: usize,
    pub vocab: usize,
    pub f32s: Vec<f32>,
    pub halves: Vec<u16>,
    pub wide: Vec<f32>,
}

const SCALES: [f32; 8] = [1e-3, 1.0, 1e3, 1e20, 1e36, 1e-38, 1e-44, 3.0];

impl Shape {
    pub fn read(b: &mut Bytes) -> Self {
        Self::read_with(b, true)
    }

    pub fn read_f32(b: &mut Bytes) -> Self {
        Self::read_with(b, false)
    }

    fn read_with(b: &mut Bytes, halves: bool) -> Self {
        let c = b.u8();
        let dtype = match (halves, c % 3) {
            (true, 1) => Dtype::F16,
            (true, 2) => Dtype::Bf16,
            _ => Dtype::F32,
        };
        let rows = [1, 1, 1, 2, 2, 3, 4, 0][usize::from((c >> 2) % 8)];
        let s = b.u16();
        let vocab = match s >> 12 {
            0..=10 => 1 + usize::from(s & 0xff) % 200,
            11..=14 => 1 + usize::from(s & 0xfff),
            // Large rows (1 input in 32): with 2+ rows the batch crosses the parallel threshold
            // (2^16 elements), so rows run on the pool.
            _ if s & 0x800 != 0 => 32_768 + usize::from(s & 0x7ff) * 4,
            _ => 1 + usize::from(s & 0x7ff),
        };
        let mode = b.u8();
        let scale = SCALES[usize::from(mode >> 5)];
        Self {
            dtype,
            rows,
            vocab,
            mode: mode % 4,
            scale,
        }
    }

    /// Decodes the logits from the rest of the input (cycled when it runs short).
    pub fn fill(&self, b: &Bytes) -> Rows {
        let data = b.rest();
        let n = self.rows * self.vocab;
        let width = if self.mode == 0 && self.dtype == Dtype::F32 {
            4
        } else {
            2
        };
        let pool_len = (data.len() / width).clamp(1, 1 << 16);
        let word = |k: usize| -> u32 {
            let at = k * width;
            let mut v = 0u32;
            for j in 0..width {
                v |= u32::from(data.get(at + j).copied().unwrap_or(0)) << (8 * j);
            }
            v
        };
        let pool: Vec<u32> = (0..pool_len).map(word).collect();
        let pick = |i: usize| -> u32 {
            if i < pool_len {
                pool[i]
            } else {
                pool[(i.wrapping_mul(7919) ^ (i / pool_len)) % pool_len]
            }
        };
        let mut rows = Rows {
            dtype: self.dtype,
            rows: self.rows,
            vocab: self.vocab,
            f32s: Vec::new(),
            halves: Vec::new(),
            wide: Vec::new(),
        };
        for i in 0..n {
            let w = pick(i);
            match (self.dtype, self.mode) {
                (Dtype::F32, 0) => rows.f32s.push(f32::from_bits(w)),
                (_, 0) => rows.halves.push(w as u16),
                (dt, m) => {
                    let v = match m {
                        1 => curated(w as u16),
                        2 => {
                            if (w & 0xff) < 200 {
                                f32::NEG_INFINITY
                            } else {
                                curated(w as u16)
                            }
                        }
                        _ => {
                            let v = f32::from(w as u16 as i16);
                            if v == -32768.0 {
                                f32::NEG_INFINITY
                            } else {
                                v * self.scale
                            }
                        }
                    };
                    match dt {
                        Dtype::F32 => rows.f32s.push(v),
                        Dtype::F16 => {
                            let v = if v.is_finite() {
                                v.clamp(-65504.0, 65504.0)
                            } else {
                                v
                            };
                            rows.halves.push(half::f16::from_f32(v).to_bits());
                        }
                        Dtype::Bf16 => rows.halves.push(half::bf16::from_f32(v).to_bits()),
                    }
                }
            }
        }
        rows.wide = match self.dtype {
            Dtype::F32 => rows.f32s.clone(),
            Dtype::F16 => rows
                .halves
                .iter()
                .map(|&h| f32::from(half::f16::from_bits(h)))
                .collect(),
            Dtype::Bf16 => rows
                .halves
                .iter()
                .map(|&h| f32::from_bits(u32::from(h) << 16))
                .collect(),
        };
        rows
    }
}

/// Two bytes -> a logit: many ties, a few special values, rare NaN / `+inf`.
fn curated(c: u16) -> f32 {
    let (k, lo) = (c >> 8, c & 0xff);
    match k {
        255 if lo >= 248 => [f32::NAN, f32::INFINITY][usize::from(lo & 1)],
        224..=255 => f32::NEG_INFINITY,
        216..=223 => [
            0.0,
            -0.0,
            1e-45,
            -1e-45,
            f32::MIN_POSITIVE,
            f32::MAX,
            -f32::MAX,
            1e30,
            -1e30,
            1.267_650_6e30, // 2^100
            88.0,
            -88.0,
            f32::EPSILON,
            1.0,
            -1.0,
            100.0,
        ][usize::from(lo % 16)],
        _ => {
            let base = (f32::from(k) - 108.0) / 8.0;
            if lo & 1 == 1 {
                base + f32::from(lo) * 1e-3
            } else {
                base
            }
        }
    }
}

/// `with_rows!(rows, x => expr)`: evaluates `expr` with `x` the logits as stored
/// (`&[f32]`, `&[F16]` or `&[Bf16]`).
#[macro_export]
macro_rules! with_rows {
    ($rows:expr, $x:ident => $body:expr) => {{
        let rows__ = &$rows;
        match rows__.dtype {
            $crate::common::Dtype::F32 => {
                let $x: &[f32] = &rows__.f32s[..];
                $body
            }
            $crate::common::Dtype::F16 => {
                let $x = logitkit::kernels::elem::as_f16(&rows__.halves[..]);
                $body
            }
            $crate::common::Dtype::Bf16 => {
                let $x = logitkit::kernels::elem::as_bf16(&rows__.halves[..]);
                $body
            }
        }
    }};
}

// Keep the imports used when the macro is not.
#[allow(unused)]
fn _uses(b: &[u16]) -> usize {
    as_f16(b).len() + as_bf16(b).len()
}

impl Rows {
    pub fn len(&self) -> usize {
        self.rows * self.vocab
    }

    pub fn row(&self, r: usize) -> &[f32] {
        &self.wide[r * self.vocab..(r + 1) * self.vocab]
    }

    /// The error a kernel that reads every row must report: the lowest row with a NaN / `+inf`
    /// (first such index) or with every token `-inf`.
    pub fn row_error(&self) -> Option<KernelError> {
        (0..self.rows).find_map(|r| row_error(self.row(r), r))
    }
}

/// The error of one row, if any.
pub fn row_error(x: &[f32], r: usize) -> Option<KernelError> {
    if let Some(i) = x.iter().position(|v| !(*v < f32::INFINITY)) {
        return Some(KernelError::NonFinite {
            row: r,
            index: i,
            value: x[i],
        });
    }
    if x.iter().all(|&v| v == f32::NEG_INFINITY) {
        return Some(KernelError::AllMasked { row: r });
    }
    None
}

// ---------------------------------------------------------------------------------------------
// Errors

/// Whether two errors are the same (NaN values compare equal; reasons are not compared).
pub fn same_error(a: &KernelError, b: &KernelError) -> bool {
    use KernelError::*;
    match (a, b) {
        (
            NonFinite {
                row: r1,
                index: i1,
                value: v1,
            },
            NonFinite {
                row: r2,
                index: i2,
                value: v2,
            },
        ) => r1 == r2 && i1 == i2 && (v1.to_bits() == v2.to_bits() || (v1.is_nan() && v2.is_nan())),
        (AllMasked { row: r1 }, AllMasked { row: r2 }) => r1 == r2,
        (
            InvalidParam {
                name: n1, row: r1, ..
            },
            InvalidParam {
                name: n2, row: r2, ..
            },
        ) => n1 == n2 && r1 == r2,
        _ => false,
    }
}

/// Asserts that `got` is the error `want`.
pub fn expect_error<T: std::fmt::Debug>(got: &Result<T, KernelError>, want: &KernelError) {
    match got {
        Err(e) if same_error(e, want) => {}
        Err(e) => panic!("wrong error: got {e:?}, want {want:?}"),
        Ok(v) => panic!("no error: got Ok({v:?}), want {want:?}"),
    }
}

/// A parameter error naming `name` (row as given).
pub fn param(name: &'static str, row: Option<usize>) -> KernelError {
    KernelError::param(name, row, "")
}

// ---------------------------------------------------------------------------------------------
// Same result on every SIMD level

/// Bit-exact canonical form of a result, for comparing levels.
pub trait Canon {
    fn canon(&self, out: &mut Vec<u64>);
}

impl Canon for f32 {
    fn canon(&self, out: &mut Vec<u64>) {
        out.push(u64::from(self.to_bits()));
    }
}
impl Canon for f64 {
    fn canon(&self, out: &mut Vec<u64>) {
        out.push(self.to_bits());
    }
}
impl Canon for i64 {
    fn canon(&self, out: &mut Vec<u64>) {
        out.push(*self as u64);
    }
}
impl Canon for usize {
    fn canon(&self, out: &mut Vec<u64>) {
        out.push(*self as u64);
    }
}
impl Canon for () {
    fn canon(&self, _: &mut Vec<u64>) {}
}
impl<T: Canon> Canon for Vec<T> {
    fn canon(&self, out: &mut Vec<u64>) {
        out.push(self.len() as u64);
        self.iter().for_each(|v| v.canon(out));
    }
}
impl<A: Canon, B: Canon> Canon for (A, B) {
    fn canon(&self, out: &mut Vec<u64>) {
        self.0.canon(out);
        self.1.canon(out);
    }
}
impl<T: Canon> Canon for Result<T, KernelError> {
    fn canon(&self, out: &mut Vec<u64>) {
        match self {
            Ok(v) => {
                out.push(0);
                v.canon(out);
            }
            Err(e) => {
                out.push(1);
                out.extend(format!("{e:?}").bytes().map(u64::from));
            }
        }
    }
}
impl Canon for logitkit::kernels::RowLogprobs {
    fn canon(&self, out: &mut Vec<u64>) {
        self.token_logprobs.canon(out);
        self.ranks.canon(out);
        self.top_ids.canon(out);
        self.top_logprobs.canon(out);
    }
}
impl Canon for logitkit::kernels::batch::RowResult {
    fn canon(&self, out: &mut Vec<u64>) {
        self.token.canon(out);
        self.logprob.canon(out);
        self.rank.canon(out);
        self.top_ids.canon(out);
        self.top_logprobs.canon(out);
    }
}

/// Runs `f` on the scalar level, then on every other level the CPU has, asserting the same bits;
/// returns the scalar result.
pub fn on_every_level<R: Canon + std::fmt::Debug>(mut f: impl FnMut() -> R) -> R {
    assert!(simd::set_level(Level::Scalar));
    let want = f();
    let mut want_c = Vec::new();
    want.canon(&mut want_c);
    for level in simd::available() {
        if level == Level::Scalar {
            continue;
        }
        assert!(simd::set_level(level));
        let got = f();
        let mut got_c = Vec::new();
        got.canon(&mut got_c);
        if got_c != want_c {
            panic!(
                "level {level:?} differs from scalar:\n  {level:?}: {got:?}\n  scalar: {want:?}"
            );
        }
    }
    assert!(simd::set_level(Level::Scalar));
    want
}

// ---------------------------------------------------------------------------------------------
// Reference rules (SPEC §4), independent of the kernels

/// Token ids in rank order: larger logit first, equal logits (numerically: -0.0 == 0.0) by
/// lower id; `-inf` tokens last (by id). The row holds no NaN.
pub fn rank_order(x: &[f32]) -> Vec<usize> {
    // One u64 key per token: the value's order-preserving bits, inverted (larger first), then the
    // id; -0.0 is read as 0.0 so that the two tie.
    let ordered = |v: f32| -> u32 {
        let b = (if v == 0.0 { 0.0f32 } else { v }).to_bits();
        if b >> 31 == 1 {
            !b
        } else {
            b | 0x8000_0000
        }
    };
    let mut keys: Vec<u64> = x
        .iter()
        .enumerate()
        .map(|(i, &v)| (u64::from(!ordered(v)) << 32) | i as u64)
        .collect();
    keys.sort_unstable();
    keys.into_iter()
        .map(|k| (k & 0xffff_ffff) as usize)
        .collect()
}

/// Number of finite tokens.
pub fn n_finite(x: &[f32]) -> usize {
    x.iter().filter(|v| v.is_finite()).count()
}

/// The largest logit.
pub fn max_of(x: &[f32]) -> f32 {
    x.iter().copied().fold(f32::NEG_INFINITY, f32::max)
}

/// The min-p rule in logit space, as SPEC §4 step 8 states it: `(v - v_max) / fs >= ln(min_p)`.
pub fn passes_min_p(v: f32, vmax: f32, fs: f64, min_p: f64) -> bool {
    v.is_finite() && (f64::from(v) - f64::from(vmax)) / fs >= min_p.ln()
}

/// The temperature top-k / top-p / min-p see: 1 for the llama.cpp order (temperature last).
pub fn filter_temperature(f: &logitkit::kernels::Filters) -> f64 {
    if f.order == logitkit::kernels::Order::LlamaCpp {
        1.0
    } else {
        f.temperature
    }
}

/// A sampled token `tok` of `row` at rank `rank` (tempered draw, `f.temperature > 0`) lies inside
/// top-k and passes min-p (with the filter temperature of `f`'s order; checked when
/// `min_keep == 1`, which cannot widen the set). Returns whether top-k was on.
pub fn assert_in_top_k_and_min_p(
    row: &[f32],
    tok: usize,
    rank: usize,
    f: &logitkit::kernels::Filters,
    r: usize,
) -> bool {
    let k_on = f.top_k > 0 && (f.top_k as u64) < row.len() as u64;
    if k_on {
        assert!(
            rank < f.top_k as usize,
            "row {r}: token {tok} has rank {rank}, top_k {}",
            f.top_k
        );
    }
    let fs = filter_temperature(f);
    if f.min_p > 0.0 && f.min_keep == 1 {
        assert!(
            passes_min_p(row[tok], max_of(row), fs, f.min_p),
            "row {r}: token {tok} fails min-p {}",
            f.min_p
        );
    }
    k_on
}

/// `softmax(x * scale)` in `f64` over the finite tokens of `x` (0 for the others); `scale` finite.
pub fn probs_f64(x: &[f32], scale: f64) -> Vec<f64> {
    let m = f64::from(max_of(x));
    let w: Vec<f64> = x
        .iter()
        .map(|&v| {
            if v.is_finite() {
                ((f64::from(v) - m) * scale).exp()
            } else {
                0.0
            }
        })
        .collect();
    let total: f64 = w.iter().sum();
    w.iter().map(|&w| w / total).collect()
}

/// `log_softmax(x * scale)` in `f64` (`-inf` for masked tokens); `scale` finite.
pub fn log_probs_f64(x: &[f32], scale: f64) -> Vec<f64> {
    let m = f64::from(max_of(x));
    let total: f64 = x
        .iter()
        .filter(|v| v.is_finite())
        .map(|&v| ((f64::from(v) - m) * scale).exp())
        .sum();
    let lse = total.ln();
    x.iter()
        .map(|&v| {
            if v.is_finite() {
                (f64::from(v) - m) * scale - lse
            } else {
                f64::NEG_INFINITY
            }
        })
        .collect()
}

/// Whether `1 / t` is a scale the kernels represent as is (no clamping to `f32::MAX`).
pub fn plain_scale(t: f64) -> bool {
    t > 0.0 && (1.0 / t) <= f64::from(f32::MAX)
}

/// Checks that a draw with uniform `u` over the kept set `kept` (`softmax(x * scale)`
/// renormalised over it, scanned in increasing id order) may give `tok`, with tolerance `tol`.
pub fn check_draw(x: &[f32], kept: &[bool], scale: f64, u: f64, tok: usize, tol: f64) {
    assert!(kept[tok], "token {tok} is outside the kept set");
    let z: Vec<f32> = x
        .iter()
        .zip(kept)
        .map(|(&v, &k)| if k { v } else { f32::NEG_INFINITY })
        .collect();
    let p = probs_f64(&z, scale);
    let before: f64 = p[..tok].iter().sum();
    let upto = before + p[tok];
    assert!(
        before <= u + tol && upto >= u - tol,
        "draw: u = {u}, token {tok} covers [{before}, {upto}]"
    );
}

/// SPEC §5 and the bias, one f64 operation rounded to f32 per step.
/// SPEC §5 as logitkit settles it: a masked logit stays masked, a finite result outside the
/// `f32` range saturates to `±f32::MAX`.
fn settle(was: f32, v: f64) -> f32 {
    if was == f32::NEG_INFINITY {
        was
    } else if v >= f64::from(f32::MAX) {
        f32::MAX
    } else if v <= -f64::from(f32::MAX) {
        -f32::MAX
    } else {
        v as f32
    }
}

pub fn spec_bias_penalties(
    x: &[f32],
    bias: Option<&logitkit::kernels::Bias>,
    pen: Option<(&[i64], &[i64], &logitkit::kernels::Penalties)>,
) -> Vec<f32> {
    let mut z = x.to_vec();
    if let Some((ids, vals)) = bias {
        for (&i, &bv) in ids.iter().zip(vals) {
            let w = z[i as usize];
            z[i as usize] = if bv == f64::NEG_INFINITY {
                f32::NEG_INFINITY
            } else {
                settle(w, f64::from(w) + bv)
            };
        }
    }
    if let Some((prompt, output, p)) = pen {
        if p.repetition != 1.0 {
            let mut seen: Vec<i64> = prompt.iter().chain(output).copied().collect();
            seen.sort_unstable();
            seen.dedup();
            for t in seen {
                let w = z[t as usize];
                let v = f64::from(w);
                z[t as usize] = settle(
                    w,
                    if v > 0.0 {
                        v / p.repetition
                    } else {
                        v * p.repetition
                    },
                );
            }
        }
        if p.frequency != 0.0 || p.presence != 0.0 {
            let mut out: Vec<i64> = output.to_vec();
            out.sort_unstable();
            out.dedup();
            for t in out {
                let c = output.iter().filter(|&&o| o == t).count() as f64;
                let w = z[t as usize];
                z[t as usize] = settle(w, f64::from(w) - c * p.frequency - p.presence);
            }
        }
    }
    z
}

// ---------------------------------------------------------------------------------------------
// Sampling parameters

pub fn read_top_k(b: &mut Bytes, vocab: usize) -> i64 {
    match b.u8() {
        0..=95 => 0,
        96..=191 => i64::from(b.u8() % 12),
        192..=223 => vocab as i64 + i64::from(b.u8() % 3) - 1,
        224..=239 => -i64::from(b.u8()),
        _ => b.u64() as i64,
    }
}

pub fn read_min_keep(b: &mut Bytes) -> usize {
    match b.u8() {
        0..=191 => 1,
        192..=247 => usize::from(b.u8() % 6),
        _ => b.u64() as usize,
    }
}

pub fn read_prob(b: &mut Bytes, off: f64) -> f64 {
    if b.u8() < 96 {
        off
    } else {
        f64_param(b, PROBS)
    }
}

pub fn read_filters(b: &mut Bytes, vocab: usize) -> logitkit::kernels::Filters {
    logitkit::kernels::Filters {
        temperature: f64_param(b, TEMPERATURES),
        top_k: read_top_k(b, vocab),
        top_p: read_prob(b, 1.0),
        min_p: read_prob(b, 0.0),
        min_keep: read_min_keep(b),
        order: [
            logitkit::kernels::Order::Default,
            logitkit::kernels::Order::Vllm,
            logitkit::kernels::Order::LlamaCpp,
        ][usize::from(b.u8() % 3)],
    }
}

pub fn read_u(b: &mut Bytes) -> f64 {
    match b.u8() {
        0..=215 => (b.u64() >> 11) as f64 / (1u64 << 53) as f64,
        216..=223 => 0.0,
        224..=231 => 1.0 - f64::EPSILON / 2.0,
        232..=239 => 0.5,
        _ => f64::from_bits(b.u64()),
    }
}

pub fn filter_error(f: &logitkit::kernels::Filters) -> Option<&'static str> {
    let t = f.temperature;
    if !(t.is_finite() && t >= 0.0) {
        Some("temperature")
    } else if !(0.0..=1.0).contains(&f.top_p) {
        Some("top_p")
    } else if !(0.0..=1.0).contains(&f.min_p) {
        Some("min_p")
    } else if f.min_keep < 1 {
        Some("min_keep")
    } else {
        None
    }
}
