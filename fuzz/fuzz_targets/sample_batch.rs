//! sample_batch (one continuous-batching step, every row its own batch::Request): errors as
//! specified; the token is in range and allowed by every mask of SPEC §4 step 1-3 (allowed ids,
//! stop ids before min_tokens, the packed bitmask, -inf bias) computed independently; greedy is
//! the argmax of the edited row; top-k and min-p hold; log-probabilities are well formed (raw ones
//! exact in ids and ranks); the same bits on every SIMD level.
#![no_main]

#[macro_use]
mod common;

use common::*;
use libfuzzer_sys::fuzz_target;
use logitkit::kernels::batch::{Request, RowResult};
use logitkit::kernels::{self, Penalties, TokenLists};

const BIAS: &[f64] = &[
    1.0,
    -1.0,
    5.0,
    f64::NEG_INFINITY,
    0.0,
    100.0,
    -100.0,
    1e30,
    3e38,
    f64::MAX,
    f64::NAN,
    f64::INFINITY,
];
const REPETITION: &[f64] = &[1.0, 1.0, 1.2, 2.0, 0.5, 1e30, 0.0, f64::NAN];
const ADDITIVE: &[f64] = &[
    0.0,
    0.0,
    0.5,
    -0.5,
    1e30,
    -1e30,
    f64::MAX,
    -f64::MAX,
    f64::INFINITY,
];

fn read_ids(b: &mut Bytes, vocab: usize, max: u8) -> Vec<u32> {
    let n = b.u8() % (max + 1);
    (0..n)
        .map(|_| match b.u8() {
            0..=247 => u32::from(b.u16()) % vocab as u32,
            _ => b.u32(),
        })
        .collect()
}

fn read_request(b: &mut Bytes, vocab: usize) -> Request {
    let filters = read_filters(b, vocab);
    let simple = b.u8() < 128;
    let penalties = if simple {
        Penalties::default()
    } else {
        Penalties {
            repetition: f64_param(b, REPETITION),
            presence: f64_param(b, ADDITIVE),
            frequency: f64_param(b, ADDITIVE),
        }
    };
    let bias_ids = if simple {
        vec![]
    } else {
        read_ids(b, vocab, 4)
    };
    let bias_values = bias_ids.iter().map(|_| f64_param(b, BIAS)).collect();
    let allowed = if b.u8() < 200 {
        None
    } else {
        Some(read_ids(b, vocab, 6))
    };
    let stop_ids = read_ids(b, vocab, 3);
    let min_tokens = usize::from(b.u8() % 4);
    let logprobs = match b.u8() {
        0..=127 => None,
        128..=247 => Some(usize::from(b.u8() % 5)),
        _ => Some(b.u64() as usize),
    };
    let processed = b.bool();
    Request {
        filters,
        penalties,
        bias_ids,
        bias_values,
        allowed,
        stop_ids,
        min_tokens,
        logprobs,
        processed,
    }
}

/// The row after SPEC §4 steps 1-3, computed independently.
fn edited(
    x: &[f32],
    req: &Request,
    prompt: &[i64],
    output: &[i64],
    words: Option<&[i32]>,
) -> Vec<f32> {
    let mut z = x.to_vec();
    if let Some(a) = &req.allowed {
        for (t, v) in z.iter_mut().enumerate() {
            if !a.contains(&(t as u32)) {
                *v = f32::NEG_INFINITY;
            }
        }
    }
    if output.len() < req.min_tokens {
        for &t in &req.stop_ids {
            z[t as usize] = f32::NEG_INFINITY;
        }
    }
    if let Some(w) = words {
        for (t, v) in z.iter_mut().enumerate() {
            if (w[t / 32] as u32 >> (t % 32)) & 1 == 0 {
                *v = f32::NEG_INFINITY;
            }
        }
    }
    spec_bias_penalties(
        &z,
        Some(&(req.bias_ids.clone(), req.bias_values.clone())),
        Some((prompt, output, &req.penalties)),
    )
}

fn request_error(req: &Request, vocab: usize) -> Option<&'static str> {
    let out = |ids: &[u32]| ids.iter().any(|&t| t as usize >= vocab);
    if out(&req.bias_ids) {
        return Some("logit_bias");
    }
    if out(&req.stop_ids) {
        return Some("stop_token_ids");
    }
    if req.allowed.as_deref().is_some_and(out) {
        return Some("allowed_token_ids");
    }
    if let Some(name) = filter_error(&req.filters) {
        return Some(name);
    }
    let p = &req.penalties;
    if !(p.repetition.is_finite() && p.repetition > 0.0) {
        return Some("repetition_penalty");
    }
    if !p.presence.is_finite() {
        return Some("presence_penalty");
    }
    if !p.frequency.is_finite() {
        return Some("frequency_penalty");
    }
    if req
        .bias_values
        .iter()
        .any(|&v| v.is_nan() || v == f64::INFINITY)
    {
        return Some("bias");
    }
    None
}

fuzz_target!(|data: &[u8]| {
    let mut b = Bytes::new(data);
    let shape = Shape::read(&mut b);
    let (v, n) = (shape.vocab, shape.rows);
    let n_req = 1 + usize::from(b.u8() % 3);
    let requests: Vec<Request> = (0..n_req).map(|_| read_request(&mut b, v)).collect();
    let req_of: Vec<usize> = (0..n).map(|_| usize::from(b.u8()) % n_req).collect();
    let prompt = token_lists(&mut b, n, v, 4);
    let output = token_lists(&mut b, n, v, 6);
    let words = v.div_ceil(32);
    let bitmask: Option<Vec<i32>> = match b.u8() % 4 {
        0 => Some((0..n * words).map(|_| b.u32() as i32).collect()),
        1 => Some(
            (0..n * words)
                .map(|_| if b.u8() < 32 { b.u32() as i32 } else { -1 })
                .collect(),
        ),
        _ => None,
    };
    let u: Vec<f64> = (0..n)
        .map(|_| (b.u64() >> 11) as f64 / (1u64 << 53) as f64)
        .collect();
    let rows = shape.fill(&b);

    let (Ok(pl), Ok(ol)) = (
        TokenLists::new("prompt_tokens", prompt.clone(), v),
        TokenLists::new("output_tokens", output.clone(), v),
    ) else {
        return; // ids out of range: refused when the lists are built (see the penalties target)
    };
    let reqs: Vec<&Request> = requests.iter().collect();
    let res = on_every_level(|| {
        let mut out = vec![RowResult::default(); n];
        with_rows!(rows, x => kernels::sample_batch(
            x, v, &reqs, &req_of, &pl, &ol, bitmask.as_deref().map(|m| (m, words)), &u, &mut out
        ))
        .map(|()| out)
    });

    for req in &requests {
        if let Some(name) = request_error(req, v) {
            return expect_error(&res, &param(name, None));
        }
    }
    let row_words = |r: usize| bitmask.as_deref().map(|m| &m[r * words..(r + 1) * words]);
    let ed: Vec<Vec<f32>> = (0..n)
        .map(|r| {
            edited(
                rows.row(r),
                &requests[req_of[r]],
                &prompt[r],
                &output[r],
                row_words(r),
            )
        })
        .collect();
    let want_err = (0..n).find_map(|r| row_error(rows.row(r), r).or_else(|| row_error(&ed[r], r)));
    if let Some(e) = want_err {
        return expect_error(&res, &e);
    }
    let out = res.expect("valid input refused");
    for r in 0..n {
        let req = &requests[req_of[r]];
        let f = &req.filters;
        let (x, e, o) = (rows.row(r), &ed[r], &out[r]);
        let tok = o.token;
        assert!(
            (0..v as i64).contains(&tok),
            "row {r}: token {tok} outside [0, {v})"
        );
        let tok = tok as usize;
        assert!(
            e[tok].is_finite(),
            "row {r}: token {tok} is masked after steps 1-3 (logit {}, edited {})",
            x[tok],
            e[tok]
        );
        let order = rank_order(e);
        let rank = order.iter().position(|&i| i == tok).unwrap();
        if f.temperature == 0.0 {
            assert_eq!(
                rank, 0,
                "row {r}: greedy token {tok} is not the argmax {}",
                order[0]
            );
        } else {
            assert_in_top_k_and_min_p(e, tok, rank, f, r);
        }
        let Some(nlp) = req.logprobs else {
            assert!(
                o.logprob.is_nan()
                    && o.rank == 0
                    && o.top_ids.is_empty()
                    && o.top_logprobs.is_empty(),
                "row {r}: log-probabilities nobody asked for: {o:?}"
            );
            continue;
        };
        // The sampled token and the listed ones are finite and kept: finite log-probabilities.
        assert!(
            o.logprob.is_finite(),
            "row {r}: log-probability {} for token {tok} ({req:?})",
            o.logprob
        );
        assert!(
            o.logprob <= 0.0,
            "row {r}: log-probability {} > 0",
            o.logprob
        );
        assert!(o.rank >= 1, "row {r}: rank {}", o.rank);
        // The top min(n, V): kept (processed) or finite (raw) tokens with finite
        // log-probabilities, largest first, then the others at -inf in increasing id order.
        assert!(
            o.top_ids.len() == nlp.min(v) && o.top_ids.len() == o.top_logprobs.len(),
            "row {r}: top lists"
        );
        let n_fin = o
            .top_logprobs
            .iter()
            .take_while(|lp| lp.is_finite())
            .count();
        for (j, (&id, &lp)) in o.top_ids.iter().zip(&o.top_logprobs).enumerate() {
            assert!((0..v as i64).contains(&id), "row {r}: top id {id}");
            assert!(
                (lp.is_finite() && lp <= 0.0 && j < n_fin)
                    || (lp == f32::NEG_INFINITY && j >= n_fin),
                "row {r}: top log-probability {lp} of {id}"
            );
            if j > 0 {
                assert!(
                    lp <= o.top_logprobs[j - 1],
                    "row {r}: top log-probabilities not sorted"
                );
            }
            if j > n_fin {
                assert!(
                    id > o.top_ids[j - 1],
                    "row {r}: -inf top ids not in id order"
                );
            }
        }
        let mut distinct = o.top_ids.clone();
        distinct.sort_unstable();
        distinct.dedup();
        assert_eq!(distinct.len(), o.top_ids.len(), "row {r}: a top id twice");
        if req.processed {
            if f.temperature == 0.0 {
                assert_eq!(o.logprob, 0.0, "row {r}: greedy processed log-probability");
                assert_eq!(o.rank, 1);
            }
            for &id in &o.top_ids[..n_fin] {
                assert!(
                    e[id as usize].is_finite(),
                    "row {r}: processed top id {id} is not kept"
                );
            }
        } else {
            let raw_order = rank_order(x);
            let k = nlp.min(n_finite(x));
            let mut ids: Vec<i64> = raw_order[..k].iter().map(|&i| i as i64).collect();
            // The others in increasing id order (a mark per id: k can be the whole vocabulary).
            let mut listed = vec![false; v];
            raw_order[..k].iter().for_each(|&i| listed[i] = true);
            let rest = (0..v).filter(|&t| !listed[t]).map(|t| t as i64);
            ids.extend(rest.take(nlp.min(v) - k));
            assert_eq!(o.top_ids, ids, "row {r}: raw top ids");
            let larger = x.iter().filter(|&&z| z > x[tok]).count() as i64;
            assert_eq!(o.rank, 1 + larger, "row {r}: raw rank");
            let want = log_probs_f64(x, 1.0)[tok];
            if want >= -f64::from(f32::MAX) {
                let d = (f64::from(o.logprob) - want).abs();
                assert!(
                    d <= 3e-5 + 1e-6 * want.abs(),
                    "row {r}: raw log-probability {} vs float64 {want}",
                    o.logprob
                );
            }
        }
    }
});
