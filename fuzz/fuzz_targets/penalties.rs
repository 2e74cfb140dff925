//! apply_logit_bias / apply_penalties (kernels::bias_and_penalties, copying and in place): errors
//! as specified, the result equal to SPEC §5 computed independently, no NaN / +inf produced
//! from valid inputs, neutral parameters bit-exact, the same bits on every SIMD level.
#![no_main]

#[macro_use]
mod common;

use common::*;
use libfuzzer_sys::fuzz_target;
use logitkit::kernels::{self, Bias, Penalties, PerRow, TokenLists};

const BIAS: &[f64] = &[
    1.0,
    -1.0,
    100.0,
    -100.0,
    f64::NEG_INFINITY,
    0.0,
    -0.0,
    0.5,
    1e30,
    -1e30,
    3e38,
    -3e38,
    f64::MAX,
    -f64::MAX,
    f64::NAN,
    f64::INFINITY,
    1e-45,
];
const REPETITION: &[f64] = &[
    1.0,
    1.0,
    1.1,
    1.3,
    2.0,
    0.5,
    1e-30,
    1e30,
    0.0,
    -1.0,
    f64::NAN,
    f64::INFINITY,
    f64::MAX,
    5e-324,
];
const ADDITIVE: &[f64] = &[
    0.0,
    0.0,
    0.5,
    -0.5,
    2.0,
    -0.0,
    1e30,
    -1e30,
    1e38,
    -1e38,
    f64::MAX,
    -f64::MAX,
    f64::NAN,
    f64::INFINITY,
    f64::NEG_INFINITY,
];

fn read_bias(b: &mut Bytes, vocab: usize) -> Bias {
    let n = b.u8() % 6;
    let mut ids = Vec::new();
    let mut vals = Vec::new();
    for _ in 0..n {
        ids.push(match b.u8() {
            0..=247 => u32::from(b.u16()) % (vocab as u32),
            _ => b.u32(),
        });
        vals.push(f64_param(b, BIAS));
    }
    (ids, vals)
}

fn read_penalties(b: &mut Bytes) -> Penalties {
    Penalties {
        repetition: f64_param(b, REPETITION),
        presence: f64_param(b, ADDITIVE),
        frequency: f64_param(b, ADDITIVE),
    }
}

fn per_row<V: Clone>(
    b: &mut Bytes,
    rows: usize,
    mut read: impl FnMut(&mut Bytes) -> V,
) -> PerRow<V> {
    if b.bool() {
        PerRow::Each((0..rows).map(|_| read(b)).collect())
    } else {
        PerRow::All(read(b))
    }
}

fuzz_target!(|data: &[u8]| {
    let mut b = Bytes::new(data);
    let shape = Shape::read(&mut b);
    let v = shape.vocab;
    let n = shape.rows;
    let in_place = b.u8() % 4 == 0;
    let bias = if b.bool() {
        Some(per_row(&mut b, n, |b| read_bias(b, v)))
    } else {
        None
    };
    let with_pen = b.bool() || bias.is_none();
    let prompt = token_lists(&mut b, n, v, 6);
    let output = token_lists(&mut b, n, v, 8);
    let pens = per_row(&mut b, n, read_penalties);
    let rows = shape.fill(&b);

    // Token lists are validated when they are built.
    let (pl, ol) = if with_pen {
        let pl = TokenLists::new("prompt_tokens", prompt.clone(), v);
        let ol = TokenLists::new("output_tokens", output.clone(), v);
        let bad = |lists: &Vec<Vec<i64>>| {
            lists.iter().enumerate().find_map(|(r, l)| {
                l.iter()
                    .any(|&t| t < 0 || t as u64 >= v as u64)
                    .then_some(r)
            })
        };
        match bad(&prompt) {
            Some(r) => return expect_error(&pl, &param("prompt_tokens", Some(r))),
            None => assert!(pl.is_ok()),
        }
        match bad(&output) {
            Some(r) => return expect_error(&ol, &param("output_tokens", Some(r))),
            None => assert!(ol.is_ok()),
        }
        (Some(pl.unwrap()), Some(ol.unwrap()))
    } else {
        (None, None)
    };
    let pen = match (&pl, &ol) {
        (Some(p), Some(o)) => Some((p, o, &pens)),
        _ => None,
    };

    let res = on_every_level(|| {
        if in_place {
            let mut out = rows.wide.clone();
            kernels::bias_and_penalties::<f32>(None, v, bias.as_ref(), pen, &mut out).map(|()| out)
        } else {
            let mut out = vec![0.0f32; rows.len()];
            with_rows!(rows, x => kernels::bias_and_penalties(Some(x), v, bias.as_ref(), pen, &mut out))
                .map(|()| out)
        }
    });

    // Expected errors, in the kernel's order: bias entries, penalties, rows.
    if let Some(bias) = &bias {
        for (r, (ids, vals)) in bias.iter() {
            for (&id, &bv) in ids.iter().zip(vals) {
                if id as usize >= v || bv.is_nan() || bv == f64::INFINITY {
                    return expect_error(&res, &param("bias", r));
                }
            }
        }
    }
    if pen.is_some() {
        for (r, p) in pens.iter() {
            if !(p.repetition.is_finite() && p.repetition > 0.0) {
                return expect_error(&res, &param("repetition_penalty", r));
            }
            if !p.presence.is_finite() {
                return expect_error(&res, &param("presence_penalty", r));
            }
            if !p.frequency.is_finite() {
                return expect_error(&res, &param("frequency_penalty", r));
            }
        }
    }
    if let Some(e) = rows.row_error() {
        return expect_error(&res, &e);
    }
    let out = res.expect("valid input refused");
    for r in 0..n {
        let x = rows.row(r);
        let want = spec_bias_penalties(
            x,
            bias.as_ref().map(|b| b.get(r)),
            pen.map(|_| (&prompt[r][..], &output[r][..], pens.get(r))),
        );
        let got = &out[r * v..(r + 1) * v];
        for i in 0..v {
            assert_eq!(
                got[i].to_bits(),
                want[i].to_bits(),
                "row {r} index {i}: got {}, SPEC §5 gives {} (logit {})",
                got[i],
                want[i],
                x[i]
            );
            assert!(
                !got[i].is_nan() && got[i] < f32::INFINITY,
                "row {r} index {i}: valid logit {} and valid parameters gave {}",
                x[i],
                got[i]
            );
        }
    }
});
