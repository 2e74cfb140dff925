//! mask_top_p / mask_min_p: kept entries keep their bits, the kept set is a prefix of the rank
//! order with at least min(min_keep, finite) tokens; min-p keeps exactly the tokens of the
//! logit-space rule (or the best min_keep); top-p's prefix is the shortest one reaching top_p
//! (float64 reference, small tolerance). Errors as specified; same bits on every SIMD level.
#![no_main]

#[macro_use]
mod common;

use common::*;
use libfuzzer_sys::fuzz_target;
use logitkit::kernels::{self, Mask};

pub fn read_min_keep(b: &mut Bytes, vocab: usize) -> usize {
    match b.u8() {
        0..=159 => 1,
        160..=223 => usize::from(b.u8() % 6),
        224..=243 => vocab + usize::from(b.u8() % 3) - 1,
        _ => b.u64() as usize,
    }
}

fuzz_target!(|data: &[u8]| {
    let mut b = Bytes::new(data);
    let shape = Shape::read(&mut b);
    let v = shape.vocab;
    let top_p_mask = b.bool();
    let p = f64_param(&mut b, PROBS);
    let t = f64_param(&mut b, TEMPERATURES);
    let min_keep = read_min_keep(&mut b, v);
    let rows = shape.fill(&b);
    let mask = if top_p_mask {
        Mask::TopP {
            top_p: p,
            temperature: t,
            min_keep,
        }
    } else {
        Mask::MinP {
            min_p: p,
            temperature: t,
            min_keep,
        }
    };

    let res = on_every_level(|| {
        let mut out = vec![0.0f32; rows.len()];
        with_rows!(rows, x => kernels::mask(x, v, mask, &mut out)).map(|()| out)
    });

    let name = if top_p_mask { "top_p" } else { "min_p" };
    if !(0.0..=1.0).contains(&p) {
        return expect_error(&res, &param(name, None));
    }
    if !(t.is_finite() && t > 0.0) {
        return expect_error(&res, &param("temperature", None));
    }
    if min_keep < 1 {
        return expect_error(&res, &param("min_keep", None));
    }
    if let Some(e) = rows.row_error() {
        return expect_error(&res, &e);
    }
    let out = res.expect("valid input refused");
    for r in 0..rows.rows {
        let x = rows.row(r);
        let o = &out[r * v..(r + 1) * v];
        let order = rank_order(x);
        let finite = n_finite(x);
        let floor = min_keep.min(finite);
        for i in 0..v {
            assert!(
                o[i] == f32::NEG_INFINITY || o[i].to_bits() == x[i].to_bits(),
                "row {r} index {i}: {} became {}",
                x[i],
                o[i]
            );
        }
        let kept = o.iter().filter(|&&z| z != f32::NEG_INFINITY).count();
        assert!(
            kept >= floor.max(1),
            "row {r}: {kept} kept, min_keep {min_keep}, {finite} finite"
        );
        for (pos, &i) in order.iter().enumerate() {
            assert_eq!(
                o[i] != f32::NEG_INFINITY,
                pos < kept,
                "row {r}: the kept set is not a prefix of the rank order (token {i}, rank {pos}, {kept} kept)"
            );
        }
        if top_p_mask {
            if p >= 1.0 {
                assert_eq!(
                    kept, finite,
                    "row {r}: top_p = 1 must keep every finite token"
                );
            }
            if !plain_scale(t) || p >= 1.0 {
                continue;
            }
            let q = probs_f64(x, 1.0 / t);
            let mass: f64 = order[..kept].iter().map(|&i| q[i]).sum();
            let before = mass - q[order[kept - 1]];
            assert!(mass >= p - 1e-4, "row {r}: kept mass {mass} < top_p {p}");
            if kept > floor.max(1) {
                assert!(
                    before < p + 1e-4,
                    "row {r}: not the shortest prefix: {kept} kept, mass without the last {before} >= top_p {p}"
                );
            }
        } else {
            let m = max_of(x);
            let pass = if p > 0.0 {
                x.iter().filter(|&&z| passes_min_p(z, m, t, p)).count()
            } else {
                finite
            };
            assert_eq!(
                kept,
                pass.max(floor),
                "row {r}: min-p kept {kept}, rule keeps {pass}, floor {floor}"
            );
        }
    }
});
