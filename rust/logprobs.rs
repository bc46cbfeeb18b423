//! Log-probabilities of tokens: the model's own, a log-softmax of the raw
//! logits, before logit bias, penalties, temperature or any filtering (what
//! OpenAI's API and vLLM report by default).

/// A token and its log-probability.
pub type Scored = (u32, f32);

/// `log Σ exp(logits)`, summed in f64 from the largest logit, so the result is
/// exact to f32 whatever the vocabulary size.
pub fn log_sum_exp(logits: &[f32]) -> f64 {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    if !max.is_finite() {
        return max;
    }
    let sum: f64 = logits.iter().map(|&l| (l as f64 - max).exp()).sum();
    max + sum.ln()
}

/// The log-probability of `token` in `logits`, and the `k` most likely tokens
/// with theirs in `top`, most likely first (the lower id first among equals).
pub fn logprobs(logits: &[f32], token: u32, k: usize, top: &mut Vec<Scored>) -> f32 {
    let lse = log_sum_exp(logits);
    top.clear();
    if k > 0 {
        // Insertion into a short sorted list: k is at most a few dozen, and most
        // logits fail the first comparison with the list's last entry.
        for (id, &l) in logits.iter().enumerate() {
            if top.len() == k && l <= top[k - 1].1 {
                continue;
            }
            let at = top.partition_point(|&(_, v)| v >= l);
            if top.len() == k {
                top.pop();
            }
            top.insert(at, (id as u32, l));
        }
        for entry in top.iter_mut() {
            entry.1 = (entry.1 as f64 - lse) as f32;
        }
    }
    (logits[token as usize] as f64 - lse) as f32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_a_plain_log_softmax() {
        let logits: Vec<f32> = (0..1000).map(|i| ((i * 7919 % 1000) as f32 - 500.0) / 37.0).collect();
        let total: f64 = logits.iter().map(|&l| (l as f64).exp()).sum();
        let mut top = Vec::new();
        let got = logprobs(&logits, 17, 5, &mut top);
        assert!((got as f64 - (logits[17] as f64 - total.ln())).abs() < 1e-5);
        let mut order: Vec<u32> = (0..1000).collect();
        order.sort_by(|&a, &b| logits[b as usize].total_cmp(&logits[a as usize]).then(a.cmp(&b)));
        assert_eq!(top.iter().map(|t| t.0).collect::<Vec<_>>(), order[..5]);
        for &(id, lp) in &top {
            assert!((lp as f64 - (logits[id as usize] as f64 - total.ln())).abs() < 1e-5);
        }
    }

    #[test]
    fn ties_keep_the_lower_id_first_and_k_may_exceed_nothing() {
        let logits = [1.0, 3.0, 3.0, 0.5];
        let mut top = Vec::new();
        logprobs(&logits, 0, 3, &mut top);
        assert_eq!(top.iter().map(|t| t.0).collect::<Vec<_>>(), [1, 2, 0]);
        let lp = logprobs(&logits, 3, 0, &mut top);
        assert!(top.is_empty() && lp < 0.0);
        logprobs(&logits, 3, 10, &mut top);
        assert_eq!(top.len(), 4);
    }
}
