//! Hand-written AVX-512 and AVX2 kernels for the streaming primitives of
//! [`crate::kernels::prims`]: the block scan, the block weight sums and the softmax write.
//!
//! The kernels are written once over [`V16`], sixteen `f32` lanes: one `zmm` register with
//! AVX-512, two `ymm` registers with AVX2. They perform exactly the operations of the portable
//! code in `prims.rs`, in the same order and with the same lane layout (`max(v, acc)`, fused
//! multiply-adds where it uses `mul_add`, pairwise lane reductions), so their results are
//! bit-identical to it. f16 rows are widened with `vcvtph2ps` and bf16 rows with a 16-bit
//! shift, in registers; the block scan of a bf16 row widens nothing: it compares 16-bit order
//! keys (`prims::bf16_top_key`), twice as many per register.
//!
//! Every function here is `unsafe`: it must only run on a CPU with the features of its ISA,
//! which [`super::level`] guarantees, and pointers must cover 16 readable elements.
#![allow(unsafe_op_in_unsafe_fn)]
#![allow(clippy::undocumented_unsafe_blocks)]

use std::arch::x86_64::*;

use crate::kernels::elem::{bf16_bits, bf16_key_at_least, Elem, Storage};
use crate::kernels::prims::{
    self, block_is_zero, for_live_blocks, Live, ALL_FINITE, BLOCK, EXP2_POLY, GROUP, LANES, LOG2_E,
    T_CUTOFF,
};

/// Sixteen `f32` lanes.
trait V16: Copy {
    type M: Copy;
    unsafe fn splat(v: f32) -> Self;
    unsafe fn load<T: Elem>(p: *const T) -> Self;
    unsafe fn store(self, p: *mut f32);
    unsafe fn add(self, o: Self) -> Self;
    unsafe fn sub(self, o: Self) -> Self;
    unsafe fn mul(self, o: Self) -> Self;
    /// `self * b + c`, one rounding.
    unsafe fn fma(self, b: Self, c: Self) -> Self;
    /// `self > o ? self : o` per lane.
    unsafe fn max(self, o: Self) -> Self;
    /// Lanes that are NaN or `+inf` (not below `+inf`).
    unsafe fn bad(self) -> Self::M;
    /// `(a > b) ? self : 0` per lane (`a >= b` when not `strict`).
    unsafe fn keep_if(self, a: Self, b: Self, strict: bool) -> Self;
    unsafe fn any(m: Self::M) -> bool;
    /// Rounds to the nearest integer (ties even).
    unsafe fn round(self) -> Self;
    /// `self * 2^n` for an integral `n` (results must be normal).
    unsafe fn scale_pow2(self, n: Self) -> Self;
    /// [`V16::scale_pow2`] in the lanes where `t >= cutoff` and, when given `(v, thr)`,
    /// `v >= thr`; 0 in the others, whatever `self` and `n` hold there (NaN included).
    #[inline(always)]
    unsafe fn scale_pow2_where(
        self,
        n: Self,
        t: Self,
        cutoff: Self,
        gate: Option<(Self, Self)>,
    ) -> Self {
        let mut r = self.scale_pow2(n).keep_if(t, cutoff, false);
        if let Some((v, thr)) = gate {
            r = r.keep_if(v, thr, false);
        }
        r
    }
    /// Lane of the first `self == o`, if any.
    unsafe fn first_eq(self, o: Self) -> Option<usize>;
    /// Pairwise maximum of the lanes, as `prims::reduce_max`.
    unsafe fn reduce_max(self) -> f32;
    /// Lane `j` = `acc[j].reduce_max()`, for sixteen vectors at once (same bits).
    unsafe fn max16(acc: &[Self; 16]) -> Self;
    /// Pairwise sum of the lanes, as `prims::reduce_sum`.
    unsafe fn reduce_sum(self) -> f32;
    /// `prims::scan` of a bfloat16 row: the block maxima of `prims::bf16_top_key`, compared
    /// as 16-bit order keys.
    unsafe fn scan_bf16(x: &[u16], bmax: &mut [f32]) -> (f32, bool);
    /// `prims::max` of a bfloat16 row, by order keys.
    unsafe fn max_bf16(x: &[u16]) -> (f32, bool);
    /// `self`, held in registers at this point of the program: a scheduling fence that keeps
    /// the compiler from hoisting the loads of later blocks above it (which spills them).
    unsafe fn settle(self) -> Self;
}

/// bfloat16 bits to order keys and back (`prims::bf16_key`, an involution), 32 lanes.
#[inline(always)]
unsafe fn key512(h: __m512i) -> __m512i {
    let c7fff = _mm512_set1_epi16(0x7fff);
    // h ^ ((h >> 15) & 0x7fff)
    _mm512_ternarylogic_epi32::<0x78>(h, _mm512_srai_epi16::<15>(h), c7fff)
}

/// [`key512`] on 16 lanes.
#[inline(always)]
unsafe fn key256(h: __m256i) -> __m256i {
    let c7fff = _mm256_set1_epi16(0x7fff);
    _mm256_xor_si256(h, _mm256_and_si256(_mm256_srai_epi16::<15>(h), c7fff))
}

/// The largest key and the unsigned maximum of the bits over the lanes of `top` and `raw`.
#[inline(always)]
unsafe fn fold_keys<V: Copy, const N: usize>(top: V, raw: V) -> (i16, u16) {
    const { assert!(std::mem::size_of::<V>() == 2 * N) };
    let t: [i16; N] = std::mem::transmute_copy(&top);
    let r: [u16; N] = std::mem::transmute_copy(&raw);
    (
        t.iter().copied().fold(i16::MIN, i16::max),
        r.iter().copied().fold(0, u16::max),
    )
}

/// One level of a pairwise reduction tree over vectors: `out[i] = f(src[2i], src[2i + 1])`
/// for `i < N` (a loop, not a closure passed on, so it compiles with the caller's features).
macro_rules! pair_up {
    ($src:expr, $n:literal, $zero:expr, |$x:ident, $y:ident| $e:expr) => {{
        let mut out = [$zero; $n];
        for (i, o) in out.iter_mut().enumerate() {
            let ($x, $y) = ($src[2 * i], $src[2 * i + 1]);
            *o = $e;
        }
        out
    }};
}

#[derive(Clone, Copy)]
struct Z(__m512);

impl V16 for Z {
    type M = __mmask16;
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn settle(self) -> Self {
        let mut v = self.0;
        std::arch::asm!("/* {0} */", inout(zmm_reg) v, options(nomem, nostack, preserves_flags));
        Z(v)
    }
    #[inline(always)]
    unsafe fn first_eq(self, o: Self) -> Option<usize> {
        let m = _mm512_cmp_ps_mask::<_CMP_EQ_OQ>(self.0, o.0);
        (m != 0).then(|| m.trailing_zeros() as usize)
    }
    #[inline(always)]
    unsafe fn splat(v: f32) -> Self {
        Z(_mm512_set1_ps(v))
    }
    #[inline(always)]
    unsafe fn load<T: Elem>(p: *const T) -> Self {
        Z(match T::STORAGE {
            Storage::F32 => _mm512_loadu_ps(p.cast()),
            Storage::F16 => _mm512_cvtph_ps(_mm256_loadu_si256(p.cast())),
            Storage::Bf16 => _mm512_castsi512_ps(_mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(
                _mm256_loadu_si256(p.cast()),
            ))),
            Storage::Other => unreachable!("no SIMD load for this element type"),
        })
    }
    #[inline(always)]
    unsafe fn store(self, p: *mut f32) {
        _mm512_storeu_ps(p, self.0);
    }
    #[inline(always)]
    unsafe fn add(self, o: Self) -> Self {
        Z(_mm512_add_ps(self.0, o.0))
    }
    #[inline(always)]
    unsafe fn sub(self, o: Self) -> Self {
        Z(_mm512_sub_ps(self.0, o.0))
    }
    #[inline(always)]
    unsafe fn mul(self, o: Self) -> Self {
        Z(_mm512_mul_ps(self.0, o.0))
    }
    #[inline(always)]
    unsafe fn fma(self, b: Self, c: Self) -> Self {
        Z(_mm512_fmadd_ps(self.0, b.0, c.0))
    }
    #[inline(always)]
    unsafe fn max(self, o: Self) -> Self {
        Z(_mm512_max_ps(self.0, o.0))
    }
    #[inline(always)]
    unsafe fn bad(self) -> __mmask16 {
        _mm512_cmp_ps_mask::<_CMP_NLT_UQ>(self.0, _mm512_set1_ps(f32::INFINITY))
    }
    #[inline(always)]
    unsafe fn keep_if(self, a: Self, b: Self, strict: bool) -> Self {
        let m = if strict {
            _mm512_cmp_ps_mask::<_CMP_GT_OQ>(a.0, b.0)
        } else {
            _mm512_cmp_ps_mask::<_CMP_GE_OQ>(a.0, b.0)
        };
        Z(_mm512_maskz_mov_ps(m, self.0))
    }
    #[inline(always)]
    unsafe fn any(m: __mmask16) -> bool {
        m != 0
    }
    #[inline(always)]
    unsafe fn round(self) -> Self {
        Z(_mm512_roundscale_ps::<
            { _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC },
        >(self.0))
    }
    #[inline(always)]
    unsafe fn scale_pow2(self, n: Self) -> Self {
        Z(_mm512_scalef_ps(self.0, n.0))
    }
    #[inline(always)]
    unsafe fn scale_pow2_where(
        self,
        n: Self,
        t: Self,
        cutoff: Self,
        gate: Option<(Self, Self)>,
    ) -> Self {
        // One zero-masked `vscalefps`: the unkept lanes raise nothing and become +0.
        let mut m = _mm512_cmp_ps_mask::<_CMP_GE_OQ>(t.0, cutoff.0);
        if let Some((v, thr)) = gate {
            m &= _mm512_cmp_ps_mask::<_CMP_GE_OQ>(v.0, thr.0);
        }
        Z(_mm512_maskz_scalef_ps(m, self.0, n.0))
    }
    #[inline(always)]
    unsafe fn reduce_max(self) -> f32 {
        let lo = _mm512_castps512_ps256(self.0);
        let hi = _mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(_mm512_castps_pd(self.0)));
        reduce8_max(_mm256_max_ps(hi, lo))
    }
    #[inline(always)]
    unsafe fn max16(a: &[Self; 16]) -> Self {
        // The tree of `reduce_max` (lanes j and j + 8, then j + 4, j + 2, j + 1; the lower lane
        // wins ties) run on sixteen vectors together: each level pairs the halves of two
        // vectors with shuffles, so 15 maxima do the work of 16 x 4.
        let lo_wins = |hi: __m512, lo: __m512| _mm512_max_ps(hi, lo);
        let z = _mm512_setzero_ps();
        let l1 = pair_up!(a, 8, z, |x, y| lo_wins(
            _mm512_shuffle_f32x4::<0b11_10_11_10>(x.0, y.0),
            _mm512_shuffle_f32x4::<0b01_00_01_00>(x.0, y.0),
        ));
        let l2 = pair_up!(l1, 4, z, |x, y| lo_wins(
            _mm512_shuffle_f32x4::<0b11_01_11_01>(x, y),
            _mm512_shuffle_f32x4::<0b10_00_10_00>(x, y),
        ));
        let l3 = pair_up!(l2, 2, z, |x, y| lo_wins(
            _mm512_shuffle_ps::<0b11_10_11_10>(x, y),
            _mm512_shuffle_ps::<0b01_00_01_00>(x, y),
        ));
        let r = lo_wins(
            _mm512_shuffle_ps::<0b11_01_11_01>(l3[0], l3[1]),
            _mm512_shuffle_ps::<0b10_00_10_00>(l3[0], l3[1]),
        );
        // Lane i of `r` holds vector ORDER[i]; put vector j in lane j.
        let order = _mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15);
        Z(_mm512_permutexvar_ps(order, r))
    }
    #[inline(always)]
    unsafe fn reduce_sum(self) -> f32 {
        let lo = _mm512_castps512_ps256(self.0);
        let hi = _mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(_mm512_castps_pd(self.0)));
        reduce8_sum(_mm256_add_ps(lo, hi))
    }
    #[inline(always)]
    unsafe fn scan_bf16(x: &[u16], bmax: &mut [f32]) -> (f32, bool) {
        // A block is two registers of 32 keys; the sixteen blocks of a group are reduced
        // together by a tree of shuffles (halves, quarters, then 64- and 32-bit lanes, then the
        // two keys of a 32-bit lane), so that lane j ends with block j's largest key.
        let mut raw = _mm512_setzero_si512(); // unsigned maximum of the bits: negative NaNs
        let mut top = _mm512_set1_epi16(i16::MIN); // largest key: +inf and positive NaNs
        let order = _mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15);
        let groups = x.len() / (GROUP * BLOCK);
        for g in 0..groups {
            let base = x.as_ptr().add(g * GROUP * BLOCK);
            let mut k = [_mm512_setzero_si512(); GROUP];
            for (b, kb) in k.iter_mut().enumerate() {
                let p = base.add(b * BLOCK);
                let h0 = _mm512_loadu_si512(p.cast());
                let h1 = _mm512_loadu_si512(p.add(32).cast());
                *kb = _mm512_max_epi16(key512(h0), key512(h1));
                raw = _mm512_max_epu16(raw, _mm512_max_epu16(h0, h1));
            }
            let z = _mm512_setzero_si512();
            let l1 = pair_up!(k, 8, z, |a, b| _mm512_max_epi16(
                _mm512_shuffle_i32x4::<0b01_00_01_00>(a, b),
                _mm512_shuffle_i32x4::<0b11_10_11_10>(a, b),
            ));
            let l2 = pair_up!(l1, 4, z, |a, b| _mm512_max_epi16(
                _mm512_shuffle_i32x4::<0b10_00_10_00>(a, b),
                _mm512_shuffle_i32x4::<0b11_01_11_01>(a, b),
            ));
            let l3 = pair_up!(l2, 2, z, |a, b| _mm512_max_epi16(
                _mm512_unpacklo_epi64(a, b),
                _mm512_unpackhi_epi64(a, b),
            ));
            let (a, b) = (_mm512_castsi512_ps(l3[0]), _mm512_castsi512_ps(l3[1]));
            let l4 = _mm512_max_epi16(
                _mm512_castps_si512(_mm512_shuffle_ps::<0b10_00_10_00>(a, b)),
                _mm512_castps_si512(_mm512_shuffle_ps::<0b11_01_11_01>(a, b)),
            );
            // The low key of 32-bit lane i = 4c + d is block c + 4d's (the high one is
            // shifted out below, and left out of `top`).
            let l5 = _mm512_max_epi16(l4, _mm512_srli_epi32::<16>(l4));
            top = _mm512_mask_max_epi16(top, 0x5555_5555, top, l5);
            let f = _mm512_slli_epi32::<16>(key512(l5));
            let m = _mm512_permutexvar_epi32(order, f);
            _mm512_storeu_si512(bmax.as_mut_ptr().add(g * GROUP).cast(), m);
        }
        prims::scan_bf16_blocks(x, groups * GROUP, bmax, fold_keys::<_, 32>(top, raw))
    }
    #[inline(always)]
    unsafe fn max_bf16(x: &[u16]) -> (f32, bool) {
        let (mut t0, mut t1) = (_mm512_set1_epi16(i16::MIN), _mm512_set1_epi16(i16::MIN));
        let (mut r0, mut r1) = (_mm512_setzero_si512(), _mm512_setzero_si512());
        let pairs = x.len() / 64;
        for i in 0..pairs {
            let p = x.as_ptr().add(64 * i);
            let (h0, h1) = (
                _mm512_loadu_si512(p.cast()),
                _mm512_loadu_si512(p.add(32).cast()),
            );
            t0 = _mm512_max_epi16(t0, key512(h0));
            t1 = _mm512_max_epi16(t1, key512(h1));
            r0 = _mm512_max_epu16(r0, h0);
            r1 = _mm512_max_epu16(r1, h1);
        }
        let (top, raw) = (_mm512_max_epi16(t0, t1), _mm512_max_epu16(r0, r1));
        let (t, r) = fold_keys::<_, 32>(top, raw);
        let (tr, rr) = prims::bf16_top_key(&x[pairs * 64..]);
        prims::bf16_row(x.len(), t.max(tr), r.max(rr))
    }
}

/// Lanes `j` and `j + 4`, then `j + 2`, then `j + 1` (the pairwise order of `prims`).
#[inline(always)]
unsafe fn reduce8_max(v: __m256) -> f32 {
    let v4 = _mm_max_ps(_mm256_extractf128_ps::<1>(v), _mm256_castps256_ps128(v));
    let v2 = _mm_max_ps(_mm_movehl_ps(v4, v4), v4);
    let v1 = _mm_max_ss(_mm_shuffle_ps::<0b01>(v2, v2), v2);
    _mm_cvtss_f32(v1)
}

#[inline(always)]
unsafe fn reduce8_sum(v: __m256) -> f32 {
    let v4 = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
    let v2 = _mm_add_ps(v4, _mm_movehl_ps(v4, v4));
    let v1 = _mm_add_ss(v2, _mm_shuffle_ps::<0b01>(v2, v2));
    _mm_cvtss_f32(v1)
}

/// Lanes 0-7 and 8-15.
#[derive(Clone, Copy)]
struct Y(__m256, __m256);

#[inline(always)]
unsafe fn load8<T: Elem>(p: *const T) -> __m256 {
    match T::STORAGE {
        Storage::F32 => _mm256_loadu_ps(p.cast()),
        Storage::F16 => _mm256_cvtph_ps(_mm_loadu_si128(p.cast())),
        Storage::Bf16 => _mm256_castsi256_ps(_mm256_slli_epi32::<16>(_mm256_cvtepu16_epi32(
            _mm_loadu_si128(p.cast()),
        ))),
        Storage::Other => unreachable!("no SIMD load for this element type"),
    }
}

#[inline(always)]
unsafe fn scale8(y: __m256, n: __m256) -> __m256 {
    let ni = _mm256_cvtps_epi32(n);
    _mm256_castsi256_ps(_mm256_add_epi32(
        _mm256_castps_si256(y),
        _mm256_slli_epi32::<23>(ni),
    ))
}

#[inline(always)]
unsafe fn round8(v: __m256) -> __m256 {
    _mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(v)
}

impl V16 for Y {
    #[inline]
    #[target_feature(enable = "avx")]
    unsafe fn settle(self) -> Self {
        let (mut a, mut b) = (self.0, self.1);
        std::arch::asm!(
            "/* {0} {1} */",
            inout(ymm_reg) a,
            inout(ymm_reg) b,
            options(nomem, nostack, preserves_flags)
        );
        Y(a, b)
    }
    type M = __m256;
    #[inline(always)]
    unsafe fn first_eq(self, o: Self) -> Option<usize> {
        let lo = _mm256_movemask_ps(_mm256_cmp_ps::<_CMP_EQ_OQ>(self.0, o.0)) as u32;
        let hi = _mm256_movemask_ps(_mm256_cmp_ps::<_CMP_EQ_OQ>(self.1, o.1)) as u32;
        let m = lo | (hi << 8);
        (m != 0).then(|| m.trailing_zeros() as usize)
    }
    #[inline(always)]
    unsafe fn splat(v: f32) -> Self {
        Y(_mm256_set1_ps(v), _mm256_set1_ps(v))
    }
    #[inline(always)]
    unsafe fn load<T: Elem>(p: *const T) -> Self {
        Y(load8(p), load8(p.add(8)))
    }
    #[inline(always)]
    unsafe fn store(self, p: *mut f32) {
        _mm256_storeu_ps(p, self.0);
        _mm256_storeu_ps(p.add(8), self.1);
    }
    #[inline(always)]
    unsafe fn add(self, o: Self) -> Self {
        Y(_mm256_add_ps(self.0, o.0), _mm256_add_ps(self.1, o.1))
    }
    #[inline(always)]
    unsafe fn sub(self, o: Self) -> Self {
        Y(_mm256_sub_ps(self.0, o.0), _mm256_sub_ps(self.1, o.1))
    }
    #[inline(always)]
    unsafe fn mul(self, o: Self) -> Self {
        Y(_mm256_mul_ps(self.0, o.0), _mm256_mul_ps(self.1, o.1))
    }
    #[inline(always)]
    unsafe fn fma(self, b: Self, c: Self) -> Self {
        Y(
            _mm256_fmadd_ps(self.0, b.0, c.0),
            _mm256_fmadd_ps(self.1, b.1, c.1),
        )
    }
    #[inline(always)]
    unsafe fn max(self, o: Self) -> Self {
        Y(_mm256_max_ps(self.0, o.0), _mm256_max_ps(self.1, o.1))
    }
    #[inline(always)]
    unsafe fn bad(self) -> __m256 {
        let inf = _mm256_set1_ps(f32::INFINITY);
        _mm256_or_ps(
            _mm256_cmp_ps::<_CMP_NLT_UQ>(self.0, inf),
            _mm256_cmp_ps::<_CMP_NLT_UQ>(self.1, inf),
        )
    }
    #[inline(always)]
    unsafe fn keep_if(self, a: Self, b: Self, strict: bool) -> Self {
        let (m0, m1) = if strict {
            (
                _mm256_cmp_ps::<_CMP_GT_OQ>(a.0, b.0),
                _mm256_cmp_ps::<_CMP_GT_OQ>(a.1, b.1),
            )
        } else {
            (
                _mm256_cmp_ps::<_CMP_GE_OQ>(a.0, b.0),
                _mm256_cmp_ps::<_CMP_GE_OQ>(a.1, b.1),
            )
        };
        Y(_mm256_and_ps(self.0, m0), _mm256_and_ps(self.1, m1))
    }
    #[inline(always)]
    unsafe fn any(m: __m256) -> bool {
        _mm256_movemask_ps(m) != 0
    }
    #[inline(always)]
    unsafe fn round(self) -> Self {
        Y(round8(self.0), round8(self.1))
    }
    #[inline(always)]
    unsafe fn scale_pow2(self, n: Self) -> Self {
        Y(scale8(self.0, n.0), scale8(self.1, n.1))
    }
    #[inline(always)]
    unsafe fn reduce_max(self) -> f32 {
        reduce8_max(_mm256_max_ps(self.1, self.0))
    }
    #[inline(always)]
    unsafe fn max16(a: &[Self; 16]) -> Self {
        // `reduce_max`'s tree (lanes j and j + 8, then j + 4, j + 2, j + 1; the lower lane wins
        // ties) on sixteen vectors at once, pairing the halves of two vectors with shuffles.
        // (Loops, not closures: a closure would not inherit the target features.)
        let mut m = [_mm256_setzero_ps(); 16];
        for (o, v) in m.iter_mut().zip(a) {
            *o = _mm256_max_ps(v.1, v.0);
        }
        let z = _mm256_setzero_ps();
        let l1 = pair_up!(m, 8, z, |x, y| _mm256_max_ps(
            _mm256_permute2f128_ps::<0x31>(x, y),
            _mm256_permute2f128_ps::<0x20>(x, y),
        ));
        let l2 = pair_up!(l1, 4, z, |x, y| _mm256_max_ps(
            _mm256_shuffle_ps::<0b11_10_11_10>(x, y),
            _mm256_shuffle_ps::<0b01_00_01_00>(x, y),
        ));
        let l3 = pair_up!(l2, 2, z, |x, y| _mm256_max_ps(
            _mm256_shuffle_ps::<0b11_01_11_01>(x, y),
            _mm256_shuffle_ps::<0b10_00_10_00>(x, y),
        ));
        // Lane i of `l3[h]` holds vector 8h + ORDER[i]; put vector j in lane j.
        let order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
        Y(
            _mm256_permutevar8x32_ps(l3[0], order),
            _mm256_permutevar8x32_ps(l3[1], order),
        )
    }
    #[inline(always)]
    unsafe fn reduce_sum(self) -> f32 {
        reduce8_sum(_mm256_add_ps(self.0, self.1))
    }
    #[inline(always)]
    unsafe fn scan_bf16(x: &[u16], bmax: &mut [f32]) -> (f32, bool) {
        // As `Z::scan_bf16` with four registers of 16 keys per block: the tree pairs halves,
        // then 64-bit lanes, then 32-bit lanes, then the two keys of a 32-bit lane.
        let mut raw = _mm256_setzero_si256();
        let low = _mm256_set1_epi16(i16::MIN);
        let mut top = low;
        let order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
        let groups = x.len() / (GROUP * BLOCK);
        for g in 0..groups {
            let base = x.as_ptr().add(g * GROUP * BLOCK);
            let mut k = [_mm256_setzero_si256(); GROUP];
            for (b, kb) in k.iter_mut().enumerate() {
                let p = base.add(b * BLOCK);
                let h = [
                    _mm256_loadu_si256(p.cast()),
                    _mm256_loadu_si256(p.add(16).cast()),
                    _mm256_loadu_si256(p.add(32).cast()),
                    _mm256_loadu_si256(p.add(48).cast()),
                ];
                *kb = _mm256_max_epi16(
                    _mm256_max_epi16(key256(h[0]), key256(h[1])),
                    _mm256_max_epi16(key256(h[2]), key256(h[3])),
                );
                let r =
                    _mm256_max_epu16(_mm256_max_epu16(h[0], h[1]), _mm256_max_epu16(h[2], h[3]));
                raw = _mm256_max_epu16(raw, r);
            }
            let z = _mm256_setzero_si256();
            let l1 = pair_up!(k, 8, z, |a, b| _mm256_max_epi16(
                _mm256_permute2x128_si256::<0x20>(a, b),
                _mm256_permute2x128_si256::<0x31>(a, b),
            ));
            let l2 = pair_up!(l1, 4, z, |a, b| _mm256_max_epi16(
                _mm256_unpacklo_epi64(a, b),
                _mm256_unpackhi_epi64(a, b),
            ));
            let l3 = pair_up!(l2, 2, z, |a, b| {
                let (a, b) = (_mm256_castsi256_ps(a), _mm256_castsi256_ps(b));
                _mm256_max_epi16(
                    _mm256_castps_si256(_mm256_shuffle_ps::<0b10_00_10_00>(a, b)),
                    _mm256_castps_si256(_mm256_shuffle_ps::<0b11_01_11_01>(a, b)),
                )
            });
            // The low key of 32-bit lane i = 4c + d of l3[h] is block 8h + c + 2d's (the high
            // one is shifted out below, and left out of `top`).
            for (h, &v) in l3.iter().enumerate() {
                let l4 = _mm256_max_epi16(v, _mm256_srli_epi32::<16>(v));
                top = _mm256_max_epi16(top, _mm256_blend_epi16::<0b0101_0101>(low, l4));
                let f = _mm256_slli_epi32::<16>(key256(l4));
                let m = _mm256_permutevar8x32_epi32(f, order);
                _mm256_storeu_si256(bmax.as_mut_ptr().add(g * GROUP + 8 * h).cast(), m);
            }
        }
        prims::scan_bf16_blocks(x, groups * GROUP, bmax, fold_keys::<_, 16>(top, raw))
    }
    #[inline(always)]
    unsafe fn max_bf16(x: &[u16]) -> (f32, bool) {
        let (mut t0, mut t1) = (_mm256_set1_epi16(i16::MIN), _mm256_set1_epi16(i16::MIN));
        let (mut r0, mut r1) = (_mm256_setzero_si256(), _mm256_setzero_si256());
        let pairs = x.len() / 32;
        for i in 0..pairs {
            let p = x.as_ptr().add(32 * i);
            let (h0, h1) = (
                _mm256_loadu_si256(p.cast()),
                _mm256_loadu_si256(p.add(16).cast()),
            );
            t0 = _mm256_max_epi16(t0, key256(h0));
            t1 = _mm256_max_epi16(t1, key256(h1));
            r0 = _mm256_max_epu16(r0, h0);
            r1 = _mm256_max_epu16(r1, h1);
        }
        let (top, raw) = (_mm256_max_epi16(t0, t1), _mm256_max_epu16(r0, r1));
        let (t, r) = fold_keys::<_, 16>(top, raw);
        let (tr, rr) = prims::bf16_top_key(&x[pairs * 32..]);
        prims::bf16_row(x.len(), t.max(tr), r.max(rr))
    }
}

/// `2^t` for `t <= 0` (0 below the cutoff): `prims::exp2_neg`, lane for lane. With `gate =
/// Some((v, thr))`, also 0 where `v < thr`.
#[inline(always)]
unsafe fn exp2_neg<V: V16>(t: V, gate: Option<(V, V)>) -> V {
    let cutoff = V::splat(T_CUTOFF);
    // No clamp to the cutoff: lanes below it end as 0 whatever they compute (even NaN), as
    // `scale_pow2_where` clears them; the others compute what `prims::exp2_neg` does.
    let n = t.round();
    let f = t.sub(n);
    let mut y = V::splat(EXP2_POLY[0]);
    for c in &EXP2_POLY[1..] {
        y = y.fma(f, V::splat(*c));
    }
    y = y.fma(f, V::splat(1.0));
    y.scale_pow2_where(n, t, cutoff, gate)
}

/// The last `len < 16` elements of a block, widened, padded with `-inf`.
#[inline(always)]
fn tail<T: Elem>(part: &[T]) -> [f32; LANES] {
    let mut buf = [f32::NEG_INFINITY; LANES];
    for (b, e) in buf.iter_mut().zip(part) {
        *b = e.to_f32();
    }
    buf
}

/// The block scan, group by group: fills `bmax`, keeps the running maximum `r` (the bits of
/// `prims::scan_portable`'s block-by-block fold, so a zero maximum has the sign of the first zero
/// block maximum) and calls `after(g, b0, maxima, r)` once group `g` ([`GROUP`] blocks from
/// block `b0`, fewer at the end) is scanned, with `maxima` its block maxima.
/// Returns the row maximum and whether a NaN or `+inf` was seen.
#[inline(always)]
unsafe fn scan_groups_k<V: V16, T: Elem>(
    x: &[T],
    bmax: &mut [f32],
    mut after: impl FnMut(usize, usize, &[f32], f32),
) -> (f32, bool) {
    const _: () = assert!(GROUP == 16, "max16 reduces sixteen blocks");
    const _: () = assert!(BLOCK == 4 * LANES, "a block is four vectors");
    // The check for NaN and +inf: see `sum_is_bad`.
    let mut chk = V::splat(0.0);
    // The running maximum of each block position (lane j: blocks j, j + 16, ...), folded lane
    // by lane (no chain of sixteen scalar compares per group), and the running maximum `r`.
    let mut run = V::splat(f32::NEG_INFINITY);
    let mut r = f32::NEG_INFINITY;
    // The first zero block maximum, once the running maximum is zero (the lanes keep either
    // zero; the portable fold keeps the first).
    let mut zero = None;
    // Sixteen full blocks at a time, their maxima reduced together.
    let groups = x.len() / (GROUP * BLOCK);
    for g in 0..groups {
        let base = x.as_ptr().add(g * GROUP * BLOCK);
        // Every entry is written below (in a row without NaN, the first of equal values kept in
        // each lane, as `prims::block_max` from its `-inf` start), block by block: `settle`
        // keeps each block's loads next to their use.
        let mut acc = [V::splat(f32::NEG_INFINITY); GROUP];
        for (b, a) in acc.iter_mut().enumerate() {
            let p = base.add(b * BLOCK);
            let v = [
                V::load(p),
                V::load(p.add(LANES)),
                V::load(p.add(2 * LANES)),
                V::load(p.add(3 * LANES)),
            ];
            chk = chk.add(v[0].add(v[1]).add(v[2].add(v[3]))).settle();
            *a = v[3].max(v[2].max(v[1].max(v[0]))).settle();
        }
        let out = &mut bmax[g * GROUP..(g + 1) * GROUP];
        let maxima = V::max16(&acc);
        maxima.store(out.as_mut_ptr());
        run = maxima.max(run);
        r = run.reduce_max();
        if r == 0.0 {
            // Earlier groups all topped out below zero: the first zero block is in this one.
            r = *zero.get_or_insert_with(|| out.iter().copied().find(|&m| m == 0.0).unwrap_or(r));
        }
        after(g, g * GROUP, out, r);
    }
    let mut row_max = r;
    let done = groups * GROUP;
    for (blk, bm) in x[done * BLOCK..].chunks(BLOCK).zip(bmax[done..].iter_mut()) {
        let mut acc = V::splat(f32::NEG_INFINITY);
        let full = blk.len() / LANES;
        for c in 0..full {
            let v = V::load(blk.as_ptr().add(c * LANES));
            acc = v.max(acc);
            chk = chk.add(v);
        }
        if full * LANES < blk.len() {
            let buf = tail(&blk[full * LANES..]);
            let v = V::load(buf.as_ptr());
            acc = v.max(acc);
            chk = chk.add(v);
        }
        let m = acc.reduce_max();
        *bm = m;
        row_max = if m > row_max { m } else { row_max };
    }
    if done < bmax.len() {
        after(groups, done, &bmax[done..], row_max);
    }
    (row_max, sum_is_bad(chk))
}

/// Whether lane sums of a row may hide a NaN or `+inf`: they are NaN or `+inf` whenever the row
/// holds one (NaN absorbs everything, `+inf` gives `+inf`, or NaN next to `-inf`). One add per
/// vector instead of a compare and an or; finite values whose sum overflows give a false alarm,
/// which the callers settle by looking for the element (`prims::first_bad`).
#[inline(always)]
unsafe fn sum_is_bad<V: V16>(chk: V) -> bool {
    V::any(chk.bad())
}

#[inline(always)]
unsafe fn scan_k<V: V16, T: Elem>(x: &[T], bmax: &mut [f32]) -> (f32, bool) {
    scan_groups_k::<V, T>(
        x,
        bmax,
        #[inline(always)]
        |_, _, _, _| {},
    )
}

/// Asks for block `b` of the row (if it has one) in L1. The fused scans weigh a group while it
/// is in L1, so the following groups' loads would otherwise stall on memory at every page: each
/// block fetches the same block two groups ahead while it is being weighed.
#[inline(always)]
unsafe fn prefetch_block<T>(x: &[T], b: usize) {
    let start = b * BLOCK;
    if start < x.len() {
        let p = x.as_ptr().add(start).cast::<i8>();
        let bytes = (BLOCK.min(x.len() - start)) * std::mem::size_of::<T>();
        for off in (0..bytes).step_by(64) {
            _mm_prefetch::<_MM_HINT_T0>(p.add(off));
        }
    }
}

/// `prims::scan_weights` before its rescaling (each group weighed against the running
/// maximum), and with `out` the weights written as well (`prims::scan_write_weights`).
#[inline(always)]
unsafe fn scan_weights_k<V: V16, T: Elem>(
    x: &[T],
    bmax: &mut [f32],
    bsum: &mut [f32],
    gref: &mut [f32],
    scale: f32,
    mut out: Option<&mut [f32]>,
) -> (f32, bool) {
    let a = (scale * LOG2_E).min(f32::MAX);
    let (av, tv) = (V::splat(a), V::splat(ALL_FINITE));
    scan_groups_k::<V, T>(
        x,
        bmax,
        #[inline(always)]
        |g, b0, maxima, r| {
            gref[g] = r;
            let mv = V::splat(r);
            for (b, &bm) in (b0..).zip(maxima) {
                prefetch_block(x, b + 2 * GROUP);
                let live = !block_is_zero(bm, r, a, ALL_FINITE);
                let blk = prims::block(x, b);
                bsum[b] = match out.as_deref_mut() {
                    None if live => block_wsum(blk, mv, av, tv),
                    None => 0.0,
                    Some(out) => {
                        let o = &mut out[b * BLOCK..b * BLOCK + blk.len()];
                        if live {
                            block_write(blk, o, mv, av)
                        } else {
                            o.fill(0.0);
                            0.0
                        }
                    }
                };
            }
        },
    )
}

#[inline(always)]
unsafe fn weight<V: V16>(v: V, m: V, a: V, thr: V) -> V {
    exp2_neg(v.sub(m).mul(a), Some((v, thr)))
}

#[inline(always)]
unsafe fn weight_sums_k<V: V16, T: Elem>(
    x: &[T],
    bmax: &[f32],
    m: f32,
    scale: f32,
    thr: f32,
    bsum: &mut [f32],
) -> f64 {
    let a = (scale * LOG2_E).min(f32::MAX);
    let (mv, sv, tv) = (V::splat(m), V::splat(a), V::splat(thr));
    let mut total = 0.0f64;
    bsum.fill(0.0);
    // Skipped blocks add exactly 0: the total has the bits of a sum over every block.
    for_live_blocks(bmax, Live::Weight { thr, m, a }, |b| {
        let bs = block_wsum(prims::block(x, b), mv, sv, tv);
        bsum[b] = bs;
        total += f64::from(bs);
    });
    total
}

/// The weight sum of one block (`prims::block_weight_sum`, lane for lane).
#[inline(always)]
unsafe fn block_wsum<V: V16, T: Elem>(blk: &[T], mv: V, sv: V, tv: V) -> f32 {
    let mut acc = V::splat(0.0);
    let full = blk.len() / LANES;
    for c in 0..full {
        acc = acc.add(weight(V::load(blk.as_ptr().add(c * LANES)), mv, sv, tv));
    }
    if full * LANES < blk.len() {
        let buf = tail(&blk[full * LANES..]);
        acc = acc.add(weight(V::load(buf.as_ptr()), mv, sv, tv));
    }
    acc.reduce_sum()
}

/// Writes the weights of one live block into `o` and returns their sum
/// (`prims::write_block_weights`, lane for lane).
#[inline(always)]
unsafe fn block_write<V: V16, T: Elem>(blk: &[T], o: &mut [f32], mv: V, av: V) -> f32 {
    let mut acc = V::splat(0.0);
    let full = blk.len() / LANES;
    for c in 0..full {
        let w = exp2_neg(V::load(blk.as_ptr().add(c * LANES)).sub(mv).mul(av), None);
        w.store(o.as_mut_ptr().add(c * LANES));
        acc = acc.add(w);
    }
    let done = full * LANES;
    if done < blk.len() {
        let buf = tail(&blk[done..]);
        let w = exp2_neg(V::load(buf.as_ptr()).sub(mv).mul(av), None);
        let mut res = [0.0f32; LANES];
        w.store(res.as_mut_ptr());
        o[done..].copy_from_slice(&res[..blk.len() - done]);
        acc = acc.add(w);
    }
    acc.reduce_sum()
}

#[inline(always)]
unsafe fn write_weights_k<V: V16, T: Elem>(
    x: &[T],
    bmax: &[f32],
    m: f32,
    scale: f32,
    out: &mut [f32],
) -> f64 {
    let a = (scale * LOG2_E).min(f32::MAX);
    let (mv, av) = (V::splat(m), V::splat(a));
    let mut total = 0.0f64;
    for ((blk, &bm), o) in x.chunks(BLOCK).zip(bmax).zip(out.chunks_mut(BLOCK)) {
        if block_is_zero(bm, m, a, f32::NEG_INFINITY) {
            o.fill(0.0);
            continue;
        }
        total += f64::from(block_write(blk, o, mv, av));
    }
    total
}

/// Appends the values `v` with `lo <= v < hi` (finite `lo`) of the blocks whose maximum reaches
/// `lo`, and their ids. A full block is tested into one 64-bit lane mask (a bfloat16 block as
/// 16-bit order keys); up to [`SPARSE_BLOCK`] kept lanes are appended one by one, more with
/// `vcompressps` per register: a full-width store of the compressed register, then the write
/// position advances by the number of kept lanes (as for the last, partial block).
///
/// # Safety
/// The CPU must support the features of `Level::Avx512` (`simd::supported`).
#[target_feature(
    enable = "avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c,bmi1,bmi2,lzcnt,popcnt"
)]
pub unsafe fn collect_range_avx512<T: Elem>(
    x: &[T],
    bmax: &[f32],
    lo: f32,
    hi: f32,
    vals: &mut Vec<f32>,
    ids: &mut Vec<u32>,
) {
    let (tv, hv) = (_mm512_set1_ps(lo), _mm512_set1_ps(hi));
    let iota = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    // Room for every element once (the buffers are reused, so this allocates rarely), so that
    // the blocks need no capacity check.
    vals.reserve(x.len() + LANES);
    ids.reserve(x.len() + LANES);
    let (vp, ip) = (vals.as_mut_ptr(), ids.as_mut_ptr());
    let mut n = vals.len();
    let keep = |v: __m512| {
        _mm512_cmp_ps_mask::<_CMP_GE_OQ>(v, tv) & _mm512_cmp_ps_mask::<_CMP_LT_OQ>(v, hv)
    };
    // For a bfloat16 row, `lo <= v < hi` as order keys (the row holds no NaN here).
    let hx = bf16_bits(x);
    let klo = _mm512_set1_epi16(bf16_key_at_least(lo));
    let khi = _mm512_set1_epi16(bf16_key_at_least(hi));
    // Appends the kept lanes of `v` (ids from `first`). Sparse ranges leave most vectors without
    // a kept lane: those store nothing.
    let put = |v: __m512, m: __mmask16, first: usize, n: &mut usize| {
        if m != 0 {
            let id = _mm512_add_epi32(iota, _mm512_set1_epi32(first as i32));
            _mm512_storeu_ps(vp.add(*n), _mm512_maskz_compress_ps(m, v));
            _mm512_storeu_si512(ip.add(*n).cast(), _mm512_maskz_compress_epi32(m, id));
            *n += m.count_ones() as usize;
        }
    };
    // A NaN block maximum fails the test (never a candidate).
    live_blocks_ge_avx512(bmax, lo, |b| {
        let blk = prims::block(x, b);
        let base = b * BLOCK;
        if blk.len() == BLOCK {
            // A live block holds few kept elements (often only its maximum): their lanes, as
            // one 64-bit mask, are visited bit by bit, without a branch per vector.
            let p = blk.as_ptr();
            let mut kept = 0u64;
            if let Some(h) = hx {
                // bfloat16: 32 order keys to a register, compared with the bounds' keys.
                let h = h.as_ptr().add(base);
                for c in 0..2 {
                    let k = key512(_mm512_loadu_si512(h.add(32 * c).cast()));
                    let m = _mm512_cmpge_epi16_mask(k, klo) & _mm512_cmplt_epi16_mask(k, khi);
                    kept |= u64::from(m) << (32 * c);
                }
            } else {
                for c in 0..BLOCK / LANES {
                    kept |= u64::from(keep(Z::load(p.add(c * LANES)).0)) << (c * LANES);
                }
            }
            if kept.count_ones() > SPARSE_BLOCK {
                // A dense range (a deep nucleus, a low floor): compress by register instead.
                for c in 0..BLOCK / LANES {
                    let m = (kept >> (c * LANES)) as __mmask16;
                    put(Z::load(p.add(c * LANES)).0, m, base + c * LANES, &mut n);
                }
                return;
            }
            while kept != 0 {
                let i = kept.trailing_zeros() as usize;
                *vp.add(n) = (*p.add(i)).to_f32();
                *ip.add(n) = (base + i) as u32;
                n += 1;
                kept &= kept - 1;
            }
            return;
        }
        let full = blk.len() / LANES;
        for c in 0..full {
            let v = Z::load(blk.as_ptr().add(c * LANES)).0;
            put(v, keep(v), base + c * LANES, &mut n);
        }
        if full * LANES < blk.len() {
            let buf = tail(&blk[full * LANES..]);
            let v = _mm512_loadu_ps(buf.as_ptr());
            put(v, keep(v), base + full * LANES, &mut n);
        }
    });
    vals.set_len(n);
    ids.set_len(n);
}

/// Calls `f(start, valid)` for the vectors of 16 lanes that cover `len` elements: `start` is the
/// first element, `valid` the mask of the lanes in range (all 16 but in the last vector).
#[inline(always)]
fn each_vector(len: usize, mut f: impl FnMut(usize, __mmask16)) {
    for start in (0..len).step_by(LANES) {
        let left = len - start;
        f(
            start,
            if left >= LANES {
                0xffff
            } else {
                ((1u32 << left) - 1) as __mmask16
            },
        );
    }
}

/// Most kept elements of a block that [`collect_range_avx512`] appends one by one.
const SPARSE_BLOCK: u32 = 8;

/// `prims::for_live_blocks` with `Live::Ge(thr)`: 64 block maxima per 64-bit mask, from four
/// AVX-512 compares.
#[inline(always)]
unsafe fn live_blocks_ge_avx512(bmax: &[f32], thr: f32, mut f: impl FnMut(usize)) {
    let tv = _mm512_set1_ps(thr);
    for (c, chunk) in bmax.chunks(64).enumerate() {
        let mut live = 0u64;
        each_vector(chunk.len(), |at, valid| {
            let v = _mm512_maskz_loadu_ps(valid, chunk.as_ptr().add(at));
            live |= u64::from(_mm512_mask_cmp_ps_mask::<_CMP_GE_OQ>(valid, v, tv)) << at;
        });
        while live != 0 {
            f(c * 64 + live.trailing_zeros() as usize);
            live &= live - 1;
        }
    }
}

/// The `k`-th smallest of `keys` (0-based, `k < keys.len()`): a quickselect whose partitions are
/// AVX-512 compresses, out of place. The keys and two more regions of the same size (plus one
/// vector each) live in `keys`' allocation; each round partitions one region into the other
/// two (below and above the pivot, a median of three) and goes on in the side holding rank `k`.
/// Small sides, and a run of unlucky pivots, finish with `select_nth_unstable`. Clobbers the
/// contents of `keys` (its length stays).
///
/// # Safety
/// The CPU must support the features of `Level::Avx512` (`simd::supported`).
#[target_feature(
    enable = "avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c,bmi1,bmi2,lzcnt,popcnt"
)]
pub unsafe fn nth_u32_avx512(keys: &mut Vec<u32>, mut k: usize) -> u32 {
    debug_assert!(k < keys.len());
    let cap = keys.len() + 16; // a region, and room for a full store at its end
    keys.reserve(3 * cap - keys.len());
    let base = keys.as_mut_ptr();
    let region = |i: usize| base.add(i * cap);
    let (mut src, mut n) = (0usize, keys.len());
    // Enough rounds for any fair run of pivots; past them, the library's select bounds the time.
    let mut rounds = 2 * (usize::BITS - n.leading_zeros()) + 8;
    while n > 16 && rounds > 0 {
        rounds -= 1;
        let p = region(src);
        let (a, b, c) = (*p, *p.add(n / 2), *p.add(n - 1));
        let pivot = a.max(b).min(a.min(b).max(c)); // the median of the three
        let pv = _mm512_set1_epi32(pivot as i32);
        let (lo, hi) = ((src + 1) % 3, (src + 2) % 3);
        let (lp, hp) = (region(lo), region(hi));
        let (mut nl, mut nh) = (0usize, 0usize);
        let mut split = |v: __m512i, valid: __mmask16| {
            let ml = _mm512_mask_cmplt_epu32_mask(valid, v, pv);
            let mh = _mm512_mask_cmpgt_epu32_mask(valid, v, pv);
            _mm512_storeu_si512(lp.add(nl).cast(), _mm512_maskz_compress_epi32(ml, v));
            _mm512_storeu_si512(hp.add(nh).cast(), _mm512_maskz_compress_epi32(mh, v));
            nl += ml.count_ones() as usize;
            nh += mh.count_ones() as usize;
        };
        each_vector(n, |at, valid| {
            split(_mm512_maskz_loadu_epi32(valid, p.add(at).cast()), valid);
        });
        let equal = n - nl - nh;
        if k < nl {
            (src, n) = (lo, nl);
        } else if k < nl + equal {
            return pivot;
        } else {
            k -= nl + equal;
            (src, n) = (hi, nh);
        }
    }
    let rest = std::slice::from_raw_parts_mut(region(src), n);
    *rest.select_nth_unstable(k).1
}

/// Appends the order keys (`select::desc_key`: `!(f32_key ^ sign)`) of the values of `v` that
/// are `>= bound` (no NaN in `v`), in index order, with `vpcompressd`.
///
/// # Safety
/// The CPU must support the features of `Level::Avx512` (`simd::supported`).
#[target_feature(
    enable = "avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c,bmi1,bmi2,lzcnt,popcnt"
)]
pub unsafe fn desc_keys_ge_avx512(v: &[f32], bound: f32, keys: &mut Vec<u32>) {
    keys.reserve(v.len() + 16);
    let out = keys.as_mut_ptr();
    let mut n = keys.len();
    let (bv, low31) = (_mm512_set1_ps(bound), _mm512_set1_epi32(0x7fff_ffff));
    let mut put = |x: __m512, valid: __mmask16| {
        let m = _mm512_mask_cmp_ps_mask::<_CMP_GE_OQ>(valid, x, bv);
        if m != 0 {
            // A negative value keeps its bits; the others get their low 31 bits flipped.
            let b = _mm512_castps_si512(x);
            let key = _mm512_xor_si512(b, _mm512_andnot_si512(_mm512_srai_epi32::<31>(b), low31));
            _mm512_storeu_si512(out.add(n).cast(), _mm512_maskz_compress_epi32(m, key));
            n += m.count_ones() as usize;
        }
    };
    each_vector(v.len(), |at, valid| {
        put(_mm512_maskz_loadu_ps(valid, v.as_ptr().add(at)), valid);
    });
    keys.set_len(n);
}

/// For each 8-bit lane mask, the indices of its set lanes packed from byte 0 (one byte each).
static PACK8: [u64; 256] = {
    let mut t = [0u64; 256];
    let mut m = 0;
    while m < 256 {
        let (mut n, mut i, mut v) = (0, 0, 0u64);
        while i < 8 {
            if (m >> i) & 1 == 1 {
                v |= (i as u64) << (8 * n);
                n += 1;
            }
            i += 1;
        }
        t[m] = v;
        m += 1;
    }
    t
};

/// [`collect_range_avx512`] with AVX2: eight lanes at a time, the kept ones moved to the front
/// with `vpermps` and a lane table ([`PACK8`]); the permuted lane numbers plus the vector's first
/// id are the ids.
///
/// # Safety
/// The CPU must support the features of `Level::Avx2` (`simd::supported`).
#[target_feature(enable = "avx2,fma,f16c,bmi1,bmi2,lzcnt,popcnt")]
pub unsafe fn collect_range_avx2<T: Elem>(
    x: &[T],
    bmax: &[f32],
    lo: f32,
    hi: f32,
    vals: &mut Vec<f32>,
    ids: &mut Vec<u32>,
) {
    let (tv, hv) = (_mm256_set1_ps(lo), _mm256_set1_ps(hi));
    vals.reserve(x.len() + 8);
    ids.reserve(x.len() + 8);
    let (vp, ip) = (vals.as_mut_ptr(), ids.as_mut_ptr());
    let mut n = vals.len();
    let mut put = |v: __m256, first: usize| {
        let keep = _mm256_and_ps(
            _mm256_cmp_ps::<_CMP_GE_OQ>(v, tv),
            _mm256_cmp_ps::<_CMP_LT_OQ>(v, hv),
        );
        let m = _mm256_movemask_ps(keep) as usize;
        if m != 0 {
            let lanes = _mm256_cvtepu8_epi32(_mm_cvtsi64_si128(PACK8[m] as i64));
            _mm256_storeu_ps(vp.add(n), _mm256_permutevar8x32_ps(v, lanes));
            let id = _mm256_add_epi32(lanes, _mm256_set1_epi32(first as i32));
            _mm256_storeu_si256(ip.add(n).cast(), id);
            n += m.count_ones() as usize;
        }
    };
    // A NaN block maximum fails the test (never a candidate).
    for_live_blocks(bmax, Live::Ge(lo), |b| {
        let blk = prims::block(x, b);
        let base = b * BLOCK;
        let full = blk.len() / 8;
        for c in 0..full {
            put(load8(blk.as_ptr().add(c * 8)), base + c * 8);
        }
        if full * 8 < blk.len() {
            let buf = tail(&blk[full * 8..]);
            put(_mm256_loadu_ps(buf.as_ptr()), base + full * 8);
        }
    });
    vals.set_len(n);
    ids.set_len(n);
}

/// The row maximum and whether a NaN or `+inf` may have been seen (`sum_is_bad`): four
/// independent accumulators.
#[inline(always)]
unsafe fn max_k<V: V16, T: Elem>(x: &[T]) -> (f32, bool) {
    let ninf = V::splat(f32::NEG_INFINITY);
    let (mut a0, mut a1, mut a2, mut a3) = (ninf, ninf, ninf, ninf);
    let mut chk = V::splat(0.0);
    let quads = x.len() / (4 * LANES);
    for q in 0..quads {
        let p = x.as_ptr().add(q * 4 * LANES);
        let (v0, v1, v2, v3) = (
            V::load(p),
            V::load(p.add(LANES)),
            V::load(p.add(2 * LANES)),
            V::load(p.add(3 * LANES)),
        );
        a0 = v0.max(a0);
        a1 = v1.max(a1);
        a2 = v2.max(a2);
        a3 = v3.max(a3);
        chk = chk.add(v0.add(v1).add(v2.add(v3)));
    }
    let mut i = quads * 4 * LANES;
    while i + LANES <= x.len() {
        let v = V::load(x.as_ptr().add(i));
        a0 = v.max(a0);
        chk = chk.add(v);
        i += LANES;
    }
    if i < x.len() {
        let buf = tail(&x[i..]);
        let v = V::load(buf.as_ptr());
        a0 = v.max(a0);
        chk = chk.add(v);
    }
    (a0.max(a1).max(a2.max(a3)).reduce_max(), sum_is_bad(chk))
}

/// Index of the first element equal to `m`, if any.
#[inline(always)]
unsafe fn find_eq_k<V: V16, T: Elem>(x: &[T], m: f32) -> Option<usize> {
    let mv = V::splat(m);
    let mut i = 0;
    while i + LANES <= x.len() {
        let v = V::load(x.as_ptr().add(i));
        if let Some(j) = v.first_eq(mv) {
            return Some(i + j);
        }
        i += LANES;
    }
    x[i..].iter().position(|e| e.to_f32() == m).map(|j| i + j)
}

macro_rules! entry_points {
    ($isa:ident, $v:ty, $features:literal) => {
        /// Entry points compiled for one ISA.
        pub mod $isa {
            use super::*;

            /// # Safety
            /// The CPU must support the features of this ISA; `bmax` has one entry per block.
            #[target_feature(enable = $features)]
            pub unsafe fn scan<T: Elem>(x: &[T], bmax: &mut [f32]) -> (f32, bool) {
                if let Some(h) = bf16_bits(x) {
                    return <$v>::scan_bf16(h, bmax);
                }
                scan_k::<$v, T>(x, bmax)
            }

            /// # Safety
            /// As [`scan`]; `bsum` has one entry per block.
            #[target_feature(enable = $features)]
            pub unsafe fn weight_sums<T: Elem>(
                x: &[T],
                bmax: &[f32],
                m: f32,
                scale: f32,
                thr: f32,
                bsum: &mut [f32],
            ) -> f64 {
                weight_sums_k::<$v, T>(x, bmax, m, scale, thr, bsum)
            }

            /// # Safety
            /// The CPU must support the features of this ISA.
            #[target_feature(enable = $features)]
            pub unsafe fn max<T: Elem>(x: &[T]) -> (f32, bool) {
                if let Some(h) = bf16_bits(x) {
                    return <$v>::max_bf16(h);
                }
                max_k::<$v, T>(x)
            }

            /// # Safety
            /// The CPU must support the features of this ISA.
            #[target_feature(enable = $features)]
            pub unsafe fn find_eq<T: Elem>(x: &[T], m: f32) -> Option<usize> {
                find_eq_k::<$v, T>(x, m)
            }

            /// # Safety
            /// As [`scan`]; `bsum` has one entry per block, `gref` one per group.
            #[target_feature(enable = $features)]
            pub unsafe fn scan_weights<T: Elem>(
                x: &[T],
                bmax: &mut [f32],
                bsum: &mut [f32],
                gref: &mut [f32],
                scale: f32,
            ) -> (f32, bool) {
                scan_weights_k::<$v, T>(x, bmax, bsum, gref, scale, None)
            }

            /// # Safety
            /// As [`scan_weights`]; `out.len() == x.len()`.
            #[target_feature(enable = $features)]
            pub unsafe fn scan_write_weights<T: Elem>(
                x: &[T],
                bmax: &mut [f32],
                bsum: &mut [f32],
                gref: &mut [f32],
                scale: f32,
                out: &mut [f32],
            ) -> (f32, bool) {
                scan_weights_k::<$v, T>(x, bmax, bsum, gref, scale, Some(out))
            }

            /// # Safety
            /// As [`scan`]; `out.len() == x.len()`.
            #[target_feature(enable = $features)]
            pub unsafe fn write_weights<T: Elem>(
                x: &[T],
                bmax: &[f32],
                m: f32,
                scale: f32,
                out: &mut [f32],
            ) -> f64 {
                write_weights_k::<$v, T>(x, bmax, m, scale, out)
            }

            /// # Safety
            /// The CPU must support the features of this ISA.
            #[target_feature(enable = $features)]
            pub unsafe fn scale_in_place(out: &mut [f32], k: f32) {
                for o in out.iter_mut() {
                    *o *= k;
                }
            }
        }
    };
}

entry_points!(
    avx512,
    Z,
    "avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c,bmi1,bmi2,lzcnt,popcnt"
);
entry_points!(avx2, Y, "avx2,fma,f16c,bmi1,bmi2,lzcnt,popcnt");
