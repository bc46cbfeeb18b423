//! Log-probabilities of tokens: the model's own, a log-softmax of the raw
//! logits, before logit bias, penalties, temperature or any filtering (what
//! OpenAI's API and vLLM report by default).

/// A token and its log-probability.
pub type Scored = (u32, f32);

/// A token's log-probability, and the likeliest tokens at its position.
pub type Scores = (f32, Vec<Scored>);

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

/// Scores consecutive rows of `vocab` logits each against their targets: row
/// `j` gives `targets[j]`'s log-probability and the `k` likeliest tokens (rows
/// past the targets are left out). Appended to `out`; one row per unit of work.
pub fn score_rows(rows: &[f32], vocab: usize, targets: &[u32], k: usize, out: &mut Vec<Scores>) {
    assert!(targets.len() * vocab <= rows.len(), "score_rows: more targets than rows");
    if targets.is_empty() {
        return;
    }
    let first = out.len();
    out.resize_with(first + targets.len(), || (0.0, Vec::new()));
    let slots = crate::pool::SendPtr(out[first..].as_mut_ptr());
    crate::pool::global().for_each_unit(targets.len(), |j| {
        let mut top = Vec::with_capacity(k);
        let lp = logprobs(&rows[j * vocab..(j + 1) * vocab], targets[j], k, &mut top);
        // SAFETY: unit j writes slot j alone, and there are targets.len() slots.
        unsafe { *slots.get().add(j) = (lp, top) };
    });
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

    #[test]
    fn scored_rows_are_each_rows_own_logprobs() {
        let vocab = 300;
        let rows: Vec<f32> = (0..5 * vocab).map(|i| ((i * 7919 % 641) as f32 - 320.0) / 41.0).collect();
        let targets = [3, 299, 0, 150];
        let mut out = vec![(1.0, Vec::new())]; // kept: results are appended
        score_rows(&rows, vocab, &targets, 2, &mut out);
        assert_eq!(out.len(), 5);
        let mut top = Vec::new();
        for (j, &t) in targets.iter().enumerate() {
            let lp = logprobs(&rows[j * vocab..(j + 1) * vocab], t, 2, &mut top);
            assert_eq!(out[j + 1], (lp, top.clone()));
        }
    }
}
