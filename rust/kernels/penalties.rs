//! Logit bias and penalties (SPEC §5): sparse updates by token id, `O(|history| + |bias|)` per
//! row after the copy, never a lookup per vocabulary entry.
//!
//! Arithmetic is done in `f64` and rounded once to `f32`. Neutral parameters leave a logit
//! untouched, bit for bit (`-0.0` stays `-0.0`). A masked logit (`-inf`) stays masked, only a
//! bias of `-inf` masks a token, and a finite result beyond the `f32` range saturates to
//! `±f32::MAX`: bias and penalties never make a NaN or a `+inf` out of valid input.

/// Penalty parameters of one row.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Penalties {
    /// CTRL-style: divide positive logits, multiply the others; `1` is neutral.
    pub repetition: f64,
    /// OpenAI presence penalty; `0` is neutral.
    pub presence: f64,
    /// OpenAI frequency penalty; `0` is neutral.
    pub frequency: f64,
}

impl Default for Penalties {
    fn default() -> Self {
        Self {
            repetition: 1.0,
            presence: 0.0,
            frequency: 0.0,
        }
    }
}

/// Rounds the `f64` result `v` of an update of the finite logit `was` to `f32`: saturated to
/// `±f32::MAX`, so that a finite logit stays finite (an `f64` overflow of the update included).
#[inline]
fn settle(was: f32, v: f64) -> f32 {
    if was == f32::NEG_INFINITY {
        return was;
    }
    // `v` is never NaN here: `was` is finite and every parameter is finite.
    let max = f64::from(f32::MAX);
    v.clamp(-max, max) as f32
}

/// Adds `values[j]` to `row[ids[j]]` (ids are in range; `-inf` bans the token).
pub fn apply_bias(row: &mut [f32], ids: &[u32], values: &[f64]) {
    for (&id, &b) in ids.iter().zip(values) {
        let z = &mut row[id as usize];
        *z = if b == f64::NEG_INFINITY {
            f32::NEG_INFINITY
        } else {
            settle(*z, f64::from(*z) + b)
        };
    }
}

/// A set of token ids with a count per id, in order of first appearance: an open-addressed hash
/// table (linear probing, a multiplier drawn per process: [`hash_multiplier`]) sized to the
/// counted tokens of one row (twice their number, a power of two), so that a row
/// costs `O(|prompt| + |output|)` (a table of counts indexed by token id would be evicted by the
/// pass over a large row, and cost a cache and TLB miss per distinct token). Uncounted tokens
/// (the prompt's) join through one bit per id ([`Self::add_uncounted`]): V / 8 bytes, 16 KiB at
/// V = 128256, of which a row touches only the words of its tokens.
#[derive(Clone, Debug, Default)]
pub struct TokenCounts {
    /// `(id, index into ids)`, with the index [`FREE`] for an empty entry.
    table: Vec<(u32, u32)>,
    ids: Vec<u32>,
    counts: Vec<u32>,
    /// The logits of `ids`, gathered for [`penalize`].
    vals: Vec<f32>,
    /// One bit per token id of the vocabulary, for [`Self::add_uncounted`]; all clear between
    /// calls.
    bits: Vec<u64>,
}

/// The index of an empty entry of [`TokenCounts`]' table (a row holds fewer distinct ids).
const FREE: u32 = u32::MAX;

/// The odd multiplier of [`TokenCounts`]' hash, drawn once per process. With a multiplier
/// known in advance, ids chosen for it (a prompt given as token ids) share one run of the table,
/// and every insert walks that run: 32768 such ids took 358 ms a row instead of 0.3 ms. The
/// table's layout never changes a result, only its speed.
fn hash_multiplier() -> u64 {
    static KEY: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *KEY.get_or_init(|| {
        use std::hash::{BuildHasher, Hasher};
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u64(0x9E37_79B9_7F4A_7C15);
        h.finish() | 1
    })
}

impl TokenCounts {
    /// Empties the set, with room for `tokens` distinct ids.
    fn clear(&mut self, tokens: usize) {
        let size = (2 * tokens).next_power_of_two().max(16);
        self.table.clear();
        self.table.resize(size, (0, FREE));
        self.ids.clear();
        self.counts.clear();
    }

    /// Counts every token of `tokens` (a token not in the set yet enters it with a count of 1).
    /// At most the `tokens` given to [`Self::clear`] may be distinct, so the table stays at most
    /// half full.
    fn add(&mut self, tokens: &[u32]) {
        let (table, ids, counts) = (&mut self.table[..], &mut self.ids, &mut self.counts);
        let mask = table.len() - 1;
        // Multiplicative hashing: the top bits of the product index the table.
        let (key, shift) = (hash_multiplier(), 64 - table.len().trailing_zeros());
        for &t in tokens {
            let mut i = (u64::from(t).wrapping_mul(key) >> shift) as usize;
            loop {
                let (id, s) = table[i];
                if s == FREE {
                    table[i] = (t, ids.len() as u32);
                    ids.push(t);
                    counts.push(1);
                    break;
                }
                if id == t {
                    counts[s as usize] += 1;
                    break;
                }
                i = (i + 1) & mask;
            }
        }
        debug_assert!(2 * ids.len() <= table.len());
    }

    /// Adds the tokens of `tokens` that are not in the set yet, with a count of 0, in order of
    /// first appearance. Every id must be below `vocab`. The hash table is left as it was, so no
    /// [`Self::add`] may follow. A bit per id of the vocabulary marks the set, and tokens are
    /// appended without a branch on whether they are new (prompts repeat ids at random, which a
    /// branch would mispredict).
    fn add_uncounted(&mut self, tokens: &[u32], vocab: usize) {
        let (bits, ids, counts) = (&mut self.bits, &mut self.ids, &mut self.counts);
        if bits.len() < vocab.div_ceil(64) {
            bits.resize(vocab.div_ceil(64), 0);
        }
        for &t in ids.iter() {
            bits[t as usize / 64] |= 1 << (t % 64);
        }
        let mut n = ids.len();
        ids.resize(n + tokens.len(), 0);
        for &t in tokens {
            let w = &mut bits[t as usize / 64];
            let new = !*w >> (t % 64) & 1;
            *w |= 1 << (t % 64);
            ids[n] = t;
            n += new as usize;
        }
        ids.truncate(n);
        counts.resize(n, 0);
        for &t in ids.iter() {
            bits[t as usize / 64] = 0;
        }
    }
}

/// Applies repetition (over the distinct tokens of `prompt ∪ output`), then frequency and
/// presence (from the counts in `output`). `seen` is scratch space.
///
/// One set holds the distinct tokens of both lists, with their counts in `output` (0 for a
/// prompt-only token), so each list is read once. Each step rounds to `f32`, in that order.
pub fn apply_penalties(
    row: &mut [f32],
    prompt: &[u32],
    output: &[u32],
    p: &Penalties,
    seen: &mut TokenCounts,
) {
    let rep = p.repetition != 1.0;
    let counted = p.frequency != 0.0 || p.presence != 0.0;
    if !rep && !counted {
        return;
    }
    // No more distinct ids than tokens, nor than the vocabulary (ids are below it).
    seen.clear(output.len().min(row.len()));
    seen.add(output);
    if rep && !prompt.is_empty() {
        seen.add_uncounted(prompt, row.len());
    }
    // Gathered, updated in one vectorised pass (selects instead of branches: signs and counts
    // follow no pattern), and written back.
    let TokenCounts {
        ids, counts, vals, ..
    } = seen;
    vals.clear();
    vals.extend(ids.iter().map(|&t| row[t as usize]));
    penalize(vals, counts, p, rep, counted);
    for (&t, &y) in ids.iter().zip(vals.iter()) {
        row[t as usize] = y;
    }
}

crate::simd::multiversion! {
    /// [`apply_penalties`] on gathered logits: repetition (when `rep`), then frequency and
    /// presence for a count above 0 (when `counted`), each step rounded by [`settle`].
    pub fn penalize(vals: &mut [f32], counts: &[u32], p: &Penalties, rep: bool, counted: bool) -> () {
        let (r, freq, pres) = (p.repetition, p.frequency, p.presence);
        for (z, &c) in vals.iter_mut().zip(counts) {
            let mut y = *z;
            if rep {
                let v = f64::from(y);
                y = settle(y, if v > 0.0 { v / r } else { v * r });
            }
            if counted {
                let w = settle(y, f64::from(y) - f64::from(c) * freq - pres);
                y = if c > 0 { w } else { y };
            }
            *z = y;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn penalties_follow_the_definitions() {
        let mut row = vec![2.0f32, -2.0, 1.0, 0.5, -0.0];
        let p = Penalties {
            repetition: 2.0,
            presence: 0.5,
            frequency: 0.25,
        };
        apply_penalties(
            &mut row,
            &[0, 1],
            &[1, 1, 2],
            &p,
            &mut TokenCounts::default(),
        );
        assert_eq!(
            row,
            vec![1.0, -4.0 - 0.5 - 0.5, 0.5 - 0.25 - 0.5, 0.5, -0.0]
        );
    }

    #[test]
    fn ids_chosen_for_a_fixed_multiplier_do_not_share_one_run_of_the_table() {
        // 4096 ids whose slots under a fixed Fibonacci multiplier are all the same (in a table
        // of 8192): with that multiplier the table would hold one run of 4096 entries.
        let fixed = |t: u32| (u64::from(t).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 51) as usize;
        let ids: Vec<u32> = (0u32..).filter(|&t| fixed(t) == 77).take(4096).collect();
        let mut seen = TokenCounts::default();
        seen.clear(ids.len());
        seen.add(&ids);
        assert_eq!(seen.ids, ids);
        let (mut longest, mut run) = (0, 0);
        for &(_, s) in &seen.table {
            run = if s == FREE { 0 } else { run + 1 };
            longest = longest.max(run);
        }
        // A random multiplier at half load leaves runs of a few dozen entries.
        assert!(longest < 400, "a run of {longest} entries");
    }

    #[test]
    fn a_history_longer_than_the_vocabulary_counts_every_token() {
        let mut row = vec![1.0f32, -1.0, 0.5];
        let output: Vec<u32> = (0..999).map(|i| i % 2).collect();
        let p = Penalties {
            repetition: 1.0,
            presence: 0.0,
            frequency: 0.01,
        };
        apply_penalties(&mut row, &[2; 50], &output, &p, &mut TokenCounts::default());
        assert_eq!(
            row,
            vec![
                (1.0 - 500.0 * 0.01) as f32,
                (-1.0 - 499.0 * 0.01) as f32,
                0.5
            ]
        );
    }

    #[test]
    fn neutral_penalties_keep_bits() {
        let mut row = vec![-0.0f32, 1.5, f32::NEG_INFINITY];
        apply_penalties(
            &mut row,
            &[0, 1, 2],
            &[0, 2],
            &Penalties::default(),
            &mut TokenCounts::default(),
        );
        assert_eq!(row[0].to_bits(), (-0.0f32).to_bits());
        assert_eq!(row[1], 1.5);
    }

    /// The distinct ids of `output` then `prompt` in order of first appearance, with their
    /// counts in `output`, by hand.
    fn by_hand(output: &[u32], prompt: &[u32]) -> (Vec<u32>, Vec<u32>) {
        let mut ids: Vec<u32> = Vec::new();
        for &t in output.iter().chain(prompt) {
            if !ids.contains(&t) {
                ids.push(t);
            }
        }
        let counts = ids
            .iter()
            .map(|&t| output.iter().filter(|&&o| o == t).count() as u32)
            .collect();
        (ids, counts)
    }

    #[test]
    fn the_set_counts_every_id_in_order_of_first_appearance() {
        let mut next = crate::kernels::tests::lcg(7);
        let mut seen = TokenCounts::default();
        // Sizes around the table's minimum and growth, with repeats, ids that collide in the
        // table's low and high bits, and the largest ids.
        for n in [0, 1, 7, 8, 9, 300, 5000, 40] {
            let output: Vec<u32> = (0..n)
                .map(|i| match i % 4 {
                    0 => next() % 64,
                    1 => u32::MAX - next() % 8,
                    2 => (next() % 16) << 20,
                    _ => next() << 1,
                })
                .collect();
            seen.clear(output.len());
            seen.add(&output);
            let (ids, counts) = by_hand(&output, &[]);
            assert_eq!(seen.ids, ids, "n {n}");
            assert_eq!(seen.counts, counts, "n {n}");
        }
    }

    #[test]
    fn uncounted_tokens_join_the_set_in_order_of_first_appearance() {
        let mut next = crate::kernels::tests::lcg(5);
        let mut seen = TokenCounts::default();
        for (round, vocab) in [1usize, 2, 63, 64, 65, 1000, 70000, 3, 1000, 64]
            .into_iter()
            .enumerate()
        {
            let v = vocab as u32;
            let n_out = next() as usize % 50;
            let output: Vec<u32> = (0..n_out).map(|_| next() % v).collect();
            // Prompts with many repeats, the largest and smallest ids, and ids of the output.
            let prompt: Vec<u32> = (0..next() as usize % 300)
                .map(|i| match i % 5 {
                    0 => v - 1,
                    1 => 0,
                    2 if !output.is_empty() => output[next() as usize % output.len()],
                    _ => next() % v.min(100),
                })
                .collect();
            seen.clear(output.len());
            seen.add(&output);
            seen.add_uncounted(&prompt, vocab);
            let (ids, counts) = by_hand(&output, &prompt);
            assert_eq!(seen.ids, ids, "round {round}");
            assert_eq!(seen.counts, counts, "round {round}");
            assert!(
                seen.bits.iter().all(|&w| w == 0),
                "round {round}: bits left set"
            );
        }
    }

    /// The definition token by token, in plain code.
    fn by_definition(row: &mut [f32], prompt: &[u32], output: &[u32], p: &Penalties) {
        let mut ids: Vec<u32> = output.iter().chain(prompt).copied().collect();
        ids.sort_unstable();
        ids.dedup();
        for t in ids {
            let z = &mut row[t as usize];
            let c = output.iter().filter(|&&o| o == t).count();
            if p.repetition != 1.0 {
                let v = f64::from(*z);
                *z = settle(
                    *z,
                    if v > 0.0 {
                        v / p.repetition
                    } else {
                        v * p.repetition
                    },
                );
            }
            if c > 0 && (p.frequency != 0.0 || p.presence != 0.0) {
                *z = settle(*z, f64::from(*z) - c as f64 * p.frequency - p.presence);
            }
        }
    }

    #[test]
    fn every_level_follows_the_definition_bit_for_bit() {
        let mut next = crate::kernels::tests::lcg(99);
        let v = 300;
        let specials = [
            0.0f32,
            -0.0,
            f32::NEG_INFINITY,
            f32::MAX,
            -f32::MAX,
            1e-30,
            -1e-30,
        ];
        let row: Vec<f32> = (0..v)
            .map(|i| match i % 10 {
                0 => specials[(i / 10) % specials.len()],
                _ => (next() as f32 / (1u64 << 31) as f32) * 40.0 - 20.0,
            })
            .collect();
        let prompt: Vec<u32> = (0..150).map(|_| next() % v as u32).collect();
        let output: Vec<u32> = (0..200).map(|_| next() % v as u32).collect();
        let params = [
            (1.3, 0.0, 0.0),
            (0.7, 0.4, 0.25),
            (1.0, -0.5, 1.5),
            (1e-30, 0.0, 0.0),
            (2.0, 1e38, -3e38),
        ];
        let mut seen = TokenCounts::default();
        for (repetition, presence, frequency) in params {
            let p = Penalties {
                repetition,
                presence,
                frequency,
            };
            let mut want = row.clone();
            by_definition(&mut want, &prompt, &output, &p);
            crate::kernels::tests::each_level(|level| {
                let mut got = row.clone();
                apply_penalties(&mut got, &prompt, &output, &p, &mut seen);
                let bits = |r: &[f32]| r.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                assert_eq!(bits(&got), bits(&want), "level {level:?}, {p:?}");
            });
        }
    }
}
