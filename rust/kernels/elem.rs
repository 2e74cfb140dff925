//! The element types a logits row may hold: `f32`, IEEE half (`F16`) and bfloat16 (`Bf16`).
//!
//! Kernels are generic over [`Elem`] and widen each element to `f32` in registers, so 16-bit rows
//! are read in place. Both 16-bit widenings are exact and written with integer operations only,
//! so that every SIMD level vectorises them and gives bit-identical results.

/// The storage of an [`Elem`], for the hand-written SIMD kernels.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Storage {
    /// `f32`.
    F32,
    /// IEEE half bits.
    F16,
    /// bfloat16 bits.
    Bf16,
    /// Anything else (portable code only).
    Other,
}

/// A logit element that widens exactly to `f32`.
pub trait Elem: Copy + Send + Sync + 'static {
    /// How the element is stored.
    const STORAGE: Storage = Storage::Other;
    /// The value as `f32` (exact for every supported type).
    fn to_f32(self) -> f32;
}

impl Elem for f32 {
    const STORAGE: Storage = Storage::F32;
    #[inline(always)]
    fn to_f32(self) -> f32 {
        self
    }
}

/// IEEE 754 binary16, stored as its bits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
#[repr(transparent)]
pub struct F16(pub u16);

/// bfloat16 (the upper half of an `f32`), stored as its bits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
#[repr(transparent)]
pub struct Bf16(pub u16);

impl Elem for Bf16 {
    const STORAGE: Storage = Storage::Bf16;
    #[inline(always)]
    fn to_f32(self) -> f32 {
        f32::from_bits(u32::from(self.0) << 16)
    }
}

impl Elem for F16 {
    const STORAGE: Storage = Storage::F16;
    #[inline(always)]
    fn to_f32(self) -> f32 {
        // Branch-free binary16 -> binary32:
        //   normal:     rebias the exponent (+112) and shift the mantissa into place;
        //   inf / NaN:  the rebias above lands on exponent 0x8f; add 112 more to reach 0xff;
        //   subnormal:  place the mantissa as if the exponent were 1, then subtract 2^-14
        //               in float arithmetic (exact), which normalises it.
        let h = u32::from(self.0);
        let sign = (h & 0x8000) << 16;
        let shifted = (h & 0x7fff) << 13;
        let exp = shifted & 0x0f80_0000;
        let normal = shifted + (112 << 23);
        let infnan = normal + (112 << 23);
        let sub = f32::from_bits(shifted + (113 << 23)) - f32::from_bits(113 << 23);
        let mag = if exp == 0x0f80_0000 {
            infnan
        } else if exp == 0 {
            sub.to_bits()
        } else {
            normal
        };
        f32::from_bits(mag | sign)
    }
}

/// Views `u16` bits as [`F16`] elements.
#[must_use]
pub fn as_f16(bits: &[u16]) -> &[F16] {
    // SAFETY: F16 is repr(transparent) over u16, so layout, alignment and validity are identical.
    unsafe { std::slice::from_raw_parts(bits.as_ptr().cast::<F16>(), bits.len()) }
}

/// Views `u16` bits as [`Bf16`] elements.
#[must_use]
pub fn as_bf16(bits: &[u16]) -> &[Bf16] {
    // SAFETY: Bf16 is repr(transparent) over u16, so layout, alignment and validity are identical.
    unsafe { std::slice::from_raw_parts(bits.as_ptr().cast::<Bf16>(), bits.len()) }
}

/// The bits of a bfloat16 row (`None` for other element types).
#[inline(always)]
#[must_use]
pub fn bf16_bits<T: Elem>(x: &[T]) -> Option<&[u16]> {
    if std::any::TypeId::of::<T>() != std::any::TypeId::of::<Bf16>() {
        return None;
    }
    // SAFETY: T is Bf16, repr(transparent) over u16.
    Some(unsafe { std::slice::from_raw_parts(x.as_ptr().cast::<u16>(), x.len()) })
}

/// The order key of bfloat16 bits: an `i16` ordered as the values are, with `-0 < +0`, positive
/// NaNs above `+inf` and negative NaNs below `-inf`. Its own inverse.
#[inline(always)]
#[must_use]
pub fn bf16_key(h: u16) -> i16 {
    let s = h as i16;
    s ^ ((s >> 15) & 0x7fff)
}

/// The smallest bfloat16 order key ([`bf16_key`]) of a value numerically `>= t` (`t` not NaN):
/// for bfloat16 bits `h` that are not NaN, `widen(h) >= t` exactly when
/// `bf16_key(h) >= bf16_key_at_least(t)`. A zero bound takes the key of `-0` (`-0 >= 0`).
#[inline]
#[must_use]
pub fn bf16_key_at_least(t: f32) -> i16 {
    let b = t.to_bits();
    let mut h = (b >> 16) as u16;
    // Dropping the low bits rounds the magnitude down: up for a negative value, so only a
    // positive value with low bits set moves to the next bfloat16.
    if b & 0xffff != 0 && t > 0.0 {
        h += 1;
    }
    if h & 0x7fff == 0 {
        h = 0x8000;
    }
    bf16_key(h)
}

/// The order key of an `f32`: an `i32` ordered as the values are (NaN aside), with `-0 < +0`.
/// Its own inverse (the sign bit is kept, the rest of a negative value's bits flipped).
#[inline(always)]
#[must_use]
pub fn f32_key(v: f32) -> i32 {
    let b = v.to_bits() as i32;
    b ^ (((b >> 31) as u32) >> 1) as i32
}

/// The value of an [`f32_key`].
#[inline(always)]
#[must_use]
pub fn f32_of_key(k: i32) -> f32 {
    f32::from_bits((k ^ (((k >> 31) as u32) >> 1) as i32) as u32)
}

/// The key of `+inf`: keys at or above it are `+inf` or a positive NaN.
pub const BF16_KEY_INF: i16 = 0x7f80;
/// Bits above `-inf` (`0xff80`) in unsigned order are negative NaNs.
pub const BF16_NEG_INF: u16 = 0xff80;

#[cfg(test)]
mod tests {
    use super::*;

    /// Reference binary16 decoding from the definition.
    fn f16_ref(h: u16) -> f32 {
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

    #[test]
    fn f16_widening_is_exact_for_every_bit_pattern() {
        for h in 0..=u16::MAX {
            let got = F16(h).to_f32();
            let want = f16_ref(h);
            if want.is_nan() {
                assert!(got.is_nan(), "{h:#06x}");
            } else {
                assert_eq!(got.to_bits(), want.to_bits(), "{h:#06x}");
            }
        }
    }

    #[test]
    fn bf16_keys_follow_the_values() {
        let mut finite: Vec<u16> = (0..=u16::MAX)
            .filter(|&h| !Bf16(h).to_f32().is_nan())
            .collect();
        finite.sort_by_key(|&h| bf16_key(h));
        for w in finite.windows(2) {
            let (a, b) = (Bf16(w[0]).to_f32(), Bf16(w[1]).to_f32());
            assert!(
                a < b || (a == 0.0 && b == 0.0 && w[0] == 0x8000),
                "{:#06x} {:#06x}",
                w[0],
                w[1]
            );
        }
        for h in 0..=u16::MAX {
            let k = bf16_key(h);
            assert_eq!(bf16_key(k as u16) as u16, h, "inverse of {h:#06x}");
            let v = Bf16(h).to_f32();
            assert_eq!(
                k >= BF16_KEY_INF,
                v.is_nan() && h < 0x8000 || v == f32::INFINITY
            );
            assert_eq!(h > BF16_NEG_INF, v.is_nan() && h >= 0x8000);
        }
    }

    #[test]
    fn bf16_widening_is_the_upper_half() {
        for h in [0u16, 0x3f80, 0xbf80, 0x7f80, 0xff80, 0x0001] {
            assert_eq!(Bf16(h).to_f32().to_bits(), u32::from(h) << 16);
        }
    }

    #[test]
    fn bf16_key_at_least_splits_the_values_at_the_bound() {
        let values: Vec<u16> = (0..=u16::MAX)
            .filter(|&h| !Bf16(h).to_f32().is_nan())
            .collect();
        // Every bfloat16 value, the f32 values next to it on both sides, and special bounds.
        let mut bounds = vec![
            0.0f32,
            -0.0,
            f32::MAX,
            -f32::MAX,
            f32::MIN_POSITIVE,
            1e-45,
            -1e-45,
        ];
        for &h in values.iter().step_by(97) {
            let v = Bf16(h).to_f32();
            bounds.extend([v, v.next_up(), v.next_down()]);
        }
        for t in bounds.into_iter().filter(|t| !t.is_nan()) {
            let at = bf16_key_at_least(t);
            for &h in &values {
                assert_eq!(
                    Bf16(h).to_f32() >= t,
                    bf16_key(h) >= at,
                    "bound {t:e}, bits {h:#06x}"
                );
            }
        }
    }
}
