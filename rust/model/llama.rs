//! The Llama layout's weights: which tensors a model of the family has, named as
//! in GGUF, which of them are optional, and their shapes.
//!
//! Llama (with Mistral, SmolLM2, TinyLlama) is the plain layout; Qwen2 adds
//! biases to the Q, K and V projections. An optional tensor is present exactly
//! when the architecture has it (`extras`): then it is required (a Qwen2 model
//! without its biases is refused), otherwise not read.

use std::collections::HashMap;

use super::tensors::Tensors;
use super::{Arch, Config, KernelError};
use crate::tensor::Tensor;

/// One decoder layer; shapes are (rows, cols), vectors (length).
pub(super) struct Layer {
    pub attn_norm: Vec<f32>, // (dim)
    pub wq: Tensor,          // (n_heads · head_dim, dim)
    pub wk: Tensor,          // (n_kv_heads · head_dim, dim)
    pub wv: Tensor,          // (n_kv_heads · head_dim, dim)
    /// Added to the Q, K and V products, before RoPE.
    pub q_bias: Option<Vec<f32>>, // (n_heads · head_dim)
    pub k_bias: Option<Vec<f32>>, // (n_kv_heads · head_dim)
    pub v_bias: Option<Vec<f32>>, // (n_kv_heads · head_dim)
    pub wo: Tensor,          // (dim, n_heads · head_dim)
    pub ffn_norm: Vec<f32>,  // (dim)
    pub w_gate: Tensor,      // (ffn_dim, dim)
    pub w_up: Tensor,        // (ffn_dim, dim)
    pub w_down: Tensor,      // (dim, ffn_dim)
}

/// Every weight of a model.
pub(super) struct Weights {
    pub embed: Tensor, // (vocab, dim)
    pub layers: Vec<Layer>,
    pub out_norm: Vec<f32>,      // (dim)
    pub lm_head: Option<Tensor>, // (vocab, dim); None when tied to `embed`
}

/// The optional tensors of the layout an architecture has.
struct Extras {
    qkv_bias: bool,
}

fn extras(arch: Arch) -> Extras {
    match arch {
        Arch::Llama => Extras { qkv_bias: false },
        Arch::Qwen2 => Extras { qkv_bias: true },
    }
}

impl Weights {
    /// Takes the weights `cfg.arch` has out of `tensors` (named as in GGUF),
    /// checking every shape. The LM head is tied to the embedding when the
    /// model has no `output.weight`.
    pub(super) fn take(
        cfg: &Config,
        tensors: HashMap<String, Tensor>,
    ) -> Result<Weights, KernelError> {
        let (d, q, kv, f, v) = (
            cfg.dim,
            cfg.q_dim(),
            cfg.kv_dim(),
            cfg.ffn_dim,
            cfg.vocab_size,
        );
        let extras = extras(cfg.arch);
        let tied = !tensors.contains_key("output.weight");
        let mut t = Tensors(tensors);
        let embed = t.take("token_embd.weight", v, d)?;
        let out_norm = t.vector("output_norm.weight", d)?;
        let mut layers = Vec::with_capacity(cfg.n_layers);
        for i in 0..cfg.n_layers {
            let w = |s: &str| format!("blk.{i}.{s}.weight");
            let b = |s: &str| format!("blk.{i}.{s}.bias");
            layers.push(Layer {
                attn_norm: t.vector(&w("attn_norm"), d)?,
                wq: t.take(&w("attn_q"), q, d)?,
                wk: t.take(&w("attn_k"), kv, d)?,
                wv: t.take(&w("attn_v"), kv, d)?,
                q_bias: t.optional_vector(extras.qkv_bias, &b("attn_q"), q)?,
                k_bias: t.optional_vector(extras.qkv_bias, &b("attn_k"), kv)?,
                v_bias: t.optional_vector(extras.qkv_bias, &b("attn_v"), kv)?,
                wo: t.take(&w("attn_output"), d, q)?,
                ffn_norm: t.vector(&w("ffn_norm"), d)?,
                w_gate: t.take(&w("ffn_gate"), f, d)?,
                w_up: t.take(&w("ffn_up"), f, d)?,
                w_down: t.take(&w("ffn_down"), d, f)?,
            });
        }
        let lm_head = if tied {
            None
        } else {
            Some(t.take("output.weight", v, d)?)
        };
        Ok(Weights {
            embed,
            layers,
            out_norm,
            lm_head,
        })
    }
}
