//! Order-based selection on a scanned row: argmax and the exact top k.
//!
//! Both use the block maxima of [`super::prims::scan`]. The k-th largest block maximum is a lower
//! bound of the k-th largest element (the block maxima are k distinct elements), so only blocks
//! whose maximum reaches it can hold a top-k element: about k blocks instead of the whole row,
//! and no sort of the vocabulary.
//!
//! Order: larger value first; equal values, lower index first.

use std::cmp::Ordering;

use super::elem::{f32_key, f32_of_key, Elem, Storage};
use super::prims::{self, for_live_blocks, Live, BLOCK};

/// A token and its logit.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Cand {
    /// The logit (as `f32`).
    pub v: f32,
    /// The token id.
    pub id: u32,
}

impl Elem for Cand {
    #[inline(always)]
    fn to_f32(self) -> f32 {
        self.v
    }
}

/// Larger value first; equal values, lower id first.
#[inline]
#[must_use]
pub fn by_rank(a: &Cand, b: &Cand) -> Ordering {
    // Numeric comparison (rows hold no NaN here), so -0.0 and 0.0 are a tie.
    b.v.partial_cmp(&a.v)
        .unwrap_or(Ordering::Equal)
        .then(a.id.cmp(&b.id))
}

/// An integer that sorts as [`by_rank`] (ascending key: larger value first, then lower id).
#[inline(always)]
#[must_use]
pub fn rank_key(c: &Cand) -> u64 {
    (value_rank(c.v) << 32) | u64::from(c.id)
}

/// Index of the first element equal to the row maximum `m` (ties go to the lowest index).
#[must_use]
pub fn argmax<T: Elem>(x: &[T], bmax: &[f32], m: f32) -> usize {
    let b = bmax.iter().position(|&bm| bm == m).unwrap_or(0);
    b * BLOCK
        + prims::block(x, b)
            .iter()
            .position(|e| e.to_f32() == m)
            .unwrap_or(0)
}

/// The `k` highest-ranked elements of the row, in rank order (`1 <= k <= x.len()`).
///
/// `scratch`, `ids` and `keys` are reused between calls to avoid allocation.
pub fn top_k<T: Elem>(
    x: &[T],
    bmax: &[f32],
    k: usize,
    scratch: &mut Vec<f32>,
    ids: &mut Vec<u32>,
    keys: &mut Vec<u64>,
    out: &mut Vec<Cand>,
) {
    debug_assert!(k >= 1 && k <= x.len());
    out.clear();
    let thr = if k <= bmax.len() {
        kth_largest(bmax, k, ids)
    } else {
        f32::NEG_INFINITY
    };
    if !thr.is_finite() {
        collect_ge(x, bmax, thr, out);
        if out.len() > k {
            out.select_nth_unstable_by_key(k - 1, rank_key);
            out.truncate(k);
        }
        out.sort_unstable_by_key(rank_key);
        return;
    }
    // Candidates by SIMD compress where available (values and ids apart, in index order), then
    // ranked by integer keys: the rank of the value above the candidate's position (index
    // order, so equal values keep the lower id first).
    scratch.clear();
    ids.clear();
    collect_range_soa(x, bmax, thr, f32::INFINITY, scratch, ids);
    keys.clear();
    keys.extend(
        scratch
            .iter()
            .zip(0u64..)
            .map(|(&v, i)| (value_rank(v) << 32) | i),
    );
    // A few candidates more than k (the usual case) are sorted outright; many are cut to k by
    // a selection first.
    if keys.len() > 2 * k {
        keys.select_nth_unstable(k - 1);
        keys.truncate(k);
    }
    keys.sort_unstable();
    keys.truncate(k);
    out.extend(keys.iter().map(|&key| {
        let i = (key & 0xffff_ffff) as usize;
        Cand {
            v: scratch[i],
            id: ids[i],
        }
    }));
}

/// A `u32` that orders values from the largest down ([`f32_key`] made unsigned and reversed:
/// `-0.0` just after `0.0`, NaN excluded).
#[inline(always)]
fn desc_key(v: f32) -> u32 {
    !(f32_key(v) as u32 ^ 0x8000_0000)
}

/// The inverse of [`desc_key`].
#[inline(always)]
fn from_desc_key(k: u32) -> f32 {
    f32_of_key((!k ^ 0x8000_0000) as i32)
}

/// [`desc_key`] with `-0.0` and `0.0` one key (a tie, as in [`by_rank`]).
#[inline(always)]
fn value_rank(v: f32) -> u64 {
    u64::from(desc_key(v + 0.0))
}

/// Most values per group in [`kth_largest`].
const GROUP: usize = 16;

/// The `k`-th largest of `v` (`1 <= k <= v.len()`, no NaN; `-0.0` ranks just below `0.0`).
///
/// When `v` holds at least `4k` values, the `k`-th largest of its group maxima (`k` distinct
/// values of `v`) is a lower bound of the answer, so only the values that reach it need a
/// selection. With `g` values per group (up to [`GROUP`], and at least `2k` groups), group `j`
/// holds `v[j]`, `v[j + w]`, `v[j + 2w]`, ... (`w = ceil(len / g)`), so all maxima come from one
/// vectorised pass. The selections run on integer keys ([`desc_key`]) in `keys`.
pub(crate) fn kth_largest(v: &[f32], k: usize, keys: &mut Vec<u32>) -> f32 {
    let g = (v.len() / (2 * k)).min(GROUP);
    keys.clear();
    if g >= 2 {
        strided_group_keys(v, g, keys);
        // Every value numerically `>=` the bound: all those ranked up to it, and more.
        let bound = from_desc_key(nth_key(keys, k - 1));
        keys.clear();
        desc_keys_ge(v, bound, keys);
    } else {
        keys.extend(v.iter().map(|&e| desc_key(e)));
    }
    from_desc_key(nth_key(keys, k - 1))
}

/// The `k`-th smallest of `keys` (0-based), by AVX-512 partitions where available. Leaves
/// `keys` in any order (its length stays).
fn nth_key(keys: &mut Vec<u32>, k: usize) -> u32 {
    #[cfg(target_arch = "x86_64")]
    if crate::simd::level() == crate::simd::Level::Avx512 {
        // SAFETY: level() returns Avx512 only after detecting every feature the kernel enables.
        return unsafe { crate::simd::x86::nth_u32_avx512(keys, k) };
    }
    *keys.select_nth_unstable(k).1
}

/// Appends the [`desc_key`] of every value of `v` (no NaN) that is `>= bound`, in index order.
fn desc_keys_ge(v: &[f32], bound: f32, keys: &mut Vec<u32>) {
    #[cfg(target_arch = "x86_64")]
    if crate::simd::level() == crate::simd::Level::Avx512 {
        // SAFETY: level() returns Avx512 only after detecting every feature the kernel enables.
        return unsafe { crate::simd::x86::desc_keys_ge_avx512(v, bound, keys) };
    }
    for_live_blocks(v, Live::Ge(bound), |i| keys.push(desc_key(v[i])));
}

crate::simd::multiversion! {
    /// `out[j] = min(key(v[j]), key(v[j + w]), ...)` ([`desc_key`]: the key of the maximum) for
    /// `j < w = ceil(len / g)` (`g >= 1`).
    pub fn strided_group_keys<T: Elem>(v: &[T], g: usize, out: &mut Vec<u32>) -> () {
        let w = v.len().div_ceil(g);
        out.clear();
        out.extend(v[..w].iter().map(|e| desc_key(e.to_f32())));
        for row in v[w..].chunks(w) {
            for (o, e) in out.iter_mut().zip(row) {
                *o = (*o).min(desc_key(e.to_f32()));
            }
        }
    }
}

/// Compacts the elements `x` with `lo <= x < hi` of block `b` into `vals` and `ids` (from index
/// 0) and returns their number.
///
/// Branch-free: every element is written and the write position advances only for kept ones,
/// so random keep/drop patterns cost no mispredictions.
#[inline(always)]
fn compact_block<T: Elem>(
    x: &[T],
    b: usize,
    lo: f32,
    hi: f32,
    vals: &mut [f32; BLOCK],
    ids: &mut [u32; BLOCK],
) -> usize {
    let base = (b * BLOCK) as u32;
    let mut n = 0usize;
    for (i, e) in prims::block(x, b).iter().enumerate() {
        let v = e.to_f32();
        vals[n] = v;
        ids[n] = base + i as u32;
        n += usize::from(v >= lo && v < hi);
    }
    n
}

/// Appends every element `>= thr` (in index order), reading only blocks whose maximum reaches it.
pub fn collect_ge<T: Elem>(x: &[T], bmax: &[f32], thr: f32, out: &mut Vec<Cand>) {
    let (mut bv, mut bi) = ([0.0f32; BLOCK], [0u32; BLOCK]);
    for_live_blocks(bmax, Live::Ge(thr), |b| {
        let n = compact_block(x, b, thr, f32::INFINITY, &mut bv, &mut bi);
        out.extend(bv[..n].iter().zip(&bi[..n]).map(|(&v, &id)| Cand { v, id }));
    });
}

/// Appends the elements `x` with `lo <= x < hi` (`lo` finite; in index order) to separate value
/// and id arrays, reading only blocks whose maximum reaches `lo`, with AVX-512 compress or an
/// AVX2 lane permutation where available.
pub fn collect_range_soa<T: Elem>(
    x: &[T],
    bmax: &[f32],
    lo: f32,
    hi: f32,
    vals: &mut Vec<f32>,
    ids: &mut Vec<u32>,
) {
    debug_assert!(lo.is_finite());
    #[cfg(target_arch = "x86_64")]
    if T::STORAGE != Storage::Other {
        use crate::simd::{x86, Level};
        match crate::simd::level() {
            // SAFETY: level() returns Avx512 only after detecting every feature the kernel enables.
            Level::Avx512 => {
                return unsafe { x86::collect_range_avx512(x, bmax, lo, hi, vals, ids) }
            }
            // SAFETY: level() returns Avx2 only after detecting every feature the kernel enables.
            Level::Avx2 => return unsafe { x86::collect_range_avx2(x, bmax, lo, hi, vals, ids) },
            _ => {}
        }
    }
    let (mut bv, mut bi) = ([0.0f32; BLOCK], [0u32; BLOCK]);
    for_live_blocks(bmax, Live::Ge(lo), |b| {
        let n = compact_block(x, b, lo, hi, &mut bv, &mut bi);
        vals.extend_from_slice(&bv[..n]);
        ids.extend_from_slice(&bi[..n]);
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Key lists that are hard on a quickselect: runs, duplicates, sorted and reversed orders,
    /// organ pipes, and the sizes around a vector (16 keys).
    fn hard_key_lists() -> Vec<Vec<u32>> {
        let mut next = crate::kernels::tests::lcg(7);
        let mut lists = Vec::new();
        for n in [1usize, 2, 15, 16, 17, 31, 33, 100, 257, 1000, 5000] {
            lists.push((0..n).map(|_| next()).collect::<Vec<_>>());
            lists.push((0..n).map(|_| next() % 4).collect());
            lists.push((0..n as u32).collect());
            lists.push((0..n as u32).rev().collect());
            lists.push(vec![u32::MAX; n]);
            lists.push((0..n as u32).map(|i| i.min(n as u32 - i)).collect());
            lists.push(
                (0..n as u32)
                    .map(|i| if i % 2 == 0 { i } else { u32::MAX - i })
                    .collect(),
            );
        }
        lists
    }

    #[test]
    fn key_selection_matches_plain_code_on_every_level() {
        crate::kernels::tests::each_level(|level| {
            for keys in hard_key_lists() {
                let mut sorted = keys.clone();
                sorted.sort_unstable();
                let n = keys.len();
                for k in [0, 1, n / 3, n / 2, n - 2, n - 1]
                    .into_iter()
                    .filter(|&k| k < n)
                {
                    let mut work = keys.clone();
                    assert_eq!(
                        nth_key(&mut work, k),
                        sorted[k],
                        "level {level:?}, n {n}, k {k}"
                    );
                    assert_eq!(work.len(), n);
                }
                // The keys as values: those at or above a bound, as keys, in order.
                let v: Vec<f32> = keys
                    .iter()
                    .map(|&key| from_desc_key(key))
                    .filter(|v| !v.is_nan())
                    .collect();
                for bound in [f32::NEG_INFINITY, -1.0, -0.0, 0.0, 1e-30, 3.5, f32::MAX] {
                    let mut got = vec![7u32];
                    desc_keys_ge(&v, bound, &mut got);
                    let want: Vec<u32> = std::iter::once(7)
                        .chain(v.iter().filter(|&&x| x >= bound).map(|&x| desc_key(x)))
                        .collect();
                    assert_eq!(got, want, "level {level:?}, n {n}, bound {bound}");
                }
            }
        });
    }

    #[test]
    fn range_collect_matches_plain_code_on_every_level() {
        use crate::kernels::elem::as_bf16;
        use crate::kernels::tests::{each_level, lcg};
        let mut bits = lcg(3);
        let mut next = move || ((bits() >> 7) as f32 / (1u64 << 24) as f32) * 8.0 - 4.0;
        let x: Vec<f32> = (0..1000)
            .map(|i| if i % 37 == 0 { -0.0 } else { next() })
            .collect();
        let bits: Vec<u16> = x.iter().map(|v| (v.to_bits() >> 16) as u16).collect();
        let h = as_bf16(&bits);
        let (mut bx, mut bh) = (
            vec![0.0; prims::n_blocks(1000)],
            vec![0.0; prims::n_blocks(1000)],
        );
        let _ = prims::scan(&x[..], &mut bx);
        let _ = prims::scan(h, &mut bh);
        // Sparse (a few per block), about half, and every element; open and bounded above.
        let ranges = [
            (3.5, f32::INFINITY),
            (0.0, f32::INFINITY),
            (-4.5, f32::INFINITY),
            (-1.0, 1.0),
            (-0.0, 2.0),
        ];
        let run = || {
            let mut all = Vec::new();
            for &(lo, hi) in &ranges {
                let (mut v, mut i) = (vec![9.0], vec![9]);
                collect_range_soa(&x[..], &bx, lo, hi, &mut v, &mut i);
                all.push((v.iter().map(|e| e.to_bits()).collect::<Vec<_>>(), i));
                let (mut v, mut i) = (Vec::new(), Vec::new());
                collect_range_soa(h, &bh, lo, hi, &mut v, &mut i);
                all.push((v.iter().map(|e| e.to_bits()).collect(), i));
            }
            all
        };
        let results = each_level(|_| run());
        let scalar = results
            .iter()
            .find(|(level, _)| *level == crate::simd::Level::Scalar)
            .map(|(_, r)| r)
            .expect("the scalar level is always there");
        for (level, got) in &results {
            assert!(got == scalar, "level {level:?}");
        }
    }

    proptest! {
        #[test]
        fn kth_largest_is_the_kth_of_the_sorted_values(
            v in prop::collection::vec(prop_oneof![-8i32..8, Just(-1000)], 1..3000),
            k in 1usize..200,
        ) {
            let v: Vec<f32> = v.into_iter().map(|e| if e == -1000 { f32::NEG_INFINITY } else { e as f32 * 0.5 }).collect();
            let k = k.min(v.len());
            let mut sorted = v.clone();
            sorted.sort_by(|a, b| b.partial_cmp(a).unwrap());
            prop_assert_eq!(kth_largest(&v, k, &mut Vec::new()), sorted[k - 1]);
        }

        #[test]
        fn rank_keys_sort_as_by_rank(
            a in prop_oneof![any::<f32>().prop_filter("no NaN", |v| !v.is_nan()), Just(0.0f32), Just(-0.0f32), Just(f32::INFINITY), Just(f32::NEG_INFINITY)],
            b in prop_oneof![any::<f32>().prop_filter("no NaN", |v| !v.is_nan()), Just(0.0f32), Just(-0.0f32), Just(f32::INFINITY), Just(f32::NEG_INFINITY)],
            ia in 0u32..4,
            ib in 0u32..4,
        ) {
            let (ca, cb) = (Cand { v: a, id: ia }, Cand { v: b, id: ib });
            prop_assert_eq!(rank_key(&ca).cmp(&rank_key(&cb)), by_rank(&ca, &cb));
        }
    }
}
