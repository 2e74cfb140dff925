//! argmax / top_k / mask_top_k: exact agreement with the rank order (larger first, ties by
//! lower id), errors as specified, the same bits on every SIMD level.
#![no_main]

#[macro_use]
mod common;

use common::*;
use libfuzzer_sys::fuzz_target;
use logitkit::kernels::{self, Mask};

fn read_k(b: &mut Bytes, vocab: usize) -> usize {
    match b.u8() {
        0..=127 => usize::from(b.u8() % 8),
        128..=191 => usize::from(b.u16()) % (vocab + 2),
        192..=231 => vocab - 1 + usize::from(b.u8() % 3),
        _ => b.u64() as usize,
    }
}

fuzz_target!(|data: &[u8]| {
    let mut b = Bytes::new(data);
    let shape = Shape::read(&mut b);
    let v = shape.vocab;
    let k = read_k(&mut b, v);
    let rows = shape.fill(&b);
    let n = rows.rows;

    let (am, (tk, mk)) = on_every_level(|| {
        let mut am = vec![0i64; n];
        let am = with_rows!(rows, x => kernels::argmax(x, v, &mut am)).map(|()| am);
        let tk = if k <= v {
            let mut vals = vec![0.0f32; n * k];
            let mut ids = vec![0i64; n * k];
            with_rows!(rows, x => kernels::top_k(x, v, k, &mut vals, &mut ids))
                .map(|()| (vals, ids))
        } else {
            // top_k sizes its outputs by k: only call it with a k it can hold.
            let mut vals = vec![];
            let mut ids = vec![];
            with_rows!(rows, x => kernels::top_k(x, v, k, &mut vals, &mut ids))
                .map(|()| (vals, ids))
        };
        let mut mk = vec![0.0f32; rows.len()];
        let mk = with_rows!(rows, x => kernels::mask(x, v, Mask::TopK(k), &mut mk)).map(|()| mk);
        (am, (tk, mk))
    });

    let row_err = rows.row_error();
    match &row_err {
        Some(e) => expect_error(&am, e),
        None => assert!(am.is_ok(), "argmax refused a valid row: {am:?}"),
    }
    if !(1..=v).contains(&k) {
        expect_error(&tk, &param("k", None));
    } else if let Some(e) = &row_err {
        expect_error(&tk, e);
    }
    if k < 1 {
        expect_error(&mk, &param("k", None));
    } else if let Some(e) = &row_err {
        expect_error(&mk, e);
    }
    if row_err.is_some() {
        return;
    }
    let am = am.unwrap();
    let mk = if k >= 1 {
        mk.expect("mask_top_k refused a valid input")
    } else {
        Vec::new()
    };
    for r in 0..n {
        let x = rows.row(r);
        let order = rank_order(x);
        assert_eq!(am[r], order[0] as i64, "argmax of row {r}");
        if let Ok((vals, ids)) = &tk {
            for j in 0..k {
                let want = order[j];
                assert_eq!(ids[r * k + j], want as i64, "top_k row {r} position {j}");
                assert_eq!(
                    vals[r * k + j].to_bits(),
                    x[want].to_bits(),
                    "top_k value row {r} position {j}"
                );
            }
        }
        if k < 1 {
            continue;
        }
        let keep = k.min(n_finite(x));
        let mut want = vec![f32::NEG_INFINITY; v];
        for &i in &order[..keep] {
            want[i] = x[i];
        }
        let got = &mk[r * v..(r + 1) * v];
        for i in 0..v {
            assert_eq!(
                got[i].to_bits(),
                want[i].to_bits(),
                "mask_top_k row {r} index {i}: {} vs {}",
                got[i],
                want[i]
            );
        }
    }
});
