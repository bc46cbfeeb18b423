//! A BERT encoder for sentence embeddings (sentence-transformers models such
//! as all-MiniLM-L6-v2): token + position + token-type embeddings, LayerNorm,
//! then `n_layers` post-norm blocks (bidirectional multi-head attention with
//! biases → residual → LayerNorm, dense → GELU → dense → residual →
//! LayerNorm), then one vector per sequence: the mean of its rows (or its
//! first, [CLS], row), L2-normalized when the model says so.
//!
//! Tensors are named as llama.cpp names BERT's in GGUF (`token_embd.weight`,
//! `blk.N.attn_q.weight`, `blk.N.layer_output_norm.bias`, ...);
//! pycompat/models/bert.py maps Hugging Face's names onto these.
//!
//! A batch is a list of unpadded token lists. Whole sequences go through each
//! weight matrix together, in passes of at most `PASS_ROWS` rows (a sequence is
//! never split: its attention needs all of its rows); attention runs per
//! (sequence, head). No position of one sequence meets another's, and the
//! matrix products never mix rows, so a sequence's embedding is the same
//! whatever else is in the batch.
//!
//! Performance notes (all-MiniLM-L6-v2, f32, 64 sentences of 13 tokens, 2
//! cores): the matrix products take ~70% of the time, erfcf in GELU ~9%
//! (already spread over the pool; a SIMD erf would win that back at most),
//! the pool's waits ~7%; embeddings, LayerNorm, attention and pooling under 2%.

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::Mutex;

use super::tensors::Tensors;
use super::{add_to_rows, err, sized, KernelError};
use crate::attention;
use crate::ops::{self, layer_norm, matmul_many, softmax};
use crate::pool::{self, SendPtr};
use crate::q8_activations::Q8Activations;
use crate::tensor::Tensor;

/// How a sequence's rows become its one vector.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pooling {
    /// The mean of every row (sentence-transformers' `pooling_mode_mean_tokens`).
    Mean,
    /// The first row, the [CLS] token's (`pooling_mode_cls_token`).
    Cls,
}

impl Pooling {
    /// "mean" or "cls", as pycompat/models/bert.py `EncoderConfig.pooling` names them.
    pub fn parse(name: &str) -> Result<Pooling, KernelError> {
        match name {
            "mean" => Ok(Pooling::Mean),
            "cls" => Ok(Pooling::Cls),
            _ => err(format!(
                "unknown pooling {name:?} (the kernel pools by mean or cls)"
            )),
        }
    }
}

/// The encoder's hyper-parameters (pycompat/models/bert.py `EncoderConfig`,
/// read attribute by attribute by the binding).
#[derive(Clone, Debug)]
#[cfg_attr(feature = "python", derive(pyo3::FromPyObject))]
pub struct BertConfig {
    pub dim: usize,
    pub n_layers: usize,
    pub n_heads: usize,
    pub ffn_dim: usize,
    pub vocab_size: usize,
    /// Rows of the position embedding (max_position_embeddings).
    pub n_positions: usize,
    /// Rows of the token-type embedding; every token takes type 0.
    pub n_token_types: usize,
    /// The most tokens a sequence may have ([CLS] and [SEP] included); at most `n_positions`.
    pub max_seq_len: usize,
    pub norm_eps: f32,
    pub pooling: Pooling,
    /// L2-normalize each embedding (sentence-transformers' Normalize module).
    pub normalize: bool,
}

impl BertConfig {
    fn head_dim(&self) -> usize {
        self.dim / self.n_heads
    }

    fn validate(&self) -> Result<(), KernelError> {
        let sizes = [
            self.dim,
            self.n_layers,
            self.n_heads,
            self.ffn_dim,
            self.vocab_size,
            self.n_positions,
            self.n_token_types,
            self.max_seq_len,
        ];
        if sizes.contains(&0) {
            return err(format!("config has a zero size: {self:?}"));
        }
        if !self.dim.is_multiple_of(self.n_heads) {
            return err(format!(
                "{} heads do not divide a width of {}",
                self.n_heads, self.dim
            ));
        }
        if self.max_seq_len > self.n_positions {
            return err(format!(
                "max_seq_len {} is more than the {} positions the model has embeddings for",
                self.max_seq_len, self.n_positions
            ));
        }
        Ok(())
    }
}

/// A LayerNorm's scale and shift, (dim) each.
struct Norm {
    weight: Vec<f32>,
    bias: Vec<f32>,
}

/// A dense layer: `x · wᵀ + bias`.
struct Dense {
    w: Tensor,      // (out, in)
    bias: Vec<f32>, // (out)
}

/// One encoder block; shapes are (rows, cols).
struct Layer {
    q: Dense,           // (dim, dim)
    k: Dense,           // (dim, dim)
    v: Dense,           // (dim, dim)
    attn_output: Dense, // (dim, dim)
    attn_output_norm: Norm,
    ffn_up: Dense,   // (ffn_dim, dim)
    ffn_down: Dense, // (dim, ffn_dim)
    layer_output_norm: Norm,
}

pub struct Bert {
    pub cfg: BertConfig,
    token_embd: Tensor,    // (vocab, dim)
    position_embd: Tensor, // (n_positions, dim)
    token_type0: Vec<f32>, // (dim): row 0 of token_types.weight
    embd_norm: Norm,
    layers: Vec<Layer>,
    scratch: Mutex<Scratch>,
}

/// The buffers a pass works in, kept between calls (they grow to the largest pass).
#[derive(Default)]
struct Scratch {
    x: Vec<f32>,
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    /// Attention's output; the position embeddings while embedding.
    ctx: Vec<f32>,
    proj: Vec<f32>,
    ffn: Vec<f32>,
    q8: Q8Activations,
    /// The pass's sequences as (first row, length).
    spans: Vec<(usize, usize)>,
}

/// Most rows (tokens of whole sequences) that go through the layers together:
/// a pass's activations stay in cache and its buffers have a bounded size, as
/// the decoder's `PREFILL_CHUNK`. A sequence longer than this has a pass of its own.
const PASS_ROWS: usize = 512;

thread_local! {
    /// Per pool thread: one query's attention scores.
    static SCORES: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

impl Bert {
    /// Builds the encoder from tensors named as in GGUF (see the module's doc),
    /// every shape checked. Other tensors are left unread.
    pub fn new(cfg: BertConfig, tensors: HashMap<String, Tensor>) -> Result<Bert, KernelError> {
        cfg.validate()?;
        let (d, f) = (cfg.dim, cfg.ffn_dim);
        let mut t = Tensors(tensors);
        let dense = |t: &mut Tensors, name: &str, rows: usize, cols: usize| {
            Ok::<_, KernelError>(Dense {
                w: t.take(&format!("{name}.weight"), rows, cols)?,
                bias: t.vector(&format!("{name}.bias"), rows)?,
            })
        };
        let norm = |t: &mut Tensors, name: &str| {
            Ok::<_, KernelError>(Norm {
                weight: t.vector(&format!("{name}.weight"), d)?,
                bias: t.vector(&format!("{name}.bias"), d)?,
            })
        };
        let token_embd = t.take("token_embd.weight", cfg.vocab_size, d)?;
        let position_embd = t.take("position_embd.weight", cfg.n_positions, d)?;
        let mut token_type0 = vec![0.0; d];
        t.take("token_types.weight", cfg.n_token_types, d)?
            .dequantize_row(0, &mut token_type0);
        let embd_norm = norm(&mut t, "token_embd_norm")?;
        let mut layers = Vec::with_capacity(cfg.n_layers);
        for i in 0..cfg.n_layers {
            let b = |s: &str| format!("blk.{i}.{s}");
            layers.push(Layer {
                q: dense(&mut t, &b("attn_q"), d, d)?,
                k: dense(&mut t, &b("attn_k"), d, d)?,
                v: dense(&mut t, &b("attn_v"), d, d)?,
                attn_output: dense(&mut t, &b("attn_output"), d, d)?,
                attn_output_norm: norm(&mut t, &b("attn_output_norm"))?,
                ffn_up: dense(&mut t, &b("ffn_up"), f, d)?,
                ffn_down: dense(&mut t, &b("ffn_down"), d, f)?,
                layer_output_norm: norm(&mut t, &b("layer_output_norm"))?,
            });
        }
        Ok(Bert {
            cfg,
            token_embd,
            position_embd,
            token_type0,
            embd_norm,
            layers,
            scratch: Mutex::new(Scratch::default()),
        })
    }

    /// Checks a batch: every sequence has 1..=max_seq_len tokens, all in the vocabulary.
    fn check<S: AsRef<[u32]>>(&self, batch: &[S]) -> Result<(), KernelError> {
        for (i, seq) in batch.iter().enumerate() {
            let seq = seq.as_ref();
            if seq.is_empty() {
                return err(format!("sequence {i} has no tokens"));
            }
            if seq.len() > self.cfg.max_seq_len {
                return err(format!(
                    "sequence {i} has {} tokens, the most is {}",
                    seq.len(),
                    self.cfg.max_seq_len
                ));
            }
            if let Some(bad) = seq.iter().find(|&&t| t as usize >= self.cfg.vocab_size) {
                return err(format!(
                    "sequence {i}: token id {bad} is outside the vocabulary of {}",
                    self.cfg.vocab_size
                ));
            }
        }
        Ok(())
    }

    /// One embedding per sequence of `batch` (each a list of token ids, special
    /// tokens included): `batch.len() × dim` values, row-major. An empty batch
    /// gives none. The batch is checked first (`check`).
    pub fn embed<S: AsRef<[u32]>>(&self, batch: &[S]) -> Result<Vec<f32>, KernelError> {
        self.check(batch)?;
        let dim = self.cfg.dim;
        let mut out = vec![0.0; batch.len() * dim];
        let mut scratch = self.scratch.lock().unwrap_or_else(|e| e.into_inner());
        let mut first = 0;
        while first < batch.len() {
            let (mut end, mut rows) = (first + 1, batch[first].as_ref().len());
            while end < batch.len() && rows + batch[end].as_ref().len() <= PASS_ROWS {
                rows += batch[end].as_ref().len();
                end += 1;
            }
            self.pass(
                &mut scratch,
                &batch[first..end],
                &mut out[first * dim..end * dim],
            );
            first = end;
        }
        Ok(out)
    }

    /// One pass: the sequences' tokens through every layer, then pooled into `out`.
    fn pass<S: AsRef<[u32]>>(&self, sc: &mut Scratch, seqs: &[S], out: &mut [f32]) {
        let c = &self.cfg;
        let (d, eps) = (c.dim, c.norm_eps);
        let Scratch {
            x,
            q,
            k,
            v,
            ctx,
            proj,
            ffn,
            q8,
            spans,
        } = sc;
        spans.clear();
        let mut n = 0;
        for s in seqs {
            spans.push((n, s.as_ref().len()));
            n += s.as_ref().len();
        }
        let (x, q, k, v) = (
            sized(x, n * d),
            sized(q, n * d),
            sized(k, n * d),
            sized(v, n * d),
        );
        let (ctx, proj, ffn) = (
            sized(ctx, n * d),
            sized(proj, n * d),
            sized(ffn, n * c.ffn_dim),
        );

        // Embeddings: token + position + token type 0, then LayerNorm.
        for (s, &(row0, _)) in seqs.iter().zip(spans.iter()) {
            for (pos, &token) in s.as_ref().iter().enumerate() {
                let row = (row0 + pos) * d..(row0 + pos + 1) * d;
                self.token_embd
                    .dequantize_row(token as usize, &mut proj[row.clone()]);
                self.position_embd
                    .dequantize_row(pos, &mut ctx[row.clone()]);
                for ((e, p), t) in proj[row.clone()]
                    .iter_mut()
                    .zip(&ctx[row])
                    .zip(&self.token_type0)
                {
                    *e += p + t;
                }
            }
        }
        layer_norm(proj, &self.embd_norm.weight, &self.embd_norm.bias, eps, x);

        for layer in &self.layers {
            matmul_many(
                x,
                n,
                q8,
                &mut [
                    (&layer.q.w, &mut *q),
                    (&layer.k.w, &mut *k),
                    (&layer.v.w, &mut *v),
                ],
                true,
            );
            add_to_rows(q, &layer.q.bias);
            add_to_rows(k, &layer.k.bias);
            add_to_rows(v, &layer.v.bias);
            self.attention(spans, q, k, v, ctx);
            // Post-norm: x = LayerNorm(x + sublayer(x)), for attention then the MLP.
            matmul_many(ctx, n, q8, &mut [(&layer.attn_output.w, &mut *proj)], true);
            add_bias_and_residual(proj, &layer.attn_output.bias, x);
            let norm = &layer.attn_output_norm;
            layer_norm(proj, &norm.weight, &norm.bias, eps, x);

            matmul_many(x, n, q8, &mut [(&layer.ffn_up.w, &mut *ffn)], true);
            bias_gelu(ffn, &layer.ffn_up.bias);
            matmul_many(ffn, n, q8, &mut [(&layer.ffn_down.w, &mut *proj)], true);
            add_bias_and_residual(proj, &layer.ffn_down.bias, x);
            let norm = &layer.layer_output_norm;
            layer_norm(proj, &norm.weight, &norm.bias, eps, x);
        }

        for (&(row0, len), o) in spans.iter().zip(out.chunks_exact_mut(d)) {
            let rows = &x[row0 * d..(row0 + len) * d];
            match c.pooling {
                Pooling::Cls => o.copy_from_slice(&rows[..d]),
                Pooling::Mean => {
                    // Summed in f64: a long sequence's mean does not drift.
                    for (j, mean) in o.iter_mut().enumerate() {
                        let sum: f64 = rows.chunks_exact(d).map(|r| r[j] as f64).sum();
                        *mean = (sum / len as f64) as f32;
                    }
                }
            }
            if c.normalize {
                // As torch's F.normalize: divided by max(‖o‖, 1e-12).
                let norm = o.iter().map(|&a| (a as f64).powi(2)).sum::<f64>().sqrt();
                let inv = 1.0 / norm.max(1e-12);
                o.iter_mut().for_each(|a| *a = (*a as f64 * inv) as f32);
            }
        }
    }

    /// Bidirectional multi-head attention within each sequence (`spans`: first
    /// row, length): q, k, v and out are (rows, dim), head h at columns
    /// h·head_dim... Units of work are (sequence, head) pairs, claimed in order
    /// by whichever pool thread is free; each writes its own (rows, head) slice of `out`.
    fn attention(
        &self,
        spans: &[(usize, usize)],
        q: &[f32],
        k: &[f32],
        v: &[f32],
        out: &mut [f32],
    ) {
        let (d, heads, hd) = (self.cfg.dim, self.cfg.n_heads, self.cfg.head_dim());
        let scale = 1.0 / (hd as f32).sqrt();
        let n: usize = spans.iter().map(|s| s.1).sum();
        assert!(q.len() == n * d && k.len() == n * d && v.len() == n * d && out.len() == n * d);
        let outs = SendPtr(out.as_mut_ptr());
        pool::global().claim_units(spans.len() * heads, |claims| {
            SCORES.with_borrow_mut(|scores| {
                for u in claims {
                    let ((row0, len), h) = (spans[u / heads], u % heads);
                    let at = row0 * d + h * hd; // the sequence's first row, this head's columns
                    scores.resize(len, 0.0);
                    for i in 0..len {
                        let query = &q[at + i * d..][..hd];
                        attention::scores(query, &k[at..], d, scale, scores);
                        softmax(scores, false);
                        // SAFETY: rows row0..row0+len, columns of head h: this unit's
                        // alone, and inside `out` (asserted above).
                        let o = unsafe {
                            std::slice::from_raw_parts_mut(outs.get().add(at + i * d), hd)
                        };
                        attention::weighted_sum(scores, &v[at..], d, o);
                    }
                }
            })
        });
    }
}

/// `out[r] += bias + residual[r]` for each row r.
fn add_bias_and_residual(out: &mut [f32], bias: &[f32], residual: &[f32]) {
    for (o_row, r_row) in out
        .chunks_exact_mut(bias.len())
        .zip(residual.chunks_exact(bias.len()))
    {
        for ((o, b), r) in o_row.iter_mut().zip(bias).zip(r_row) {
            *o += b + r;
        }
    }
}

/// `x = gelu(x + bias)` for each row of `x`, rows shared among the pool's
/// threads (erf is costly enough to be worth it: one per element of the
/// widest activation, in every layer).
fn bias_gelu(x: &mut [f32], bias: &[f32]) {
    let width = bias.len();
    let rows = x.len() / width;
    let xs = SendPtr(x.as_mut_ptr());
    pool::global().for_each_unit(rows, |r| {
        // SAFETY: each unit is one whole row of `x`, of a distinct index below `rows`.
        let row = unsafe { std::slice::from_raw_parts_mut(xs.get().add(r * width), width) };
        ops::bias_gelu(row, bias);
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pseudo_random(n: usize, seed: u64, scale: f32) -> Vec<f32> {
        let mut s = seed;
        (0..n)
            .map(|_| {
                s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                (((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0) * scale
            })
            .collect()
    }

    fn tiny(pooling: Pooling, normalize: bool) -> Bert {
        let cfg = BertConfig {
            dim: 32,
            n_layers: 2,
            n_heads: 4,
            ffn_dim: 48,
            vocab_size: 20,
            n_positions: 16,
            n_token_types: 2,
            max_seq_len: 12,
            norm_eps: 1e-12,
            pooling,
            normalize,
        };
        let (d, f) = (cfg.dim, cfg.ffn_dim);
        let mut shapes = vec![
            ("token_embd.weight".to_string(), cfg.vocab_size, d),
            ("position_embd.weight".into(), cfg.n_positions, d),
            ("token_types.weight".into(), 2, d),
            ("token_embd_norm.weight".into(), 1, d),
            ("token_embd_norm.bias".into(), 1, d),
        ];
        for i in 0..cfg.n_layers {
            for (name, rows, cols) in [
                ("attn_q", d, d),
                ("attn_k", d, d),
                ("attn_v", d, d),
                ("attn_output", d, d),
                ("ffn_up", f, d),
                ("ffn_down", d, f),
            ] {
                shapes.push((format!("blk.{i}.{name}.weight"), rows, cols));
                shapes.push((format!("blk.{i}.{name}.bias"), 1, rows));
            }
            for name in ["attn_output_norm", "layer_output_norm"] {
                shapes.push((format!("blk.{i}.{name}.weight"), 1, d));
                shapes.push((format!("blk.{i}.{name}.bias"), 1, d));
            }
        }
        let tensors = shapes
            .into_iter()
            .enumerate()
            .map(|(i, (name, rows, cols))| {
                let values = pseudo_random(rows * cols, i as u64 + 1, 0.5);
                (name, Tensor::from_f32(rows, cols, &values))
            })
            .collect();
        Bert::new(cfg, tensors).unwrap()
    }

    #[test]
    fn a_batch_gives_each_sequence_what_it_gets_alone() {
        let model = tiny(Pooling::Mean, true);
        let batch: Vec<Vec<u32>> = vec![
            vec![1, 5, 7, 2],
            vec![3],
            vec![4, 4, 9, 11, 19, 0, 2, 8, 6, 1, 2, 3],
        ];
        let together = model.embed(&batch).unwrap();
        for (i, seq) in batch.iter().enumerate() {
            let alone = model.embed(&[seq]).unwrap();
            assert_eq!(&together[i * 32..(i + 1) * 32], &alone[..], "sequence {i}");
            let norm: f32 = alone.iter().map(|a| a * a).sum::<f32>().sqrt();
            assert!((norm - 1.0).abs() < 1e-5, "normalized: {norm}");
        }
        assert!(model.embed::<Vec<u32>>(&[]).unwrap().is_empty());
    }

    #[test]
    fn cls_pooling_reads_the_first_row_and_order_matters() {
        let model = tiny(Pooling::Cls, false);
        let a = model.embed(&[[1u32, 5, 7]]).unwrap();
        let b = model.embed(&[[1u32, 7, 5]]).unwrap();
        // Bidirectional with positions: the first row sees the reordering.
        assert!(a.iter().zip(&b).any(|(x, y)| (x - y).abs() > 1e-3));
        let norm: f32 = a.iter().map(|v| v * v).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() > 1e-3, "not normalized");
    }

    #[test]
    fn bad_batches_are_refused() {
        let model = tiny(Pooling::Mean, true);
        let cases: [(&[u32], &str); 3] = [
            (&[], "no tokens"),
            (&[1, 20], "outside the vocabulary"),
            (&[1; 13], "the most is 12"),
        ];
        for (seq, why) in cases {
            let e = model.embed(&[&[1u32][..], seq]).unwrap_err();
            assert!(e.0.contains(why), "{}", e.0);
        }
    }
}
