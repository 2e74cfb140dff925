//! The batch kernels against the scalar reference, on every SIMD level the machine supports.

use std::collections::BTreeMap;

use proptest::prelude::*;
use proptest::sample::Index;

use super::elem::{as_bf16, as_f16, Elem};
use super::pipeline::{self, Filters, Kept, Mask, Order, Scratch};
use super::reference as re;
use super::{Bias, Penalties, PerRow, RowLogprobs, TokenLists};
use crate::error::KernelError;
use crate::kernels;
use crate::simd::{self, available, set_level, Level};

/// Runs `f` once per supported level (best first) and returns each level's result.
///
/// The level is process-wide, so this holds the lock shared by every test that switches it.
pub(super) fn each_level<R>(mut f: impl FnMut(Level) -> R) -> Vec<(Level, R)> {
    let _guard = simd::test_lock();
    let before = simd::level();
    let out = available()
        .into_iter()
        .map(|level| {
            assert!(set_level(level));
            (level, f(level))
        })
        .collect();
    set_level(before);
    out
}

/// Asserts that every level gave the same result as the first.
fn assert_same_across<R: PartialEq>(what: &str, results: &[(Level, R)]) {
    let (first, want) = &results[0];
    for (level, got) in &results[1..] {
        assert!(got == want, "{what}: {level:?} differs from {first:?}");
    }
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

/// Softmax-style comparison: relative 1e-5 / absolute 1e-5; infinities must match exactly.
fn close(got: f32, want: f64) -> bool {
    // A finite value beyond the f32 range is expected saturated (finite logits keep finite
    // log-probabilities).
    let f32_max = f64::from(f32::MAX);
    let want = if want.is_finite() {
        want.clamp(-f32_max, f32_max)
    } else {
        want
    };
    let w = want as f32;
    if w.is_infinite() || got.is_infinite() || got.is_nan() {
        return got == w;
    }
    (f64::from(got) - want).abs() <= 1e-5 + 1e-5 * want.abs()
}

fn same_error(got: &KernelError, want: &KernelError) -> bool {
    match (got, want) {
        (
            KernelError::NonFinite {
                row: a,
                index: i,
                value: x,
            },
            KernelError::NonFinite {
                row: b,
                index: j,
                value: y,
            },
        ) => a == b && i == j && (x.to_bits() == y.to_bits() || (x.is_nan() && y.is_nan())),
        _ => got == want,
    }
}

// ---------------------------------------------------------------------------------------------
// Element types

/// IEEE binary16 bits of `x`, rounded to nearest, ties to even.
fn f16_bits(x: f32) -> u16 {
    let sign = if x.is_sign_negative() { 0x8000u16 } else { 0 };
    if x.is_nan() {
        return sign | 0x7e00;
    }
    let a = f64::from(x.abs());
    if a >= 65520.0 {
        return sign | 0x7c00;
    }
    if a < 2f64.powi(-14) {
        return sign | (a * 2f64.powi(24)).round_ties_even() as u16;
    }
    let mut e = ((x.to_bits() >> 23) & 0xff) as i32 - 127;
    let mut m = ((a / 2f64.powi(e) - 1.0) * 1024.0).round_ties_even() as u16;
    if m == 1024 {
        m = 0;
        e += 1;
    }
    sign | (((e + 15) as u16) << 10) | m
}

/// The value of binary16 bits, from the definition.
fn f16_value(h: u16) -> f32 {
    let sign = if h & 0x8000 != 0 { -1.0f64 } else { 1.0 };
    let e = i32::from((h >> 10) & 0x1f);
    let m = f64::from(h & 0x3ff);
    let v = match e {
        0 => m * 2f64.powi(-24),
        31 if m == 0.0 => f64::INFINITY,
        31 => f64::NAN,
        _ => (1.0 + m / 1024.0) * 2f64.powi(e - 15),
    };
    (sign * v) as f32
}

fn bf16_bits(x: f32) -> u16 {
    (x.to_bits() >> 16) as u16
}

fn bf16_value(h: u16) -> f32 {
    f32::from_bits(u32::from(h) << 16)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Ty {
    F32,
    F16,
    Bf16,
}

const TYPES: [Ty; 3] = [Ty::F32, Ty::F16, Ty::Bf16];

/// A batch in one element type, with its exact values widened to `f32` for the reference.
#[derive(Clone, Debug)]
struct Batch {
    ty: Ty,
    vocab: usize,
    vals: Vec<f32>,
    bits: Vec<u16>,
}

impl Batch {
    fn new(ty: Ty, vocab: usize, src: &[f32]) -> Self {
        let (vals, bits) = match ty {
            Ty::F32 => (src.to_vec(), Vec::new()),
            Ty::F16 => {
                let bits: Vec<u16> = src.iter().map(|&v| f16_bits(v)).collect();
                (bits.iter().map(|&h| f16_value(h)).collect(), bits)
            }
            Ty::Bf16 => {
                let bits: Vec<u16> = src.iter().map(|&v| bf16_bits(v)).collect();
                (bits.iter().map(|&h| bf16_value(h)).collect(), bits)
            }
        };
        Self {
            ty,
            vocab,
            vals,
            bits,
        }
    }

    fn rows(&self) -> usize {
        self.vals.len() / self.vocab
    }

    fn row(&self, r: usize) -> &[f32] {
        &self.vals[r * self.vocab..(r + 1) * self.vocab]
    }
}

/// Evaluates `$body` with `$x` bound to the batch as a slice of its own element type.
macro_rules! with_elems {
    ($b:expr, $x:ident => $body:expr) => {
        match $b.ty {
            Ty::F32 => {
                let $x: &[f32] = &$b.vals;
                $body
            }
            Ty::F16 => {
                let $x = as_f16(&$b.bits);
                $body
            }
            Ty::Bf16 => {
                let $x = as_bf16(&$b.bits);
                $body
            }
        }
    };
}

/// The kernel's kept set for one row (`f.temperature > 0`), as token ids.
fn kernel_kept<T: Elem>(x: &[T], f: &Filters) -> Vec<usize> {
    let mut bmax = Vec::new();
    let s = pipeline::scan(x, &mut bmax).expect("a valid row");
    let mut scr = Scratch::default();
    match pipeline::kept_set(&s, f, &mut scr) {
        Kept::Threshold(t) => (0..x.len()).filter(|&i| x[i].to_f32() >= t).collect(),
        Kept::List(l) | Kept::Ids(l) => l.iter().map(|c| c.id as usize).collect(),
    }
}

/// The ids a mask kept, checking that each kept entry holds the input value bit for bit.
fn mask_kept(row: &[f32], out: &[f32]) -> Vec<usize> {
    let mut kept = Vec::new();
    for (i, (&x, &o)) in row.iter().zip(out).enumerate() {
        if o != f32::NEG_INFINITY {
            assert_eq!(
                o.to_bits(),
                x.to_bits(),
                "kept token {i} must keep its logit"
            );
            kept.push(i);
        }
    }
    kept
}

// ---------------------------------------------------------------------------------------------
// Strategies

const LENS: [usize; 9] = [1, 15, 16, 17, 63, 64, 65, 1000, 5000];

/// `cases` cases per property, or `PROPTEST_CASES` when set (for longer runs).
fn cfg(cases: u32) -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(cases);
    ProptestConfig {
        cases,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

fn value() -> impl Strategy<Value = f32> {
    prop_oneof![
        12 => -30.0f32..=30.0,
        2 => Just(f32::NEG_INFINITY),
        3 => prop::sample::select(vec![-30.0f32, -4.5, -1.0, -0.0, 0.0, 0.25, 3.0, 11.5, 30.0]),
    ]
}

/// A row of `len` values with at least one finite: raw, on a 0.5 grid (many ties), or squeezed
/// into [-3.75, 3.75] (a flat distribution).
fn row_of(len: usize) -> impl Strategy<Value = Vec<f32>> {
    (0u8..3, prop::collection::vec(value(), len), any::<Index>()).prop_map(|(mode, mut v, at)| {
        for x in &mut v {
            *x = match mode {
                1 => (*x * 2.0).round() * 0.5,
                2 => *x * 0.125,
                _ => *x,
            };
        }
        if v.iter().all(|&x| x == f32::NEG_INFINITY) {
            let i = at.index(v.len());
            v[i] = 0.5;
        }
        v
    })
}

/// One to three rows of a length from [`LENS`], in one of the three element types.
fn batch() -> impl Strategy<Value = Batch> {
    (
        prop::sample::select(LENS.to_vec()),
        1usize..=3,
        prop::sample::select(TYPES.to_vec()),
    )
        .prop_flat_map(|(len, rows, ty)| {
            prop::collection::vec(row_of(len), rows)
                .prop_map(move |rs| Batch::new(ty, len, &rs.concat()))
        })
}

fn temperature() -> impl Strategy<Value = f64> {
    prop_oneof![
        2 => Just(1.0f64),
        3 => prop::sample::select(vec![0.05f64, 0.3, 0.7, 1.5, 4.0, 100.0]),
        3 => 0.05f64..10.0,
    ]
}

fn top_p() -> impl Strategy<Value = f64> {
    prop_oneof![
        1 => Just(0.0f64),
        1 => Just(1.0f64),
        2 => prop::sample::select(vec![0.5f64, 0.9, 0.95, 0.999]),
        4 => 0.0f64..1.0,
    ]
}

fn min_p() -> impl Strategy<Value = f64> {
    prop_oneof![
        1 => Just(0.0f64),
        1 => Just(1.0f64),
        2 => prop::sample::select(vec![0.01f64, 0.1, 0.3, 0.9]),
        4 => 0.0f64..1.0,
    ]
}

fn min_keep() -> impl Strategy<Value = usize> {
    prop_oneof![4 => Just(1usize), 1 => 2usize..80, 1 => Just(10_000usize)]
}

fn filters() -> impl Strategy<Value = Filters> {
    (
        prop_oneof![
            1 => Just(0.0f64),
            4 => prop::sample::select(vec![0.25f64, 0.7, 1.0, 1.5, 4.0]),
            2 => 0.05f64..5.0,
        ],
        prop_oneof![
            3 => Just(0i64),
            1 => Just(-1i64),
            1 => Just(1i64),
            3 => 1i64..100,
            1 => prop::sample::select(vec![15i64, 16, 17, 63, 64, 65, 1000, 5000, 6000]),
        ],
        prop_oneof![2 => Just(1.0f64), 1 => Just(0.0f64), 2 => prop::sample::select(vec![0.5f64, 0.9, 0.999]), 4 => 0.0f64..1.0],
        prop_oneof![3 => Just(0.0f64), 1 => Just(1.0f64), 2 => 0.0f64..0.5, 1 => prop::sample::select(vec![0.01f64, 0.1])],
        prop_oneof![4 => Just(1usize), 1 => 2usize..80],
        prop::sample::select(vec![Order::Default, Order::Vllm, Order::LlamaCpp]),
    )
        .prop_map(|(temperature, top_k, top_p, min_p, min_keep, order)| Filters {
            temperature,
            top_k,
            top_p,
            min_p,
            min_keep,
            order,
        })
}

fn uniform() -> impl Strategy<Value = f64> {
    prop_oneof![1 => Just(0.0f64), 1 => Just(0.999_999_999f64), 8 => 0.0f64..1.0]
}

fn penalties() -> impl Strategy<Value = Penalties> {
    (
        prop::sample::select(vec![1.0f64, 1.0, 0.5, 1.3, 2.0]),
        prop::sample::select(vec![0.0f64, 0.0, 0.5, -0.7]),
        prop::sample::select(vec![0.0f64, 0.0, 0.25, -1.0, 1.5]),
    )
        .prop_map(|(repetition, presence, frequency)| Penalties {
            repetition,
            presence,
            frequency,
        })
}

/// One row's bias and token lists, as indices resolved against the vocabulary later.
#[derive(Clone, Debug)]
struct History {
    bias: Vec<(Index, f64)>,
    prompt: Vec<Index>,
    output: Vec<(Index, bool)>,
    pen: Penalties,
}

fn history() -> impl Strategy<Value = History> {
    (
        prop::collection::vec(
            (
                any::<Index>(),
                prop_oneof![4 => -8.0f64..8.0, 1 => Just(f64::NEG_INFINITY), 1 => Just(0.0f64)],
            ),
            0..8,
        ),
        prop::collection::vec(any::<Index>(), 0..10),
        prop::collection::vec((any::<Index>(), any::<bool>()), 0..14),
        penalties(),
    )
        .prop_map(|(bias, prompt, output, pen)| History {
            bias,
            prompt,
            output,
            pen,
        })
}

impl History {
    fn resolve(&self, vocab: usize) -> (Bias, Vec<i64>, Vec<i64>) {
        let bias: BTreeMap<u32, f64> = self
            .bias
            .iter()
            .map(|(i, v)| (i.index(vocab) as u32, *v))
            .collect();
        let prompt = self.prompt.iter().map(|i| i.index(vocab) as i64).collect();
        // Half of the output draws from the first few ids, so that counts exceed one.
        let output = self
            .output
            .iter()
            .map(|(i, few)| i.index(if *few { vocab.min(4) } else { vocab }) as i64)
            .collect();
        (bias.into_iter().unzip(), prompt, output)
    }
}

fn to_u32(v: &[i64]) -> Vec<u32> {
    v.iter().map(|&t| t as u32).collect()
}

// ---------------------------------------------------------------------------------------------
// Random rows against the reference

proptest! {
    #![proptest_config(cfg(64))]

    #[test]
    fn softmax_and_log_softmax_match_the_reference(b in batch(), t in temperature()) {
        let results = each_level(|level| {
            let mut p = vec![0.0f32; b.vals.len()];
            let mut lp = vec![0.0f32; b.vals.len()];
            with_elems!(b, x => {
                kernels::softmax(x, b.vocab, t, false, &mut p).unwrap();
                kernels::softmax(x, b.vocab, t, true, &mut lp).unwrap();
            });
            for r in 0..b.rows() {
                let row = b.row(r);
                let (want_p, want_lp) = (re::softmax(row, t), re::log_softmax(row, t));
                let span = r * b.vocab..(r + 1) * b.vocab;
                for (i, (&g, &w)) in p[span.clone()].iter().zip(&want_p).enumerate() {
                    assert!(close(g, w), "{level:?} softmax row {r} token {i}: got {g}, want {w} (t = {t})");
                }
                for (i, (&g, &w)) in lp[span].iter().zip(&want_lp).enumerate() {
                    assert!(close(g, w), "{level:?} log_softmax row {r} token {i}: got {g}, want {w} (t = {t})");
                }
            }
            (bits(&p), bits(&lp))
        });
        assert_same_across("softmax / log_softmax", &results);
    }

    #[test]
    fn argmax_top_k_and_mask_top_k_match_the_reference(b in batch(), mode in 0u8..4, at in any::<Index>()) {
        let v = b.vocab;
        let k = match mode {
            0 => 1,
            1 => v,
            _ => 1 + at.index(v),
        };
        let rows = b.rows();
        each_level(|level| {
            let mut am = vec![0i64; rows];
            let mut vals = vec![0.0f32; rows * k];
            let mut ids = vec![0i64; rows * k];
            let mut masked = vec![0.0f32; rows * v];
            let mut wide = vec![0.0f32; rows * v];
            with_elems!(b, x => {
                kernels::argmax(x, v, &mut am).unwrap();
                kernels::top_k(x, v, k, &mut vals, &mut ids).unwrap();
                kernels::mask(x, v, Mask::TopK(k), &mut masked).unwrap();
                kernels::mask(x, v, Mask::TopK(v + 5), &mut wide).unwrap();
            });
            for r in 0..rows {
                let row = b.row(r);
                assert_eq!(am[r] as usize, re::argmax(row), "{level:?} argmax row {r}");
                let want = re::top_k(row, k);
                let got: Vec<(u32, usize)> = vals[r * k..(r + 1) * k]
                    .iter()
                    .zip(&ids[r * k..(r + 1) * k])
                    .map(|(&x, &i)| (x.to_bits(), i as usize))
                    .collect();
                let want: Vec<(u32, usize)> = want.iter().map(|&(x, i)| (x.to_bits(), i)).collect();
                assert!(got == want, "{level:?} top_k row {r}, k = {k}");
                let span = r * v..(r + 1) * v;
                assert!(bits(&masked[span.clone()]) == bits(&re::mask_top_k(row, k)), "{level:?} mask_top_k row {r}, k = {k}");
                assert!(bits(&wide[span]) == bits(row), "{level:?} mask_top_k row {r}, k > V");
            }
        });
    }

    #[test]
    fn mask_top_p_matches_the_reference(b in batch(), p in top_p(), t in temperature(), mk in min_keep()) {
        let results = each_level(|level| {
            let mut out = vec![0.0f32; b.vals.len()];
            let m = Mask::TopP { top_p: p, temperature: t, min_keep: mk };
            with_elems!(b, x => kernels::mask(x, b.vocab, m, &mut out).unwrap());
            for r in 0..b.rows() {
                let row = b.row(r);
                let kept = mask_kept(row, &out[r * b.vocab..(r + 1) * b.vocab]);
                let want = re::top_p_kept(row, p, t, mk);
                assert!(
                    want.accepts(&kept).is_some(),
                    "{level:?} top_p row {r} (top_p {p}, t {t}, min_keep {mk}): kept {} tokens, want {} (acceptable {:?})",
                    kept.len(), want.exact, want.lengths
                );
            }
            bits(&out)
        });
        assert_same_across("mask_top_p", &results);
    }

    #[test]
    fn mask_min_p_matches_the_reference(b in batch(), p in min_p(), t in temperature(), mk in min_keep()) {
        let results = each_level(|level| {
            let mut out = vec![0.0f32; b.vals.len()];
            let m = Mask::MinP { min_p: p, temperature: t, min_keep: mk };
            with_elems!(b, x => kernels::mask(x, b.vocab, m, &mut out).unwrap());
            for r in 0..b.rows() {
                let row = b.row(r);
                let kept = mask_kept(row, &out[r * b.vocab..(r + 1) * b.vocab]);
                let want = re::min_p_kept(row, p, t, mk);
                assert!(
                    want.accepts(&kept).is_some(),
                    "{level:?} min_p row {r} (min_p {p}, t {t}, min_keep {mk}): kept {} tokens, want {} (acceptable {:?})",
                    kept.len(), want.exact, want.lengths
                );
            }
            bits(&out)
        });
        assert_same_across("mask_min_p", &results);
    }

    #[test]
    fn bias_and_penalties_match_the_reference(
        b in batch(),
        hs in prop::collection::vec(history(), 3),
        with_bias in any::<bool>(),
        with_pen in any::<bool>(),
    ) {
        let (v, rows) = (b.vocab, b.rows());
        let resolved: Vec<_> = hs[..rows].iter().map(|h| h.resolve(v)).collect();
        let bias = PerRow::Each(resolved.iter().map(|r| r.0.clone()).collect());
        let prompt = TokenLists::new("prompt_tokens", resolved.iter().map(|r| r.1.clone()).collect(), v).unwrap();
        let output = TokenLists::new("output_tokens", resolved.iter().map(|r| r.2.clone()).collect(), v).unwrap();
        let pens = PerRow::Each(hs[..rows].iter().map(|h| h.pen).collect());
        let bias_arg = with_bias.then_some(&bias);
        let pen_arg = with_pen.then_some((&prompt, &output, &pens));
        let mut want = Vec::new();
        for (r, (bias_r, prompt_r, output_r)) in resolved.iter().enumerate() {
            let (p, o) = (to_u32(prompt_r), to_u32(output_r));
            let bias_r = with_bias.then_some((bias_r.0.as_slice(), bias_r.1.as_slice()));
            let pen_r = with_pen.then_some((p.as_slice(), o.as_slice(), &hs[r].pen));
            want.extend(re::bias_and_penalties(b.row(r), bias_r, pen_r));
        }
        each_level(|level| {
            let mut out = vec![0.0f32; b.vals.len()];
            with_elems!(b, x => kernels::bias_and_penalties(Some(x), v, bias_arg, pen_arg, &mut out).unwrap());
            assert!(bits(&out) == bits(&want), "{level:?} bias_and_penalties (copy)");
            let mut inplace = b.vals.clone();
            kernels::bias_and_penalties(None::<&[f32]>, v, bias_arg, pen_arg, &mut inplace).unwrap();
            assert!(bits(&inplace) == bits(&want), "{level:?} bias_and_penalties (in place)");
        });
    }

    #[test]
    fn sample_matches_the_reference(
        b in batch(),
        fs in prop::collection::vec(filters(), 3),
        us in prop::collection::vec(uniform(), 3),
    ) {
        let (v, rows) = (b.vocab, b.rows());
        let per_row = PerRow::Each(fs[..rows].to_vec());
        let results = each_level(|level| {
            let mut out = vec![0i64; rows];
            with_elems!(b, x => kernels::sample(x, v, &per_row, &us[..rows], &mut out).unwrap());
            let mut kept_sets = Vec::new();
            for r in 0..rows {
                let (row, f, u, tok) = (b.row(r), &fs[r], us[r], out[r] as usize);
                if f.temperature == 0.0 {
                    assert_eq!(tok, re::argmax(row), "{level:?} greedy row {r}");
                    continue;
                }
                let want = re::pipeline_kept(row, f);
                let got = with_elems!(b, x => kernel_kept(&x[r * v..(r + 1) * v], f));
                let Some(len) = want.accepts(&got) else {
                    panic!(
                        "{level:?} kept set row {r} ({f:?}): kernel kept {} tokens, want {} (acceptable {:?})",
                        got.len(), want.exact, want.lengths
                    );
                };
                let d = re::draw(row, &want.ids(len), f.temperature, u);
                assert!(
                    d.plausible.contains(&tok),
                    "{level:?} draw row {r} ({f:?}, u = {u}): got {tok}, want {} (acceptable {:?})",
                    d.exact, d.plausible
                );
                kept_sets.push(len);
            }
            (out, kept_sets)
        });
        assert_same_across("sampled tokens and kept sets", &results);
    }

    #[test]
    fn logprobs_match_the_reference(
        b in batch(),
        // Up to 130 tokens a row: from 64 on, ranks come from a sorted copy of the row.
        picks in prop::collection::vec(prop::collection::vec(any::<Index>(), 0..130), 3),
        mode in 0u8..4,
        at in any::<Index>(),
    ) {
        let (v, rows) = (b.vocab, b.rows());
        let top_n = match mode {
            0 => 0,
            1 => v,
            _ => at.index(v + 1),
        };
        let tokens: Vec<Vec<i64>> = picks[..rows].iter().map(|p| p.iter().map(|i| i.index(v) as i64).collect()).collect();
        let lists = TokenLists::new("tokens", tokens.clone(), v).unwrap();
        each_level(|level| {
            let mut out = vec![RowLogprobs::default(); rows];
            with_elems!(b, x => kernels::logprobs(x, v, &lists, top_n, &mut out).unwrap());
            let mut ls = vec![0.0f32; rows * v];
            with_elems!(b, x => kernels::softmax(x, v, 1.0, true, &mut ls).unwrap());
            for (r, got) in out.iter().enumerate() {
                // The values of log_softmax, bit for bit.
                let ls_row = &ls[r * v..(r + 1) * v];
                let of = |ids: &[i64]| bits(&ids.iter().map(|&t| ls_row[t as usize]).collect::<Vec<_>>());
                assert_eq!(bits(&got.token_logprobs), of(&tokens[r]), "{level:?} row {r}");
                assert_eq!(bits(&got.top_logprobs), of(&got.top_ids), "{level:?} row {r}");
                let want = re::logprobs(b.row(r), &to_u32(&tokens[r]), top_n);
                assert_eq!(got.token_logprobs.len(), want.token_logprobs.len());
                for (&g, &w) in got.token_logprobs.iter().zip(&want.token_logprobs) {
                    assert!(close(g, w), "{level:?} logprob row {r}: got {g}, want {w}");
                }
                assert_eq!(got.ranks, want.ranks, "{level:?} ranks row {r}");
                let want_ids: Vec<i64> = want.top_ids.iter().map(|&i| i as i64).collect();
                assert_eq!(got.top_ids, want_ids, "{level:?} top ids row {r}");
                for (&g, &w) in got.top_logprobs.iter().zip(&want.top_logprobs) {
                    assert!(close(g, w), "{level:?} top logprob row {r}: got {g}, want {w}");
                }
            }
        });
    }
}

// ---------------------------------------------------------------------------------------------
// Hand-picked cases

/// A deterministic stream of 31-bit integers (the high bits of a 64-bit LCG from `seed`).
pub(super) fn lcg(seed: u64) -> impl FnMut() -> u32 {
    let mut s = seed;
    move || {
        s = s
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (s >> 33) as u32
    }
}

/// [`lcg`] as values spread over `[lo, lo + width)`.
pub(super) fn lcg_f32(seed: u64, lo: f32, width: f32) -> impl FnMut() -> f32 {
    let mut next = lcg(seed);
    move || (next() as f32 / (1u64 << 31) as f32) * width + lo
}

/// A deterministic stream of values in [-30, 30).
fn lcg_values(seed: u64, n: usize) -> Vec<f32> {
    let mut next = lcg(seed);
    (0..n)
        .map(|_| ((next() >> 7) as f32 / (1u64 << 24) as f32) * 60.0 - 30.0)
        .collect()
}

/// Calls every kernel that reads logits on `x` and returns each result.
fn every_kernel<T: Elem>(x: &[T], vocab: usize) -> Vec<(&'static str, Result<(), KernelError>)> {
    let rows = x.len() / vocab;
    let mut f = vec![0.0f32; x.len()];
    let mut ids = vec![0i64; rows];
    let mut top_vals = vec![0.0f32; rows * 2];
    let mut top_ids = vec![0i64; rows * 2];
    let mut lp = vec![RowLogprobs::default(); rows];
    let toks = TokenLists::new("output_tokens", vec![vec![0, 1, 1]; rows], vocab).unwrap();
    let pen = PerRow::All(Penalties {
        repetition: 1.3,
        presence: 0.5,
        frequency: 0.25,
    });
    let bias: PerRow<Bias> = PerRow::All((vec![0, 1], vec![1.0, f64::NEG_INFINITY]));
    let u = vec![0.5; rows];
    let top_p = Mask::TopP {
        top_p: 0.5,
        temperature: 1.0,
        min_keep: 1,
    };
    let min_p = Mask::MinP {
        min_p: 0.5,
        temperature: 1.0,
        min_keep: 1,
    };
    let mut out = vec![
        ("softmax", kernels::softmax(x, vocab, 1.0, false, &mut f)),
        ("log_softmax", kernels::softmax(x, vocab, 0.5, true, &mut f)),
        ("argmax", kernels::argmax(x, vocab, &mut ids)),
        (
            "top_k",
            kernels::top_k(x, vocab, 2, &mut top_vals, &mut top_ids),
        ),
        ("mask_top_k", kernels::mask(x, vocab, Mask::TopK(2), &mut f)),
        ("mask_top_p", kernels::mask(x, vocab, top_p, &mut f)),
        ("mask_min_p", kernels::mask(x, vocab, min_p, &mut f)),
        (
            "bias",
            kernels::bias_and_penalties(Some(x), vocab, Some(&bias), None, &mut f),
        ),
        (
            "penalties",
            kernels::bias_and_penalties(Some(x), vocab, None, Some((&toks, &toks, &pen)), &mut f),
        ),
    ];
    for order in [Order::Default, Order::Vllm, Order::LlamaCpp] {
        for temperature in [0.0, 1.0] {
            let filt = PerRow::All(Filters {
                temperature,
                top_p: 0.9,
                min_p: 0.05,
                order,
                ..Filters::default()
            });
            out.push(("sample", kernels::sample(x, vocab, &filt, &u, &mut ids)));
        }
    }
    out.push(("logprobs", kernels::logprobs(x, vocab, &toks, 2, &mut lp)));
    out
}

/// Every kernel, at every level and in every element type, fails on `src` with `want`.
fn assert_every_kernel_fails(src: &[f32], vocab: usize, want: &KernelError) {
    for ty in TYPES {
        let b = Batch::new(ty, vocab, src);
        assert!(
            same_error(&re::check_batch(&b.vals, vocab).unwrap_err(), want),
            "the reference disagrees with the expected error"
        );
        each_level(|level| {
            for (name, res) in with_elems!(b, x => every_kernel(x, vocab)) {
                let got = res.expect_err(name);
                assert!(
                    same_error(&got, want),
                    "{level:?} {ty:?} {name}: got {got:?}, want {want:?}"
                );
            }
            if ty == Ty::F32 {
                let mut inplace = b.vals.clone();
                let got =
                    kernels::bias_and_penalties(None::<&[f32]>, vocab, None, None, &mut inplace)
                        .unwrap_err();
                assert!(
                    same_error(&got, want),
                    "{level:?} in-place bias: got {got:?}, want {want:?}"
                );
            }
        });
    }
}

#[test]
fn nan_and_pos_inf_are_reported_with_row_and_index() {
    let v = 70;
    let mut x = lcg_values(1, 3 * v);
    x[v + 40] = f32::INFINITY;
    x[v + 17] = f32::NAN;
    x[2 * v + 3] = f32::NAN;
    let want = KernelError::NonFinite {
        row: 1,
        index: 17,
        value: f32::NAN,
    };
    assert_every_kernel_fails(&x, v, &want);

    let mut x = lcg_values(2, 3 * v);
    x[2 * v + 65] = f32::INFINITY;
    x[2 * v + 66] = f32::NAN;
    let want = KernelError::NonFinite {
        row: 2,
        index: 65,
        value: f32::INFINITY,
    };
    assert_every_kernel_fails(&x, v, &want);

    // -inf never counts as bad; NaN in the last element of a partial block is found.
    let mut x = lcg_values(3, 2 * v);
    x[5] = f32::NEG_INFINITY;
    x[2 * v - 1] = f32::NAN;
    let want = KernelError::NonFinite {
        row: 1,
        index: v - 1,
        value: f32::NAN,
    };
    assert_every_kernel_fails(&x, v, &want);
}

#[test]
fn all_masked_rows_are_reported() {
    let v = 70;
    let mut x = lcg_values(4, 3 * v);
    x[v..2 * v].fill(f32::NEG_INFINITY);
    x[2 * v + 9] = f32::NAN;
    assert_every_kernel_fails(&x, v, &KernelError::AllMasked { row: 1 });

    let mut x = lcg_values(5, 2 * v);
    x[..v].fill(f32::NEG_INFINITY);
    x[v + 3] = f32::INFINITY;
    assert_every_kernel_fails(&x, v, &KernelError::AllMasked { row: 0 });

    assert_every_kernel_fails(
        &[f32::NEG_INFINITY; 2],
        2,
        &KernelError::AllMasked { row: 0 },
    );
}

#[test]
fn a_single_finite_token_takes_all_the_mass() {
    for (v, at) in [
        (1usize, 0usize),
        (2, 1),
        (17, 16),
        (64, 0),
        (65, 64),
        (1000, 517),
    ] {
        let mut src = vec![f32::NEG_INFINITY; v];
        src[at] = -3.5;
        for ty in TYPES {
            let b = Batch::new(ty, v, &src);
            each_level(|level| {
                let ctx = format!("{level:?} {ty:?} V = {v}");
                let mut p = vec![0.0f32; v];
                let mut lp = vec![0.0f32; v];
                let mut am = [0i64];
                with_elems!(b, x => {
                    kernels::softmax(x, v, 0.7, false, &mut p).unwrap();
                    kernels::softmax(x, v, 0.7, true, &mut lp).unwrap();
                    kernels::argmax(x, v, &mut am).unwrap();
                });
                for i in 0..v {
                    let (wp, wlp) = if i == at {
                        (1.0, 0.0)
                    } else {
                        (0.0, f32::NEG_INFINITY)
                    };
                    assert_eq!((p[i], lp[i]), (wp, wlp), "{ctx}: softmax token {i}");
                }
                assert_eq!(am[0] as usize, at, "{ctx}: argmax");
                let k = v.min(3);
                let (mut tv, mut ti) = (vec![0.0f32; k], vec![0i64; k]);
                with_elems!(b, x => kernels::top_k(x, v, k, &mut tv, &mut ti).unwrap());
                let want: Vec<i64> = re::rank(&b.vals)
                    .into_iter()
                    .take(k)
                    .map(|i| i as i64)
                    .collect();
                assert_eq!(ti, want, "{ctx}: top_k ids");
                assert_eq!(tv[0], -3.5, "{ctx}: top_k value");
                assert!(
                    tv[1..].iter().all(|&x| x == f32::NEG_INFINITY),
                    "{ctx}: top_k values"
                );
                for m in [
                    Mask::TopK(1),
                    Mask::TopK(2),
                    Mask::TopP {
                        top_p: 0.5,
                        temperature: 1.0,
                        min_keep: 3,
                    },
                    Mask::TopP {
                        top_p: 0.0,
                        temperature: 1.0,
                        min_keep: 1,
                    },
                    Mask::MinP {
                        min_p: 0.5,
                        temperature: 2.0,
                        min_keep: 5,
                    },
                    Mask::MinP {
                        min_p: 1.0,
                        temperature: 1.0,
                        min_keep: 1,
                    },
                ] {
                    let mut out = vec![0.0f32; v];
                    with_elems!(b, x => kernels::mask(x, v, m, &mut out).unwrap());
                    assert_eq!(mask_kept(&b.vals, &out), vec![at], "{ctx}: {m:?}");
                }
                for order in [Order::Default, Order::Vllm, Order::LlamaCpp] {
                    for (temperature, top_k, top_p, min_p, min_keep) in [
                        (1.0, 0, 1.0, 0.0, 1),
                        (0.3, 5, 0.5, 0.2, 4),
                        (2.0, 1, 0.0, 1.0, 100),
                        (0.0, 0, 1.0, 0.0, 1),
                    ] {
                        let f = Filters {
                            temperature,
                            top_k,
                            top_p,
                            min_p,
                            min_keep,
                            order,
                        };
                        for u in [0.0, 0.5, 0.999_999] {
                            let mut tok = [0i64];
                            with_elems!(b, x => kernels::sample(x, v, &PerRow::All(f), &[u], &mut tok).unwrap());
                            assert_eq!(tok[0] as usize, at, "{ctx}: sample {f:?} u = {u}");
                        }
                    }
                }
                let other = if at == 0 { v - 1 } else { 0 };
                let lists =
                    TokenLists::new("tokens", vec![vec![at as i64, other as i64]], v).unwrap();
                let mut out = vec![RowLogprobs::default()];
                with_elems!(b, x => kernels::logprobs(x, v, &lists, 1, &mut out).unwrap());
                if v > 1 {
                    assert_eq!(
                        out[0].token_logprobs,
                        vec![0.0, f32::NEG_INFINITY],
                        "{ctx}: logprobs"
                    );
                    assert_eq!(out[0].ranks, vec![1, 2], "{ctx}: ranks");
                }
                assert_eq!(
                    (out[0].top_ids.clone(), out[0].top_logprobs.clone()),
                    (vec![at as i64], vec![0.0]),
                    "{ctx}: top"
                );
            });
        }
    }
}

#[test]
fn top_k_at_one_and_at_the_vocabulary_size() {
    let v = 130;
    let mut src = lcg_values(6, v);
    src[9] = 31.0;
    src[100] = 31.0;
    src[40] = f32::NEG_INFINITY;
    let b = Batch::new(Ty::F32, v, &src);
    let src3 = src.repeat(3);
    let results = each_level(|level| {
        let (mut tv, mut ti) = (vec![0.0f32; v], vec![0i64; v]);
        kernels::top_k(&src, v, 1, &mut tv[..1], &mut ti[..1]).unwrap();
        assert_eq!(
            (tv[0], ti[0]),
            (31.0, 9),
            "{level:?}: k = 1 takes the lower id among ties"
        );
        kernels::top_k(&src, v, v, &mut tv, &mut ti).unwrap();
        let want: Vec<i64> = re::rank(&src).into_iter().map(|i| i as i64).collect();
        assert_eq!(ti, want, "{level:?}: k = V is the full rank order");
        assert_eq!(tv[v - 1], f32::NEG_INFINITY);
        let mut out = vec![0.0f32; v];
        kernels::mask(&src, v, Mask::TopK(1), &mut out).unwrap();
        assert_eq!(mask_kept(&src, &out), vec![9], "{level:?}: mask k = 1");
        kernels::mask(&src, v, Mask::TopK(v), &mut out).unwrap();
        assert_eq!(
            bits(&out),
            bits(&src),
            "{level:?}: mask k = V keeps the row"
        );
        for k in [0, -3, v as i64, v as i64 + 1] {
            assert!(
                matches!(pipeline_kept_len(&b, k), Some(n) if n == v - 1),
                "{level:?}: top_k {k} is off"
            );
        }
        let mut toks = Vec::new();
        for (i, u) in [0.0, 0.3, 0.6, 0.999_999].into_iter().enumerate() {
            for order in [Order::Default, Order::Vllm, Order::LlamaCpp] {
                let one = Filters {
                    temperature: 1.5,
                    top_k: 1,
                    order,
                    ..Filters::default()
                };
                let off = Filters {
                    top_k: v as i64,
                    ..one
                };
                let none = Filters { top_k: 0, ..one };
                let mut t = [0i64; 3];
                kernels::sample(
                    &src3,
                    v,
                    &PerRow::Each(vec![one, off, none]),
                    &[u; 3],
                    &mut t,
                )
                .unwrap();
                assert_eq!(t[0], 9, "{level:?}: top_k = 1 is greedy (u = {u})");
                assert_eq!(t[1], t[2], "{level:?}: top_k = V is off (u = {u})");
                let want = re::sample(&src, &none, u).1;
                assert!(
                    want.plausible.contains(&(t[2] as usize)),
                    "{level:?}: draw {i}"
                );
                toks.push(t);
            }
        }
        toks
    });
    assert_same_across("top_k sampling", &results);
}

/// The kept-set size of the default pipeline at temperature 1 with only top-k set.
fn pipeline_kept_len(b: &Batch, top_k: i64) -> Option<usize> {
    let f = Filters {
        top_k,
        ..Filters::default()
    };
    let got = with_elems!(b, x => kernel_kept(x, &f));
    re::pipeline_kept(&b.vals, &f).accepts(&got)
}

#[test]
fn top_p_of_equal_logits_keeps_the_written_share() {
    // `top_p = j / V` (the f64 nearest, above or below the exact share) keeps j of V equal
    // logits (`pipeline::TOP_P_SLACK`), in short rows (decided exactly) and long ones, on every
    // level, with the kept entries first in id order.
    for v in [5usize, 10, 20, 1000, 1024, 1025, 3000] {
        let row = vec![0.25f32; v];
        for j in [1, 2, 3, v / 3, v / 2, v - 1]
            .into_iter()
            .filter(|&j| j >= 1)
        {
            let q = j as f64 / v as f64;
            let m = Mask::TopP {
                top_p: q,
                temperature: 0.8,
                min_keep: 1,
            };
            let got = each_level(|_| {
                let mut out = vec![0.0f32; v];
                kernels::mask(&row, v, m, &mut out).unwrap();
                mask_kept(&row, &out)
            });
            for (level, kept) in &got {
                assert_eq!(
                    *kept,
                    (0..j).collect::<Vec<_>>(),
                    "V={v} j={j} on {level:?}"
                );
            }
        }
    }
}

#[test]
fn top_p_and_min_p_extremes() {
    let v = 300;
    let mut src = lcg_values(7, v);
    src[250] = 31.0;
    src[3] = 31.0;
    src[4] = 30.5;
    for i in (0..v).step_by(7) {
        src[i] = f32::NEG_INFINITY;
    }
    let finite = src.iter().filter(|x| x.is_finite()).count();
    let ranked = re::ranked_finite(&src);
    let top = |n: usize| {
        let mut ids = ranked[..n].to_vec();
        ids.sort_unstable();
        ids
    };
    let cases = [
        (
            Mask::TopP {
                top_p: 0.0,
                temperature: 1.0,
                min_keep: 1,
            },
            top(1),
        ),
        (
            Mask::TopP {
                top_p: 0.0,
                temperature: 0.01,
                min_keep: 5,
            },
            top(5),
        ),
        (
            Mask::TopP {
                top_p: 1.0,
                temperature: 1.0,
                min_keep: 1,
            },
            top(finite),
        ),
        (
            Mask::TopP {
                top_p: 1.0,
                temperature: 0.2,
                min_keep: 1000,
            },
            top(finite),
        ),
        (
            Mask::TopP {
                top_p: 0.5,
                temperature: 1.0,
                min_keep: 1000,
            },
            top(finite),
        ),
        (
            Mask::TopP {
                top_p: 1e-300,
                temperature: 1.0,
                min_keep: 1,
            },
            top(1),
        ),
        (
            Mask::MinP {
                min_p: 0.0,
                temperature: 1.0,
                min_keep: 1,
            },
            top(finite),
        ),
        (
            Mask::MinP {
                min_p: 1.0,
                temperature: 1.0,
                min_keep: 1,
            },
            vec![3, 250],
        ),
        (
            Mask::MinP {
                min_p: 1.0,
                temperature: 50.0,
                min_keep: 3,
            },
            vec![3, 4, 250],
        ),
        (
            Mask::MinP {
                min_p: 1.0,
                temperature: 1.0,
                min_keep: 1000,
            },
            top(finite),
        ),
        (
            Mask::MinP {
                min_p: 1e-300,
                temperature: 1.0,
                min_keep: 1,
            },
            top(finite),
        ),
    ];
    for ty in [Ty::F32, Ty::Bf16] {
        let b = Batch::new(ty, v, &src);
        each_level(|level| {
            for (m, want) in &cases {
                let mut out = vec![0.0f32; v];
                with_elems!(b, x => kernels::mask(x, v, *m, &mut out).unwrap());
                assert_eq!(&mask_kept(&b.vals, &out), want, "{level:?} {ty:?} {m:?}");
            }
            for order in [Order::Default, Order::Vllm, Order::LlamaCpp] {
                for u in [0.0, 0.4, 0.999_999] {
                    let cases = [
                        (
                            Filters {
                                temperature: 3.0,
                                top_p: 0.0,
                                order,
                                ..Filters::default()
                            },
                            vec![3],
                        ),
                        (
                            Filters {
                                temperature: 3.0,
                                min_p: 1.0,
                                order,
                                ..Filters::default()
                            },
                            vec![3, 250],
                        ),
                        (
                            Filters {
                                temperature: 0.5,
                                top_p: 0.0,
                                min_keep: 2,
                                order,
                                ..Filters::default()
                            },
                            vec![3, 250],
                        ),
                    ];
                    for (f, want) in cases {
                        let mut tok = [0i64];
                        with_elems!(b, x => kernels::sample(x, v, &PerRow::All(f), &[u], &mut tok).unwrap());
                        assert!(
                            want.contains(&(tok[0] as usize)),
                            "{level:?} {ty:?} {f:?} u = {u}: got {}",
                            tok[0]
                        );
                        assert_eq!(
                            with_elems!(b, x => kernel_kept(x, &f)).len(),
                            want.len(),
                            "{level:?} {f:?}"
                        );
                    }
                }
            }
        });
    }
}

#[test]
fn min_keep_never_revives_removed_tokens() {
    let v = 200;
    let src = lcg_values(8, v);
    let ranked = re::ranked_finite(&src);
    for order in [Order::Default, Order::Vllm, Order::LlamaCpp] {
        let cases = [
            // top-k keeps 3; neither top-p nor min-p may bring more back.
            (
                Filters {
                    top_k: 3,
                    top_p: 0.0,
                    min_keep: 10,
                    order,
                    ..Filters::default()
                },
                3,
            ),
            (
                Filters {
                    top_k: 3,
                    min_p: 1.0,
                    min_keep: 10,
                    order,
                    ..Filters::default()
                },
                3,
            ),
            (
                Filters {
                    top_k: 3,
                    top_p: 0.5,
                    min_p: 0.9,
                    min_keep: 50,
                    order,
                    ..Filters::default()
                },
                3,
            ),
            // min_keep restores what top-p / min-p alone would cut.
            (
                Filters {
                    top_p: 0.0,
                    min_keep: 7,
                    order,
                    ..Filters::default()
                },
                7,
            ),
            (
                Filters {
                    min_p: 1.0,
                    min_keep: 7,
                    order,
                    ..Filters::default()
                },
                7,
            ),
            (
                Filters {
                    top_p: 0.0,
                    min_p: 1.0,
                    min_keep: 500,
                    order,
                    ..Filters::default()
                },
                v,
            ),
        ];
        each_level(|level| {
            for (f, n) in &cases {
                let got = kernel_kept(&src, f);
                let mut want = ranked[..*n].to_vec();
                want.sort_unstable();
                let mut sorted = got.clone();
                sorted.sort_unstable();
                assert_eq!(sorted, want, "{level:?} {f:?}");
                assert_eq!(re::pipeline_kept(&src, f).exact, *n, "reference {f:?}");
            }
        });
    }
}

#[test]
fn greedy_sampling_ignores_filters_and_uniforms() {
    let v = 150;
    let mut src = lcg_values(9, v);
    src[70] = 40.0;
    src[5] = 40.0;
    src[140] = 40.0;
    src[0] = f32::NEG_INFINITY;
    for ty in TYPES {
        let b = Batch::new(ty, v, &src);
        each_level(|level| {
            for order in [Order::Default, Order::Vllm, Order::LlamaCpp] {
                for (top_k, top_p, min_p, min_keep) in
                    [(0, 1.0, 0.0, 1), (1, 0.0, 1.0, 1), (7, 0.3, 0.5, 20)]
                {
                    let f = Filters {
                        temperature: 0.0,
                        top_k,
                        top_p,
                        min_p,
                        min_keep,
                        order,
                    };
                    for u in [0.0, 0.5, 0.999_999_9] {
                        let mut tok = [0i64; 2];
                        let mut two = b.clone();
                        two.vals.extend_from_within(..);
                        two.bits.extend_from_within(..);
                        with_elems!(two, x => kernels::sample(x, v, &PerRow::All(f), &[u, 0.5 + u / 2.0], &mut tok).unwrap());
                        assert_eq!(tok, [5, 5], "{level:?} {ty:?} {f:?} u = {u}");
                    }
                }
            }
        });
    }
}

#[test]
fn the_draw_follows_cumulative_mass_in_id_order() {
    // Probabilities 0.1, 0.2, 0.3, 0.4 on ids 1, 3, 4, 6; the rest masked.
    let mut src = vec![f32::NEG_INFINITY; 8];
    for (i, p) in [(1usize, 1.0f64), (3, 2.0), (4, 3.0), (6, 4.0)] {
        src[i] = p.ln() as f32;
    }
    let cases = [
        (0.0, 1),
        (0.05, 1),
        (0.15, 3),
        (0.29, 3),
        (0.31, 4),
        (0.59, 4),
        (0.61, 6),
        (0.999_999, 6),
    ];
    for ty in TYPES {
        let b = Batch::new(ty, 8, &src);
        each_level(|level| {
            for (u, want) in cases {
                for order in [Order::Default, Order::Vllm, Order::LlamaCpp] {
                    let mut tok = [0i64];
                    let f = Filters {
                        order,
                        ..Filters::default()
                    };
                    with_elems!(b, x => kernels::sample(x, 8, &PerRow::All(f), &[u], &mut tok).unwrap());
                    if ty == Ty::F32 {
                        assert_eq!(tok[0], want, "{level:?} u = {u}");
                    }
                    let d = re::draw(&b.vals, &[1, 3, 4, 6], 1.0, u);
                    assert!(
                        d.plausible.contains(&(tok[0] as usize)),
                        "{level:?} {ty:?} u = {u}"
                    );
                }
            }
            // Nucleus of 0.5: 0.4 + 0.3 crosses it; min-p 0.5 keeps p >= 0.2.
            let mut out = vec![0.0f32; 8];
            kernels::mask(
                &src,
                8,
                Mask::TopP {
                    top_p: 0.5,
                    temperature: 1.0,
                    min_keep: 1,
                },
                &mut out,
            )
            .unwrap();
            assert_eq!(mask_kept(&src, &out), vec![4, 6], "{level:?} top_p");
            kernels::mask(
                &src,
                8,
                Mask::MinP {
                    min_p: 0.45,
                    temperature: 1.0,
                    min_keep: 1,
                },
                &mut out,
            )
            .unwrap();
            assert_eq!(mask_kept(&src, &out), vec![3, 4, 6], "{level:?} min_p");
            // Within the kept {4, 6}: 3/7 and 4/7.
            let f = Filters {
                top_p: 0.5,
                ..Filters::default()
            };
            for (u, want) in [(0.4, 4), (0.45, 6)] {
                let mut tok = [0i64];
                kernels::sample(&src, 8, &PerRow::All(f), &[u], &mut tok).unwrap();
                assert_eq!(tok[0], want, "{level:?} top_p draw u = {u}");
            }
        });
    }
}

#[test]
fn large_batches_run_rows_independently() {
    let (rows, v) = (20usize, 4096usize);
    let mut src = lcg_values(10, rows * v);
    for (r, row) in src.chunks_mut(v).enumerate() {
        row[(r * 37) % v] = f32::NEG_INFINITY;
        if r % 3 == 0 {
            for x in row.iter_mut() {
                *x = (*x * 0.1).round();
            }
        }
    }
    let filters: Vec<Filters> = (0..rows)
        .map(|r| Filters {
            temperature: [0.0, 0.6, 1.0, 2.0][r % 4],
            top_k: [0, 50, 0, 4096][r % 4],
            top_p: [1.0, 0.9, 0.7, 0.95][(r / 4) % 4],
            min_p: [0.0, 0.05][r % 2],
            min_keep: 1 + r % 3,
            order: [Order::Default, Order::Vllm, Order::LlamaCpp][r % 3],
        })
        .collect();
    let us: Vec<f64> = (0..rows)
        .map(|r| (r as f64 * 0.618_033_988_7).fract())
        .collect();
    let b = Batch::new(Ty::Bf16, v, &src);
    let results = each_level(|level| {
        let mut p = vec![0.0f32; rows * v];
        let mut tok = vec![0i64; rows];
        with_elems!(b, x => {
            kernels::softmax(x, v, 0.8, false, &mut p).unwrap();
            kernels::sample(x, v, &PerRow::Each(filters.clone()), &us, &mut tok).unwrap();
        });
        for r in 0..rows {
            let row = b.row(r);
            let xr = &as_bf16(&b.bits)[r * v..(r + 1) * v];
            let mut one = vec![0.0f32; v];
            kernels::softmax(xr, v, 0.8, false, &mut one).unwrap();
            assert_eq!(
                bits(&one),
                bits(&p[r * v..(r + 1) * v]),
                "{level:?} row {r} alone"
            );
            for (&g, &w) in one.iter().zip(&re::softmax(row, 0.8)) {
                assert!(close(g, w), "{level:?} softmax row {r}");
            }
            let mut t1 = [0i64];
            kernels::sample(xr, v, &PerRow::All(filters[r]), &[us[r]], &mut t1).unwrap();
            assert_eq!(t1[0], tok[r], "{level:?} sample row {r} alone");
            let d = re::sample(row, &filters[r], us[r]).1;
            assert!(
                d.plausible.contains(&(tok[r] as usize)),
                "{level:?} sample row {r}"
            );
        }
        (bits(&p), tok)
    });
    assert_same_across("large batch", &results);

    let mut bad = src.clone();
    bad[13 * v + 4000] = f32::NAN;
    bad[15 * v..16 * v].fill(f32::NEG_INFINITY);
    let mut p = vec![0.0f32; rows * v];
    let mut tok = vec![0i64; rows];
    let want = KernelError::NonFinite {
        row: 13,
        index: 4000,
        value: f32::NAN,
    };
    each_level(|level| {
        let got = kernels::softmax(&bad, v, 1.0, false, &mut p).unwrap_err();
        assert!(same_error(&got, &want), "{level:?}: {got:?}");
        let got =
            kernels::sample(&bad, v, &PerRow::Each(filters.clone()), &us, &mut tok).unwrap_err();
        assert!(same_error(&got, &want), "{level:?}: {got:?}");
    });
    bad[4 * v..5 * v].fill(f32::NEG_INFINITY);
    each_level(|level| {
        let got = kernels::argmax(&bad, v, &mut tok).unwrap_err();
        assert_eq!(got, KernelError::AllMasked { row: 4 }, "{level:?}");
    });
}

#[test]
fn out_of_range_parameters_are_refused() {
    let x = lcg_values(11, 40);
    let v = 20;
    let mut f = vec![0.0f32; 40];
    let mut i = vec![0i64; 2];
    let name = |e: KernelError| match e {
        KernelError::InvalidParam { name, .. } => name,
        other => panic!("unexpected {other:?}"),
    };
    let _guard = simd::test_lock();
    for t in [0.0, -1.0, f64::NAN, f64::INFINITY] {
        assert_eq!(
            name(kernels::softmax(&x, v, t, false, &mut f).unwrap_err()),
            "temperature"
        );
    }
    let (mut tv, mut ti) = (vec![0.0f32; 42], vec![0i64; 42]);
    assert_eq!(
        name(kernels::top_k(&x, v, 0, &mut [], &mut []).unwrap_err()),
        "k"
    );
    assert_eq!(
        name(kernels::top_k(&x, v, 21, &mut tv, &mut ti).unwrap_err()),
        "k"
    );
    assert_eq!(
        name(kernels::mask(&x, v, Mask::TopK(0), &mut f).unwrap_err()),
        "k"
    );
    let tp = |top_p, temperature, min_keep| Mask::TopP {
        top_p,
        temperature,
        min_keep,
    };
    assert_eq!(
        name(kernels::mask(&x, v, tp(1.5, 1.0, 1), &mut f).unwrap_err()),
        "top_p"
    );
    assert_eq!(
        name(kernels::mask(&x, v, tp(-0.1, 1.0, 1), &mut f).unwrap_err()),
        "top_p"
    );
    assert_eq!(
        name(kernels::mask(&x, v, tp(0.5, 0.0, 1), &mut f).unwrap_err()),
        "temperature"
    );
    assert_eq!(
        name(kernels::mask(&x, v, tp(0.5, 1.0, 0), &mut f).unwrap_err()),
        "min_keep"
    );
    let mp = Mask::MinP {
        min_p: f64::NAN,
        temperature: 1.0,
        min_keep: 1,
    };
    assert_eq!(name(kernels::mask(&x, v, mp, &mut f).unwrap_err()), "min_p");
    let bad = [
        (
            Filters {
                temperature: -0.5,
                ..Filters::default()
            },
            "temperature",
        ),
        (
            Filters {
                top_p: 1.01,
                ..Filters::default()
            },
            "top_p",
        ),
        (
            Filters {
                min_p: -0.01,
                ..Filters::default()
            },
            "min_p",
        ),
        (
            Filters {
                min_keep: 0,
                ..Filters::default()
            },
            "min_keep",
        ),
    ];
    for (filt, want) in bad {
        assert_eq!(
            name(kernels::sample(&x, v, &PerRow::All(filt), &[0.5, 0.5], &mut i).unwrap_err()),
            want
        );
    }
    assert_eq!(
        name(
            kernels::sample(&x, v, &PerRow::All(Filters::default()), &[0.5, 1.0], &mut i)
                .unwrap_err()
        ),
        "uniforms"
    );
    let bias: PerRow<Bias> = PerRow::All((vec![20], vec![1.0]));
    assert_eq!(
        name(kernels::bias_and_penalties(Some(&x[..]), v, Some(&bias), None, &mut f).unwrap_err()),
        "bias"
    );
    let bias: PerRow<Bias> = PerRow::All((vec![2], vec![f64::INFINITY]));
    assert_eq!(
        name(kernels::bias_and_penalties(Some(&x[..]), v, Some(&bias), None, &mut f).unwrap_err()),
        "bias"
    );
    let none = TokenLists::empty(2);
    let p = PerRow::All(Penalties {
        repetition: 0.0,
        ..Penalties::default()
    });
    assert_eq!(
        name(
            kernels::bias_and_penalties(Some(&x[..]), v, None, Some((&none, &none, &p)), &mut f)
                .unwrap_err()
        ),
        "repetition_penalty"
    );
    assert!(TokenLists::new("tokens", vec![vec![20]], v).is_err());
    assert!(TokenLists::new("tokens", vec![vec![-1]], v).is_err());
    let mut lp = vec![RowLogprobs::default(); 2];
    assert_eq!(
        name(kernels::logprobs(&x, v, &none, 21, &mut lp).unwrap_err()),
        "top_n"
    );
}

#[test]
fn neutral_penalties_keep_every_bit() {
    let mut src = lcg_values(12, 64);
    src[0] = -0.0;
    src[1] = f32::NEG_INFINITY;
    src[2] = 0.0;
    let toks = TokenLists::new("tokens", vec![vec![0, 1, 2, 2, 5]], 64).unwrap();
    let neutral = PerRow::All(Penalties::default());
    let zero_bias: PerRow<Bias> = PerRow::All((vec![], vec![]));
    each_level(|level| {
        let mut out = vec![1.0f32; 64];
        kernels::bias_and_penalties(
            Some(&src[..]),
            64,
            Some(&zero_bias),
            Some((&toks, &toks, &neutral)),
            &mut out,
        )
        .unwrap();
        assert_eq!(bits(&out), bits(&src), "{level:?}");
    });
}

#[test]
fn f16_conversion_rounds_to_nearest_even() {
    for h in 0..0x7c00u16 {
        let v = f16_value(h);
        assert_eq!(f16_bits(v), h, "{h:#06x}");
        assert_eq!(f16_bits(-v), h | 0x8000, "-{h:#06x}");
        let mid = ((f64::from(v) + f64::from(f16_value(h + 1))) / 2.0) as f32;
        let even = if h % 2 == 0 { h } else { h + 1 };
        assert_eq!(f16_bits(mid), even, "midpoint above {h:#06x}");
    }
    assert_eq!(f16_bits(f32::INFINITY), 0x7c00);
    assert_eq!(f16_bits(f32::NEG_INFINITY), 0xfc00);
    assert_eq!(f16_bits(1e6), 0x7c00);
    assert!(f16_value(f16_bits(f32::NAN)).is_nan());
    for h in 0..=u16::MAX {
        let want = f16_value(h);
        let got = as_f16(&[h])[0].to_f32();
        assert!(
            got.to_bits() == want.to_bits() || (got.is_nan() && want.is_nan()),
            "{h:#06x}"
        );
    }
    assert_eq!(f16_bits(65519.0), 0x7bff);
    assert_eq!(f16_bits(65520.0), 0x7c00);
    assert_eq!(f16_bits(1e-8), 0);
    assert_eq!((bf16_bits(1.5), bf16_bits(-2.0)), (0x3fc0, 0xc000));
}

/// `-0.0` and `+0.0` are equal logits, so ties go to the lower id (as `argmax` does).
#[test]
fn signed_zeros_are_ties() {
    let src = [-1.0f32, -0.0, 0.0, -5.0];
    each_level(|level| {
        let mut am = [0i64];
        kernels::argmax(&src[..], 4, &mut am).unwrap();
        assert_eq!(am[0], 1, "{level:?} argmax");
        let (mut tv, mut ti) = ([0.0f32; 2], [0i64; 2]);
        kernels::top_k(&src[..], 4, 2, &mut tv, &mut ti).unwrap();
        assert_eq!(ti, [1, 2], "{level:?} top_k order of tied -0.0 / +0.0");
        let mut out = [0.0f32; 4];
        kernels::mask(&src[..], 4, Mask::TopK(1), &mut out).unwrap();
        assert_eq!(mask_kept(&src, &out), vec![1], "{level:?} mask_top_k(1)");
        let toks = TokenLists::empty(1);
        let mut lp = vec![RowLogprobs::default()];
        kernels::logprobs(&src[..], 4, &toks, 1, &mut lp).unwrap();
        assert_eq!(lp[0].top_ids, vec![1], "{level:?} logprobs top id");
    });
}

// ---------------------------------------------------------------------------------------------
// Extreme but legal temperatures

/// A kept set and the tokens drawn from it.
type KeptAndDraws = (Vec<usize>, Vec<i64>);

/// The kept set of the top-p mask at temperature `t`, and the draws for `us`, at every level.
fn top_p_and_draws(src: &[f32], top_p: f64, t: f64, us: &[f64]) -> Vec<(Level, KeptAndDraws)> {
    each_level(|_| {
        let v = src.len();
        let mut out = vec![0.0f32; v];
        let m = Mask::TopP {
            top_p,
            temperature: t,
            min_keep: 1,
        };
        kernels::mask(src, v, m, &mut out).unwrap();
        let f = Filters {
            temperature: t,
            top_p,
            ..Filters::default()
        };
        let toks = us
            .iter()
            .map(|&u| {
                let mut tok = [0i64];
                kernels::sample(src, v, &PerRow::All(f), &[u], &mut tok).unwrap();
                tok[0]
            })
            .collect();
        (mask_kept(src, &out), toks)
    })
}

/// Softmax at a tiny positive temperature: all the mass on the maximum, shared among ties.
#[test]
fn tiny_temperature_softmax_puts_the_mass_on_the_maxima() {
    let src = [1.0f32, 3.0, 3.0, -2.0, f32::NEG_INFINITY];
    for t in [1e-30, 1e-39, 1e-44] {
        each_level(|level| {
            let mut p = [0.0f32; 5];
            let mut lp = [0.0f32; 5];
            kernels::softmax(&src[..], 5, t, false, &mut p).unwrap();
            kernels::softmax(&src[..], 5, t, true, &mut lp).unwrap();
            assert_eq!(p, [0.0, 0.5, 0.5, 0.0, 0.0], "{level:?} softmax t = {t}");
            for (i, (&g, &w)) in lp.iter().zip(&re::log_softmax(&src, t)).enumerate() {
                assert!(
                    close(g, w),
                    "{level:?} log_softmax t = {t} token {i}: got {g}, want {w}"
                );
            }
        });
    }
}

/// Sampling at a tiny positive temperature: the tied maxima share the mass (top-p keeps both).
#[test]
fn tiny_temperature_sampling_shares_the_mass_among_tied_maxima() {
    let src = [1.0f32, 3.0, 3.0, -2.0, f32::NEG_INFINITY];
    for t in [1e-30, 1e-39, 1e-44] {
        let f = Filters {
            temperature: t,
            top_p: 0.9,
            ..Filters::default()
        };
        assert_eq!(re::sample(&src, &f, 0.75).1.exact, 2);
        for (level, (kept, toks)) in top_p_and_draws(&src, 0.9, t, &[0.25, 0.75]) {
            assert_eq!(kept, vec![1, 2], "{level:?} mask_top_p(0.9) t = {t}");
            assert_eq!(toks, vec![1, 2], "{level:?} sample t = {t}");
        }
    }
}

/// A huge finite temperature: the distribution is uniform over the finite tokens (to f64
/// precision).
#[test]
fn huge_temperature_flattens_the_distribution() {
    let src = [5.0f32, 0.0, -3.0, 1.0, f32::NEG_INFINITY];
    for t in [1e30, 1e46, 1e300] {
        let f = Filters {
            temperature: t,
            top_p: 0.6,
            ..Filters::default()
        };
        assert_eq!(re::sample(&src, &f, 0.6).1.exact, 1);
        assert_eq!(re::top_p_kept(&src, 0.6, t, 1).exact, 3);
        each_level(|level| {
            let mut p = [0.0f32; 5];
            kernels::softmax(&src[..], 5, t, false, &mut p).unwrap();
            assert_eq!(
                p,
                [0.25, 0.25, 0.25, 0.25, 0.0],
                "{level:?} softmax t = {t}"
            );
        });
        // Top-p 0.6 of four equal tokens keeps three (ids 0, 1, 3); u = 0.6 draws the second.
        for (level, (kept, toks)) in top_p_and_draws(&src, 0.6, t, &[0.2, 0.6]) {
            assert_eq!(kept, vec![0, 1, 3], "{level:?} mask_top_p(0.6) t = {t}");
            assert_eq!(toks, vec![0, 1], "{level:?} sample t = {t}");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Large but finite logits

/// SPEC §8: `log_softmax` of finite logits is finite, also when `x - max` leaves the `f32`
/// range before the division by the temperature brings it back.
#[test]
fn log_softmax_of_finite_logits_is_finite() {
    let src = [3e38f32, -3e38, 1.0, -2.5e38];
    for ty in [Ty::F32, Ty::Bf16] {
        let b = Batch::new(ty, 4, &src);
        let want = re::log_softmax(&b.vals, 2.0);
        assert!(want.iter().all(|w| (*w as f32).is_finite()));
        each_level(|level| {
            let mut lp = [0.0f32; 4];
            with_elems!(b, x => kernels::softmax(x, 4, 2.0, true, &mut lp).unwrap());
            for (i, (&g, &w)) in lp.iter().zip(&want).enumerate() {
                assert!(close(g, w), "{level:?} {ty:?} token {i}: got {g}, want {w}");
            }
        });
    }
}

/// `mask_top_p` and `sample` (top-p and temperature of `f`) of the one-row batch `b` at the
/// current level, checked against the reference: the mask keeps an acceptable prefix of `want`,
/// and each draw at `us` is a plausible draw from that prefix. Returns the mask and the tokens.
fn top_p_checked(
    b: &Batch,
    f: Filters,
    want: &re::KeptRef,
    us: &[f64],
    what: &str,
) -> (Vec<f32>, Vec<i64>) {
    let v = b.vocab;
    let mut out = vec![0.0f32; v];
    let m = Mask::TopP {
        top_p: f.top_p,
        temperature: f.temperature,
        min_keep: 1,
    };
    with_elems!(b, x => kernels::mask(x, v, m, &mut out).unwrap());
    let kept = mask_kept(&b.vals, &out);
    let len = want.accepts(&kept).unwrap_or_else(|| {
        panic!(
            "{what}: kept {}, want {} ({:?})",
            kept.len(),
            want.exact,
            want.lengths
        )
    });
    let toks = us
        .iter()
        .map(|&u| {
            let mut tok = [0i64];
            with_elems!(b, x => kernels::sample(x, v, &PerRow::All(f), &[u], &mut tok).unwrap());
            let d = re::draw(&b.vals, &want.ids(len), f.temperature, u);
            assert!(
                d.plausible.contains(&(tok[0] as usize)),
                "{what} u {u}: got {}, want {}",
                tok[0],
                d.exact
            );
            tok[0]
        })
        .collect();
    (out, toks)
}

/// Temperatures so large that logits more than `f32::MAX` apart still weigh something: the
/// kernels weigh such rows on a halved copy, so softmax, log-softmax, top-p and the draw follow
/// the reference's `f64` weights (`e^((v - v_max) / t)` with the difference taken in `f64`).
#[test]
fn huge_temperatures_weigh_logits_more_than_the_f32_range_apart() {
    let src = [3e38f32, -3e38, 1.0, -2.5e38, f32::NEG_INFINITY, 2e-45];
    let v = src.len();
    for ty in [Ty::F32, Ty::Bf16] {
        let b = Batch::new(ty, v, &src);
        for t in [1e37, 1e38, 3e38, 1e39, 1e45, 2e45, 1e300] {
            let (want_p, want_lp) = (re::softmax(&b.vals, t), re::log_softmax(&b.vals, t));
            let results = each_level(|level| {
                let (mut p, mut lp) = (vec![0.0f32; v], vec![0.0f32; v]);
                with_elems!(b, x => {
                    kernels::softmax(x, v, t, false, &mut p).unwrap();
                    kernels::softmax(x, v, t, true, &mut lp).unwrap();
                });
                for i in 0..v {
                    let what = format!("{level:?} {ty:?} t = {t} token {i}");
                    assert!(
                        close(p[i], want_p[i]),
                        "{what}: softmax {} vs {}",
                        p[i],
                        want_p[i]
                    );
                    assert!(
                        close(lp[i], want_lp[i]),
                        "{what}: log {} vs {}",
                        lp[i],
                        want_lp[i]
                    );
                }
                let mut draws = Vec::new();
                for top_p in [1.0, 0.95, 0.6, 0.3] {
                    let f = Filters {
                        temperature: t,
                        top_p,
                        ..Filters::default()
                    };
                    let want = re::pipeline_kept(&b.vals, &f);
                    let what = format!("{level:?} {ty:?} t = {t} top_p = {top_p}");
                    let (_, toks) = top_p_checked(&b, f, &want, &[0.05, 0.3, 0.6, 0.95], &what);
                    draws.extend(toks);
                }
                (bits(&p), bits(&lp), draws)
            });
            assert_same_across("huge-temperature results", &results);
        }
    }
}

/// Log-probabilities of two tied large logits are `ln(1/2)` each, whatever their magnitude.
#[test]
#[cfg(target_pointer_width = "64")]
fn rows_longer_than_32_bit_ids_are_refused() {
    // No row is read: the length alone is refused (ids are 32-bit).
    let vocab = 1usize << 32;
    let err = kernels::argmax::<f32>(&[], vocab, &mut []).unwrap_err();
    assert!(err.to_string().starts_with("logits: "), "{err}");
    assert!(kernels::argmax::<f32>(&[], vocab - 1, &mut []).is_ok());
    // top_k refuses before it allocates its candidates.
    let err = kernels::top_k::<f32>(&[], vocab, 1, &mut [], &mut []).unwrap_err();
    assert!(err.to_string().starts_with("logits: "), "{err}");
}

#[test]
fn ranks_of_many_tokens_count_strictly_larger_logits() {
    // Ties, signed zeros and masked tokens, ranked by counting and by the sorted copy.
    let row: Vec<f32> = (0..300)
        .map(|i| match i % 7 {
            0 => 0.0,
            1 => -0.0,
            2 => f32::NEG_INFINITY,
            3 => 1.5,
            _ => (i % 13) as f32 - 6.0,
        })
        .collect();
    let all: Vec<i64> = (0..300).collect();
    for n in [1, 63, 64, 300] {
        let tokens = vec![all[..n].to_vec()];
        let lists = TokenLists::new("tokens", tokens, row.len()).unwrap();
        let mut out = vec![RowLogprobs::default()];
        kernels::logprobs(&row, row.len(), &lists, 0, &mut out).unwrap();
        let want = re::logprobs(&row, &to_u32(&all[..n]), 0);
        assert_eq!(out[0].ranks, want.ranks, "{n} tokens");
    }
}

#[test]
fn logprobs_of_large_logits_keep_their_precision() {
    let src = [1e17f32, 1e17, 0.0, -1e17];
    let lists = TokenLists::new("tokens", vec![vec![0, 2]], 4).unwrap();
    let want = re::logprobs(&src, &[0, 2], 2);
    assert!((want.top_logprobs[0] + std::f64::consts::LN_2).abs() < 1e-12);
    each_level(|level| {
        let mut out = vec![RowLogprobs::default()];
        kernels::logprobs(&src[..], 4, &lists, 2, &mut out).unwrap();
        for (&g, &w) in out[0].token_logprobs.iter().zip(&want.token_logprobs) {
            assert!(close(g, w), "{level:?} token logprob: got {g}, want {w}");
        }
        for (&g, &w) in out[0].top_logprobs.iter().zip(&want.top_logprobs) {
            assert!(close(g, w), "{level:?} top logprob: got {g}, want {w}");
        }
    });
}

/// `argmax` reads a row chunk by chunk: the first maximum wins across chunk boundaries, and the
/// first NaN / `+inf` is reported at its index in the row.
#[test]
fn argmax_across_chunks() {
    let v = 3 * 4096 + 123;
    let base: Vec<f32> = (0..v).map(|i| ((i * 7919) % 1000) as f32 * 1e-3).collect();
    let cases: Vec<(Vec<(usize, f32)>, usize)> = vec![
        (vec![(5000, 2.0)], 5000),
        (vec![(v - 1, 2.0)], v - 1),
        (vec![(4095, 2.0), (4096, 2.0)], 4095),
        (vec![(9000, 2.0), (100, 2.0), (12300, 2.0)], 100),
        (vec![(8192, 0.0), (20, -0.0)], 20),
    ];
    for (edits, want) in cases {
        let mut x = base.clone();
        if want == 20 {
            x.iter_mut().for_each(|e| *e = -1.0);
        }
        for &(i, val) in &edits {
            x[i] = val;
        }
        let mut am = [0i64];
        for (level, got) in each_level(|_| {
            kernels::argmax(&x, v, &mut am).unwrap();
            am[0]
        }) {
            assert_eq!(got as usize, want, "{level:?} {edits:?}");
            assert_eq!(want, re::argmax(&x), "reference {edits:?}");
        }
    }
    let mut x = base.clone();
    x[9999] = f32::NAN;
    x[12000] = f32::INFINITY;
    let mut am = [0i64];
    each_level(|level| {
        let e = kernels::argmax(&x, v, &mut am).unwrap_err();
        assert!(
            matches!(
                e,
                KernelError::NonFinite {
                    row: 0,
                    index: 9999,
                    ..
                }
            ),
            "{level:?}: {e:?}"
        );
    });
}

/// The block maxima and the row maximum of `scan` are the portable code's, bit for bit, on every
/// level: sixteen blocks reduced together included, with `-0.0` / `+0.0` ties and a tail; in
/// f32 and in bfloat16 (whose block maxima compare order keys: `+0` wins over `-0`).
#[test]
fn scan_gives_the_portable_bits_on_every_level() {
    use super::prims;
    fn check<T: Elem>(x: &[T], what: &str) -> Vec<f32> {
        let mut want = vec![0.0f32; prims::n_blocks(x.len())];
        let (m, bad) = prims::scan_portable(x, &mut want);
        assert!(!bad);
        each_level(|level| {
            let mut got = vec![1.0f32; want.len()];
            let prims::Scan::Max(gm) = prims::scan(x, &mut got) else {
                panic!("{level:?}: bad row");
            };
            assert_eq!(gm.to_bits(), m.to_bits(), "{level:?} {what} row max");
            assert!(
                bits(&got) == bits(&want),
                "{level:?} {what} block maxima, len {}",
                x.len()
            );
        });
        want
    }
    for (len, seed) in [
        (64 * 16 * 3 + 64 * 5 + 17, 1u64),
        (64 * 16, 2),
        (1000, 3),
        (64 * 16 * 7, 4),
        (64 * 16 * 2 + 64, 5),
        (40, 6),
    ] {
        let mut s = seed;
        let x: Vec<f32> = (0..len)
            .map(|_| {
                s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                match (s >> 60) as u8 {
                    0 => -0.0,
                    1 => 0.0,
                    2 => f32::NEG_INFINITY,
                    // Mostly negative, so that many blocks top out at a zero.
                    _ => ((s >> 40) % 64) as f32 * 0.25 - 16.0 + f32::from(seed == 5) * 15.0,
                }
            })
            .collect();
        check(&x, "f32");
        // Exact in bfloat16 (multiples of 1/4 below 64 in magnitude, zeros and -inf).
        let h: Vec<u16> = x.iter().map(|v| (v.to_bits() >> 16) as u16).collect();
        let bmax = check(as_bf16(&h), "bf16");
        // `max` of a bfloat16 row follows the same key rule on every level.
        let mut scratch = vec![0.0f32; bmax.len()];
        let prims::Scan::Max(row) = prims::scan(as_bf16(&h), &mut scratch) else {
            panic!("bad row")
        };
        each_level(|level| {
            let prims::Scan::Max(m) = prims::max(as_bf16(&h)) else {
                panic!("{level:?}: bad row");
            };
            assert_eq!(m.to_bits(), row.to_bits(), "{level:?} bf16 max, len {len}");
        });
        for (b, blk) in x.chunks(prims::BLOCK).enumerate() {
            let top = blk.iter().fold(f32::NEG_INFINITY, |a, &v| a.max(v));
            let plus_zero = blk.iter().any(|v| v.to_bits() == 0);
            let want = if top == 0.0 && plus_zero { 0.0 } else { top };
            assert_eq!(
                bmax[b].to_bits(),
                if top == 0.0 && !plus_zero {
                    (-0.0f32).to_bits()
                } else {
                    want.to_bits()
                },
                "bf16 block {b} of {len}"
            );
        }
    }
    // A row maximum of zero whose first zero block (21: group 1, position 5) lies after a zero
    // block at a lower position of a later group (34: group 2, position 2): the sign of the first
    // one counts, whichever order the SIMD levels keep their running maxima in.
    for (first, later) in [(-0.0f32, 0.0f32), (0.0, -0.0)] {
        let mut x = vec![-1.0f32; 64 * 16 * 3 + 40];
        x[21 * 64 + 7] = first;
        x[34 * 64 + 50] = later;
        check(&x, "f32 zero row maximum");
    }
}

/// `widen_checked` reports what `max` of the copy reports (the maximum, or the first NaN /
/// `+inf` with its index) and, for a row without them, copies it bit for bit, on every level, in
/// every element type, for lengths with and without a tail and across its chunks.
#[test]
fn widen_checked_copies_and_checks_like_max_on_every_level() {
    use super::prims;
    fn same(a: &prims::Scan, b: &prims::Scan) -> bool {
        match (a, b) {
            (prims::Scan::Max(x), prims::Scan::Max(y)) => x.to_bits() == y.to_bits(),
            (prims::Scan::Bad(i, x), prims::Scan::Bad(j, y)) => {
                i == j && x.to_bits() == y.to_bits()
            }
            _ => false,
        }
    }
    fn check<T: Elem>(x: &[T], what: &str) {
        let want: Vec<f32> = x.iter().map(|e| e.to_f32()).collect();
        let want_scan = prims::max(&want[..]);
        each_level(|level| {
            let mut got = vec![7.0f32; x.len()];
            let scan = prims::widen_checked(x, &mut got);
            assert!(
                same(&scan, &want_scan),
                "{level:?} {what} len {}: {scan:?} vs {want_scan:?}",
                x.len()
            );
            if let prims::Scan::Max(_) = scan {
                assert!(
                    bits(&got) == bits(&want),
                    "{level:?} {what} copy, len {}",
                    x.len()
                );
            }
        });
    }
    let mut next = lcg(9);
    for len in [1usize, 15, 16, 17, 40, 1000, 4096, 4097, 3 * 4096 + 100] {
        let base: Vec<f32> = (0..len)
            .map(|_| match next() % 16 {
                0 => -0.0,
                1 => f32::NEG_INFINITY,
                // Exact in float16 and bfloat16.
                r => (r * 16 + next() % 16) as f32 * 0.125 - 16.0,
            })
            .collect();
        let mut rows = vec![base.clone(), vec![f32::NEG_INFINITY; len]];
        for (at, bad) in [(0, f32::NAN), (len / 2, f32::INFINITY), (len - 1, f32::NAN)] {
            let mut r = base.clone();
            r[at] = bad;
            if at + 1 < len {
                // A later bad value: the first one is reported.
                r[len - 1] = f32::INFINITY;
            }
            rows.push(r);
        }
        for r in &rows {
            check(&r[..], "f32");
            let h: Vec<u16> = r.iter().map(|&v| f16_bits(v)).collect();
            check(as_f16(&h), "f16");
            let b: Vec<u16> = r.iter().map(|&v| bf16_bits(v)).collect();
            check(as_bf16(&b), "bf16");
        }
    }
}

/// Long-tailed rows, whose nucleus reaches deep into a large bulk (the heaviest block maxima do
/// not hold the top-p mass, so the nucleus is collected in rounds from the top), and flat ones:
/// kept sets and draws as the reference, on every level and element type, with ties at the
/// boundary (runs of equal logits thousands long), and bulks so narrow that the crossing bucket
/// is split again. Then min-p and `min_keep` after such a nucleus, in the pipeline.
#[test]
fn long_tailed_top_p_matches_the_reference() {
    let v = 20_000;
    for (seed, spread, grid, spikes) in [
        (1u64, 2.0f32, 0.0f32, true),
        (2, 3.0, 0.25, true),
        (3, 1.0, 0.0, true),
        (4, 0.02, 0.0, false),
        (5, 0.0, 0.0, false),
        (6, 0.0, 0.0, true),
        (7, 4.0, 0.5, false),
    ] {
        // A bulk of spread * (sum of three uniforms) with a few spikes above it, on a grid (many
        // ties) where `grid > 0`; all equal where `spread = 0`.
        let mut x: Vec<f32> = lcg_values(seed, 3 * v)
            .chunks_exact(3)
            .map(|c| spread * (c[0] + c[1] + c[2]) / 30.0)
            .collect();
        if spikes {
            for (i, lift) in [(17usize, 9.0f32), (9_999, 8.0), (19_000, 7.5)] {
                x[i] = spread * 3.0 + lift;
            }
        }
        if grid > 0.0 {
            x.iter_mut().for_each(|e| *e = (*e / grid).round() * grid);
        }
        for ty in TYPES {
            let b = Batch::new(ty, v, &x);
            let row = b.row(0);
            for (p, t) in [(0.9, 1.0), (0.5, 1.0), (0.99, 0.7), (0.9, 2.5), (0.3, 0.4)] {
                let want = re::top_p_kept(row, p, t, 1);
                let f = Filters {
                    temperature: t,
                    top_p: p,
                    ..Filters::default()
                };
                let results = each_level(|level| {
                    let what = format!("{level:?} {ty:?} seed {seed} top_p {p} t {t}");
                    let us = [0.0, 1e-9, 0.13, 0.5, 0.77, 0.999_999];
                    let (out, toks) = top_p_checked(&b, f, &want, &us, &what);
                    (bits(&out), toks)
                });
                assert_same_across("long-tailed top-p", &results);
            }
            for (p, min_p, mk, order) in [
                (0.5, 0.05, 1, Order::Default),
                (0.9, 0.5, 4, Order::Default),
                (0.7, 0.9, 1, Order::Vllm),
                (0.95, 0.02, 30_000, Order::Default),
            ] {
                let f = Filters {
                    temperature: 1.0,
                    top_p: p,
                    min_p,
                    min_keep: mk,
                    order,
                    ..Filters::default()
                };
                let want = re::pipeline_kept(row, &f);
                let results = each_level(|level| {
                    let what = format!("{level:?} {ty:?} seed {seed}");
                    with_elems!(b, x => sample_as_reference(x, row, &f, &want, 0.61, &what))
                });
                assert_same_across("top-p then min-p", &results);
            }
        }
    }
}

/// One row (`x`, whose values are `row`) through the pipeline `f` with uniform `u`: the kept set
/// must be one that `want` accepts and the token one the reference draw from it accepts.
/// Returns (kept set length, token).
fn sample_as_reference<T: Elem>(
    x: &[T],
    row: &[f32],
    f: &Filters,
    want: &re::KeptRef,
    u: f64,
    what: &str,
) -> (usize, i64) {
    let got = kernel_kept(x, f);
    let Some(len) = want.accepts(&got) else {
        panic!(
            "{what} {f:?}: kept {}, want {} ({:?})",
            got.len(),
            want.exact,
            want.lengths
        )
    };
    let mut tok = [0i64];
    kernels::sample(x, x.len(), &PerRow::All(*f), &[u], &mut tok).unwrap();
    let d = re::draw(row, &want.ids(len), f.temperature, u);
    assert!(
        d.plausible.contains(&(tok[0] as usize)),
        "{what} {f:?} u {u}: drew {}, want {}",
        tok[0],
        d.exact
    );
    (len, tok[0])
}

/// Rows drawn from pools of values (runs of consecutive floats, signed zeros and subnormals, a
/// 0.1 grid, dense ranges, +-f32::MAX), some with spikes and masked tokens, through
/// top-p with min-p, `min_keep` and every order: kept sets and draws as the reference, and the
/// same kept set and token on every level.
#[test]
fn pooled_rows_top_p_matches_the_reference() {
    let mut next = lcg(99);
    let mut pick = move |n: usize| next() as usize % n;
    for case in 0..1200 {
        let v = [1100usize, 3000, 20_000][pick(3)];
        let kind = pick(8);
        let n = 1 + pick([300, 2, 40, 60, 4, 2000, 5, 20_000][kind]);
        let pool: Vec<f32> = (0..n)
            .map(|k| match kind {
                0 => f32::from_bits(1.0f32.to_bits() + k as u32),
                1 => [0.0, -0.0][k],
                2 => f32::from_bits(k as u32) * if k % 2 == 0 { 1.0 } else { -1.0 },
                3 => k as f32 * 0.1,
                4 => [f32::MAX, -f32::MAX, 0.0, f32::MAX][k],
                5 => 5.0 + k as f32 * 1e-4,
                6 => k as f32 - 3.0,
                _ => f32::from_bits(3.0f32.to_bits() + k as u32 * (1 + k as u32 % 3)),
            })
            .collect();
        let mut x: Vec<f32> = (0..v).map(|_| pool[pick(n)]).collect();
        if pick(3) == 0 {
            for _ in 0..3 {
                let i = pick(v);
                x[i] += 6.0;
            }
            for _ in 0..50 {
                x[pick(v)] = f32::NEG_INFINITY;
            }
        }
        let f = Filters {
            temperature: [1.0, 0.05, 3.0, 1e-30, 1e30][pick(5)],
            top_p: [0.0, 1e-6, 0.1, 0.5, 0.9, 0.99, 0.999_999][pick(7)],
            min_p: [0.0, 0.0, 0.3, 0.999][pick(4)],
            min_keep: [1usize, 1, 3, 700, 50_000][pick(5)],
            order: [Order::Default, Order::Vllm, Order::LlamaCpp][pick(3)],
            ..Filters::default()
        };
        let u = [0.0, 0.3, 0.61, 0.999_999][pick(4)];
        let want = re::pipeline_kept(&x, &f);
        let results = each_level(|level| {
            let what = format!("case {case} {level:?} pool {kind} V {v}");
            sample_as_reference(&x[..], &x, &f, &want, u, &what)
        });
        assert_same_across("pooled rows: kept set and token", &results);
    }
}

/// A flat row whose nucleus holds every token, collected in one round: the `u` at which the draw
/// moves from one block's last kept token to the next block's first is the same on every level
/// (the block sums the draw walks are the same bits).
#[test]
fn draw_boundaries_are_the_same_on_every_level() {
    let v = 20_000;
    let x: Vec<f32> = lcg_values(4, 3 * v)
        .chunks_exact(3)
        .map(|c| 0.02 * (c[0] + c[1] + c[2]) / 30.0)
        .collect();
    let f = Filters {
        temperature: 1.0,
        top_p: 0.9,
        ..Filters::default()
    };
    let kept = re::top_p_kept(&x, 0.9, 1.0, 1);
    let ids = kept.ids(kept.exact);
    let w: Vec<f64> = ids.iter().map(|&i| f64::from(x[i]).exp()).collect();
    let total: f64 = w.iter().sum();
    // Cumulative probabilities where the draw crosses into a new block, and the two tokens.
    let mut bounds = Vec::new();
    let mut cum = 0.0;
    for (j, &wi) in w.iter().enumerate() {
        cum += wi;
        if j + 1 < ids.len() && ids[j + 1] / kernels::prims::BLOCK != ids[j] / kernels::prims::BLOCK
        {
            bounds.push((cum / total, ids[j] as i64, ids[j + 1] as i64));
        }
    }
    let draw_at = |u: f64| {
        let mut tok = [0i64];
        kernels::sample(&x[..], v, &PerRow::All(f), &[u], &mut tok).unwrap();
        tok[0]
    };
    let results = each_level(|level| {
        let mut flips = Vec::new();
        for &(c, a, b) in bounds.iter().step_by(7).take(40) {
            let (mut lo, mut hi) = (c - 1e-6, c + 1e-6);
            assert_eq!((draw_at(lo), draw_at(hi)), (a, b), "{level:?} near {c}");
            loop {
                let mid = 0.5 * (lo + hi);
                if mid == lo || mid == hi {
                    break;
                }
                if draw_at(mid) == a {
                    lo = mid;
                } else {
                    hi = mid;
                }
            }
            flips.push(hi.to_bits());
        }
        flips
    });
    assert_same_across("draw boundaries", &results);
}

/// `softmax_in_place` and `mask_in_place` (`out=logits`) give the bits of the kernels that
/// write a separate output, on every level, for a batch large enough to run in parallel, a row
/// that is halved (logits more than `f32::MAX` apart at a huge temperature), and a row that
/// fails (NaN): the error names that row and the other rows are written.
#[test]
fn in_place_kernels_match_the_separate_output() {
    let (rows, v) = (24usize, 5000usize);
    let mut src = lcg_values(31, rows * v);
    src[3 * v + 17] = f32::NEG_INFINITY;
    src[5 * v] = -3.0e38;
    src[5 * v + 1] = 3.0e38;
    let masks = [
        Mask::TopK(40),
        Mask::TopP {
            top_p: 0.9,
            temperature: 0.7,
            min_keep: 3,
        },
        Mask::MinP {
            min_p: 0.05,
            temperature: 1.3,
            min_keep: 1,
        },
    ];
    for bad in [false, true] {
        let mut x = src.clone();
        if bad {
            x[7 * v + 99] = f32::NAN;
        }
        // Every row but the failing one holds the bits of the separate output.
        let same_rows = |what: String, got: &[f32], want: &[f32]| {
            for r in (0..rows).filter(|&r| !bad || r != 7) {
                let span = r * v..(r + 1) * v;
                assert_eq!(
                    bits(&got[span.clone()]),
                    bits(&want[span]),
                    "{what} row {r}"
                );
            }
        };
        each_level(|level| {
            for (t, log) in [
                (1.0, false),
                (1.0, true),
                (0.6, false),
                (1e35, true),
                (1e35, false),
            ] {
                let what = format!("{level:?} T={t} log={log}");
                let mut want = vec![0.0f32; rows * v];
                let a = kernels::softmax(&x[..], v, t, log, &mut want);
                let mut got = x.clone();
                let b = kernels::softmax_in_place(&mut got, v, t, log);
                assert_eq!(a.is_ok(), !bad);
                assert_eq!(format!("{a:?}"), format!("{b:?}"), "{what}");
                same_rows(what, &got, &want);
            }
            for m in masks {
                let what = format!("{level:?} {m:?}");
                let mut want = vec![0.0f32; rows * v];
                let a = kernels::mask(&x[..], v, m, &mut want);
                let mut got = x.clone();
                let b = kernels::mask_in_place(&mut got, v, m);
                assert_eq!(format!("{a:?}"), format!("{b:?}"), "{what}");
                same_rows(what, &got, &want);
            }
        });
    }
}
