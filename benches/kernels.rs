//! Times the streaming primitives on one row at every SIMD level this CPU has.
//!
//! `cargo bench --bench kernels [-- V]` (default V = 128256). Prints the median time per row.

use std::hint::black_box;
use std::time::Instant;

use logitkit::kernels::elem::as_bf16;
use logitkit::kernels::{self, prims, Filters, Order, PerRow};
use logitkit::simd;

fn median_us(mut f: impl FnMut()) -> f64 {
    for _ in 0..5 {
        f();
    }
    let mut t: Vec<f64> = (0..101)
        .map(|_| {
            let s = Instant::now();
            f();
            s.elapsed().as_secs_f64() * 1e6
        })
        .collect();
    t.sort_by(f64::total_cmp);
    t[t.len() / 2]
}

fn main() {
    let v: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(128_256);
    // Deterministic pseudo-normal logits (sum of uniforms) with a few spikes.
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state >> 40) as f32 / (1u64 << 24) as f32
    };
    let mut x: Vec<f32> = (0..v)
        .map(|_| (0..4).map(|_| next()).sum::<f32>() * 2.0 - 4.0)
        .collect();
    for i in 0..8 {
        x[(i * 7919) % v] += 12.0;
    }
    let mut bmax = vec![0.0f32; prims::n_blocks(v)];
    let mut bsum = vec![0.0f32; prims::n_blocks(v)];
    let mut out = vec![0.0f32; v];
    let mut gref = vec![0.0f32; prims::n_blocks(v).div_ceil(prims::GROUP)];
    // 64 rows (a batch that does not fit in the caches): per-row costs when rows come from memory.
    let batch: Vec<f32> = (0..64)
        .flat_map(|r| x.iter().map(move |&e| e + r as f32 * 1e-3))
        .collect();
    let mut tok = vec![0i64; 1];
    let chain = Filters {
        temperature: 0.8,
        top_k: 40,
        top_p: 0.95,
        min_p: 0.05,
        order: Order::LlamaCpp,
        ..Filters::default()
    };
    // Flat rows for top-p alone, whose nucleus holds a large share of the vocabulary: all equal,
    // a narrow bulk (sum of four uniforms, spread 0.1 and 1) and that bulk on a 0.1 grid (runs
    // of thousands of equal logits).
    let bulk: Vec<f32> = (0..v)
        .map(|_| (0..4).map(|_| next()).sum::<f32>() - 2.0)
        .collect();
    let flat: [(&str, Vec<f32>); 4] = [
        ("all equal", vec![0.0; v]),
        ("spread 0.1", bulk.iter().map(|e| e * 0.1).collect()),
        ("spread 1", bulk.clone()),
        (
            "0.1 grid",
            bulk.iter().map(|e| (e * 10.0).round() / 10.0).collect(),
        ),
    ];
    // The same row in bfloat16 (rounded to nearest even).
    let halves: Vec<u16> = x
        .iter()
        .map(|e| {
            let b = e.to_bits();
            ((b + 0x7fff + ((b >> 16) & 1)) >> 16) as u16
        })
        .collect();
    for level in simd::available() {
        simd::set_level(level);
        println!("level {:>7}  V={v}", level.name());
        let m = match prims::scan(&x, &mut bmax) {
            prims::Scan::Max(m) => m,
            prims::Scan::Bad(..) => unreachable!(),
        };
        let row: &[f32] = &x;
        probe(row, &bmax);
        let rows = [
            (
                "scan (block max)",
                median_us(|| {
                    black_box(prims::scan(black_box(row), &mut bmax));
                }),
            ),
            (
                "weight_sums",
                median_us(|| {
                    black_box(prims::weight_sums(
                        row,
                        &bmax,
                        m,
                        1.25,
                        f32::NEG_INFINITY,
                        &mut bsum,
                    ));
                }),
            ),
            (
                "write_softmax",
                median_us(|| {
                    black_box(prims::write_weights(
                        row,
                        &bmax,
                        m,
                        1.0,
                        black_box(&mut out),
                    ));
                }),
            ),
            (
                "scan+weight_sums",
                median_us(|| {
                    let _ = prims::scan(black_box(row), &mut bmax);
                    black_box(prims::weight_sums(
                        row,
                        &bmax,
                        m,
                        1.25,
                        prims::ALL_FINITE,
                        &mut bsum,
                    ));
                }),
            ),
            (
                "scan_weights",
                median_us(|| {
                    black_box(prims::scan_weights(
                        black_box(row),
                        &mut bmax,
                        &mut bsum,
                        &mut gref,
                        1.25,
                    ));
                }),
            ),
            (
                "softmax",
                median_us(|| kernels::softmax(row, v, 1.0, false, &mut out).unwrap()),
            ),
            (
                "log_softmax",
                median_us(|| kernels::softmax(row, v, 1.0, true, &mut out).unwrap()),
            ),
            (
                "write_log_softmax",
                median_us(|| prims::write_log_softmax(row, m, 1.0, 11.5, black_box(&mut out))),
            ),
            (
                "argmax",
                median_us(|| kernels::argmax(row, v, &mut tok).unwrap()),
            ),
        ];
        for (name, us) in rows {
            println!("  {name:<18} {us:9.2} us");
        }
        let per_row = |us: f64| us / 64.0;
        let mem = [
            (
                "B=64 scan+weight_sums",
                per_row(median_us(|| {
                    for r in batch.chunks_exact(v) {
                        let prims::Scan::Max(m) = prims::scan(r, &mut bmax) else {
                            unreachable!()
                        };
                        black_box(prims::weight_sums(
                            r,
                            &bmax,
                            m,
                            1.25,
                            prims::ALL_FINITE,
                            &mut bsum,
                        ));
                    }
                })),
            ),
            (
                "B=64 scan_weights",
                per_row(median_us(|| {
                    for r in batch.chunks_exact(v) {
                        black_box(prims::scan_weights(
                            r, &mut bmax, &mut bsum, &mut gref, 1.25,
                        ));
                    }
                })),
            ),
            (
                "B=64 scan",
                per_row(median_us(|| {
                    for r in batch.chunks_exact(v) {
                        black_box(prims::scan(r, &mut bmax));
                    }
                })),
            ),
            (
                "B=64 max",
                per_row(median_us(|| {
                    for r in batch.chunks_exact(v) {
                        black_box(prims::max(r));
                    }
                })),
            ),
        ];
        for (name, us) in mem {
            println!("  {name:<18} {us:9.2} us/row");
        }
        for (name, f) in [
            (
                "temp 0.8",
                Filters {
                    temperature: 0.8,
                    ..Filters::default()
                },
            ),
            (
                "top-k 40",
                Filters {
                    temperature: 0.8,
                    top_k: 40,
                    ..Filters::default()
                },
            ),
            ("llama chain", chain),
            (
                "top-p 0.9",
                Filters {
                    top_p: 0.9,
                    ..Filters::default()
                },
            ),
            (
                "min-p 0.05",
                Filters {
                    min_p: 0.05,
                    ..Filters::default()
                },
            ),
        ] {
            let f = PerRow::All(f);
            let us = median_us(|| kernels::sample(row, v, &f, &[0.37], &mut tok).unwrap());
            println!("  {:<18} {us:9.2} us", format!("sample {name}"));
        }
        let nucleus = PerRow::All(Filters {
            top_p: 0.9,
            ..Filters::default()
        });
        for (name, row) in &flat {
            let us =
                median_us(|| kernels::sample(&row[..], v, &nucleus, &[0.37], &mut tok).unwrap());
            println!("  {:<18} {us:9.2} us", format!("top-p, {name}"));
        }
        let chain = PerRow::All(chain);
        let hrow = as_bf16(&halves);
        for (name, us) in [
            (
                "bf16 scan",
                median_us(|| {
                    black_box(prims::scan(black_box(hrow), &mut bmax));
                }),
            ),
            (
                "bf16 max",
                median_us(|| {
                    black_box(prims::max(black_box(hrow)));
                }),
            ),
            (
                "bf16 llama chain",
                median_us(|| kernels::sample(hrow, v, &chain, &[0.37], &mut tok).unwrap()),
            ),
        ] {
            println!("  {name:<18} {us:9.2} us");
        }
    }
}

#[allow(dead_code)]
fn probe(x: &[f32], bmax: &[f32]) {
    use logitkit::kernels::select::{collect_ge, Cand};
    let mut c: Vec<Cand> = Vec::with_capacity(x.len());
    let us = median_us(|| {
        c.clear();
        collect_ge(x, bmax, -0.09, &mut c);
    });
    println!("  collect_ge -0.09   {us:9.2} us  n={}", c.len());
}
