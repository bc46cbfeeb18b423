//! The forward pass shared by the decoder architectures: embeddings,
//! `n_layers` × (RMSNorm → grouped-query attention with RoPE → residual,
//! RMSNorm → SwiGLU MLP → residual), final RMSNorm, LM head.
//!
//! What differs between architectures is which weights they have: `llama.rs`
//! names the tensors of the Llama layout (SmolLM2, TinyLlama, Llama 2/3,
//! Mistral-style configurations) and its optional ones (Q/K/V biases).
//! Tensors are named as in GGUF (`blk.N.attn_q.weight`, ...); the Python side
//! (`pycompat/models/`) maps each file format's names onto these.
//!
//! The entry point, `Model::forward`, takes a batch: several sequences, each
//! with its block table in a shared paged KV cache and its new tokens (a
//! prompt or a chunk of one, or one decoded token). All of them go through
//! each weight matrix together.
//!
//! `bert.rs` is the encoder (sentence embeddings), a model of its own that
//! shares the ops and the tensor naming.

pub mod bert;
mod llama;
mod tensors;

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::Mutex;

use crate::attention::{self, prompt_scores, prompt_weighted_sums};
use crate::kv_cache::{self, row_offset, Blocks, KvElem, KvStore, Store};
use crate::ops::{matmul_many, rms_norm, rope_angles, rope_rotate, softmax, swiglu};
use crate::pool::{self, SendPtr};
use crate::q8_activations::Q8Activations;
use crate::quant::round_to_f16;
use crate::tensor::Tensor;
use llama::{Layer, Weights};

#[derive(Debug)]
pub struct KernelError(pub String);

impl std::fmt::Display for KernelError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

fn err<T>(msg: impl Into<String>) -> Result<T, KernelError> {
    Err(KernelError(msg.into()))
}

/// The architectures the kernel runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arch {
    /// Llama 2/3, Mistral, SmolLM2, TinyLlama.
    Llama,
    /// The Llama layout plus biases on the Q, K and V projections.
    Qwen2,
}

impl Arch {
    /// The architecture named `name` ("llama", "qwen2"), as Python's ModelConfig.arch names it.
    pub fn parse(name: &str) -> Result<Arch, KernelError> {
        match name {
            "llama" => Ok(Arch::Llama),
            "qwen2" => Ok(Arch::Qwen2),
            _ => err(format!(
                "unknown architecture {name:?} (the kernel runs llama and qwen2)"
            )),
        }
    }
}

/// The model's hyper-parameters (pycompat/models/config.py `ModelConfig`, read
/// attribute by attribute by the binding).
#[derive(Clone, Debug)]
#[cfg_attr(feature = "python", derive(pyo3::FromPyObject))]
pub struct Config {
    pub arch: Arch,
    pub dim: usize,
    pub n_layers: usize,
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
    pub ffn_dim: usize,
    pub vocab_size: usize,
    pub norm_eps: f32,
    /// Rotary pairs are (i, i + rot/2) when true (Hugging Face layout), (2i, 2i+1) otherwise (GGUF llama).
    pub rope_neox: bool,
    /// Inverse frequency of each rotary pair: rot/2 values, scaling (linear, llama3) already applied.
    pub rope_inv_freq: Vec<f32>,
    pub max_seq_len: usize,
    /// Keep the KV cache in f16 (llama.cpp's default) rather than f32.
    pub kv_f16: bool,
}

impl Config {
    pub fn q_dim(&self) -> usize {
        self.n_heads * self.head_dim
    }
    pub fn kv_dim(&self) -> usize {
        self.n_kv_heads * self.head_dim
    }

    fn validate(&self) -> Result<(), KernelError> {
        let positive = [
            self.dim,
            self.n_layers,
            self.n_heads,
            self.n_kv_heads,
            self.head_dim,
            self.ffn_dim,
            self.vocab_size,
        ];
        if positive.contains(&0) || self.max_seq_len == 0 {
            return err(format!("config has a zero size: {self:?}"));
        }
        if !self.n_heads.is_multiple_of(self.n_kv_heads) {
            return err(format!(
                "{} heads do not divide into {} KV heads",
                self.n_heads, self.n_kv_heads
            ));
        }
        if self.rope_inv_freq.len() * 2 > self.head_dim {
            return err(format!(
                "{} rotary pairs do not fit a head of {}",
                self.rope_inv_freq.len(),
                self.head_dim
            ));
        }
        Ok(())
    }
}

pub struct Model {
    pub cfg: Config,
    embed: Tensor, // (vocab, dim)
    layers: Vec<Layer>,
    out_norm: Vec<f32>,      // (dim)
    lm_head: Option<Tensor>, // (vocab, dim); None when tied to `embed`
    scratch: Mutex<Scratch>,
}

/// The buffers a forward pass works in. Kept between calls, so once they have
/// grown to a step's size, decoding a token allocates nothing.
#[derive(Default)]
struct Scratch {
    x: Vec<f32>,
    xn: Vec<f32>,
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    attn: Vec<f32>,
    by_head: Vec<f32>,
    /// This layer's cached keys then values widened to f32 (prompt chunks only).
    wide: Vec<f32>,
    proj: Vec<f32>,
    gate: Vec<f32>,
    up: Vec<f32>,
    cos: Vec<f32>,
    sin: Vec<f32>,
    logits: Vec<f32>,
    q8: Q8Activations,
    /// The pass's rows that take the decode attention path, as (row, segment).
    decode_rows: Vec<(usize, usize)>,
    /// The pass's rows whose logits are wanted, as (row, segment).
    logit_rows: Vec<(usize, usize)>,
    segments: Vec<Segment>,
}

/// `v` resized to `n` (its capacity is kept, so this allocates only to grow).
fn sized(v: &mut Vec<f32>, n: usize) -> &mut [f32] {
    v.resize(n, 0.0);
    &mut v[..n]
}

/// Adds `bias` to each row of `rows` (rows of `bias.len()` values).
fn add_to_rows(rows: &mut [f32], bias: &[f32]) {
    for row in rows.chunks_exact_mut(bias.len()) {
        row.iter_mut().zip(bias).for_each(|(a, b)| *a += b);
    }
}

/// Most tokens of one sequence that go through the layers together.
const PREFILL_CHUNK: usize = 512;

/// Positions per block of the cache an `embed` call makes for itself.
const EMBED_BLOCK: usize = 16;

/// From this many new tokens on, attention widens an f16 cache to f32 first.
const WIDEN_FROM: usize = 16;

thread_local! {
    /// Per pool thread, for prompt attention: the scores and rounded queries of one unit's rows.
    static PROMPT_ROWS: RefCell<(Vec<f32>, Vec<f32>)> = const { RefCell::new((Vec::new(), Vec::new())) };
    /// Per pool thread: one query's attention scores, and the query rounded for the cache.
    static ATTN_ROW: RefCell<(Vec<f32>, Vec<f32>)> = const { RefCell::new((Vec::new(), Vec::new())) };
}

/// Which logits a batch entry wants back.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Want {
    /// None: a prompt chunk that is not the prompt's end.
    Nothing,
    /// Its last new token's (to sample the next token from).
    Last,
    /// Every new token's (teacher forcing, scoring a text).
    All,
    /// No logits: every new token's final hidden state (after the output
    /// norm, `dim` values each), for embeddings.
    Hidden,
}

/// One sequence of a batch: its block table (which cache blocks hold its
/// positions, in order), how many positions are cached already, and its new
/// tokens, which go to positions `start..start + tokens.len()`.
pub struct Entry<'a> {
    pub blocks: &'a [u32],
    pub start: usize,
    pub tokens: &'a [u32],
    pub want: Want,
}

/// A run of consecutive new tokens of one entry inside one pass.
#[derive(Clone, Copy)]
struct Segment {
    entry: usize,
    /// Index of its first token within the entry's new tokens.
    offset: usize,
    len: usize,
    /// Its first row in the pass's activations.
    row: usize,
}

impl Model {
    /// Builds the model from tensors named as in GGUF: those `cfg.arch` has
    /// (see llama.rs), every shape checked. Other tensors are left unread.
    pub fn new(cfg: Config, tensors: HashMap<String, Tensor>) -> Result<Model, KernelError> {
        cfg.validate()?;
        let Weights {
            embed,
            layers,
            out_norm,
            lm_head,
        } = Weights::take(&cfg, tensors)?;
        Ok(Model {
            cfg,
            embed,
            layers,
            out_norm,
            lm_head,
            scratch: Mutex::new(Scratch::default()),
        })
    }

    /// A paged cache of `n_blocks` blocks of `block_size` positions for this model.
    pub fn new_store(&self, block_size: usize, n_blocks: usize) -> KvStore {
        KvStore::new(
            self.cfg.n_layers,
            self.cfg.kv_dim(),
            self.cfg.kv_f16,
            block_size,
            n_blocks,
        )
    }

    /// Checks a batch against the model and the cache: known tokens, room in
    /// the context, block tables that cover every position and name real blocks.
    fn check(&self, kv: &KvStore, batch: &[Entry]) -> Result<(), KernelError> {
        if kv.kv_dim != self.cfg.kv_dim() || kv.n_layers != self.cfg.n_layers {
            return err("the KV cache was made for another model");
        }
        for (i, e) in batch.iter().enumerate() {
            if e.tokens.is_empty() {
                return err(format!("sequence {i} has no new tokens"));
            }
            if let Some(bad) = e.tokens.iter().find(|&&t| t as usize >= self.cfg.vocab_size) {
                return err(format!(
                    "token id {bad} is outside the vocabulary of {}",
                    self.cfg.vocab_size
                ));
            }
            let total = e.start + e.tokens.len();
            if total > self.cfg.max_seq_len {
                return err(format!(
                    "sequence {i} would hold {total} tokens, the context is {}",
                    self.cfg.max_seq_len
                ));
            }
            let needed = total.div_ceil(kv.block_size);
            if e.blocks.len() < needed {
                return err(format!(
                    "sequence {i} needs {needed} cache blocks for {total} positions, its table has {}",
                    e.blocks.len()
                ));
            }
            if let Some(bad) = e.blocks[..needed].iter().find(|&&b| b as usize >= kv.n_blocks) {
                return err(format!("cache block {bad} does not exist (the cache has {})", kv.n_blocks));
            }
        }
        Ok(())
    }

    /// Runs one step over a batch: every entry's new tokens go through the
    /// layers together (one pass over the weights for all of them, in passes
    /// of at most `PREFILL_CHUNK` tokens), their keys and values are written to
    /// their blocks, and `take(index, logits)` receives the logits each entry
    /// wants, from the kernel's own buffer: once for `Want::Last` (vocab values),
    /// one or more times, in order, for `Want::All` (rows × vocab each time).
    /// The batch is checked before any cache block changes.
    ///
    /// Each entry's results are the same whatever else is in the batch: rows
    /// never mix in the matrix products, and attention is per sequence.
    pub fn forward(
        &self,
        kv: &mut KvStore,
        batch: &[Entry],
        mut take: impl FnMut(usize, &[f32]),
    ) -> Result<(), KernelError> {
        self.check(kv, batch)?;
        let mut scratch = self.scratch.lock().unwrap_or_else(|e| e.into_inner());
        let mut segments = std::mem::take(&mut scratch.segments);
        let (mut entry, mut offset) = (0, 0);
        while entry < batch.len() {
            segments.clear();
            let mut rows = 0;
            while rows < PREFILL_CHUNK && entry < batch.len() {
                let len = (batch[entry].tokens.len() - offset).min(PREFILL_CHUNK - rows);
                segments.push(Segment { entry, offset, len, row: rows });
                rows += len;
                offset += len;
                if offset == batch[entry].tokens.len() {
                    (entry, offset) = (entry + 1, 0);
                }
            }
            self.forward_pass(&mut scratch, kv, batch, &segments, &mut take);
        }
        scratch.segments = segments;
        Ok(())
    }

    /// Sentence embeddings from a decoder, as llama.cpp's server makes them: each
    /// input's final hidden states (after the output norm) averaged over its
    /// tokens, then scaled to unit length; `dim` values per input into `out`.
    /// The inputs go through the layers together, in a cache of their own made
    /// for the call (the server's cache and sequences are untouched).
    pub fn embed(&self, inputs: &[Vec<u32>], out: &mut [f32]) -> Result<(), KernelError> {
        let (dim, bs) = (self.cfg.dim, EMBED_BLOCK);
        if out.len() != inputs.len() * dim {
            return err(format!("{} inputs need {} output values, not {}", inputs.len(), inputs.len() * dim, out.len()));
        }
        let tables: Vec<Vec<u32>> = {
            let mut next = 0u32;
            inputs
                .iter()
                .map(|t| {
                    let n = t.len().div_ceil(bs) as u32;
                    next += n;
                    (next - n..next).collect()
                })
                .collect()
        };
        let n_blocks = tables.iter().map(Vec::len).sum::<usize>().max(1);
        let mut kv = self.new_store(bs, n_blocks);
        let batch: Vec<Entry> = inputs
            .iter()
            .zip(&tables)
            .map(|(tokens, blocks)| Entry { blocks, start: 0, tokens, want: Want::Hidden })
            .collect();
        let mut sums = vec![0f64; inputs.len() * dim];
        self.forward(&mut kv, &batch, |i, rows| {
            let sum = &mut sums[i * dim..][..dim];
            for row in rows.chunks_exact(dim) {
                sum.iter_mut().zip(row).for_each(|(s, &v)| *s += v as f64);
            }
        })?;
        for (sum, o) in sums.chunks_exact(dim).zip(out.chunks_exact_mut(dim)) {
            let norm = sum.iter().map(|v| v * v).sum::<f64>().sqrt();
            let scale = if norm > 0.0 { 1.0 / norm } else { 0.0 };
            sum.iter().zip(o).for_each(|(s, o)| *o = (s * scale) as f32);
        }
        Ok(())
    }

    /// One pass: the segments' tokens (at most `PREFILL_CHUNK`) through every
    /// layer. A pass's activations stay in the L2 cache, and its buffers have a
    /// bounded size however long the prompts are (llama.cpp's micro-batch is the same).
    fn forward_pass(
        &self,
        sc: &mut Scratch,
        kv: &mut KvStore,
        batch: &[Entry],
        segments: &[Segment],
        take: &mut impl FnMut(usize, &[f32]),
    ) {
        let c = &self.cfg;
        let (dim, hd, q_dim, kv_dim) = (c.dim, c.head_dim, c.q_dim(), c.kv_dim());
        let n: usize = segments.iter().map(|s| s.len).sum();
        let Scratch {
            x,
            xn,
            q,
            k,
            v,
            attn,
            by_head,
            wide,
            proj,
            gate,
            up,
            cos,
            sin,
            logits,
            q8,
            decode_rows,
            logit_rows,
            segments: _,
        } = sc;

        let x = sized(x, n * dim);
        let half = c.rope_inv_freq.len();
        let (cos, sin) = (sized(cos, n * half), sized(sin, n * half));
        decode_rows.clear();
        for (si, s) in segments.iter().enumerate() {
            let e = &batch[s.entry];
            for i in 0..s.len {
                let (row, pos) = (s.row + i, e.start + s.offset + i);
                self.embed.dequantize_row(e.tokens[s.offset + i] as usize, &mut x[row * dim..][..dim]);
                let span = row * half..(row + 1) * half;
                rope_angles(pos, &c.rope_inv_freq, &mut cos[span.clone()], &mut sin[span]);
            }
            if !self.prompt_attention_for(s.len) {
                decode_rows.extend((s.row..s.row + s.len).map(|row| (row, si)));
            }
        }

        let xn = sized(xn, n * dim);
        let (q, k, v) = (
            sized(q, n * q_dim),
            sized(k, n * kv_dim),
            sized(v, n * kv_dim),
        );
        let attn = sized(attn, n * q_dim);
        let proj = sized(proj, n * dim);
        let (gate, up) = (sized(gate, n * c.ffn_dim), sized(up, n * c.ffn_dim));
        let bs = kv.block_size;

        for (l, layer) in self.layers.iter().enumerate() {
            rms_norm(x, &layer.attn_norm, c.norm_eps, xn);
            matmul_many(
                xn,
                n,
                q8,
                &mut [
                    (&layer.wq, &mut *q),
                    (&layer.wk, &mut *k),
                    (&layer.wv, &mut *v),
                ],
                true,
            );
            for (out, bias) in [
                (&mut *q, &layer.q_bias),
                (&mut *k, &layer.k_bias),
                (&mut *v, &layer.v_bias),
            ] {
                if let Some(bias) = bias {
                    add_to_rows(out, bias);
                }
            }
            for i in 0..n {
                let (cs, sn) = (
                    &cos[i * half..(i + 1) * half],
                    &sin[i * half..(i + 1) * half],
                );
                for head in q[i * q_dim..(i + 1) * q_dim].chunks_exact_mut(hd) {
                    rope_rotate(head, cs, sn, c.rope_neox);
                }
                for head in k[i * kv_dim..(i + 1) * kv_dim].chunks_exact_mut(hd) {
                    rope_rotate(head, cs, sn, c.rope_neox);
                }
            }
            match &mut kv.store {
                Store::F32(blocks) => {
                    self.write_and_attend(blocks, bs, l, batch, segments, decode_rows, q, k, v, by_head, wide, attn)
                }
                Store::F16(blocks) => {
                    self.write_and_attend(blocks, bs, l, batch, segments, decode_rows, q, k, v, by_head, wide, attn)
                }
            }
            matmul_many(attn, n, q8, &mut [(&layer.wo, &mut *proj)], true);
            x.iter_mut().zip(&*proj).for_each(|(a, b)| *a += b);

            rms_norm(x, &layer.ffn_norm, c.norm_eps, xn);
            matmul_many(
                xn,
                n,
                q8,
                &mut [(&layer.w_gate, &mut *gate), (&layer.w_up, &mut *up)],
                true,
            );
            swiglu(gate, up);
            matmul_many(gate, n, q8, &mut [(&layer.w_down, &mut *proj)], true);
            x.iter_mut().zip(&*proj).for_each(|(a, b)| *a += b);
        }

        // Hidden states, for embeddings: the output norm of each row, no LM head.
        for s in segments.iter().filter(|s| batch[s.entry].want == Want::Hidden) {
            let rows = s.row * dim..(s.row + s.len) * dim;
            for (x_row, out) in x[rows.clone()].chunks_exact(dim).zip(xn[rows.clone()].chunks_exact_mut(dim)) {
                rms_norm(x_row, &self.out_norm, c.norm_eps, out);
            }
            take(s.entry, &xn[rows]);
        }

        // Logits only for the rows that want them: the LM head is the largest matrix.
        logit_rows.clear();
        for (si, s) in segments.iter().enumerate() {
            let e = &batch[s.entry];
            let ends = s.offset + s.len == e.tokens.len();
            match e.want {
                Want::All => logit_rows.extend((0..s.len).map(|i| (s.row + i, si))),
                Want::Last if ends => logit_rows.push((s.row + s.len - 1, si)),
                _ => {}
            }
        }
        if logit_rows.is_empty() {
            return;
        }
        let m = logit_rows.len();
        for (j, &(row, _)) in logit_rows.iter().enumerate() {
            rms_norm(
                &x[row * dim..][..dim],
                &self.out_norm,
                c.norm_eps,
                &mut xn[j * dim..][..dim],
            );
        }
        let logits = sized(logits, m * c.vocab_size);
        matmul_many(
            &xn[..m * dim],
            m,
            q8,
            &mut [(self.lm_head.as_ref().unwrap_or(&self.embed), &mut *logits)],
            true,
        );
        // Consecutive rows of one segment go out together.
        let mut j = 0;
        while j < m {
            let si = logit_rows[j].1;
            let mut end = j + 1;
            while end < m && logit_rows[end].1 == si {
                end += 1;
            }
            let vs = c.vocab_size;
            take(segments[si].entry, &logits[j * vs..end * vs]);
            j = end;
        }
    }

    /// Whether a segment of `len` tokens takes the prompt attention path (the
    /// cache widened to f32, keys and values shared among queries).
    fn prompt_attention_for(&self, len: usize) -> bool {
        len >= WIDEN_FROM && crate::cpu::avx2_enabled() && self.cfg.head_dim.is_multiple_of(16)
    }

    /// Writes the pass's new keys and values to their blocks, then computes
    /// every row's attention: decode rows together, prompt segments one by one.
    #[allow(clippy::too_many_arguments)]
    fn write_and_attend<T: KvElem>(
        &self,
        blocks: &mut Blocks<T>,
        bs: usize,
        l: usize,
        batch: &[Entry],
        segments: &[Segment],
        decode_rows: &[(usize, usize)],
        q: &[f32],
        k: &[f32],
        v: &[f32],
        by_head: &mut Vec<f32>,
        wide: &mut Vec<f32>,
        out: &mut [f32],
    ) {
        let (kv_dim, q_dim) = (self.cfg.kv_dim(), self.cfg.q_dim());
        let (keys, values) = (&mut blocks.keys[l], &mut blocks.values[l]);
        for s in segments {
            let e = &batch[s.entry];
            for i in 0..s.len {
                let at = row_offset(e.blocks, bs, kv_dim, e.start + s.offset + i);
                let row = (s.row + i) * kv_dim..(s.row + i + 1) * kv_dim;
                for (dst, &src) in keys[at..at + kv_dim].iter_mut().zip(&k[row.clone()]) {
                    *dst = T::from_f32(src);
                }
                for (dst, &src) in values[at..at + kv_dim].iter_mut().zip(&v[row]) {
                    *dst = T::from_f32(src);
                }
            }
        }
        let (keys, values) = (&blocks.keys[l][..], &blocks.values[l][..]);
        let rounds = kv_cache::rounds::<T>();
        if !decode_rows.is_empty() {
            self.attention(q, keys, values, bs, batch, segments, decode_rows, rounds, out);
        }
        for s in segments.iter().filter(|s| self.prompt_attention_for(s.len)) {
            // A prompt chunk: every cached key and value meets `len` queries of each
            // head in its group, so the sequence's cache is gathered and widened to
            // f32 once (exactly: the results do not change) and the queries share each load.
            let e = &batch[s.entry];
            let (pos0, ctx) = (e.start + s.offset, e.start + s.offset + s.len);
            wide.clear();
            for part in [keys, values] {
                for b in 0..ctx.div_ceil(bs) {
                    let from = e.blocks[b] as usize * bs * kv_dim;
                    let rows = bs.min(ctx - b * bs);
                    wide.extend(part[from..from + rows * kv_dim].iter().map(|x| x.to_f32()));
                }
            }
            let (wk, wv) = wide.split_at(ctx * kv_dim);
            let rows = s.row * q_dim..(s.row + s.len) * q_dim;
            let slab = sized(by_head, s.len * q_dim);
            self.attention_prompt(&q[rows.clone()], wk, wv, pos0, s.len, rounds, slab, &mut out[rows]);
        }
    }

    /// `attention` for a prompt chunk, over an f32 view of the cache, with the
    /// AVX2 kernels: a unit of work is one KV head and two consecutive queries,
    /// so each key is loaded once for every head of its group and each value
    /// once for all six (query, head) pairs. Every score and every output is
    /// summed in the same order as in `attention`, so the results are the same.
    #[allow(clippy::too_many_arguments)]
    fn attention_prompt(
        &self,
        q: &[f32],
        keys: &[f32],
        values: &[f32],
        pos0: usize,
        n: usize,
        rounds: bool,
        by_head: &mut [f32],
        out: &mut [f32],
    ) {
        let c = &self.cfg;
        let (hd, q_dim, kv_dim) = (c.head_dim, c.q_dim(), c.kv_dim());
        let group = c.n_heads / c.n_kv_heads;
        let scale = 1.0 / (hd as f32).sqrt();
        const QB: usize = 2; // queries per unit
        let blocks = n.div_ceil(QB);
        let units = c.n_kv_heads * blocks;
        let slabs = SendPtr(by_head.as_mut_ptr());
        pool::global().claim_units(units, |claims| {
            PROMPT_ROWS.with_borrow_mut(|(scores, qv)| {
                let ctx_max = pos0 + n;
                let rows = group * QB;
                scores.resize(rows * ctx_max, 0.0);
                qv.resize(rows * hd, 0.0);
                for u in claims {
                    let (b, g) = (u / c.n_kv_heads, u % c.n_kv_heads);
                    let i0 = b * QB;
                    let nq = QB.min(n - i0);
                    let ctx = pos0 + i0 + nq; // keys the last query of the unit sees
                                              // Rows r = qi·group + h: query i0+qi, head g·group+h.
                    for qi in 0..nq {
                        for h in 0..group {
                            let r = qi * group + h;
                            let src = &q[(i0 + qi) * q_dim + (g * group + h) * hd..][..hd];
                            for (a, x) in qv[r * hd..(r + 1) * hd].iter_mut().zip(src) {
                                *a = if rounds { round_to_f16(*x) } else { *x };
                            }
                        }
                    }
                    let key0 = &keys[g * hd..];
                    for qi in 0..nq {
                        let rows_q = qi * group..(qi + 1) * group;
                        prompt_scores(qv, hd, rows_q, key0, kv_dim, scale, scores, ctx_max, ctx);
                        for r in qi * group..(qi + 1) * group {
                            let own = pos0 + i0 + qi + 1;
                            let row = &mut scores[r * ctx_max..r * ctx_max + ctx];
                            crate::ops::softmax(&mut row[..own], rounds);
                            row[own..].fill(0.0); // later keys are masked: weight 0
                        }
                    }
                    let value0 = &values[g * hd..];
                    // SAFETY: each (head, query) slice of the slab belongs to this unit alone.
                    let out_row = |r: usize| unsafe {
                        let (qi, h) = (r / group, r % group);
                        slabs.get().add(((g * group + h) * n + i0 + qi) * hd)
                    };
                    // SAFETY: those slices lie in the slab, hd values each.
                    unsafe {
                        prompt_weighted_sums(
                            scores,
                            ctx_max,
                            ctx,
                            nq * group,
                            value0,
                            kv_dim,
                            hd,
                            out_row,
                        )
                    };
                }
            })
        });
        for (h, slab) in by_head.chunks_exact(n * hd).enumerate() {
            for (i, o) in slab.chunks_exact(hd).enumerate() {
                out[i * q_dim + h * hd..][..hd].copy_from_slice(o);
            }
        }
    }

    /// Causal grouped-query attention for the pass's decode rows (`(row,
    /// segment)` pairs; a row's query sits at its position and sees the keys of
    /// every position up to its own, already written), read block by block
    /// from the layer's `keys` and `values`. q and out: (rows, n_heads · head_dim).
    ///
    /// With an f16 cache (`rounds`), rounding follows llama.cpp's (non-flash)
    /// attention, which multiplies in f16: queries and softmax weights are
    /// rounded to f16 first.
    #[allow(clippy::too_many_arguments)]
    fn attention<T: KvElem>(
        &self,
        q: &[f32],
        keys: &[T],
        values: &[T],
        bs: usize,
        batch: &[Entry],
        segments: &[Segment],
        rows: &[(usize, usize)],
        rounds: bool,
        out: &mut [f32],
    ) {
        let round = |x: f32| if rounds { round_to_f16(x) } else { x };
        let c = &self.cfg;
        let (hd, q_dim, kv_dim) = (c.head_dim, c.q_dim(), c.kv_dim());
        let group = c.n_heads / c.n_kv_heads;
        let scale = 1.0 / (hd as f32).sqrt();

        // Units of work are (row, head) pairs, claimed in order by whichever
        // thread is free, so short and long contexts spread evenly. Each
        // writes its own head_dim slice of `out`.
        assert!(rows.iter().all(|&(r, _)| (r + 1) * q_dim <= out.len()));
        let outs = SendPtr(out.as_mut_ptr());
        let units = rows.len() * c.n_heads;
        pool::global().claim_units(units, |claims| {
            ATTN_ROW.with_borrow_mut(|(scores, qv)| {
                if scores.capacity() < c.max_seq_len {
                    // Room for a full context at once: growing with it would reallocate.
                    scores.reserve_exact(c.max_seq_len - scores.len());
                }
                qv.resize(hd, 0.0);
                for u in claims {
                    let ((row, si), h) = (rows[u / c.n_heads], u % c.n_heads);
                    let s = &segments[si];
                    let e = &batch[s.entry];
                    let ctx = e.start + s.offset + (row - s.row) + 1;
                    // SAFETY: rows are distinct and in bounds (asserted above); each
                    // (row, head) slice is written by the thread that claimed the unit.
                    let o = unsafe {
                        std::slice::from_raw_parts_mut(outs.get().add(row * q_dim + h * hd), hd)
                    };
                    let kv_off = (h / group) * hd;
                    for (a, b) in qv.iter_mut().zip(&q[row * q_dim + h * hd..][..hd]) {
                        *a = round(*b);
                    }
                    scores.resize(ctx, 0.0);
                    for (b, part) in scores.chunks_mut(bs).enumerate() {
                        let at = e.blocks[b] as usize * bs * kv_dim + kv_off;
                        attention::scores(qv, &keys[at..], kv_dim, scale, part);
                    }
                    softmax(scores, rounds);
                    o.fill(0.0);
                    for (b, part) in scores.chunks(bs).enumerate() {
                        let at = e.blocks[b] as usize * bs * kv_dim + kv_off;
                        attention::weighted_sum_onto(part, &values[at..], kv_dim, o);
                    }
                }
            })
        });
    }
}
