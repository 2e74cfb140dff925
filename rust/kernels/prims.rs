//! Streaming primitives over one row: the only loops that touch every element.
//!
//! Each is compiled once per SIMD level (see [`crate::simd`]). They work on fixed blocks of
//! [`BLOCK`] elements with [`LANES`] independent accumulators, the same layout on every level, so
//! sums are bit-identical whichever level runs them.

use super::elem::{bf16_bits, bf16_key, Elem, Storage, BF16_KEY_INF, BF16_NEG_INF};
use crate::simd::{multiversion, Level};

/// Elements per block. Block maxima (one `f32` per block) let later steps skip whole blocks.
pub const BLOCK: usize = 64;
/// Independent accumulators per block (one AVX-512 register of `f32`).
pub const LANES: usize = 16;
/// Blocks per group of the fused scans ([`scan_weights`], [`scan_write_weights`]): 1024
/// elements, an L1-resident tile that is read from memory once and then weighed.
pub const GROUP: usize = 16;
/// The threshold of [`weight_sums`] that keeps every finite token (`-inf` ones weigh 0).
pub const ALL_FINITE: f32 = -f32::MAX;

/// Below this base-2 exponent [`exp2_neg`] returns exactly 0 (`2^-125`, about `e^-86.6`).
pub const T_CUTOFF: f32 = -125.0;

/// `ln 2^k / k!`, `k = 6..1`: the Taylor polynomial of `2^f` on `[-1/2, 1/2]` (truncation error
/// below `1.2e-7` relative).
pub const EXP2_POLY: [f32; 6] = [
    1.540_353_e-4,
    1.333_355_8e-3,
    9.618_129e-3,
    5.550_411e-2,
    2.402_265e-1,
    6.931_472e-1,
];

/// `log2(e)`: converts a natural-log scale into the base-2 scale the kernels use.
pub const LOG2_E: f32 = std::f32::consts::LOG2_E;

/// Calls the AVX-512 or AVX2 kernel `$name` of [`crate::simd::x86`] when that level is in use and
/// the element type has a SIMD load (`T: Elem` in scope), else evaluates `$fallback`.
macro_rules! simd_kernel {
    ($name:ident($($arg:expr),*), $fallback:expr) => {
        match (T::STORAGE, crate::simd::level()) {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: level() returns Avx512 only after detecting every feature the kernel enables.
            (Storage::F32 | Storage::F16 | Storage::Bf16, Level::Avx512) => unsafe {
                crate::simd::x86::avx512::$name($($arg),*)
            },
            #[cfg(target_arch = "x86_64")]
            // SAFETY: level() returns Avx2 only after detecting every feature the kernel enables.
            (Storage::F32 | Storage::F16 | Storage::Bf16, Level::Avx2) => unsafe {
                crate::simd::x86::avx2::$name($($arg),*)
            },
            _ => $fallback,
        }
    };
}

/// Number of blocks of a row of `len` elements.
#[inline]
#[must_use]
pub fn n_blocks(len: usize) -> usize {
    len.div_ceil(BLOCK)
}

/// `2^t` in `f32` for `t <= 0`, within 3 ulp of the true value, and exactly 0 below
/// [`T_CUTOFF`] (including `-inf`).
///
/// `t = n + f` with `n = round(t)` and `|f| <= 1/2`, [`EXP2_POLY`] for `2^f` in fused
/// multiply-adds, and `2^n` added into the exponent field (results stay normal above the
/// cutoff). The scalar level uses the exact software fma, so every level computes the same bits.
/// A weight `e^(d * s)` is computed as `2^(d * (s * log2 e))`: the two `f32` products add a
/// relative error of at most `|t| * 2^-23` to the bound above.
#[inline(always)]
#[must_use]
pub fn exp2_neg(t: f32) -> f32 {
    const ROUND: f32 = 12_582_912.0; // 1.5 * 2^23: adding it rounds to an integer (ties even)
    let tc = if t > T_CUTOFF { t } else { T_CUTOFF };
    let r = tc + ROUND;
    let n = r - ROUND;
    let f = tc - n;
    let mut y = EXP2_POLY[0];
    for c in &EXP2_POLY[1..] {
        y = y.mul_add(f, *c);
    }
    y = y.mul_add(f, 1.0);
    // n is in [-125, 0]: the integer sits in the low mantissa bits of `r`.
    let ni = (r.to_bits() as i32).wrapping_sub(0x4b40_0000);
    let scaled = f32::from_bits((y.to_bits() as i32).wrapping_add(ni << 23) as u32);
    if t >= T_CUTOFF {
        scaled
    } else {
        0.0
    }
}

/// Result of [`scan`]: the row maximum, or the first element that is NaN or `+inf`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Scan {
    /// The largest element (`-inf` when every element is `-inf`).
    Max(f32),
    /// Index and value of the first NaN or `+inf`.
    Bad(usize, f32),
}

#[inline(always)]
fn is_bad(v: f32) -> bool {
    // NaN and +inf are the only values that are not below +inf (one compare, NaN included).
    #[allow(clippy::neg_cmp_op_on_partial_ord)]
    let bad = !(v < f32::INFINITY);
    bad
}

/// Maximum of 16 lanes, pairwise (the shape LLVM turns into vector shuffles).
#[inline(always)]
fn reduce_max(acc: &[f32; LANES]) -> f32 {
    let mut s = *acc;
    let mut width = LANES / 2;
    while width > 0 {
        for j in 0..width {
            s[j] = if s[j + width] > s[j] {
                s[j + width]
            } else {
                s[j]
            };
        }
        width /= 2;
    }
    s[0]
}

/// Sums 16 lanes in a fixed pairwise order.
#[inline(always)]
fn reduce_sum(acc: &[f32; LANES]) -> f32 {
    let mut s = *acc;
    let mut width = LANES / 2;
    while width > 0 {
        for j in 0..width {
            s[j] += s[j + width];
        }
        width /= 2;
    }
    s[0]
}

/// One read of the row: fills `bmax` with the maximum of every block and checks that no
/// element is NaN or `+inf`.
#[must_use]
pub fn scan<T: Elem>(x: &[T], bmax: &mut [f32]) -> Scan {
    debug_assert_eq!(bmax.len(), n_blocks(x.len()));
    let (row_max, bad) = simd_kernel!(scan(x, bmax), scan_portable(x, bmax));
    if let Some(found) = first_bad(x, bad) {
        return found;
    }
    Scan::Max(row_max)
}

/// The row maximum, or the first NaN / `+inf`: one read, no block maxima.
#[must_use]
pub fn max<T: Elem>(x: &[T]) -> Scan {
    let (m, bad) = simd_kernel!(max(x), max_portable(x));
    if let Some(found) = first_bad(x, bad) {
        return found;
    }
    Scan::Max(m)
}

/// Index of the first element equal to `m` (0 if none).
#[must_use]
pub fn find_eq<T: Elem>(x: &[T], m: f32) -> usize {
    let found = simd_kernel!(find_eq(x, m), x.iter().position(|e| e.to_f32() == m));
    found.unwrap_or(0)
}

/// The maximum of one block (lanes reduced pairwise); `bad` lanes become non-zero where an
/// element is NaN or `+inf`.
#[inline(always)]
fn block_max<T: Elem>(blk: &[T], bad: &mut [u32; LANES]) -> f32 {
    let mut acc = [f32::NEG_INFINITY; LANES];
    let mut lanes = blk.chunks_exact(LANES);
    for c in &mut lanes {
        for j in 0..LANES {
            let v = c[j].to_f32();
            acc[j] = if v > acc[j] { v } else { acc[j] };
            bad[j] |= u32::from(is_bad(v));
        }
    }
    for (j, e) in lanes.remainder().iter().enumerate() {
        let v = e.to_f32();
        acc[j] = if v > acc[j] { v } else { acc[j] };
        bad[j] |= u32::from(is_bad(v));
    }
    reduce_max(&acc)
}

/// The largest order key ([`bf16_key`]) of bfloat16 bits (a block, or a row) and their unsigned
/// maximum. Every level computes bfloat16 block and row maxima from keys (so `+0` wins over `-0`
/// whatever their order): the SIMD scans compare 16-bit keys, 32 or 16 to a register, instead of
/// widening every element to `f32`.
#[inline(always)]
#[must_use]
pub fn bf16_top_key(h: &[u16]) -> (i16, u16) {
    let (mut key, mut raw) = (i16::MIN, 0u16);
    for &b in h {
        key = key.max(bf16_key(b));
        raw = raw.max(b);
    }
    (key, raw)
}

/// The value of a bfloat16 order key, widened.
#[inline(always)]
#[must_use]
pub fn bf16_key_value(key: i16) -> f32 {
    f32::from_bits(u32::from(bf16_key(key as u16) as u16) << 16)
}

/// The maximum of a bfloat16 row of `len` elements (`-inf` when empty) and whether it may hold a
/// NaN or `+inf`, from its largest key and the unsigned maximum of its bits.
#[inline(always)]
#[must_use]
pub fn bf16_row(len: usize, top: i16, raw: u16) -> (f32, bool) {
    let m = if len == 0 {
        f32::NEG_INFINITY
    } else {
        bf16_key_value(top)
    };
    (m, top >= BF16_KEY_INF || raw > BF16_NEG_INF)
}

/// [`scan`] of a bfloat16 row from block `done` on, block by block: the row's largest key and
/// unsigned maximum so far in `acc`, returned with the rest folded in.
#[inline(always)]
pub fn scan_bf16_blocks(x: &[u16], done: usize, bmax: &mut [f32], acc: (i16, u16)) -> (f32, bool) {
    let (mut top, mut raw) = acc;
    for (blk, bm) in x[done * BLOCK..].chunks(BLOCK).zip(bmax[done..].iter_mut()) {
        let (k, r) = bf16_top_key(blk);
        *bm = bf16_key_value(k);
        top = top.max(k);
        raw = raw.max(r);
    }
    bf16_row(x.len(), top, raw)
}

/// [`max`] in portable code (bfloat16 rows by order keys, as [`scan`]; no block maxima kept).
fn max_portable<T: Elem>(x: &[T]) -> (f32, bool) {
    if let Some(h) = bf16_bits(x) {
        let (top, raw) = bf16_top_key(h);
        return bf16_row(h.len(), top, raw);
    }
    fold_blocks(x, |_, _| {})
}

/// The block maxima of a float32 or float16 row in order, each passed to `each(b, max)`, folded
/// into the row maximum (the first of equal maxima kept); and whether a NaN or `+inf` was seen.
#[inline(always)]
fn fold_blocks<T: Elem>(x: &[T], mut each: impl FnMut(usize, f32)) -> (f32, bool) {
    // `bad` lanes stay 0 unless an element is NaN or +inf; checked once per row.
    let mut bad = [0u32; LANES];
    let mut row_max = f32::NEG_INFINITY;
    for (b, blk) in x.chunks(BLOCK).enumerate() {
        let m = block_max(blk, &mut bad);
        each(b, m);
        row_max = if m > row_max { m } else { row_max };
    }
    (row_max, bad.iter().any(|&b| b != 0))
}

multiversion! {
    /// [`scan`] in portable code: the row maximum and whether a NaN or `+inf` was seen.
    pub fn scan_portable<T: Elem>(x: &[T], bmax: &mut [f32]) -> (f32, bool) {
        if let Some(h) = bf16_bits(x) {
            return scan_bf16_blocks(h, 0, bmax, (i16::MIN, 0));
        }
        fold_blocks(x, |b, m| bmax[b] = m)
    }
}

/// The first NaN or `+inf` of a row whose scan reported `maybe` one, if there is one: the SIMD
/// scans' check also fires on finite values whose sum overflows, and this settles it.
fn first_bad<T: Elem>(x: &[T], maybe: bool) -> Option<Scan> {
    if !maybe {
        return None;
    }
    let i = x.iter().position(|e| is_bad(e.to_f32()))?;
    Some(Scan::Bad(i, x[i].to_f32()))
}

/// [`scan`] and [`weight_sums`]`(x, bmax, m, scale, ALL_FINITE, bsum)` in one read of the row:
/// returns the scan's result and the total weight (0 unless the maximum is finite).
///
/// The row is read group by group ([`GROUP`] blocks): each group's block maxima update the
/// running maximum `r`, and the group is weighed against `r` while it is in L1, with `gref[g] = r`
/// recorded. Once the row maximum `m` is known, the sums of every group with `r < m` are
/// multiplied by `e^((r - m) * scale)` (blocks that are zero against `m` become exactly 0, as in
/// [`weight_sums`]). Groups weighed against `m` itself hold the bits [`weight_sums`] gives; the
/// others differ from them by a few ulp, the same on every level. Costs one exp per element
/// even where [`weight_sums`] would skip a block that lies far below a later maximum, so the
/// callers take it for scales at most [`FUSED_MAX_A`] `/ log2 e`.
pub fn scan_weights<T: Elem>(
    x: &[T],
    bmax: &mut [f32],
    bsum: &mut [f32],
    gref: &mut [f32],
    scale: f32,
) -> (Scan, f64) {
    debug_assert_eq!(bmax.len(), n_blocks(x.len()));
    debug_assert_eq!(bsum.len(), bmax.len());
    debug_assert_eq!(gref.len(), bmax.len().div_ceil(GROUP));
    let (m, bad) = simd_kernel!(
        scan_weights(x, bmax, bsum, gref, scale),
        scan_weights_portable(x, bmax, bsum, gref, scale, None)
    );
    if let Some(found) = first_bad(x, bad) {
        return (found, 0.0);
    }
    if m == f32::NEG_INFINITY {
        return (Scan::Max(m), 0.0);
    }
    let a = (scale * LOG2_E).min(f32::MAX);
    (
        Scan::Max(m),
        rescale_sums(bmax, bsum, gref, m, a, ALL_FINITE),
    )
}

/// `e^((r - m) * a / log2 e)` for the references `r` of successive groups, which rarely change
/// (each change is a new running maximum): one exp per distinct reference.
struct GroupFactor {
    m: f32,
    a: f32,
    last: Option<(f32, f32)>,
}

impl GroupFactor {
    fn new(m: f32, a: f32) -> Self {
        Self { m, a, last: None }
    }

    fn of(&mut self, r: f32) -> f32 {
        match self.last {
            Some((lr, f)) if lr.to_bits() == r.to_bits() => f,
            _ => {
                let f = exp2_neg((r - self.m) * self.a);
                self.last = Some((r, f));
                f
            }
        }
    }
}

/// Brings the block sums of every group weighed against `r = gref[g] < m` to the row maximum
/// `m` (blocks zero against `m` become exactly 0) and returns the total, summed in `f64` in
/// block order.
fn rescale_sums(bmax: &[f32], bsum: &mut [f32], gref: &[f32], m: f32, a: f32, thr: f32) -> f64 {
    let mut factor = GroupFactor::new(m, a);
    let mut total = 0.0f64;
    for ((bm, bs), &r) in bmax.chunks(GROUP).zip(bsum.chunks_mut(GROUP)).zip(gref) {
        if r != m {
            let f = factor.of(r);
            for (&b, s) in bm.iter().zip(bs.iter_mut()) {
                *s = if block_is_zero(b, m, a, thr) {
                    0.0
                } else {
                    *s * f
                };
            }
        }
        for &v in bs.iter() {
            total += f64::from(v);
        }
    }
    total
}

/// The largest `scale * log2 e` for which the fused scans pay: beyond it (temperatures below
/// about 0.36) a row's blocks far below its maximum are often exactly 0, and the two-pass
/// [`scan`] + [`weight_sums`] skips them without an exp.
pub const FUSED_MAX_A: f32 = 4.0;

/// Whether the fused scans suit `scale` (see [`FUSED_MAX_A`]).
#[must_use]
pub fn fused_pays(scale: f32) -> bool {
    scale * LOG2_E <= FUSED_MAX_A
}

multiversion! {
    /// [`scan_weights`] in portable code (before the rescaling), and with `out` the weights
    /// written ([`scan_write_weights`]): the row maximum and whether a NaN or `+inf` was seen.
    pub fn scan_weights_portable<T: Elem>(x: &[T], bmax: &mut [f32], bsum: &mut [f32], gref: &mut [f32], scale: f32, out: Option<&mut [f32]>) -> (f32, bool) {
        let a = (scale * LOG2_E).min(f32::MAX);
        let mut bad = [0u32; LANES];
        let mut row_max = f32::NEG_INFINITY;
        let mut out = out;
        let groups = x.chunks(GROUP * BLOCK).zip(bmax.chunks_mut(GROUP)).zip(bsum.chunks_mut(GROUP));
        for (g, (((xs, bm), bs), r)) in groups.zip(gref.iter_mut()).enumerate() {
            for (blk, m) in xs.chunks(BLOCK).zip(bm.iter_mut()) {
                *m = block_max(blk, &mut bad);
                row_max = if *m > row_max { *m } else { row_max };
            }
            *r = row_max;
            let first = g * GROUP * BLOCK;
            for (i, ((blk, &m), s)) in xs.chunks(BLOCK).zip(bm.iter()).zip(bs.iter_mut()).enumerate() {
                *s = match out.as_deref_mut() {
                    None if block_is_zero(m, row_max, a, ALL_FINITE) => 0.0,
                    None => block_weight_sum(blk, row_max, a, ALL_FINITE),
                    Some(out) => {
                        let start = first + i * BLOCK;
                        write_block_weights(blk, m, row_max, a, &mut out[start..start + blk.len()])
                    }
                };
            }
        }
        (row_max, bad.iter().any(|&b| b != 0))
    }
}

/// The softmax numerator pass fused with the scan: [`scan`], and `out[i] = e^((x[i] - r) *
/// scale)` against the running maximum `r` of each group (see [`scan_weights`]), with `bsum`
/// and `gref` as there. [`normalize_weights`] then turns `out` into probabilities.
pub fn scan_write_weights<T: Elem>(
    x: &[T],
    bmax: &mut [f32],
    bsum: &mut [f32],
    gref: &mut [f32],
    scale: f32,
    out: &mut [f32],
) -> Scan {
    debug_assert_eq!(out.len(), x.len());
    debug_assert_eq!(gref.len(), bmax.len().div_ceil(GROUP));
    let (m, bad) = simd_kernel!(
        scan_write_weights(x, bmax, bsum, gref, scale, out),
        scan_weights_portable(x, bmax, bsum, gref, scale, Some(out))
    );
    if let Some(found) = first_bad(x, bad) {
        return found;
    }
    Scan::Max(m)
}

/// Divides the weights of [`scan_write_weights`] by their total, after bringing every group to
/// the row maximum `m`: `out[i] *= e^((r - m) * scale) / total` per group (blocks zero against
/// `m` become exactly 0). Groups weighed against `m` get the bits of [`write_weights`] and
/// [`scale_in_place`] by `1 / total`. `factors` is scratch space (one factor per block, applied
/// in one pass by [`scale_blocks`]).
pub fn normalize_weights(
    bmax: &[f32],
    bsum: &mut [f32],
    gref: &[f32],
    m: f32,
    scale: f32,
    out: &mut [f32],
    factors: &mut Vec<f32>,
) {
    let a = (scale * LOG2_E).min(f32::MAX);
    let total = rescale_sums(bmax, bsum, gref, m, a, f32::NEG_INFINITY);
    let inv = (1.0 / total) as f32;
    let mut factor = GroupFactor::new(m, a);
    factors.clear();
    for (bm, &r) in bmax.chunks(GROUP).zip(gref) {
        if r == m {
            // Blocks zero against `m` already hold zeros: `0 * inv` keeps them.
            factors.extend(bm.iter().map(|_| inv));
            continue;
        }
        let k = (f64::from(factor.of(r)) / total) as f32;
        factors.extend(bm.iter().map(|&b| {
            if block_is_zero(b, m, a, f32::NEG_INFINITY) {
                0.0
            } else {
                k
            }
        }));
    }
    scale_blocks(out, factors);
}

multiversion! {
    /// `out[i] *= k[i / BLOCK]` (weights are finite and `>= 0`, so a factor of 0 gives `+0`).
    pub fn scale_blocks<T: Elem>(out: &mut [f32], k: &[T]) -> () {
        let full = out.len() / BLOCK;
        let mut blocks = out.chunks_exact_mut(BLOCK);
        for (ob, kb) in (&mut blocks).zip(k) {
            let kb = kb.to_f32();
            for o in ob {
                *o *= kb;
            }
        }
        let tail = blocks.into_remainder();
        if let Some(kb) = k.get(full) {
            let kb = kb.to_f32();
            for o in tail {
                *o *= kb;
            }
        }
    }
}

/// `o[i] = e^((blk[i] - m) * scale)` (`a = scale * log2 e`) for one block with maximum `bm`, and
/// their sum in [`LANES`] lanes (as [`write_weights`]); zeros when the block weighs nothing.
#[inline(always)]
fn write_block_weights<T: Elem>(blk: &[T], bm: f32, m: f32, a: f32, o: &mut [f32]) -> f32 {
    if block_is_zero(bm, m, a, f32::NEG_INFINITY) {
        o.fill(0.0);
        return 0.0;
    }
    let mut acc = [0.0f32; LANES];
    for (i, (e, w)) in blk.iter().zip(o.iter_mut()).enumerate() {
        *w = exp2_neg((e.to_f32() - m) * a);
        acc[i % LANES] += *w;
    }
    reduce_sum(&acc)
}

/// Weight of one element: `e^((v - m) * scale) = 2^((v - m) * a)` if `v >= thr`, else 0.
#[inline(always)]
fn weight(v: f32, m: f32, a: f32, thr: f32) -> f32 {
    let w = exp2_neg((v - m) * a);
    if v >= thr {
        w
    } else {
        0.0
    }
}

/// Sum of the weights of one block, accumulated in [`LANES`] lanes and reduced pairwise.
#[inline(always)]
fn block_weight_sum<T: Elem>(blk: &[T], m: f32, a: f32, thr: f32) -> f32 {
    let mut acc = [0.0f32; LANES];
    let mut lanes = blk.chunks_exact(LANES);
    for c in &mut lanes {
        for j in 0..LANES {
            acc[j] += weight(c[j].to_f32(), m, a, thr);
        }
    }
    for (j, e) in lanes.remainder().iter().enumerate() {
        acc[j] += weight(e.to_f32(), m, a, thr);
    }
    reduce_sum(&acc)
}

/// Block `b` of the row `x`.
#[inline(always)]
pub fn block<T>(x: &[T], b: usize) -> &[T] {
    &x[b * BLOCK..((b + 1) * BLOCK).min(x.len())]
}

/// Which blocks [`for_live_blocks`] visits.
#[derive(Clone, Copy)]
pub enum Live {
    /// Blocks with maximum `>= thr`.
    Ge(f32),
    /// Blocks that can hold a non-zero weight: not [`block_is_zero`]`(bm, m, a, thr)`.
    Weight { thr: f32, m: f32, a: f32 },
}

/// Bit `i` set when `chunk[i]` (at most 64 block maxima) passes `live`.
#[inline(always)]
fn live_mask(chunk: &[f32], live: Live) -> u64 {
    let (thr, ma) = match live {
        Live::Ge(thr) => (thr, None),
        Live::Weight { thr, m, a } => (thr, Some((m, a))),
    };
    let mut mask = 0u64;
    let mut i = 0;
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::*;
        // SAFETY: SSE2 is part of the x86_64 baseline; every load reads 4 elements in bounds.
        unsafe {
            let tv = _mm_set1_ps(thr);
            let (mv, av, cv) = match ma {
                Some((m, a)) => (_mm_set1_ps(m), _mm_set1_ps(a), _mm_set1_ps(T_CUTOFF)),
                None => (_mm_setzero_ps(), _mm_setzero_ps(), _mm_setzero_ps()),
            };
            while i + 4 <= chunk.len() {
                let v = _mm_loadu_ps(chunk.as_ptr().add(i));
                let mut ok = _mm_cmpge_ps(v, tv);
                if ma.is_some() {
                    ok = _mm_and_ps(ok, _mm_cmpge_ps(_mm_mul_ps(_mm_sub_ps(v, mv), av), cv));
                }
                mask |= (_mm_movemask_ps(ok) as u64) << i;
                i += 4;
            }
        }
    }
    for (j, &bm) in chunk.iter().enumerate().skip(i) {
        let pass = match ma {
            None => bm >= thr,
            Some((m, a)) => !block_is_zero(bm, m, a, thr),
        };
        mask |= u64::from(pass) << j;
    }
    mask
}

/// Calls `f(b)` for every block `b`, in increasing order, whose maximum `bmax[b]` passes `live`.
///
/// The test runs over 64 maxima at a time into a bit mask (vector compares, no branch per
/// block), then only the set bits are visited: sparse live blocks cost no misprediction each.
#[inline(always)]
pub fn for_live_blocks(bmax: &[f32], live: Live, mut f: impl FnMut(usize)) {
    for (c, chunk) in bmax.chunks(64).enumerate() {
        let mut mask = live_mask(chunk, live);
        while mask != 0 {
            f(c * 64 + mask.trailing_zeros() as usize);
            mask &= mask - 1;
        }
    }
}

/// Whether every weight of a block with maximum `bm` is exactly 0 (so the block can be skipped).
#[inline(always)]
pub(crate) fn block_is_zero(bm: f32, m: f32, a: f32, thr: f32) -> bool {
    // A NaN product (e.g. `inf * 0`) counts as zero weight, as in the SIMD kernels.
    #[allow(clippy::neg_cmp_op_on_partial_ord)]
    let zero = bm < thr || !((bm - m) * a >= T_CUTOFF);
    zero
}

/// Fills `bsum[b]` with the sum over block `b` of `e^((x - m) * scale)` for the elements
/// `x >= thr` (other elements weigh 0) and returns the total, summed in `f64` in block order.
///
/// `m` must be the row maximum and `scale > 0`. Blocks whose maximum rules out any non-zero
/// weight are skipped without reading them (their sum is exactly 0 either way).
pub fn weight_sums<T: Elem>(
    x: &[T],
    bmax: &[f32],
    m: f32,
    scale: f32,
    thr: f32,
    bsum: &mut [f32],
) -> f64 {
    simd_kernel!(
        weight_sums(x, bmax, m, scale, thr, bsum),
        weight_sums_portable(x, bmax, m, scale, thr, bsum)
    )
}

multiversion! {
    /// [`weight_sums`] in portable code.
    pub fn weight_sums_portable<T: Elem>(x: &[T], bmax: &[f32], m: f32, scale: f32, thr: f32, bsum: &mut [f32]) -> f64 {
        let a = (scale * LOG2_E).min(f32::MAX);
        let mut total = 0.0f64;
        bsum.fill(0.0);
        // Skipped blocks add exactly 0: the total has the bits of a sum over every block.
        for_live_blocks(bmax, Live::Weight { thr, m, a }, |b| {
            let blk = block(x, b);
            bsum[b] = block_weight_sum(blk, m, a, thr);
            total += f64::from(bsum[b]);
        });
        total
    }
}

/// Index (within `blk`) of the first element whose running weight exceeds `target`, or of the
/// last element with a non-zero weight when rounding leaves `target` unreached.
#[must_use]
pub fn find_in_block<T: Elem>(blk: &[T], m: f32, scale: f32, thr: f32, target: f64) -> usize {
    let mut wbuf = [0.0f32; BLOCK];
    let wts = &mut wbuf[..blk.len()];
    weights(blk, m, scale, wts);
    let mut cum = 0.0f64;
    let mut last = None;
    for (i, (e, &w)) in blk.iter().zip(wts.iter()).enumerate() {
        if w > 0.0 && e.to_f32() >= thr {
            cum += f64::from(w);
            last = Some(i);
            if cum > target {
                return i;
            }
        }
    }
    last.unwrap_or(0)
}

multiversion! {
    /// `out[i] = e^((x[i] - m) * scale)` (`x[i] <= m`): weights of a short list.
    pub fn weights<T: Elem>(x: &[T], m: f32, scale: f32, out: &mut [f32]) -> () {
        let a = (scale * LOG2_E).min(f32::MAX);
        for (o, e) in out.iter_mut().zip(x) {
            *o = exp2_neg((e.to_f32() - m) * a);
        }
    }
}

/// The softmax numerator pass: writes `out[i] = e^((x[i] - m) * scale)` and returns their
/// sum, with the block and lane structure of [`weight_sums`] (so the total is the same bits).
pub fn write_weights<T: Elem>(x: &[T], bmax: &[f32], m: f32, scale: f32, out: &mut [f32]) -> f64 {
    simd_kernel!(
        write_weights(x, bmax, m, scale, out),
        write_weights_portable(x, bmax, m, scale, out)
    )
}

multiversion! {
    /// [`write_weights`] in portable code.
    pub fn write_weights_portable<T: Elem>(x: &[T], bmax: &[f32], m: f32, scale: f32, out: &mut [f32]) -> f64 {
        let a = (scale * LOG2_E).min(f32::MAX);
        let mut total = 0.0f64;
        for ((blk, &bm), o) in x.chunks(BLOCK).zip(bmax).zip(out.chunks_mut(BLOCK)) {
            total += f64::from(write_block_weights(blk, bm, m, a, o));
        }
        total
    }
}

multiversion! {
    /// The sum of `w` in `f64`, over eight interleaved partial sums (a long list is not one chain
    /// of dependent additions).
    pub fn sum_f64(w: &[f32]) -> f64 {
        let (chunks, tail) = w.as_chunks::<8>();
        let acc = chunks.iter().fold([0.0f64; 8], |mut a, c| {
            for j in 0..8 {
                a[j] += f64::from(c[j]);
            }
            a
        });
        let tail: f64 = tail.iter().map(|&x| f64::from(x)).sum();
        let pairs = [acc[0] + acc[4], acc[1] + acc[5], acc[2] + acc[6], acc[3] + acc[7]];
        ((pairs[0] + pairs[2]) + (pairs[1] + pairs[3])) + tail
    }
}

/// `out[i] *= k`.
pub fn scale_in_place(out: &mut [f32], k: f32) {
    match crate::simd::level() {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: level() returns Avx512 only after detecting every feature the kernel enables.
        Level::Avx512 => unsafe { crate::simd::x86::avx512::scale_in_place(out, k) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: level() returns Avx2 only after detecting every feature the kernel enables.
        Level::Avx2 => unsafe { crate::simd::x86::avx2::scale_in_place(out, k) },
        _ => out.iter_mut().for_each(|o| *o *= k),
    }
}

multiversion! {
    /// `out[i] = min(top, floor((hi - x[i]) * inv))` for `x[i] <= hi`: value buckets, largest
    /// values in bucket 0.
    pub fn bucket_indices<T: Elem>(x: &[T], hi: f32, inv: f32, top: u16, out: &mut [u16]) -> () {
        let top_f = f32::from(top);
        for (o, e) in out.iter_mut().zip(x) {
            let b = (hi - e.to_f32()) * inv;
            // `b >= 0` (for `x <= hi` and `inv >= 0`), `+inf` or NaN; the select sends NaN and
            // anything above `top` to `top`.
            debug_assert!(e.to_f32() <= hi && inv >= 0.0);
            let b = if b < top_f { b } else { top_f };
            // SAFETY: with `x <= hi` and `inv >= 0` (the callers' contract), `b` lies in
            // `[0, top]` (`-0.0` at worst), well inside the i32 range.
            *o = unsafe { b.to_int_unchecked::<i32>() } as u16;
        }
    }
}

multiversion! {
    /// The smallest and the largest of `v`, which holds no NaN (`(inf, -inf)` when empty).
    pub fn min_max(v: &[f32]) -> (f32, f32) {
        // Sixteen lanes of compares and selects, folded by value: vector min and max (two loops
        // over the same slice run several times faster than one that updates both arrays).
        let (chunks, tail) = v.as_chunks::<16>();
        let lo = chunks.iter().fold([f32::INFINITY; 16], |mut a, c| {
            for j in 0..16 {
                a[j] = if a[j] < c[j] { a[j] } else { c[j] };
            }
            a
        });
        let hi = chunks.iter().fold([f32::NEG_INFINITY; 16], |mut a, c| {
            for j in 0..16 {
                a[j] = if a[j] > c[j] { a[j] } else { c[j] };
            }
            a
        });
        let l = lo.iter().chain(tail).fold(f32::INFINITY, |a, &x| a.min(x));
        let h = hi.iter().chain(tail).fold(f32::NEG_INFINITY, |a, &x| a.max(x));
        (l, h)
    }
}

/// A log-probability `lp` of a token with logit `v`: `-inf` for a masked token (`v = -inf`),
/// else `lp` saturated at `-f32::MAX`, so that finite logits always get finite
/// log-probabilities (the exact value may lie below the `f32` range).
#[inline(always)]
#[must_use]
pub fn finite_logprob(v: f32, lp: f32) -> f32 {
    if v == f32::NEG_INFINITY {
        v
    } else if lp < -f32::MAX {
        -f32::MAX
    } else {
        lp
    }
}

/// `out[i] = (x[i] - m) * scale - lse`: the log-softmax write pass, with [`finite_logprob`].
///
/// In `f32` (separate multiply and subtract, so every level rounds alike) unless the row maximum
/// is so large (`>= 2^100`) that `x - m` could overflow `f32` for a finite `x`; then in `f64`.
pub fn write_log_softmax<T: Elem>(x: &[T], m: f32, scale: f32, lse: f64, out: &mut [f32]) {
    if m < WIDE_LOG_SOFTMAX {
        write_log_softmax_f32(x, m, scale, lse as f32, out);
    } else {
        for (o, e) in out.iter_mut().zip(x) {
            *o = log_softmax_at(e.to_f32(), m, scale, lse);
        }
    }
}

/// [`write_log_softmax`] of `x` into `x` itself: each element is replaced by its value.
pub fn write_log_softmax_in_place(x: &mut [f32], m: f32, scale: f32, lse: f64) {
    if m < WIDE_LOG_SOFTMAX {
        write_log_softmax_in_place_f32(x, m, scale, lse as f32);
    } else {
        for e in x.iter_mut() {
            *e = log_softmax_at(*e, m, scale, lse);
        }
    }
}

multiversion! {
    /// [`write_log_softmax_in_place`] in `f32` (the operations of [`write_log_softmax_f32`]).
    pub fn write_log_softmax_in_place_f32(x: &mut [f32], m: f32, scale: f32, lse: f32) -> () {
        for e in x.iter_mut() {
            *e = log_softmax_f32(*e, m, scale, lse);
        }
    }
}

/// One value of [`write_log_softmax`], with the same operations (so the same bits): the
/// log-probabilities of [`crate::kernels::logprobs`] and of `sample_batch` are those of
/// `log_softmax`.
#[inline(always)]
#[must_use]
pub fn log_softmax_at(v: f32, m: f32, scale: f32, lse: f64) -> f32 {
    if m < WIDE_LOG_SOFTMAX {
        log_softmax_f32(v, m, scale, lse as f32)
    } else {
        finite_logprob(
            v,
            ((f64::from(v) - f64::from(m)) * f64::from(scale) - lse) as f32,
        )
    }
}

/// [`log_softmax_at`] below [`WIDE_LOG_SOFTMAX`]: in `f32`, separate multiply and subtract, so
/// every level rounds alike.
#[inline(always)]
fn log_softmax_f32(v: f32, m: f32, scale: f32, lse: f32) -> f32 {
    finite_logprob(v, (v - m) * scale - lse)
}

/// Row maxima from here on take the `f64` log-softmax write.
const WIDE_LOG_SOFTMAX: f32 = 1.267_650_6e30; // 2^100

multiversion! {
    /// [`write_log_softmax`] in `f32` (the operations of [`log_softmax_at`] below 2^100).
    pub fn write_log_softmax_f32<T: Elem>(x: &[T], m: f32, scale: f32, lse: f32, out: &mut [f32]) -> () {
        for (o, e) in out.iter_mut().zip(x) {
            *o = log_softmax_f32(e.to_f32(), m, scale, lse);
        }
    }
}

multiversion! {
    /// `out[i] = x[i]` if `x[i] >= thr`, else `-inf`: writes a threshold mask.
    pub fn write_masked<T: Elem>(x: &[T], thr: f32, out: &mut [f32]) -> () {
        for (o, e) in out.iter_mut().zip(x) {
            let v = e.to_f32();
            *o = if v >= thr { v } else { f32::NEG_INFINITY };
        }
    }
}

multiversion! {
    /// `out[i] = x[i]` widened to `f32`.
    pub fn widen<T: Elem>(x: &[T], out: &mut [f32]) -> () {
        for (o, e) in out.iter_mut().zip(x) {
            *o = e.to_f32();
        }
    }
}

/// [`widen`] and [`max`] in one read of `x`: `out[i] = x[i]` widened to `f32`, and the maximum of
/// `out` or the first NaN / `+inf` (then `out` may hold only the chunks up to it). Chunk by chunk:
/// each chunk of `out` is checked while it is still in L1.
pub fn widen_checked<T: Elem>(x: &[T], out: &mut [f32]) -> Scan {
    debug_assert_eq!(x.len(), out.len());
    let mut m = f32::NEG_INFINITY;
    for (c, (xc, oc)) in x
        .chunks(WIDEN_CHUNK)
        .zip(out.chunks_mut(WIDEN_CHUNK))
        .enumerate()
    {
        widen(xc, oc);
        match max(oc) {
            Scan::Bad(i, v) => return Scan::Bad(c * WIDEN_CHUNK + i, v),
            Scan::Max(cm) => m = if cm > m { cm } else { m },
        }
    }
    Scan::Max(m)
}

/// Elements per chunk of [`widen_checked`] (16 KiB of `f32`).
const WIDEN_CHUNK: usize = 4096;

/// Number of elements `>= thr`, reading only blocks whose maximum reaches `thr`.
#[must_use]
pub fn count_ge<T: Elem>(x: &[T], bmax: &[f32], thr: f32) -> usize {
    count_ge_read(x, bmax, thr).0
}

/// [`count_ge`], and how many elements it read.
#[must_use]
pub fn count_ge_read<T: Elem>(x: &[T], bmax: &[f32], thr: f32) -> (usize, usize) {
    let (mut n, mut read) = (0, 0);
    for_live_blocks(bmax, Live::Ge(thr), |b| {
        let blk = block(x, b);
        read += blk.len();
        n += blk.iter().filter(|e| e.to_f32() >= thr).count();
    });
    (n, read)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn live_blocks_are_the_passing_maxima_in_order(
            bmax in prop::collection::vec(
                prop_oneof![-20.0f32..20.0, Just(f32::NEG_INFINITY), Just(0.0), Just(-0.0)],
                0..300,
            ),
            thr in prop_oneof![-20.0f32..20.0, Just(f32::NEG_INFINITY), Just(-f32::MAX)],
            m in 0.0f32..25.0,
            a in prop_oneof![0.0f32..50.0, Just(f32::MAX)],
        ) {
            for live in [Live::Ge(thr), Live::Weight { thr, m, a }] {
                let mut got = Vec::new();
                for_live_blocks(&bmax, live, |b| got.push(b));
                let want: Vec<usize> = (0..bmax.len())
                    .filter(|&b| match live {
                        Live::Ge(t) => bmax[b] >= t,
                        Live::Weight { thr, m, a } => !block_is_zero(bmax[b], m, a, thr),
                    })
                    .collect();
                prop_assert_eq!(got, want);
            }
        }
    }

    #[test]
    fn exp2_neg_is_within_three_ulp() {
        let mut t = 0.0f32;
        let mut worst = 0.0f64;
        while t >= T_CUTOFF {
            let got = f64::from(exp2_neg(t));
            let want = f64::from(t).exp2();
            worst = worst.max((got - want).abs() / (f64::from(f32::EPSILON) * want));
            t -= 0.000_913;
        }
        assert!(worst <= 3.0, "worst error {worst} ulp");
        assert_eq!(exp2_neg(0.0), 1.0);
        assert_eq!(exp2_neg(-1.0), 0.5);
        assert_eq!(exp2_neg(f32::NEG_INFINITY), 0.0);
        assert_eq!(exp2_neg(-125.5), 0.0);
    }

    /// Every level gives the bits of the portable code (f32, f16 and bf16 rows).
    #[test]
    fn every_level_matches_portable_bits() {
        use crate::kernels::elem::{as_bf16, as_f16};
        use crate::simd::{available, set_level, test_lock, Level};
        let _guard = test_lock();
        let mut next = crate::kernels::tests::lcg_f32(12345, -40.0, 60.0);
        for len in [1usize, 7, 15, 16, 17, 63, 64, 65, 130, 1000, 4099] {
            let mut x: Vec<f32> = (0..len).map(|_| next()).collect();
            x[len / 2] = f32::NEG_INFINITY;
            let bf: Vec<u16> = x.iter().map(|v| (v.to_bits() >> 16) as u16).collect();
            let hf: Vec<u16> = x.iter().map(|&v| f16_bits(v)).collect();
            let run = || {
                let mut out = Vec::new();
                out.extend(run_all(&x));
                out.extend(run_all(as_bf16(&bf)));
                out.extend(run_all(as_f16(&hf)));
                out
            };
            set_level(Level::Scalar);
            let want = run();
            for level in available() {
                set_level(level);
                assert_eq!(run(), want, "level {level:?}, len {len}");
            }
        }
        // A zero row maximum whose first zero block (1, group 0) and a later one of the
        // other sign (8, a lower position of the tree that reduces a group) disagree: the
        // group references of the fused scans and the row maximum keep the first one's sign.
        for (first, later) in [(-0.0f32, 0.0f32), (0.0, -0.0)] {
            let mut x = vec![-1.0f32; 2 * GROUP * BLOCK + 40];
            x[BLOCK] = first;
            x[8 * BLOCK] = later;
            set_level(Level::Scalar);
            let want = run_all(&x);
            for level in available() {
                set_level(level);
                assert_eq!(run_all(&x), want, "level {level:?}, zero maximum {first}");
            }
        }
        set_level(available()[0]);
    }

    fn run_all<T: Elem>(x: &[T]) -> Vec<u32> {
        let mut bmax = vec![0.0; n_blocks(x.len())];
        let mut bsum = vec![0.0; n_blocks(x.len())];
        let mut out = vec![0.0; x.len()];
        let Scan::Max(m) = scan(x, &mut bmax) else {
            panic!("bad row")
        };
        let mut bits: Vec<u32> = bmax.iter().map(|v| v.to_bits()).collect();
        // Candidate collection (AVX-512 compress, AVX2 permutation, portable compaction).
        let top = if m.is_finite() { m } else { 0.0 };
        for (lo, hi) in [
            (top - 3.0, f32::INFINITY),
            (-10.0, 5.0),
            (top, f32::INFINITY),
        ] {
            let (mut vals, mut ids) = (vec![7.0], vec![7]);
            crate::kernels::select::collect_range_soa(x, &bmax, lo, hi, &mut vals, &mut ids);
            bits.push(vals.len() as u32);
            bits.extend(vals.iter().map(|v| v.to_bits()).chain(ids));
        }
        for (scale, thr) in [(1.0f32, f32::NEG_INFINITY), (0.37, -3.0), (4.0, m - 1.0)] {
            let total = weight_sums(x, &bmax, m, scale, thr, &mut bsum);
            bits.push(total.to_bits() as u32);
            bits.extend(bsum.iter().map(|v| v.to_bits()));
            let t2 = write_weights(x, &bmax, m, scale, &mut out);
            if thr == f32::NEG_INFINITY {
                assert_eq!(t2.to_bits(), total.to_bits());
            }
            scale_in_place(&mut out, 0.37);
            bits.extend(out.iter().map(|v| v.to_bits()));
        }
        // The fused scans: maxima, group references, rescaled sums, total, weights.
        let mut gref = vec![0.0; bmax.len().div_ceil(GROUP)];
        for scale in [1.0f32, 0.37, 2.5] {
            let (scan, total) = scan_weights(x, &mut bmax, &mut bsum, &mut gref, scale);
            assert_eq!(scan, Scan::Max(m));
            bits.push(total.to_bits() as u32);
            bits.extend(bmax.iter().chain(&bsum).chain(&gref).map(|v| v.to_bits()));
            let scan = scan_write_weights(x, &mut bmax, &mut bsum, &mut gref, scale, &mut out);
            assert_eq!(scan, Scan::Max(m));
            normalize_weights(&bmax, &mut bsum, &gref, m, scale, &mut out, &mut Vec::new());
            bits.extend(out.iter().chain(&bsum).map(|v| v.to_bits()));
        }
        bits
    }

    /// The fused scans give the two-pass results up to the rescaling's rounding, and exactly
    /// when the maximum comes first; a bad value or an all-masked row is reported as by `scan`.
    #[test]
    fn fused_scans_match_the_two_passes() {
        let mut bits = crate::kernels::tests::lcg(99);
        let mut next = move || (bits() >> 7) as f32 / (1u64 << 24) as f32;
        for len in [1usize, 63, 1024, 1025, 3000, 5000, 20000] {
            for peak_at in [0, len / 3, len - 1] {
                let mut x: Vec<f32> = (0..len).map(|_| next() * 20.0 - 10.0).collect();
                x[peak_at] = 30.0;
                if len > 4 {
                    x[len / 2 + 1] = f32::NEG_INFINITY;
                }
                let nb = n_blocks(len);
                let (mut bmax, mut bmax2) = (vec![0.0; nb], vec![0.0; nb]);
                let (mut bsum, mut bsum2) = (vec![0.0; nb], vec![0.0; nb]);
                let mut gref = vec![0.0; nb.div_ceil(GROUP)];
                for scale in [0.2f32, 1.0, 2.7] {
                    let Scan::Max(m) = scan(&x, &mut bmax) else {
                        panic!("bad row")
                    };
                    let want = weight_sums(&x, &bmax, m, scale, ALL_FINITE, &mut bsum);
                    let (got_scan, got) =
                        scan_weights(&x, &mut bmax2, &mut bsum2, &mut gref, scale);
                    assert_eq!(got_scan, Scan::Max(m));
                    assert_eq!(bmax, bmax2);
                    if peak_at == 0 {
                        assert_eq!(got.to_bits(), want.to_bits(), "len {len} scale {scale}");
                        assert_eq!(bsum, bsum2);
                    }
                    assert!((got - want).abs() <= 1e-6 * want, "{got} vs {want}");
                    // A weight 2^t carries a relative error up to |t| 2^-23 (|t| <= 125) from
                    // its f32 exponent, in either computation.
                    let tol = 2.0 * 125.0 * f32::EPSILON / 2.0;
                    for (a, b) in bsum.iter().zip(&bsum2) {
                        assert_eq!(*a == 0.0, *b == 0.0);
                        assert!((a - b).abs() <= tol * a, "{a} vs {b}");
                    }
                    let (mut p, mut p2) = (vec![0.0; len], vec![0.0; len]);
                    let total = write_weights(&x, &bmax, m, scale, &mut p);
                    scale_in_place(&mut p, (1.0 / total) as f32);
                    let got_scan =
                        scan_write_weights(&x, &mut bmax2, &mut bsum2, &mut gref, scale, &mut p2);
                    assert_eq!(got_scan, Scan::Max(m));
                    normalize_weights(
                        &bmax2,
                        &mut bsum2,
                        &gref,
                        m,
                        scale,
                        &mut p2,
                        &mut Vec::new(),
                    );
                    if peak_at == 0 {
                        assert_eq!(p, p2);
                    }
                    // A probability below the exp cutoff (2^-125 of the maximum's) may be 0 in
                    // one and tiny in the other: an element weighed against a smaller running
                    // maximum, then scaled.
                    let tiny = f32::from_bits(0x0100_0000); // 2^-125
                    for (a, b) in p.iter().zip(&p2) {
                        assert!((a - b).abs() <= tol * a || a.max(*b) < tiny, "{a} vs {b}");
                    }
                }
            }
        }
        let mut gref = vec![0.0; 2];
        let (mut bmax, mut bsum) = (vec![0.0; 17], vec![0.0; 17]);
        let mut x = vec![f32::NEG_INFINITY; 1030];
        assert_eq!(
            scan_weights(&x, &mut bmax, &mut bsum, &mut gref, 1.0),
            (Scan::Max(f32::NEG_INFINITY), 0.0)
        );
        x[1029] = f32::NAN;
        x[1028] = 0.0;
        assert!(matches!(
            scan_weights(&x, &mut bmax, &mut bsum, &mut gref, 1.0).0,
            Scan::Bad(1029, _)
        ));
    }

    /// binary32 -> binary16 bits, round to nearest even (test data only: normal range).
    fn f16_bits(v: f32) -> u16 {
        let b = v.to_bits();
        let sign = ((b >> 16) & 0x8000) as u16;
        if v.is_infinite() {
            return sign | 0x7c00;
        }
        let exp = ((b >> 23) & 0xff) as i32 - 127 + 15;
        if exp <= 0 {
            return sign;
        }
        let mant = b & 0x7f_ffff;
        let mut h = ((exp as u32) << 10) | (mant >> 13);
        let rest = mant & 0x1fff;
        if rest > 0x1000 || (rest == 0x1000 && h & 1 == 1) {
            h += 1;
        }
        sign | h.min(0x7bff) as u16
    }

    #[test]
    fn scan_finds_max_and_bad_values() {
        let mut v: Vec<f32> = (0..200).map(|i| (i as f32 * 0.37).sin()).collect();
        let mut b = vec![0.0; n_blocks(v.len())];
        let want = v.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        assert_eq!(scan(&v, &mut b), Scan::Max(want));
        v[130] = f32::NEG_INFINITY;
        assert!(matches!(scan(&v, &mut b), Scan::Max(_)));
        v[77] = f32::NAN;
        v[150] = f32::INFINITY;
        assert!(matches!(scan(&v, &mut b), Scan::Bad(77, _)));
    }

    /// The SIMD scans' cheap check for NaN and `+inf` (lane sums) neither misses one, wherever it
    /// sits and whatever surrounds it, nor reports one in a row of huge finite values whose sums
    /// overflow; on every level, through every scan.
    #[test]
    fn bad_values_are_found_and_overflow_is_no_false_alarm() {
        use crate::kernels::elem::{as_bf16, Bf16};
        use crate::simd::{available, set_level, test_lock};
        let _guard = test_lock();
        let before = crate::simd::level();
        // Bit patterns, so that a NaN compares equal to itself.
        let key = |s: Scan| match s {
            Scan::Max(m) => (0, 0, m.to_bits()),
            Scan::Bad(i, v) => (1, i, v.to_bits()),
        };
        fn check_t<T: Elem>(
            x: &[T],
            want: (u8, usize, u32),
            key: impl Fn(Scan) -> (u8, usize, u32),
        ) {
            let nb = n_blocks(x.len());
            let (mut bmax, mut bsum) = (vec![0.0; nb], vec![0.0; nb]);
            let (mut gref, mut out) = (vec![0.0; nb.div_ceil(GROUP)], vec![0.0; x.len()]);
            assert_eq!(key(scan(x, &mut bmax)), want);
            assert_eq!(key(max(x)), want);
            let fused = scan_weights(x, &mut bmax, &mut bsum, &mut gref, 1.0).0;
            assert_eq!(key(fused), want);
            let fused = scan_write_weights(x, &mut bmax, &mut bsum, &mut gref, 1.0, &mut out);
            assert_eq!(key(fused), want);
        }
        // The same row in bfloat16 (truncated), against a plain loop over its values.
        let check_bf16 = |h: &[u16]| {
            let first_bad = h.iter().position(|&b| is_bad(Bf16(b).to_f32()));
            let want = match first_bad {
                Some(i) => Scan::Bad(i, Bf16(h[i]).to_f32()),
                None => Scan::Max(
                    h.iter()
                        .fold(f32::NEG_INFINITY, |a, &b| a.max(Bf16(b).to_f32())),
                ),
            };
            check_t(as_bf16(h), key(want), key);
        };
        let check = |x: &[f32], want: Scan| {
            check_t(x, key(want), key);
            let h: Vec<u16> = x.iter().map(|v| (v.to_bits() >> 16) as u16).collect();
            check_bf16(&h);
        };
        for level in available() {
            set_level(level);
            for len in [5usize, 64, 100, 1024, 1100, 2048 + 37] {
                let huge = vec![3.0e38f32; len];
                check(&huge, Scan::Max(3.0e38));
                let mut neg = vec![-3.0e38f32; len];
                neg[len / 3] = f32::NEG_INFINITY;
                check(&neg, Scan::Max(-3.0e38));
                check(&vec![f32::NEG_INFINITY; len], Scan::Max(f32::NEG_INFINITY));
                for at in [0, len / 2, len - 1] {
                    for bad in [f32::INFINITY, f32::NAN, -f32::NAN] {
                        for fill in [0.5f32, 3.0e38, f32::NEG_INFINITY] {
                            let mut x = vec![fill; len];
                            x[at] = bad;
                            if len > 1 {
                                x[(at + 1) % len] = f32::NEG_INFINITY;
                            }
                            let got = scan(&x, &mut vec![0.0; n_blocks(len)]);
                            assert!(
                                matches!(got, Scan::Bad(i, _) if i == at),
                                "{level:?} len {len} at {at} {bad} in {fill}: {got:?}"
                            );
                            let Scan::Bad(_, v) = got else { unreachable!() };
                            check(&x, Scan::Bad(at, v));
                        }
                    }
                    // Every kind of bfloat16 NaN and +inf, next to -inf and the largest finite
                    // values of both signs.
                    for bad in [0x7f80u16, 0x7f81, 0x7fc0, 0x7fff, 0xff81, 0xffc0, 0xffff] {
                        for fill in [0x3f00u16, 0x7f7f, 0xff7f, 0xff80, 0x8000] {
                            let mut h = vec![fill; len];
                            h[at] = bad;
                            if len > 1 {
                                h[(at + 1) % len] = 0xff80;
                            }
                            check_bf16(&h);
                        }
                    }
                }
            }
        }
        set_level(before);
    }
}
