//! sample (SPEC §4 steps 4-9), all three orders, f32 / f16 / bf16: errors as specified; the
//! token is in range and finite; greedy is argmax; the token is inside top-k and passes min-p;
//! with a single filter it lies in the mask function's kept set and at the uniform's place in
//! that set's cumulative distribution (float64 reference); the token never decreases when u
//! grows; the same bits on every SIMD level.
#![no_main]

#[macro_use]
mod common;

use common::*;
use libfuzzer_sys::fuzz_target;
use logitkit::kernels::{self, Mask, PerRow};

fuzz_target!(|data: &[u8]| {
    let mut b = Bytes::new(data);
    let shape = Shape::read(&mut b);
    let (v, n) = (shape.vocab, shape.rows);
    let filters = if b.u8() < 200 {
        PerRow::All(read_filters(&mut b, v))
    } else {
        PerRow::Each((0..n).map(|_| read_filters(&mut b, v)).collect())
    };
    let u: Vec<f64> = (0..n).map(|_| read_u(&mut b)).collect();
    let frac = f64::from(b.u16()) / 65536.0;
    let rows = shape.fill(&b);
    // A second, larger uniform per row (for monotonicity).
    let u2: Vec<f64> = u
        .iter()
        .map(|&u| {
            if (0.0..1.0).contains(&u) {
                u + (1.0 - u) * frac
            } else {
                u
            }
        })
        .collect();
    let u2: Vec<f64> = u2
        .iter()
        .zip(&u)
        .map(|(&a, &u)| if a < 1.0 { a } else { u })
        .collect();

    let (res, res2) = on_every_level(|| {
        let mut out = vec![0i64; n];
        let a = with_rows!(rows, x => kernels::sample(x, v, &filters, &u, &mut out)).map(|()| out);
        let mut out = vec![0i64; n];
        let c = with_rows!(rows, x => kernels::sample(x, v, &filters, &u2, &mut out)).map(|()| out);
        (a, c)
    });

    for (r, f) in filters.iter() {
        if let Some(name) = filter_error(f) {
            return expect_error(&res, &param(name, r));
        }
    }
    if let Some(r) = u.iter().position(|u| !(0.0..1.0).contains(u)) {
        return expect_error(&res, &param("uniforms", Some(r)));
    }
    if let Some(e) = rows.row_error() {
        return expect_error(&res, &e);
    }
    let toks = res.expect("valid input refused");
    let toks2 = res2.expect("valid input refused");
    for r in 0..n {
        let x = rows.row(r);
        let f = filters.get(r);
        let tok = toks[r];
        assert!(
            (0..v as i64).contains(&tok),
            "row {r}: token {tok} outside [0, {v})"
        );
        let tok = tok as usize;
        assert!(
            x[tok].is_finite(),
            "row {r}: drew token {tok} with logit {}",
            x[tok]
        );
        assert!(
            toks2[r] as usize >= tok,
            "row {r}: u {} -> {tok}, larger u {} -> {}",
            u[r],
            u2[r],
            toks2[r]
        );
        let order = rank_order(x);
        if f.temperature == 0.0 {
            assert_eq!(tok, order[0], "row {r}: greedy is not argmax");
            continue;
        }
        let rank = order.iter().position(|&i| i == tok).unwrap();
        let k_on = assert_in_top_k_and_min_p(x, tok, rank, f, r);
        let fs = filter_temperature(f);
        // A single filter: the token lies in the mask's kept set, where u says.
        let p_on = f.top_p < 1.0;
        let m_on = f.min_p > 0.0;
        let mask = match (k_on, p_on, m_on) {
            (true, false, false) => Some(Mask::TopK(f.top_k as usize)),
            (false, true, false) => Some(Mask::TopP {
                top_p: f.top_p,
                temperature: fs,
                min_keep: f.min_keep,
            }),
            (false, false, true) => Some(Mask::MinP {
                min_p: f.min_p,
                temperature: fs,
                min_keep: f.min_keep,
            }),
            (false, false, false) => None,
            _ => continue,
        };
        let kept: Vec<bool> = match mask {
            None => x.iter().map(|z| z.is_finite()).collect(),
            Some(m) => {
                let mut o = vec![0.0f32; v];
                with_rows!(rows, xs => kernels::mask(&xs[r * v..(r + 1) * v], v, m, &mut o))
                    .expect("mask");
                o.iter().map(|z| z.is_finite()).collect()
            }
        };
        assert!(
            kept[tok],
            "row {r}: token {tok} is outside the kept set of {mask:?}"
        );
        if plain_scale(f.temperature) {
            check_draw(x, &kept, 1.0 / f.temperature, u[r], tok, 1e-4);
        }
    }
});
