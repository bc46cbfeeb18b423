//! Choosing the next token from logits: greedy, or temperature with top-k,
//! top-p (nucleus) and min-p filtering, driven by a seeded generator so the
//! same seed always gives the same tokens on any machine.
//!
//! The order, as OpenAI's API and vLLM apply them: the raw logits get
//! `logit_bias` added, then the repetition penalty, then the frequency and
//! presence penalties; only then temperature, top-k, min-p and top-p (or the
//! argmax when greedy). A sampler with no bias and neutral penalties samples
//! the model's logits as they are, without copying them.

/// xoshiro256** seeded through splitmix64: small, fast, and the same on every platform.
#[derive(Clone, Debug)]
pub struct Rng {
    s: [u64; 4],
}

impl Rng {
    pub fn new(seed: u64) -> Rng {
        let mut z = seed;
        let mut next = || {
            z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut x = z;
            x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            x ^ (x >> 31)
        };
        Rng {
            s: [next(), next(), next(), next()],
        }
    }

    pub fn next_u64(&mut self) -> u64 {
        let s = &mut self.s;
        let out = s[1].wrapping_mul(5).rotate_left(7).wrapping_mul(9);
        let t = s[1] << 17;
        s[2] ^= s[0];
        s[3] ^= s[1];
        s[1] ^= s[2];
        s[0] ^= s[3];
        s[2] ^= t;
        s[3] = s[3].rotate_left(45);
        out
    }

    /// Uniform in [0, 1).
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

#[derive(Clone, Debug)]
pub struct SamplingParams {
    /// 0 means greedy.
    pub temperature: f32,
    /// 1.0 disables nucleus filtering.
    pub top_p: f32,
    /// 0 disables top-k filtering.
    pub top_k: usize,
    /// 0.0 disables min-p filtering.
    pub min_p: f32,
}

impl Default for SamplingParams {
    fn default() -> Self {
        SamplingParams {
            temperature: 1.0,
            top_p: 1.0,
            top_k: 0,
            min_p: 0.0,
        }
    }
}

/// Penalties on tokens the sequence has seen, applied to the logits before
/// temperature. Neutral values: 0, 0 and 1.
///
/// - `presence` and `frequency` (OpenAI's, -2..2) look at the tokens generated
///   so far only, as OpenAI documents:
///   `logit[j] -= c[j] * frequency + (c[j] > 0) * presence`, `c[j]` the times
///   token j was generated. (The prompt is the user's text: penalizing it would
///   steer the answer away from the question's own words.)
/// - `repetition` (llama.cpp's and vLLM's, > 0, 1 = off) looks at the prompt's
///   tokens and the generated ones, as vLLM does: each such token's logit is
///   divided by it when positive, multiplied by it otherwise, so a value above 1
///   always makes the token less likely. (llama.cpp looks at a window of recent
///   tokens instead; vLLM's scope needs no window size.)
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Penalties {
    pub presence: f32,
    pub frequency: f32,
    pub repetition: f32,
}

impl Penalties {
    pub const NONE: Penalties = Penalties {
        presence: 0.0,
        frequency: 0.0,
        repetition: 1.0,
    };

    /// Applies the penalties to `logits`, given the tokens seen so far.
    fn apply(&self, seen: &[Seen], logits: &mut [f32]) {
        for s in seen {
            let Some(l) = logits.get_mut(s.token as usize) else {
                continue; // a prompt id outside the vocabulary: nothing to penalize
            };
            if self.repetition != 1.0 {
                *l = if *l > 0.0 { *l / self.repetition } else { *l * self.repetition };
            }
            if s.generated > 0 {
                *l -= s.generated as f32 * self.frequency + self.presence;
            }
        }
    }
}

/// A token the penalties look at (in the prompt, or generated), and the times it was generated.
#[derive(Clone, Copy, Debug)]
struct Seen {
    token: u32,
    generated: u32,
}

// Room for this many distinct generated tokens is reserved up front, so the
// list of seen tokens grows (by doubling) only a few times in a long answer.
const SEEN_RESERVE: usize = 256;

/// A request's sampling state: its parameters and its generator.
#[derive(Clone, Debug)]
pub struct Sampler {
    pub params: SamplingParams,
    rng: Rng,
    /// The candidate list, kept so sampling a token does not allocate.
    cand: Vec<(u32, f32)>,
    /// Added to the logits of these tokens before choosing (OpenAI's logit_bias).
    bias: Vec<(u32, f32)>,
    /// None when every penalty is neutral: then nothing is counted or looked at.
    penalties: Option<Penalties>,
    /// The tokens the penalties look at, ordered by id (a binary search finds
    /// a chosen token): every token chosen so far, and the prompt's tokens when
    /// the repetition penalty is on. Proportional to the sequence, not the vocabulary.
    seen: Vec<Seen>,
    /// The logits with `bias` and the penalties applied (kept, like `cand`).
    adjusted: Vec<f32>,
}

/// Sets the logit of every token not in `allowed` (a bitset, as `sample_masked` takes) to minus infinity.
fn mask_logits(logits: &mut [f32], allowed: &[u32]) {
    for (w, chunk) in logits.chunks_mut(32).enumerate() {
        let bits = allowed.get(w).copied().unwrap_or(0);
        if bits == u32::MAX {
            continue; // a whole word allowed: common in free text, rare in JSON
        }
        for (b, l) in chunk.iter_mut().enumerate() {
            if bits & (1 << b) == 0 {
                *l = f32::NEG_INFINITY;
            }
        }
    }
}

/// Index of the largest value; the lowest index wins ties, as a stable argmax should.
pub fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &v) in logits.iter().enumerate() {
        if v > logits[best] {
            best = i;
        }
    }
    best as u32
}

// How many of the most likely tokens to try before sorting the whole vocabulary
// for top-p: the nucleus almost always lies within them.
const NUCLEUS_FIRST_TRY: usize = 512;

// Tokens whose weight is at least this fraction of the most likely token's are
// "near" it: top-p looks among them first, instead of ordering the whole
// vocabulary to find a nucleus that usually holds a few dozen tokens.
const NEAR_MAX_WEIGHT: f32 = 1e-5;

impl Sampler {
    pub fn new(params: SamplingParams, seed: u64) -> Sampler {
        Sampler {
            params,
            rng: Rng::new(seed),
            cand: Vec::new(),
            bias: Vec::new(),
            penalties: None,
            seen: Vec::new(),
            adjusted: Vec::new(),
        }
    }

    /// Adds `bias` to the logit of each listed token before every choice; ids
    /// outside the vocabulary are ignored.
    pub fn with_bias(mut self, bias: Vec<(u32, f32)>) -> Sampler {
        self.bias = bias;
        self
    }

    /// Applies `penalties` to every later choice; `prompt` is the sequence's
    /// prompt (read only when the repetition penalty is on). Neutral penalties
    /// change nothing and cost nothing.
    pub fn with_penalties(mut self, penalties: Penalties, prompt: &[u32]) -> Sampler {
        if penalties == Penalties::NONE {
            return self;
        }
        let prompt = if penalties.repetition != 1.0 { prompt } else { &[] };
        self.seen.reserve(prompt.len() + SEEN_RESERVE);
        self.seen
            .extend(prompt.iter().map(|&token| Seen { token, generated: 0 }));
        self.seen.sort_unstable_by_key(|s| s.token);
        self.seen.dedup_by_key(|s| s.token);
        self.penalties = Some(penalties);
        self
    }

    pub fn sample(&mut self, logits: &[f32]) -> u32 {
        self.sample_masked(logits, None)
    }

    /// Picks a token among those `allowed` (a bitset: bit `t % 32` of word
    /// `t / 32` for token t; tokens past its end are not allowed), or among all
    /// when None. The mask comes last, after the bias and penalties, so a
    /// grammar's choice is never undone by them. At least one token must be allowed.
    pub fn sample_masked(&mut self, logits: &[f32], allowed: Option<&[u32]>) -> u32 {
        if self.bias.is_empty() && self.penalties.is_none() && allowed.is_none() {
            return self.sample_adjusted(logits);
        }
        let mut adjusted = std::mem::take(&mut self.adjusted);
        adjusted.clear();
        adjusted.extend_from_slice(logits);
        for &(token, b) in &self.bias {
            if let Some(l) = adjusted.get_mut(token as usize) {
                *l += b;
            }
        }
        if let Some(penalties) = &self.penalties {
            penalties.apply(&self.seen, &mut adjusted);
        }
        if let Some(allowed) = allowed {
            mask_logits(&mut adjusted, allowed);
        }
        let chosen = self.sample_adjusted(&adjusted);
        self.adjusted = adjusted;
        if self.penalties.is_some() {
            self.count(chosen);
        }
        chosen
    }

    /// Counts a chosen token for the penalties of the next choices.
    fn count(&mut self, token: u32) {
        match self.seen.binary_search_by_key(&token, |s| s.token) {
            Ok(i) => self.seen[i].generated += 1,
            Err(i) => self.seen.insert(i, Seen { token, generated: 1 }),
        }
    }

    fn sample_adjusted(&mut self, logits: &[f32]) -> u32 {
        let p = &self.params;
        if p.temperature <= 0.0 || p.top_k == 1 || logits.len() == 1 {
            return argmax(logits);
        }
        let mut cand = std::mem::take(&mut self.cand);
        let chosen = self.sample_from(logits, &mut cand, true);
        self.cand = cand;
        chosen
    }

    /// `near_first`: try `sample_nucleus_near_max` first (false only to test that it changes nothing).
    fn sample_from(&mut self, logits: &[f32], cand: &mut Vec<(u32, f32)>, near_first: bool) -> u32 {
        let p = self.params.clone();
        let inv_t = 1.0 / p.temperature;
        let by_prob_desc = |a: &(u32, f32), b: &(u32, f32)| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0));
        if near_first && p.top_k == 0 && p.top_p < 1.0 && (p.min_p == 0.0 || p.min_p >= NEAR_MAX_WEIGHT) {
            if let Some(token) = self.sample_nucleus_near_max(logits, cand, inv_t) {
                return token;
            }
        }
        // Candidates as (index, probability), most likely first once ordered.
        cand.clear();
        cand.extend(
            logits
                .iter()
                .enumerate()
                .map(|(i, &l)| (i as u32, l * inv_t)),
        );

        if p.top_k > 0 && p.top_k < cand.len() {
            cand.select_nth_unstable_by(p.top_k - 1, by_prob_desc);
            cand.truncate(p.top_k);
        }
        // Softmax over the candidates (numerators only; the sum normalizes below).
        let max = cand.iter().map(|c| c.1).fold(f32::NEG_INFINITY, f32::max);
        let mut total = 0f64;
        for c in cand.iter_mut() {
            c.1 = (c.1 - max).exp();
            total += c.1 as f64;
        }
        if p.min_p > 0.0 {
            // The most likely candidate has numerator exactly 1 after the max shift.
            cand.retain(|c| c.1 >= p.min_p);
            total = cand.iter().map(|c| c.1 as f64).sum();
        }
        if p.top_p < 1.0 {
            total = self.keep_nucleus(cand, total, by_prob_desc);
        }
        self.pick(cand, total).unwrap_or_else(|| argmax(logits))
    }

    /// Top-p (and min-p) sampling that orders only the tokens near the most
    /// likely one: those whose weight is at least `NEAR_MAX_WEIGHT` of its. When
    /// they hold top_p of the mass, as they almost always do, the nucleus lies
    /// among them, and the result is the one the full ordering gives; otherwise
    /// None, and the caller orders everything.
    fn sample_nucleus_near_max(&mut self, logits: &[f32], cand: &mut Vec<(u32, f32)>, inv_t: f32) -> Option<u32> {
        let p = self.params.clone();
        let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max) * inv_t;
        let floor = max + NEAR_MAX_WEIGHT.ln().max(if p.min_p > 0.0 { p.min_p.ln() } else { f32::NEG_INFINITY });
        cand.clear();
        let mut total = 0f64;
        for (i, &l) in logits.iter().enumerate() {
            let x = l * inv_t;
            let w = (x - max).exp();
            if p.min_p == 0.0 || w >= p.min_p {
                total += w as f64; // min-p's survivors all lie in the near set: none is left out
            }
            if x >= floor {
                cand.push((i as u32, w));
            }
        }
        let target = p.top_p as f64 * total;
        cand.sort_unstable_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        let mut mass = 0f64;
        for (n, c) in cand.iter().enumerate() {
            mass += c.1 as f64;
            if mass >= target {
                cand.truncate(n + 1);
                return self.pick(cand, mass);
            }
        }
        None
    }

    /// Draws from `cand` in its order, weights summing to `total`.
    fn pick(&mut self, cand: &[(u32, f32)], total: f64) -> Option<u32> {
        let mut u = self.rng.next_f64() * total;
        for &(i, w) in cand.iter() {
            u -= w as f64;
            if u < 0.0 {
                return Some(i);
            }
        }
        cand.last().map(|c| c.0)
    }

    /// Keeps the smallest most-likely prefix whose mass reaches top_p; returns its mass.
    fn keep_nucleus(
        &self,
        cand: &mut Vec<(u32, f32)>,
        total: f64,
        order: impl Fn(&(u32, f32), &(u32, f32)) -> std::cmp::Ordering + Copy,
    ) -> f64 {
        let target = self.params.top_p as f64 * total;
        let try_first = NUCLEUS_FIRST_TRY.min(cand.len());
        if try_first < cand.len() {
            cand.select_nth_unstable_by(try_first - 1, order);
        }
        cand[..try_first].sort_unstable_by(order);
        let mut mass = 0f64;
        for (n, c) in cand[..try_first].iter().enumerate() {
            mass += c.1 as f64;
            if mass >= target {
                cand.truncate(n + 1);
                return mass;
            }
        }
        // Rare: a very flat distribution. Order everything and keep going.
        cand[try_first..].sort_unstable_by(order);
        for n in try_first..cand.len() {
            mass += cand[n].1 as f64;
            if mass >= target {
                cand.truncate(n + 1);
                return mass;
            }
        }
        mass
    }
}

/// Each sampler picks a token from its logits; the samplers run in parallel
/// on the kernel's threads (one after another, the other threads would idle).
/// `jobs`: each sampler, its logits, and the tokens allowed (None: all).
pub fn sample_all(jobs: &mut [(&mut Sampler, &[f32], Option<&[u32]>)], chosen: &mut [u32]) {
    assert_eq!(jobs.len(), chosen.len());
    let (jobs_at, chosen_at) = (
        crate::pool::SendPtr(jobs.as_mut_ptr()),
        crate::pool::SendPtr(chosen.as_mut_ptr()),
    );
    crate::pool::global().for_each_unit(jobs.len(), |i| {
        // SAFETY: i < jobs.len(), and each i is claimed by one thread only.
        unsafe {
            let (sampler, logits, allowed) = &mut *jobs_at.get().add(i);
            *chosen_at.get().add(i) = sampler.sample_masked(logits, *allowed);
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(temperature: f32, top_p: f32, top_k: usize, min_p: f32) -> SamplingParams {
        SamplingParams {
            temperature,
            top_p,
            top_k,
            min_p,
        }
    }

    #[test]
    fn greedy_picks_first_maximum() {
        let mut s = Sampler::new(params(0.0, 1.0, 0, 0.0), 1);
        assert_eq!(s.sample(&[0.1, 3.0, 3.0, -1.0]), 1);
    }

    #[test]
    fn same_seed_same_tokens() {
        let logits: Vec<f32> = (0..1000)
            .map(|i| ((i * 7919) % 1000) as f32 / 300.0)
            .collect();
        let run = |seed| {
            let mut s = Sampler::new(params(1.0, 0.95, 0, 0.0), seed);
            (0..50).map(|_| s.sample(&logits)).collect::<Vec<_>>()
        };
        assert_eq!(run(42), run(42));
        assert_ne!(run(42), run(43));
    }

    #[test]
    fn filters_exclude_unlikely_tokens() {
        // Token 0 has most of the mass; token 1 is next; the rest are tiny.
        let logits = [5.0, 4.0, 0.0, 0.0, 0.0];
        let mut top_k = Sampler::new(params(1.0, 1.0, 2, 0.0), 7);
        let mut top_p = Sampler::new(params(1.0, 0.5, 0, 0.0), 7);
        let mut min_p = Sampler::new(params(1.0, 1.0, 0, 0.2), 7);
        for _ in 0..500 {
            assert!(top_k.sample(&logits) < 2);
            assert_eq!(top_p.sample(&logits), 0);
            assert!(min_p.sample(&logits) < 2);
        }
    }

    #[test]
    fn logit_bias_bans_and_forces_tokens() {
        let logits = [5.0, 4.0, 0.0, 0.0];
        let mut ban = Sampler::new(params(0.0, 1.0, 0, 0.0), 1).with_bias(vec![(0, -100.0), (9, 50.0)]);
        assert_eq!(ban.sample(&logits), 1);
        let mut force = Sampler::new(params(1.0, 1.0, 0, 0.0), 1).with_bias(vec![(3, 100.0)]);
        assert!((0..200).all(|_| force.sample(&logits) == 3));
    }

    /// Looking for the nucleus near the most likely token first picks exactly
    /// the tokens the full ordering picks, for peaked and for flat distributions.
    #[test]
    fn the_near_max_nucleus_changes_no_choice() {
        let mut rng = Rng::new(5);
        for (spread, top_p, min_p) in [(12.0, 0.9, 0.0), (3.0, 0.95, 0.0), (0.5, 0.9, 0.0), (8.0, 0.8, 0.05), (20.0, 0.99, 0.0)] {
            let logits: Vec<f32> = (0..5000).map(|_| (rng.next_f64() as f32).powi(3) * spread).collect();
            let mut fast = Sampler::new(params(0.8, top_p, 0, min_p), 11);
            let mut full = Sampler::new(params(0.8, top_p, 0, min_p), 11);
            let mut cand = Vec::new();
            for _ in 0..200 {
                let a = fast.sample_from(&logits, &mut cand, true);
                let b = full.sample_from(&logits, &mut cand, false);
                assert_eq!(a, b, "spread {spread}, top_p {top_p}, min_p {min_p}");
            }
        }
    }

    fn penalties(presence: f32, frequency: f32, repetition: f32) -> Penalties {
        Penalties {
            presence,
            frequency,
            repetition,
        }
    }

    /// The logits a greedy sampler with `p` and `prompt` chooses from after it
    /// has chosen `chosen`.
    fn penalized(p: Penalties, prompt: &[u32], chosen: &[u32], logits: &[f32]) -> Vec<f32> {
        let mut s = Sampler::new(params(0.0, 1.0, 0, 0.0), 1).with_penalties(p, prompt);
        chosen.iter().for_each(|&t| s.count(t));
        s.sample(logits);
        s.adjusted.clone()
    }

    fn assert_close(got: &[f32], want: &[f32]) {
        let far = got.iter().zip(want).any(|(g, w)| (g - w).abs() > 1e-6);
        assert!(!far && got.len() == want.len(), "got {got:?}, want {want:?}");
    }

    /// Token 0 generated twice, token 1 once, token 2 never: frequency scales
    /// with the count, presence does not, and they add up.
    #[test]
    fn frequency_counts_and_presence_does_not() {
        let logits = [3.0, 2.0, 1.0, -1.0];
        let chosen = [0, 1, 0];
        assert_close(&penalized(penalties(0.0, 0.5, 1.0), &[], &chosen, &logits), &[2.0, 1.5, 1.0, -1.0]);
        assert_close(&penalized(penalties(0.5, 0.0, 1.0), &[], &chosen, &logits), &[2.5, 1.5, 1.0, -1.0]);
        assert_close(&penalized(penalties(0.25, 0.5, 1.0), &[], &chosen, &logits), &[1.75, 1.25, 1.0, -1.0]);
    }

    #[test]
    fn negative_penalties_favour_generated_tokens() {
        let logits = [3.0, 2.0, 1.0, -1.0];
        let chosen = [0, 1, 0];
        assert_close(&penalized(penalties(0.0, -0.5, 1.0), &[], &chosen, &logits), &[4.0, 2.5, 1.0, -1.0]);
        assert_close(&penalized(penalties(-1.0, 0.0, 1.0), &[], &chosen, &logits), &[4.0, 3.0, 1.0, -1.0]);
    }

    /// Repetition divides a positive logit and multiplies a negative one, so
    /// both become less likely; it covers the prompt's tokens and the generated ones.
    #[test]
    fn repetition_pushes_positive_and_negative_logits_down() {
        let logits = [3.0, 2.0, 1.0, -1.0];
        assert_close(&penalized(penalties(0.0, 0.0, 2.0), &[2, 3], &[0], &logits), &[1.5, 2.0, 0.5, -2.0]);
        // Below 1 it rewards them instead.
        assert_close(&penalized(penalties(0.0, 0.0, 0.5), &[3], &[0], &logits), &[6.0, 2.0, 1.0, -0.5]);
        // A prompt token repeated in the prompt, or also generated, is penalized once.
        assert_close(&penalized(penalties(0.0, 0.0, 2.0), &[1, 1], &[1, 1], &logits), &[3.0, 1.0, 1.0, -1.0]);
    }

    /// The prompt's tokens count for the repetition penalty only; repetition
    /// applies before presence and frequency.
    #[test]
    fn prompt_tokens_count_for_repetition_only() {
        let logits = [3.0, 2.0, 1.0, -1.0];
        assert_close(&penalized(penalties(1.0, 1.0, 1.0), &[0, 1, 2], &[], &logits), &logits);
        assert_close(&penalized(penalties(1.0, 0.0, 2.0), &[1], &[0], &logits), &[0.5, 1.0, 1.0, -1.0]);
        // Prompt ids outside the vocabulary are ignored.
        assert_close(&penalized(penalties(0.0, 0.0, 2.0), &[99], &[], &logits), &logits);
    }

    /// The sampler counts its own choices: with equal logits a frequency
    /// penalty makes a greedy sampler take each token in turn.
    #[test]
    fn the_sampler_counts_what_it_chooses() {
        let logits = [1.0, 0.9, 0.8];
        let mut s = Sampler::new(params(0.0, 1.0, 0, 0.0), 1).with_penalties(penalties(0.0, 0.3, 1.0), &[]);
        let picks: Vec<u32> = (0..6).map(|_| s.sample(&logits)).collect();
        assert_eq!(picks, [0, 1, 2, 0, 1, 2]);
        let mut plain = Sampler::new(params(0.0, 1.0, 0, 0.0), 1);
        assert!((0..6).all(|_| plain.sample(&logits) == 0));
    }

    /// Neutral penalties keep nothing and choose exactly the tokens a sampler
    /// without them chooses (with and without a bias).
    #[test]
    fn neutral_penalties_change_nothing() {
        let mut rng = Rng::new(9);
        let logits: Vec<f32> = (0..3000).map(|_| rng.next_f64() as f32 * 6.0).collect();
        for bias in [vec![], vec![(5, 3.0)]] {
            let mut neutral = Sampler::new(params(0.9, 0.95, 0, 0.0), 4)
                .with_bias(bias.clone())
                .with_penalties(Penalties::NONE, &[1, 2, 3]);
            let mut plain = Sampler::new(params(0.9, 0.95, 0, 0.0), 4).with_bias(bias.clone());
            assert!(neutral.penalties.is_none() && neutral.seen.is_empty());
            for _ in 0..200 {
                assert_eq!(neutral.sample(&logits), plain.sample(&logits));
            }
            assert!(neutral.seen.is_empty());
        }
    }

    /// A strong frequency penalty spreads a sampled sequence over more tokens.
    #[test]
    fn penalties_change_a_sampled_sequence_in_their_direction() {
        let mut rng = Rng::new(2);
        let logits: Vec<f32> = (0..50).map(|_| rng.next_f64() as f32 * 4.0).collect();
        let distinct = |p: Penalties| {
            let mut s = Sampler::new(params(0.7, 1.0, 0, 0.0), 8).with_penalties(p, &[]);
            let mut picks: Vec<u32> = (0..40).map(|_| s.sample(&logits)).collect();
            picks.sort_unstable();
            picks.dedup();
            picks.len()
        };
        let (plain, spread, narrow) = (distinct(Penalties::NONE), distinct(penalties(0.0, 1.0, 1.0)), distinct(penalties(0.0, -1.0, 1.0)));
        assert!(narrow < plain && plain < spread, "{narrow} {plain} {spread}");
    }

    #[test]
    fn temperature_one_follows_the_distribution() {
        let logits = [0.0f32, (3.0f32).ln()]; // probabilities 1/4, 3/4
        let mut s = Sampler::new(params(1.0, 1.0, 0, 0.0), 3);
        let ones = (0..20000).filter(|_| s.sample(&logits) == 1).count();
        assert!((ones as f64 / 20000.0 - 0.75).abs() < 0.02, "{ones}");
    }

    fn bits(allowed: &[u32], n: usize) -> Vec<u32> {
        let mut words = vec![0u32; n.div_ceil(32)];
        for &t in allowed {
            words[t as usize / 32] |= 1 << (t % 32);
        }
        words
    }

    #[test]
    fn a_mask_leaves_only_its_tokens() {
        let logits: Vec<f32> = (0..100).map(|i| (i % 17) as f32 / 4.0).collect();
        let allowed = [3u32, 40, 64, 99];
        let mask = bits(&allowed, 100);
        // Greedy: the likeliest allowed token (99 % 17 = 14 is the highest of them).
        let mut greedy = Sampler::new(params(0.0, 1.0, 0, 0.0), 1);
        assert_eq!(greedy.sample_masked(&logits, Some(&mask)), 99);
        for (top_p, top_k, min_p) in [(1.0, 0, 0.0), (0.9, 0, 0.0), (1.0, 2, 0.0), (1.0, 0, 0.3)] {
            let mut s = Sampler::new(params(1.5, top_p, top_k, min_p), 9);
            let mut seen = std::collections::BTreeSet::new();
            for _ in 0..2000 {
                seen.insert(s.sample_masked(&logits, Some(&mask)));
            }
            assert!(seen.iter().all(|t| allowed.contains(t)), "{seen:?}");
        }
        // Every allowed token comes up under plain temperature sampling.
        let mut s = Sampler::new(params(5.0, 1.0, 0, 0.0), 3);
        let seen: std::collections::BTreeSet<u32> = (0..2000).map(|_| s.sample_masked(&logits, Some(&mask))).collect();
        assert_eq!(seen.into_iter().collect::<Vec<_>>(), allowed);
    }

    #[test]
    fn bias_and_penalties_cannot_undo_a_mask() {
        let logits = vec![0.0f32; 40];
        let mask = bits(&[5], 40);
        let mut s = Sampler::new(params(1.0, 1.0, 0, 0.0), 4)
            .with_bias(vec![(7, 100.0)])
            .with_penalties(Penalties { presence: 2.0, frequency: 2.0, repetition: 1.5 }, &[5]);
        for _ in 0..20 {
            assert_eq!(s.sample_masked(&logits, Some(&mask)), 5);
        }
        // A mask shorter than the vocabulary allows nothing past its end.
        let short = bits(&[1], 32);
        let mut g = Sampler::new(params(0.0, 1.0, 0, 0.0), 1);
        assert_eq!(g.sample_masked(&[0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0,
                                     0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 9.0], Some(&short)), 1);
    }
}
