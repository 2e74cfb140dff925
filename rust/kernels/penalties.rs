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

/// A set of token ids with a count per id: `O(1)` insert and clear, no sort and no pass over the
/// vocabulary (a sparse set: `slot[t]` points into `ids`, which validates it).
#[derive(Clone, Debug, Default)]
pub struct TokenCounts {
    slot: Vec<u32>,
    ids: Vec<u32>,
    counts: Vec<u32>,
}

impl TokenCounts {
    /// Empties the set for ids below `vocab`.
    fn clear(&mut self, vocab: usize) {
        if self.slot.len() < vocab {
            self.slot.resize(vocab, 0);
        }
        self.ids.clear();
        self.counts.clear();
    }

    /// Adds one occurrence of every token of `tokens`.
    fn add(&mut self, tokens: &[u32]) {
        for &t in tokens {
            match self.find(t) {
                Some(s) => self.counts[s] += 1,
                None => self.insert(t, 1),
            }
        }
    }

    /// Adds every token of `tokens` that is not in the set yet, with a count of 0.
    fn mark(&mut self, tokens: &[u32]) {
        for &t in tokens {
            if self.find(t).is_none() {
                self.insert(t, 0);
            }
        }
    }

    #[inline(always)]
    fn find(&self, t: u32) -> Option<usize> {
        let s = self.slot[t as usize] as usize;
        (s < self.ids.len() && self.ids[s] == t).then_some(s)
    }

    #[inline(always)]
    fn insert(&mut self, t: u32, count: u32) {
        self.slot[t as usize] = self.ids.len() as u32;
        self.ids.push(t);
        self.counts.push(count);
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
    seen.clear(row.len());
    seen.add(output);
    if rep {
        seen.mark(prompt);
    }
    let r = p.repetition;
    for (&t, &c) in seen.ids.iter().zip(&seen.counts) {
        let z = &mut row[t as usize];
        if rep {
            let v = f64::from(*z);
            *z = settle(*z, if v > 0.0 { v / r } else { v * r });
        }
        if counted && c > 0 {
            *z = settle(*z, f64::from(*z) - f64::from(c) * p.frequency - p.presence);
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
}
