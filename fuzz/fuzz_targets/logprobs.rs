//! logprobs: errors as specified; each log-probability is <= 0, never NaN, -inf exactly for
//! masked tokens (finite for finite logits), close to a float64 reference; ranks are
//! 1 + the number of strictly larger logits; the top ids follow the rank order; the same bits
//! on every SIMD level.
#![no_main]

#[macro_use]
mod common;

use common::*;
use libfuzzer_sys::fuzz_target;
use logitkit::kernels::{self, RowLogprobs, TokenLists};

fuzz_target!(|data: &[u8]| {
    let mut b = Bytes::new(data);
    let shape = Shape::read(&mut b);
    let (v, n) = (shape.vocab, shape.rows);
    let tokens = token_lists(&mut b, n, v, 6);
    let top_n = match b.u8() {
        0..=199 => usize::from(b.u8() % 6),
        200..=239 => v + usize::from(b.u8() % 3) - 1,
        _ => b.u64() as usize,
    };
    let rows = shape.fill(&b);

    let lists = TokenLists::new("tokens", tokens.clone(), v);
    if let Some(r) = tokens
        .iter()
        .position(|l| l.iter().any(|&t| t < 0 || t as u64 >= v as u64))
    {
        return expect_error(&lists, &param("tokens", Some(r)));
    }
    let lists = lists.expect("valid tokens refused");

    let res = on_every_level(|| {
        let mut out = vec![RowLogprobs::default(); n];
        with_rows!(rows, x => kernels::logprobs(x, v, &lists, top_n, &mut out)).map(|()| out)
    });
    if top_n > v {
        return expect_error(&res, &param("top_n", None));
    }
    if let Some(e) = rows.row_error() {
        return expect_error(&res, &e);
    }
    let out = res.expect("valid input refused");
    for r in 0..n {
        let x = rows.row(r);
        let o = &out[r];
        let want = log_probs_f64(x, 1.0);
        let check = |t: usize, lp: f32, what: &str| {
            assert!(!lp.is_nan(), "row {r} {what} token {t}: NaN");
            assert!(lp <= 0.0, "row {r} {what} token {t}: {lp} > 0");
            if x[t] == f32::NEG_INFINITY {
                assert_eq!(
                    lp,
                    f32::NEG_INFINITY,
                    "row {r} {what} token {t}: masked token"
                );
            } else {
                assert!(
                    lp.is_finite(),
                    "row {r} {what} token {t}: finite logit {} gave {lp}",
                    x[t]
                );
            }
            if x[t] != f32::NEG_INFINITY && want[t] >= -f64::from(f32::MAX) {
                let d = (f64::from(lp) - want[t]).abs();
                assert!(
                    d <= 3e-5 + 1e-6 * want[t].abs(),
                    "row {r} {what} token {t}: {lp} vs float64 {}",
                    want[t]
                );
            }
        };
        assert_eq!(o.token_logprobs.len(), tokens[r].len());
        assert_eq!(o.ranks.len(), tokens[r].len());
        for (j, &t) in tokens[r].iter().enumerate() {
            let t = t as usize;
            check(t, o.token_logprobs[j], "requested");
            let larger = x.iter().filter(|&&z| z > x[t]).count() as i64;
            assert_eq!(o.ranks[j], 1 + larger, "row {r} rank of token {t}");
        }
        let order = rank_order(x);
        assert_eq!(o.top_ids.len(), top_n, "row {r}: top ids");
        assert_eq!(o.top_logprobs.len(), top_n, "row {r}: top logprobs");
        for j in 0..top_n {
            assert_eq!(o.top_ids[j], order[j] as i64, "row {r}: top id {j}");
            check(order[j], o.top_logprobs[j], "top");
            if j > 0 {
                assert!(
                    o.top_logprobs[j] <= o.top_logprobs[j - 1],
                    "row {r}: top log-probabilities not sorted"
                );
            }
        }
        // The same token gives the same bits whichever list it is reported in.
        for (j, &t) in tokens[r].iter().enumerate() {
            if let Some(p) = order[..top_n].iter().position(|&i| i as i64 == t) {
                assert_eq!(
                    o.top_logprobs[p].to_bits(),
                    o.token_logprobs[j].to_bits(),
                    "row {r} token {t}"
                );
            }
        }
    }
});
