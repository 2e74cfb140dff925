//! The documented uniform draw (SPEC §6): Philox4x32-10 (Salmon et al. 2011, as in Random123).
//!
//! `uniform(seed, step)` uses key `(seed & 0xFFFFFFFF, seed >> 32)` and counter
//! `(step & 0xFFFFFFFF, step >> 32, draw, 0)`; from output words `o0, o1` it returns
//! `((o0 >> 5) * 2^26 + (o1 >> 6)) / 2^53`, a double in `[0, 1)` with 53 random bits.

const M0: u32 = 0xD251_1F53;
const M1: u32 = 0xCD9E_8D57;
const W0: u32 = 0x9E37_79B9;
const W1: u32 = 0xBB67_AE85;

#[inline]
fn mulhilo(a: u32, b: u32) -> (u32, u32) {
    let p = u64::from(a) * u64::from(b);
    ((p >> 32) as u32, p as u32)
}

/// Philox4x32 with 10 rounds.
#[must_use]
pub fn philox4x32_10(ctr: [u32; 4], key: [u32; 2]) -> [u32; 4] {
    let mut c = ctr;
    let mut k = key;
    for round in 0..10 {
        if round > 0 {
            k[0] = k[0].wrapping_add(W0);
            k[1] = k[1].wrapping_add(W1);
        }
        let (hi0, lo0) = mulhilo(M0, c[0]);
        let (hi1, lo1) = mulhilo(M1, c[2]);
        c = [hi1 ^ c[1] ^ k[0], lo1, hi0 ^ c[3] ^ k[1], lo0];
    }
    c
}

/// The uniform of draw number `draw` of `(seed, step)`.
#[must_use]
pub fn uniform_draw(seed: u64, step: u64, draw: u32) -> f64 {
    let o = philox4x32_10(
        [step as u32, (step >> 32) as u32, draw, 0],
        [seed as u32, (seed >> 32) as u32],
    );
    let hi = u64::from(o[0] >> 5);
    let lo = u64::from(o[1] >> 6);
    ((hi << 26) + lo) as f64 / (1u64 << 53) as f64
}

/// The token draw of `(seed, step)`: [`uniform_draw`] with `draw = 0`.
#[must_use]
pub fn uniform(seed: u64, step: u64) -> f64 {
    uniform_draw(seed, step, 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random123_known_answers() {
        assert_eq!(
            philox4x32_10([0; 4], [0; 2]),
            [0x6627_e8d5, 0xe169_c58d, 0xbc57_ac4c, 0x9b00_dbd8]
        );
        assert_eq!(
            philox4x32_10([u32::MAX; 4], [u32::MAX; 2]),
            [0x408f_276d, 0x41c8_3b0e, 0xa20b_c7c6, 0x6d54_51fd]
        );
        assert_eq!(
            philox4x32_10(
                [0x243f_6a88, 0x85a3_08d3, 0x1319_8a2e, 0x0370_7344],
                [0xa409_3822, 0x299f_31d0]
            ),
            [0xd16c_fe09, 0x94fd_cceb, 0x5001_e420, 0x2412_6ea1]
        );
    }

    #[test]
    fn uniform_is_in_unit_interval() {
        for seed in [0u64, 1, u64::MAX] {
            for step in [0u64, 7, u64::MAX] {
                let u = uniform(seed, step);
                assert!((0.0..1.0).contains(&u));
            }
        }
    }
}
