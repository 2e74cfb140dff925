//! Run-time choice of the SIMD level.
//!
//! The library is built for the baseline CPU of its architecture. Each hot primitive is written
//! once as plain Rust over lane arrays and compiled again inside `#[target_feature]` functions for
//! AVX2 and AVX-512, so LLVM vectorises it for that level; [`level`] picks one at first use.
//! `LOGITKIT_SIMD=scalar|avx2|avx512|neon` forces a level (a level the CPU lacks falls back to the
//! best one it has, so a forced level can never execute an illegal instruction).
//!
//! Every level performs the same floating-point operations in the same order (no FMA
//! contraction, fixed lane layout for sums), so results are bit-identical across levels.

use std::sync::atomic::{AtomicU8, Ordering};

#[cfg(target_arch = "x86_64")]
pub mod x86;

/// A SIMD level.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Level {
    /// Portable code, vectorised only as far as the baseline target allows (SSE2 on x86-64).
    Scalar,
    /// AVX2 + FMA + F16C, with BMI1/BMI2, LZCNT and POPCNT (every AVX2 CPU has them; checked
    /// anyway, as a virtual machine may hide some).
    Avx2,
    /// AVX-512 F/BW/VL/DQ, on top of [`Level::Avx2`].
    Avx512,
    /// NEON (the aarch64 baseline).
    Neon,
}

impl Level {
    /// The lower-case name used by `LOGITKIT_SIMD` and `simd_level()`.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Self::Scalar => "scalar",
            Self::Avx2 => "avx2",
            Self::Avx512 => "avx512",
            Self::Neon => "neon",
        }
    }

    fn from_u8(v: u8) -> Self {
        match v {
            1 => Self::Scalar,
            2 => Self::Avx2,
            3 => Self::Avx512,
            _ => Self::Neon,
        }
    }

    fn to_u8(self) -> u8 {
        match self {
            Self::Scalar => 1,
            Self::Avx2 => 2,
            Self::Avx512 => 3,
            Self::Neon => 4,
        }
    }
}

/// Whether the running CPU supports `level`.
#[must_use]
pub fn supported(level: Level) -> bool {
    match level {
        Level::Scalar => true,
        #[cfg(target_arch = "x86_64")]
        Level::Avx2 => {
            std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma")
                && std::arch::is_x86_feature_detected!("f16c")
                && std::arch::is_x86_feature_detected!("bmi1")
                && std::arch::is_x86_feature_detected!("bmi2")
                && std::arch::is_x86_feature_detected!("lzcnt")
                && std::arch::is_x86_feature_detected!("popcnt")
        }
        #[cfg(target_arch = "x86_64")]
        Level::Avx512 => {
            supported(Level::Avx2)
                && std::arch::is_x86_feature_detected!("avx512f")
                && std::arch::is_x86_feature_detected!("avx512bw")
                && std::arch::is_x86_feature_detected!("avx512vl")
                && std::arch::is_x86_feature_detected!("avx512dq")
        }
        #[cfg(target_arch = "aarch64")]
        Level::Neon => true,
        #[allow(unreachable_patterns)]
        _ => false,
    }
}

/// Every level the running CPU supports, best first.
#[must_use]
pub fn available() -> Vec<Level> {
    [Level::Avx512, Level::Avx2, Level::Neon, Level::Scalar]
        .into_iter()
        .filter(|&l| supported(l))
        .collect()
}

/// Parses a level name (`"scalar"`, `"avx2"`, `"avx512"`, `"neon"`).
#[must_use]
pub fn parse(name: &str) -> Option<Level> {
    match name.trim().to_ascii_lowercase().as_str() {
        "scalar" => Some(Level::Scalar),
        "avx2" => Some(Level::Avx2),
        "avx512" => Some(Level::Avx512),
        "neon" => Some(Level::Neon),
        _ => None,
    }
}

static LEVEL: AtomicU8 = AtomicU8::new(0);

/// The level in use: `LOGITKIT_SIMD` if set and supported, else the best one available.
#[inline]
#[must_use]
pub fn level() -> Level {
    match LEVEL.load(Ordering::Relaxed) {
        0 => {
            let chosen = std::env::var("LOGITKIT_SIMD")
                .ok()
                .and_then(|s| parse(&s))
                .filter(|&l| supported(l))
                .unwrap_or_else(|| available()[0]);
            LEVEL.store(chosen.to_u8(), Ordering::Relaxed);
            chosen
        }
        v => Level::from_u8(v),
    }
}

/// Serialises tests that switch the process-wide level.
#[cfg(test)]
pub fn test_lock() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Forces `level` for the rest of the process (used by tests and `logitkit._core`).
///
/// Returns `false` and changes nothing when the CPU does not support it.
pub fn set_level(level: Level) -> bool {
    if supported(level) {
        LEVEL.store(level.to_u8(), Ordering::Relaxed);
        true
    } else {
        false
    }
}

/// Defines `pub fn $name` (generic over `T: Elem` or not) that runs one body compiled for the
/// level chosen by [`level`].
///
/// The body is written once; the AVX2 and AVX-512 copies are the same code inside
/// `#[target_feature]` functions, which lets LLVM vectorise it for that level.
macro_rules! multiversion {
    (
        $(#[$meta:meta])*
        pub fn $name:ident$(<$t:ident: $bound:ident>)?($($arg:ident : $ty:ty),* $(,)?) -> $ret:ty $body:block
    ) => {
        $(#[$meta])*
        #[inline]
        pub fn $name$(<$t: $bound>)?($($arg: $ty),*) -> $ret {
            #[inline(always)]
            fn imp$(<$t: $bound>)?($($arg: $ty),*) -> $ret $body

            #[cfg(target_arch = "x86_64")]
            #[target_feature(enable = "avx2,fma,f16c,bmi1,bmi2,lzcnt,popcnt")]
            fn avx2$(<$t: $bound>)?($($arg: $ty),*) -> $ret {
                imp($($arg),*)
            }

            #[cfg(target_arch = "x86_64")]
            #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c,bmi1,bmi2,lzcnt,popcnt")]
            fn avx512$(<$t: $bound>)?($($arg: $ty),*) -> $ret {
                imp($($arg),*)
            }

            match $crate::simd::level() {
                #[cfg(target_arch = "x86_64")]
                // SAFETY: level() returns Avx512 only when `supported(Avx512)` detected every
                // feature enabled on `avx512`.
                $crate::simd::Level::Avx512 => unsafe { avx512($($arg),*) },
                #[cfg(target_arch = "x86_64")]
                // SAFETY: level() returns Avx2 only when `supported(Avx2)` detected every feature
                // enabled on `avx2`.
                $crate::simd::Level::Avx2 => unsafe { avx2($($arg),*) },
                _ => imp($($arg),*),
            }
        }
    };
}
pub(crate) use multiversion;
