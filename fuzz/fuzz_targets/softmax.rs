//! softmax / log_softmax: errors exactly as specified, well-formed outputs close to a float64
//! reference, and the same bits on every SIMD level.
#![no_main]

#[macro_use]
mod common;

use common::*;
use libfuzzer_sys::fuzz_target;
use logitkit::kernels;

fuzz_target!(|data: &[u8]| {
    let mut b = Bytes::new(data);
    let shape = Shape::read(&mut b);
    let t = f64_param(&mut b, TEMPERATURES);
    let log = b.bool();
    let rows = shape.fill(&b);
    let v = rows.vocab;

    let res = on_every_level(|| {
        let mut out = vec![0.0f32; rows.len()];
        with_rows!(rows, x => kernels::softmax(x, v, t, log, &mut out)).map(|()| out)
    });

    if !(t.is_finite() && t > 0.0) {
        return expect_error(&res, &param("temperature", None));
    }
    if let Some(e) = rows.row_error() {
        return expect_error(&res, &e);
    }
    let out = res.expect("valid input refused");
    for r in 0..rows.rows {
        let x = rows.row(r);
        let o = &out[r * v..(r + 1) * v];
        let m = max_of(x);
        for (i, (&xi, &oi)) in x.iter().zip(o).enumerate() {
            assert!(!oi.is_nan(), "row {r} index {i}: NaN");
            if log {
                assert!(oi <= 0.0, "row {r} index {i}: log-probability {oi} > 0");
                if xi == f32::NEG_INFINITY {
                    assert_eq!(oi, f32::NEG_INFINITY, "row {r} index {i}: masked token");
                } else {
                    assert!(
                        oi.is_finite(),
                        "row {r} index {i}: finite logit {xi} gave {oi}"
                    );
                }
                if xi == m {
                    assert!(oi.is_finite(), "row {r} index {i}: the maximum has {oi}");
                }
            } else {
                assert!(
                    (0.0..=1.0).contains(&oi),
                    "row {r} index {i}: probability {oi}"
                );
                if xi == f32::NEG_INFINITY {
                    assert_eq!(oi.to_bits(), 0, "row {r} index {i}: masked token");
                }
                if xi == m {
                    assert!(oi > 0.0, "row {r} index {i}: the maximum has probability 0");
                }
            }
        }
        if !log {
            let sum: f64 = o.iter().map(|&p| f64::from(p)).sum();
            assert!(
                (sum - 1.0).abs() <= 1e-4,
                "row {r}: probabilities sum to {sum}"
            );
        }
        if !plain_scale(t) {
            continue;
        }
        let scale = 1.0 / t;
        if log {
            let want = log_probs_f64(x, scale);
            for (i, (&w, &g)) in want.iter().zip(o).enumerate() {
                if w < -f64::from(f32::MAX) {
                    continue; // not representable: saturated (finite, checked above)
                }
                let g = f64::from(g);
                assert!(
                    (g - w).abs() <= 3e-5 + 1e-6 * w.abs(),
                    "row {r} index {i}: log_softmax {g}, float64 reference {w}"
                );
            }
        } else {
            let want = probs_f64(x, scale);
            for (i, (&w, &g)) in want.iter().zip(o).enumerate() {
                let g = f64::from(g);
                assert!(
                    (g - w).abs() <= 3e-5 * w + 1e-6,
                    "row {r} index {i}: softmax {g}, float64 reference {w}"
                );
            }
        }
    }
});
