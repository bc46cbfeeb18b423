//! Decoding a token allocates nothing once the buffers have grown: a counting
//! allocator watches a decode step of a small random model. (Its own test
//! binary, so no other test allocates meanwhile.)

use std::alloc::{GlobalAlloc, Layout, System};
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};

use pycompat_kernel::model::{Arch, Config, Entry, Model, Want};
use pycompat_kernel::quant::quantize;
use pycompat_kernel::sampler::{Penalties, Sampler, SamplingParams};
use pycompat_kernel::dtype::DType;
use pycompat_kernel::tensor::Tensor;

struct Counting;

static ALLOCATIONS: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        System.alloc(layout)
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout)
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        System.realloc(ptr, layout, new_size)
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn random(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed;
    (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 40) as f32 / (1u64 << 24) as f32) - 0.5
        })
        .collect()
}

fn tiny_model(dtype: DType) -> Model {
    let (dim, heads, kv_heads, head_dim, ffn, vocab, layers) = (64, 4, 2, 16, 96, 256, 2);
    let cfg = Config {
        arch: Arch::Llama,
        dim,
        n_layers: layers,
        n_heads: heads,
        n_kv_heads: kv_heads,
        head_dim,
        ffn_dim: ffn,
        vocab_size: vocab,
        norm_eps: 1e-5,
        rope_neox: false,
        rope_inv_freq: (0..head_dim / 2)
            .map(|i| 10000f32.powf(-2.0 * i as f32 / head_dim as f32))
            .collect(),
        max_seq_len: 64,
        kv_f16: true,
    };
    let mut tensors = HashMap::new();
    let mut seed = 0;
    let mut add = |name: String, rows: usize, cols: usize, dtype: DType| {
        seed += 1;
        let bytes = quantize(dtype, &random(rows * cols, seed));
        tensors.insert(name, Tensor::new_grouped(dtype, rows, cols, bytes).unwrap());
    };
    add("token_embd.weight".into(), vocab, dim, dtype);
    add("output_norm.weight".into(), 1, dim, DType::F32);
    for l in 0..layers {
        let n = |s: &str| format!("blk.{l}.{s}.weight");
        add(n("attn_norm"), 1, dim, DType::F32);
        add(n("ffn_norm"), 1, dim, DType::F32);
        add(n("attn_q"), heads * head_dim, dim, dtype);
        add(n("attn_k"), kv_heads * head_dim, dim, dtype);
        add(n("attn_v"), kv_heads * head_dim, dim, dtype);
        add(n("attn_output"), dim, heads * head_dim, dtype);
        add(n("ffn_gate"), ffn, dim, dtype);
        add(n("ffn_up"), ffn, dim, dtype);
        add(n("ffn_down"), dim, ffn, dtype);
    }
    Model::new(cfg, tensors).unwrap()
}

/// Three sequences decode together in one shared paged cache, as in the
/// server's engine (one with penalties): after the first steps, a step allocates nothing.
#[test]
fn a_decode_step_allocates_nothing() {
    for dtype in [DType::Q4_1, DType::Q8_0, DType::F16] {
        let model = tiny_model(dtype);
        let mut store = model.new_store(16, 12);
        let tables: Vec<Vec<u32>> = (0..3).map(|s| (4 * s..4 * s + 4).collect()).collect();
        let params = SamplingParams {
            temperature: 0.8,
            top_p: 0.9,
            top_k: 0,
            min_p: 0.0,
        };
        let mut samplers: Vec<Sampler> = (0..3).map(|s| Sampler::new(params.clone(), s)).collect();
        // One with every penalty: its list of seen tokens has room reserved
        // for the first few hundred distinct tokens, and its logits buffer is kept.
        let penalties = Penalties { presence: 0.5, frequency: 0.3, repetition: 1.2 };
        samplers[2] = Sampler::new(params.clone(), 2).with_penalties(penalties, &[1, 2, 3, 4, 5]);
        let mut lens = [0usize; 3];
        let mut next = [[0u32; 1]; 3];
        let mut step = |store: &mut _, prompts: Option<&[u32]>| {
            let inputs = next; // arrays, not vectors: the test itself allocates nothing
            let batch = [0, 1, 2].map(|s| Entry {
                blocks: &tables[s],
                start: lens[s],
                tokens: prompts.unwrap_or(&inputs[s]),
                want: Want::Last,
            });
            let added = batch.each_ref().map(|e| e.tokens.len());
            model
                .forward(store, &batch, |i, logits| next[i][0] = samplers[i].sample(logits))
                .unwrap();
            for s in 0..3 {
                lens[s] += added[s];
            }
        };
        step(&mut store, Some(&[1, 2, 3, 4, 5])); // prompts: buffers grow here
        step(&mut store, None); // first decode: the decode-sized paths warm up
        let before = ALLOCATIONS.load(Ordering::Relaxed);
        for _ in 0..5 {
            step(&mut store, None);
        }
        let allocated = ALLOCATIONS.load(Ordering::Relaxed) - before;
        assert_eq!(
            allocated, 0,
            "{dtype:?}: {allocated} allocations in 5 decode steps"
        );
    }
}
