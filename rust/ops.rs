//! The numeric building blocks of the forward pass: matrix products over
//! weight tensors in any `DType` (with the quantization of their activations),
//! RMSNorm, LayerNorm, RoPE, softmax, SwiGLU, GELU.
//!
//! Performance notes:
//! - Block-quantized weights meet activations quantized to 8 bits (as in ggml),
//!   in tiles of several rows × tokens (`simd_avx2/matmul.rs`); float weights
//!   too (`simd_avx2/float_matmul.rs`), f16/bf16 rows widened to f32 once per
//!   tile into an L1-sized buffer.
//! - Each kernel has an AVX2 version and a portable one; the choice is made per
//!   call from the CPU's features (`cpu.rs`; `PYCOMPAT_KERNEL=portable` forces
//!   the portable one), and the tests hold the two to the same results.
//! - Rows are dealt in chunks that the threads of the kernel's pool claim as
//!   they go (`pool.rs`); the matrices that share an input run in one parallel
//!   section (`matmul_many`).

use std::ops::Range;

use crate::dtype::DType;
use crate::pool::{self, SendPtr};
use crate::q8_activations::Q8Activations;
use crate::tensor::Tensor;

/// f32 dot product with 16 independent accumulators, so the compiler can keep
/// them in vector registers (a single accumulator would serialize on its latency).
#[inline(always)]
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    debug_assert_eq!(a.len(), b.len());
    let mut acc = [0f32; 16];
    let (ca, cb) = (a.chunks_exact(16), b.chunks_exact(16));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for l in 0..16 {
            acc[l] += x[l] * y[l];
        }
    }
    let mut tail = 0f32;
    for (x, y) in ra.iter().zip(rb) {
        tail += x * y;
    }
    // Pairwise reduction of the lanes.
    let mut width = 8;
    while width > 0 {
        for l in 0..width {
            acc[l] += acc[l + width];
        }
        width /= 2;
    }
    acc[0] + tail
}

/// The SIMD level the matrix kernels use, decided once per call from the CPU.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Isa {
    Portable,
    #[cfg(target_arch = "x86_64")]
    Avx2,
}

fn pick_isa(allow_simd: bool) -> Isa {
    #[cfg(target_arch = "x86_64")]
    {
        if allow_simd && crate::cpu::avx2_enabled() {
            return Isa::Avx2;
        }
    }
    let _ = allow_simd;
    Isa::Portable
}

thread_local! {
    /// Dequantized weight rows, for float weights (each pool thread keeps its own).
    static ROW: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
    /// One gathered row of a grouped matrix, for the portable path.
    static GATHER: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Float weights: each row is widened to f32 once and met with every token.
#[inline(always)]
fn float_rows_body(w: &Tensor, x: &[f32], n_tok: usize, rows: Range<usize>, out: SendPtr<f32>) {
    ROW.with_borrow_mut(|buf| {
        buf.resize(w.cols, 0.0);
        for r in rows {
            w.dequantize_row(r, buf);
            for t in 0..n_tok {
                let v = dot(buf, &x[t * w.cols..(t + 1) * w.cols]);
                // SAFETY: (t, r) is inside `out`, and row r belongs to this part alone.
                unsafe { *out.get().add(t * w.rows + r) = v };
            }
        }
    })
}

/// `float_rows_body` with AVX2 and FMA, in tiles of rows × tokens
/// (`simd_avx2/float_matmul.rs`, which states why a result does not depend on
/// the batch). Each group of `ROW_TILE` rows meets every token: f32 rows are
/// read where they lie, other formats are widened into `ROW` once per group.
///
/// Why the loop is not in `ROW.with_borrow_mut`'s closure: a closure is
/// compiled without the `#[target_feature]`s of the function it is written in
/// (the row loop once ran as SSE2, two floats per load).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn float_rows_avx2(
    w: &Tensor,
    x: &[f32],
    n_tok: usize,
    rows: Range<usize>,
    out: SendPtr<f32>,
) {
    use crate::simd_avx2::{float_tiles, ROW_TILE};
    let k = w.cols;
    let direct = w.dtype == DType::F32 && !w.is_grouped();
    // Taken out of the thread-local (and put back) so the loop is compiled here.
    let mut buf = ROW.with_borrow_mut(std::mem::take);
    if !direct {
        buf.resize(ROW_TILE * k, 0.0);
    }
    for r0 in rows.clone().step_by(ROW_TILE) {
        let nr = ROW_TILE.min(rows.end - r0);
        let first = if direct {
            w.row(r0).as_ptr() as *const f32
        } else {
            for i in 0..nr {
                w.dequantize_row(r0 + i, &mut buf[i * k..(i + 1) * k]);
            }
            buf.as_ptr()
        };
        // SAFETY: rows r0..r0+nr are `k` apart (stored f32 rows, or widened
        // into `buf`); the tokens are the rows of `x`; every (t, r) is in
        // `out`, and rows r0..r0+nr belong to this part alone.
        float_tiles(first, nr, x.as_ptr(), n_tok, k, out.get().add(r0), w.rows);
    }
    ROW.with_borrow_mut(|kept| *kept = buf); // the empty Vec it replaces frees nothing
}

/// Block-quantized weights, portable: one (row, token) dot product at a time.
fn quant_rows_portable(
    w: &Tensor,
    q8: &Q8Activations,
    n_tok: usize,
    rows: Range<usize>,
    out: SendPtr<f32>,
) {
    GATHER.with_borrow_mut(|buf| {
        for r in rows {
            let row = w.row_in(r, buf);
            for t in 0..n_tok {
                let (d, s, qs) = q8.token(t);
                // SAFETY: as in float_rows_body.
                unsafe {
                    *out.get().add(t * w.rows + r) = crate::quant::dot_q8(w.dtype, row, d, s, qs)
                };
            }
        }
    })
}

/// Rows `rows` of `w` times every token, into `out` ([n_tok, w.rows]).
fn rows_job(
    isa: Isa,
    w: &Tensor,
    x: &[f32],
    q8: &Q8Activations,
    n_tok: usize,
    rows: Range<usize>,
    out: SendPtr<f32>,
) {
    if rows.is_empty() {
        return;
    }
    match (isa, w.dtype.is_quantized()) {
        (Isa::Portable, false) => float_rows_body(w, x, n_tok, rows, out),
        (Isa::Portable, true) => quant_rows_portable(w, q8, n_tok, rows, out),
        #[cfg(target_arch = "x86_64")]
        // SAFETY: pick_isa checked the CPU's features.
        (Isa::Avx2, false) => unsafe { float_rows_avx2(w, x, n_tok, rows, out) },
        #[cfg(target_arch = "x86_64")]
        (Isa::Avx2, true) if w.is_grouped() => {
            use crate::simd_avx2::{matmul_groups, Q4_0, Q4_1, Q8_0};
            let kernel = match w.dtype {
                DType::Q8_0 => matmul_groups::<Q8_0>,
                DType::Q4_0 => matmul_groups::<Q4_0>,
                _ => matmul_groups::<Q4_1>,
            };
            let g = crate::row_groups::ROWS;
            debug_assert!(rows.start.is_multiple_of(g) && rows.len().is_multiple_of(g));
            // SAFETY: as below; the part's rows are whole groups.
            unsafe {
                kernel(
                    w.bytes(),
                    rows.start / g,
                    rows.len() / g,
                    q8,
                    n_tok,
                    out.get().add(rows.start),
                    w.rows,
                )
            }
        }
        #[cfg(target_arch = "x86_64")]
        (Isa::Avx2, true) => {
            use crate::simd_avx2::{matmul_rows, Q4_0, Q4_1, Q8_0};
            let kernel = match w.dtype {
                DType::Q8_0 => matmul_rows::<Q8_0>,
                DType::Q4_0 => matmul_rows::<Q4_0>,
                _ => matmul_rows::<Q4_1>,
            };
            // SAFETY: pick_isa checked the CPU; the rows exist and `out` has room
            // for (t, r) for every token t and row r of this part.
            unsafe {
                kernel(
                    w.bytes(),
                    w.row_bytes(),
                    rows.start,
                    rows.len(),
                    q8,
                    n_tok,
                    out.get().add(rows.start),
                    w.rows,
                )
            }
        }
    }
}

/// Quantizes `x` (rows of `cols` values, `cols` a multiple of 32) into `q8`,
/// reusing its buffers, for the quantized matrix products. The AVX2 quantizer
/// and the portable one give the same bytes (tested), so the products may run
/// on either path whichever quantized.
pub fn quantize_activations(q8: &mut Q8Activations, x: &[f32], cols: usize, allow_simd: bool) {
    #[cfg(target_arch = "x86_64")]
    if allow_simd && crate::cpu::avx2_enabled() {
        q8.resize_for(x, cols);
        // SAFETY: the features are present; the buffers were sized above.
        return unsafe {
            crate::simd_avx2::quantize_q8(x, &mut q8.d, &mut q8.s, &mut q8.isum, &mut q8.qs)
        };
    }
    let _ = allow_simd;
    q8.quantize_portable(x, cols)
}

/// `out[t, n] = Σ_k x[t, k] · w[n, k]` for `n_tok` tokens: x is [n_tok, w.cols],
/// out is [n_tok, w.rows]. Runs on the kernel's thread pool.
pub fn matmul(w: &Tensor, x: &[f32], n_tok: usize, out: &mut [f32]) {
    matmul_with(w, x, n_tok, out, true)
}

/// `matmul`, optionally forcing the portable code path (for tests comparing paths).
pub fn matmul_with(w: &Tensor, x: &[f32], n_tok: usize, out: &mut [f32], allow_simd: bool) {
    matmul_many(
        x,
        n_tok,
        &mut Q8Activations::new(),
        &mut [(w, out)],
        allow_simd,
    )
}

/// Most matrices `matmul_many` takes at once (Q, K and V).
const MAX_SHARED: usize = 4;

/// Several matrices times the same activations (Q, K and V; gate and up) in one
/// parallel section: the activations are quantized once (into `q8`, reused across
/// calls so the hot path does not allocate), and the threads meet once, not
/// once per matrix. Every matrix's rows are shared among all threads.
pub fn matmul_many(
    x: &[f32],
    n_tok: usize,
    q8: &mut Q8Activations,
    products: &mut [(&Tensor, &mut [f32])],
    allow_simd: bool,
) {
    let Some(cols) = products.first().map(|(w, _)| w.cols) else {
        return;
    };
    for (w, out) in products.iter() {
        assert_eq!(w.cols, cols, "matmul: products must share their columns");
        assert_eq!(
            x.len(),
            n_tok * cols,
            "matmul: activations do not match the weight's columns"
        );
        assert_eq!(
            out.len(),
            n_tok * w.rows,
            "matmul: output does not match the weight's rows"
        );
    }
    if products.iter().any(|(w, _)| w.dtype.is_quantized()) {
        quantize_activations(q8, x, cols, true);
    }
    let isa = pick_isa(allow_simd);
    // The outputs as raw pointers the threads share (on the stack: no allocation per call).
    assert!(
        products.len() <= MAX_SHARED,
        "matmul_many: at most {MAX_SHARED} products"
    );
    let mut outs = [SendPtr(std::ptr::null_mut::<f32>()); MAX_SHARED];
    for (o, (_, out)) in outs.iter_mut().zip(products.iter_mut()) {
        *o = SendPtr(out.as_mut_ptr());
    }
    let products = &*products;
    let q8 = &*q8;
    // Work is dealt in chunks that threads claim as they go, about four per
    // thread per matrix: a thread slowed by the machine's other load takes fewer,
    // instead of leaving the others waiting at the end (a static split did, ~4%).
    let parts = pool::global().threads();
    let mut chunk_rows = [0usize; MAX_SHARED];
    let mut first_chunk = [0usize; MAX_SHARED + 1];
    for (i, (w, _)) in products.iter().enumerate() {
        // Whole groups of eight, or rows in fours (the row kernel's decode tile).
        let align = if w.is_grouped() {
            crate::row_groups::ROWS
        } else {
            4
        };
        let units = w.rows.div_ceil(align);
        chunk_rows[i] = units.div_ceil(4 * parts).max(1) * align;
        first_chunk[i + 1] = first_chunk[i] + w.rows.div_ceil(chunk_rows[i]);
    }
    let total = first_chunk[products.len()];
    let (float_cols, gathered_bytes) = row_buffer_sizes(isa, products);
    pool::global().claim_units(total, |chunks| {
        reserve_row_buffers(float_cols, gathered_bytes);
        for c in chunks {
            let i = (0..products.len())
                .find(|&i| c < first_chunk[i + 1])
                .unwrap();
            let w = products[i].0;
            let start = (c - first_chunk[i]) * chunk_rows[i];
            let rows = start..(start + chunk_rows[i]).min(w.rows);
            rows_job(isa, w, x, q8, n_tok, rows, outs[i]);
        }
    });
}

/// Float rows `ROW` holds at once: a tile's rows on the AVX2 path.
const FLOAT_ROWS_WIDENED: usize = 4;
#[cfg(target_arch = "x86_64")]
const _: () = assert!(crate::simd_avx2::ROW_TILE <= FLOAT_ROWS_WIDENED);

/// The longest rows, in f32 values, any product widens into `ROW`, and in
/// bytes, any product gathers into `GATHER` (0: that buffer is not used).
fn row_buffer_sizes(isa: Isa, products: &[(&Tensor, &mut [f32])]) -> (usize, usize) {
    let (mut float_cols, mut gathered_bytes) = (0, 0);
    for (w, _) in products {
        if !w.dtype.is_quantized() {
            float_cols = float_cols.max(w.cols * FLOAT_ROWS_WIDENED);
        } else if w.is_grouped() && isa == Isa::Portable {
            gathered_bytes = gathered_bytes.max(w.row_bytes());
        }
    }
    (float_cols, gathered_bytes)
}

/// Grows this thread's row buffers to the sizes given, on every thread of a
/// section whether or not it claims a chunk: a thread that first met the widest
/// matrix in a later call would grow its buffer then, and a warmed-up decode
/// step would allocate (rust/tests/decode_allocates_nothing.rs).
fn reserve_row_buffers(float_cols: usize, gathered_bytes: usize) {
    if float_cols > 0 {
        ROW.with_borrow_mut(|b| b.reserve(float_cols.saturating_sub(b.len())));
    }
    if gathered_bytes > 0 {
        GATHER.with_borrow_mut(|b| b.reserve(gathered_bytes.saturating_sub(b.len())));
    }
}

/// RMSNorm of each `weight.len()`-sized row of `x` into `out`.
pub fn rms_norm(x: &[f32], weight: &[f32], eps: f32, out: &mut [f32]) {
    let d = weight.len();
    for (xr, or) in x.chunks_exact(d).zip(out.chunks_exact_mut(d)) {
        let ms = xr.iter().map(|v| v * v).sum::<f32>() / d as f32;
        let scale = 1.0 / (ms + eps).sqrt();
        for ((o, v), w) in or.iter_mut().zip(xr).zip(weight) {
            *o = v * scale * w;
        }
    }
}

/// LayerNorm of each `weight.len()`-sized row of `x` into `out`: each row
/// shifted to mean 0, scaled to variance 1 (the biased variance, as BERT's),
/// then `· weight + bias`. Mean and variance are two passes in f64: BERT's
/// epsilon (1e-12) does nothing to keep a row of large, nearly equal values
/// from cancelling.
pub fn layer_norm(x: &[f32], weight: &[f32], bias: &[f32], eps: f32, out: &mut [f32]) {
    let d = weight.len();
    assert_eq!(
        bias.len(),
        d,
        "layer_norm: weight and bias differ in length"
    );
    for (xr, or) in x.chunks_exact(d).zip(out.chunks_exact_mut(d)) {
        let mean = xr.iter().map(|&v| v as f64).sum::<f64>() / d as f64;
        let var = xr.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / d as f64;
        let scale = 1.0 / (var + eps as f64).sqrt();
        for (((o, &v), w), b) in or.iter_mut().zip(xr).zip(weight).zip(bias) {
            *o = ((v as f64 - mean) * scale) as f32 * w + b;
        }
    }
}

mod libm {
    extern "C" {
        /// The C library's complementary error function (C99; what Rust's own,
        /// still unstable, `f32::erfc` calls).
        pub fn erfcf(x: f32) -> f32;
    }
}

/// The exact GELU, `x · Φ(x) = x/2 · (1 + erf(x/√2))`, as BERT's "gelu" (not
/// the tanh approximation, "gelu_new"/"gelu_pytorch_tanh"). Written with
/// `erfc(-x/√2)`, which equals `1 + erf(x/√2)` without its cancellation for
/// negative x (where `1 + erf` in f32 loses every digit below -4 or so).
#[inline]
pub fn gelu(x: f32) -> f32 {
    // SAFETY: a pure function of a float.
    let phi2 = unsafe { libm::erfcf(-x * std::f32::consts::FRAC_1_SQRT_2) };
    0.5 * x * phi2
}

/// `x[i] = gelu(x[i] + bias[i])` over a row.
pub fn bias_gelu(x: &mut [f32], bias: &[f32]) {
    bias_gelu_with(x, bias, true)
}

/// `bias_gelu`, optionally forcing the portable code (tests compare the two).
pub fn bias_gelu_with(x: &mut [f32], bias: &[f32], allow_simd: bool) {
    assert!(bias.len() >= x.len(), "bias_gelu: bias is shorter than x");
    #[cfg(target_arch = "x86_64")]
    if pick_isa(allow_simd) == Isa::Avx2 {
        // SAFETY: pick_isa checked the CPU's features; lengths checked above.
        return unsafe { crate::simd_avx2::bias_gelu(x, bias) };
    }
    let _ = allow_simd;
    for (a, b) in x.iter_mut().zip(bias) {
        *a = gelu(*a + b);
    }
}

/// Cosines and sines of the rotary angles for one position: `pos · inv_freq[i]`.
/// Angles are formed in f64 so long contexts keep full f32 accuracy.
pub fn rope_angles(pos: usize, inv_freq: &[f32], cos: &mut [f32], sin: &mut [f32]) {
    for (i, f) in inv_freq.iter().enumerate() {
        let a = pos as f64 * *f as f64;
        cos[i] = a.cos() as f32;
        sin[i] = a.sin() as f32;
    }
}

/// Rotates the first `2·cos.len()` dimensions of one head vector.
/// `neox`: pairs are (i, i + rot/2), as in Hugging Face checkpoints;
/// otherwise adjacent pairs (2i, 2i+1), as in GGUF files of the llama architecture.
pub fn rope_rotate(head: &mut [f32], cos: &[f32], sin: &[f32], neox: bool) {
    let half = cos.len();
    for i in 0..half {
        let (a, b) = if neox {
            (i, i + half)
        } else {
            (2 * i, 2 * i + 1)
        };
        let (x0, x1) = (head[a], head[b]);
        head[a] = x0 * cos[i] - x1 * sin[i];
        head[b] = x0 * sin[i] + x1 * cos[i];
    }
}

/// In-place softmax; with `round_f16`, the results rounded to f16 (attention over
/// an f16 cache, as llama.cpp rounds its weights).
pub fn softmax(x: &mut [f32], round_f16: bool) {
    softmax_with(x, round_f16, true)
}

/// `softmax`, optionally forcing the portable code (tests compare the two).
pub fn softmax_with(x: &mut [f32], round_f16: bool, allow_simd: bool) {
    #[cfg(target_arch = "x86_64")]
    if pick_isa(allow_simd) == Isa::Avx2 {
        // SAFETY: pick_isa checked the CPU's features.
        return unsafe { crate::simd_avx2::softmax(x, round_f16) };
    }
    let _ = allow_simd;
    let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0f64;
    for v in x.iter_mut() {
        *v = (*v - max).exp();
        sum += *v as f64;
    }
    let inv = (1.0 / sum) as f32;
    for v in x.iter_mut() {
        *v *= inv;
        if round_f16 {
            *v = crate::quant::round_to_f16(*v);
        }
    }
}

/// `gate[i] = silu(gate[i]) · up[i]`
pub fn swiglu(gate: &mut [f32], up: &[f32]) {
    swiglu_with(gate, up, true)
}

/// `swiglu`, optionally forcing the portable code (tests compare the two).
pub fn swiglu_with(gate: &mut [f32], up: &[f32], allow_simd: bool) {
    assert!(up.len() >= gate.len(), "swiglu: up is shorter than gate");
    #[cfg(target_arch = "x86_64")]
    if pick_isa(allow_simd) == Isa::Avx2 {
        // SAFETY: pick_isa checked the CPU's features; lengths checked above.
        return unsafe { crate::simd_avx2::swiglu(gate, up) };
    }
    let _ = allow_simd;
    for (g, u) in gate.iter_mut().zip(up) {
        *g = *g / (1.0 + (-*g).exp()) * u;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::quantize;

    fn pseudo_random(n: usize, seed: u64) -> Vec<f32> {
        let mut s = seed;
        (0..n)
            .map(|_| {
                s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
            })
            .collect()
    }

    /// The activations as the quantized matmul sees them: d·q per block.
    fn q8_rounded(x: &[f32], cols: usize) -> Vec<f32> {
        let mut q = Q8Activations::new();
        quantize_activations(&mut q, x, cols, true);
        x.iter()
            .enumerate()
            .map(|(i, _)| q.d[i / 32] * q.qs[i] as f32)
            .collect()
    }

    #[test]
    fn activation_quantization_is_the_same_on_every_path() {
        let x: Vec<f32> = (0..3 * 64)
            .map(|i| ((i * 7919 % 211) as f32 - 105.0) / 13.0)
            .chain(std::iter::repeat_n(0.0, 32)) // an all-zero block
            .chain((0..32).map(|i| if i % 2 == 0 { 0.5 } else { -1.5 })) // ties at ±0.5 steps
            .collect();
        let (mut simd, mut portable) = (Q8Activations::new(), Q8Activations::new());
        quantize_activations(&mut simd, &x, 64, true);
        quantize_activations(&mut portable, &x, 64, false);
        assert_eq!(simd.qs, portable.qs);
        assert_eq!(simd.isum, portable.isum);
        assert_eq!(simd.d, portable.d);
        assert_eq!(simd.s, portable.s);
    }

    #[test]
    fn dot_matches_naive_on_awkward_lengths() {
        for n in [1, 7, 15, 16, 17, 33, 100] {
            let (a, b) = (pseudo_random(n, 1), pseudo_random(n, 2));
            let naive: f64 = a.iter().zip(&b).map(|(x, y)| *x as f64 * *y as f64).sum();
            assert!((dot(&a, &b) as f64 - naive).abs() < 1e-5, "n = {n}");
        }
    }

    /// Every format × layout × {portable, SIMD} against a float reference, on
    /// sizes that leave remainders in every tile dimension (rows not a multiple
    /// of 4 or 8 or of the thread split, token counts not a multiple of 2 or 4,
    /// a single block).
    #[test]
    fn matmul_paths_agree_with_reference_for_every_dtype() {
        let shapes = [
            (37, 96),
            (1, 32),
            (6, 32),
            (130, 576),
            (8, 32),
            (40, 96),
            (136, 576),
        ];
        for ((rows, cols), grouped) in shapes.into_iter().flat_map(|s| [(s, false), (s, true)]) {
            for dtype in [
                DType::F32,
                DType::F16,
                DType::BF16,
                DType::Q8_0,
                DType::Q4_0,
                DType::Q4_1,
            ] {
                let bytes = quantize(dtype, &pseudo_random(rows * cols, 3));
                let w = if grouped {
                    Tensor::new_grouped(dtype, rows, cols, bytes).unwrap()
                } else {
                    Tensor::new(dtype, rows, cols, bytes).unwrap()
                };
                let expect_grouped = grouped && dtype.is_quantized() && rows % 8 == 0;
                assert_eq!(w.is_grouped(), expect_grouped);
                for n_tok in [1, 2, 3, 4, 5, 9] {
                    check_matmul(&w, n_tok);
                }
            }
        }
    }

    fn check_matmul(w: &Tensor, n_tok: usize) {
        let (rows, cols, dtype) = (w.rows, w.cols, w.dtype);
        let wf = w.to_f32();
        let x = pseudo_random(n_tok * cols, 4);
        let (mut simd, mut portable) = (vec![0.0; n_tok * rows], vec![0.0; n_tok * rows]);
        matmul_with(w, &x, n_tok, &mut simd, true);
        matmul_with(w, &x, n_tok, &mut portable, false);
        // Quantized weights meet activations rounded to 8 bits, as in ggml: the
        // reference uses those same rounded activations.
        let xr = if dtype.is_quantized() {
            q8_rounded(&x, cols)
        } else {
            x.clone()
        };
        // Q4_1: s = d·Σq is kept at f16 precision. Error grows with the row length.
        let scale = (cols as f64 / 96.0).sqrt();
        let tol = if dtype == DType::Q4_1 { 1e-2 } else { 1e-4 } * scale;
        for t in 0..n_tok {
            for r in 0..rows {
                let dot_with = |xs: &[f32]| -> f64 {
                    (0..cols)
                        .map(|k| wf[r * cols + k] as f64 * xs[t * cols + k] as f64)
                        .sum()
                };
                let (s, p) = (simd[t * rows + r] as f64, portable[t * rows + r] as f64);
                let at = format!("{dtype:?} [{rows}, {cols}] × {n_tok} tokens, row {r} token {t}");
                assert!(
                    (s - dot_with(&xr)).abs() < tol,
                    "{at}: simd {s} vs {}",
                    dot_with(&xr)
                );
                assert!(
                    (s - dot_with(&x)).abs() < 0.05 * scale,
                    "{at}: drifts from exact f32"
                );
                assert!(
                    (s - p).abs() < 1e-4 * scale,
                    "{at}: simd {s} vs portable {p}"
                );
            }
        }
    }

    /// Float weights on both paths: each value within rounding of an f64 dot
    /// product, and bit-identical whether its token came in a batch or alone,
    /// on sizes that leave edge tiles in rows and tokens, k not a multiple of 8,
    /// and (k = 4100) tokens in more than one L2 block.
    #[test]
    fn float_matmul_is_accurate_and_independent_of_the_batch() {
        for (rows, cols, n_tok) in [
            (11, 13, 23),
            (7, 40, 10),
            (5, 1, 4),
            (9, 389, 17),
            (6, 4100, 70),
        ] {
            for dtype in [DType::F32, DType::F16, DType::BF16] {
                let w = Tensor::new(
                    dtype,
                    rows,
                    cols,
                    quantize(dtype, &pseudo_random(rows * cols, 5)),
                )
                .unwrap();
                let wf = w.to_f32();
                let x = pseudo_random(n_tok * cols, 6);
                for simd in [true, false] {
                    let mut batch = vec![0.0; n_tok * rows];
                    matmul_with(&w, &x, n_tok, &mut batch, simd);
                    for t in 0..n_tok {
                        let xt = &x[t * cols..(t + 1) * cols];
                        let mut alone = vec![0.0; rows];
                        matmul_with(&w, xt, 1, &mut alone, simd);
                        let at =
                            format!("{dtype:?} [{rows}, {cols}] × {n_tok}, simd {simd}, token {t}");
                        assert_eq!(
                            alone,
                            batch[t * rows..(t + 1) * rows],
                            "{at}: batch vs alone"
                        );
                        for r in 0..rows {
                            let terms = wf[r * cols..(r + 1) * cols]
                                .iter()
                                .zip(xt)
                                .map(|(a, b)| *a as f64 * *b as f64);
                            let exact: f64 = terms.clone().sum();
                            let size: f64 = terms.map(f64::abs).sum();
                            let got = batch[t * rows + r] as f64;
                            assert!(
                                (got - exact).abs() <= 2e-6 * size,
                                "{at}, row {r}: {got} vs {exact}"
                            );
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn matmul_many_equals_separate_matmuls() {
        let cols = 64;
        let ws: Vec<Tensor> = [(DType::Q4_1, 9), (DType::Q8_0, 16), (DType::F16, 3)]
            .iter()
            .enumerate()
            .map(|(i, &(dtype, rows))| {
                let v = pseudo_random(rows * cols, 10 + i as u64);
                Tensor::new_grouped(dtype, rows, cols, quantize(dtype, &v)).unwrap()
            })
            .collect();
        let n_tok = 3;
        let x = pseudo_random(n_tok * cols, 7);
        let mut outs: Vec<Vec<f32>> = ws.iter().map(|w| vec![0.0; n_tok * w.rows]).collect();
        {
            let mut products: Vec<(&Tensor, &mut [f32])> = ws
                .iter()
                .zip(outs.iter_mut())
                .map(|(w, o)| (w, &mut o[..]))
                .collect();
            matmul_many(&x, n_tok, &mut Q8Activations::new(), &mut products, true);
        }
        for (w, got) in ws.iter().zip(&outs) {
            let mut alone = vec![0.0; n_tok * w.rows];
            matmul(w, &x, n_tok, &mut alone);
            assert_eq!(got, &alone, "{:?}", w.dtype);
        }
    }

    #[test]
    fn bias_gelu_paths_agree_with_the_exact_form() {
        // Both sides of 0, the far negative tail (where 1 + erf would cancel), large positives.
        for n in [3, 8, 29, 1536] {
            let x: Vec<f32> = pseudo_random(n, 41).iter().map(|v| v * 12.0).collect();
            let bias = pseudo_random(n, 42);
            let (mut simd, mut portable) = (x.clone(), x.clone());
            bias_gelu_with(&mut simd, &bias, true);
            bias_gelu_with(&mut portable, &bias, false);
            for (i, (a, b)) in simd.iter().zip(&portable).enumerate() {
                let v = x[i] + bias[i];
                assert!(
                    (a - b).abs() <= 1e-6 * v.abs().max(1e-3),
                    "n {n}: gelu({v}) = {a} vs {b}"
                );
            }
        }
    }

    #[test]
    fn swiglu_paths_agree() {
        for n in [3, 8, 29, 1536] {
            let gate: Vec<f32> = pseudo_random(n, 31).iter().map(|v| v * 20.0).collect();
            let up = pseudo_random(n, 32);
            let (mut simd, mut portable) = (gate.clone(), gate.clone());
            swiglu_with(&mut simd, &up, true);
            swiglu_with(&mut portable, &up, false);
            for (a, b) in simd.iter().zip(&portable) {
                assert!(
                    (a - b).abs() <= 1e-6 * b.abs().max(1.0),
                    "n {n}: {a} vs {b}"
                );
            }
        }
    }

    #[test]
    fn softmax_paths_agree() {
        for n in [1, 5, 8, 29, 300] {
            let x: Vec<f32> = pseudo_random(n, 21).iter().map(|v| v * 30.0).collect();
            for round in [false, true] {
                let (mut simd, mut portable) = (x.clone(), x.clone());
                softmax_with(&mut simd, round, true);
                softmax_with(&mut portable, round, false);
                let total: f32 = simd.iter().sum();
                assert!((total - 1.0).abs() < 2e-3, "n {n}: sums to {total}");
                for (a, b) in simd.iter().zip(&portable) {
                    // f16 rounding may land on either side of a tie the exps straddle.
                    let tol = if round {
                        1e-3 * b.max(1e-4)
                    } else {
                        1e-6 * b.max(1e-30)
                    } + 1e-12;
                    assert!(
                        (a - b).abs() <= tol.max(b.abs() * 1e-6),
                        "n {n}: {a} vs {b}"
                    );
                }
            }
        }
    }

    #[test]
    fn layer_norm_matches_its_definition() {
        let d = 48;
        // Rows far from 0 with a small spread: one-pass or f32 statistics would cancel.
        let x: Vec<f32> = pseudo_random(3 * d, 41)
            .iter()
            .enumerate()
            .map(|(i, v)| v + 1000.0 * (i / d) as f32)
            .collect();
        let (w, b) = (pseudo_random(d, 42), pseudo_random(d, 43));
        let mut out = vec![0.0; x.len()];
        layer_norm(&x, &w, &b, 1e-12, &mut out);
        for (xr, or) in x.chunks(d).zip(out.chunks(d)) {
            let mean = xr.iter().map(|&v| v as f64).sum::<f64>() / d as f64;
            let var = xr.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / d as f64;
            for i in 0..d {
                let want = (xr[i] as f64 - mean) / (var + 1e-12).sqrt() * w[i] as f64 + b[i] as f64;
                assert!((or[i] as f64 - want).abs() < 1e-5, "{} vs {want}", or[i]);
            }
        }
    }

    #[test]
    fn gelu_is_the_exact_erf_form() {
        // x · Φ(x), computed in f64 from erf (Python's math.erf), to 9 digits.
        let table = [
            (-6.0, -5.919525869e-09),
            (-3.0, -0.004049694095),
            (-1.0, -0.1586552539),
            (-0.5, -0.1542687694),
            (0.0, 0.0),
            (0.1, 0.05398278373),
            (0.5, 0.3457312306),
            (1.0, 0.8413447461),
            (2.0, 1.954499736),
            (2.7, 2.690639171),
            (4.0, 3.999873315),
        ];
        for (x, want) in table {
            let got = gelu(x) as f64;
            assert!(
                (got - want).abs() <= 1e-6 * want.abs().max(1e-3),
                "gelu({x}) = {got}, want {want}"
            );
        }
        // The tanh approximation is 4.7e-4 off at 2.7: far outside the margin above.
        let tanh_form = |x: f64| {
            0.5 * x
                * (1.0 + ((2.0 / std::f64::consts::PI).sqrt() * (x + 0.044715 * x.powi(3))).tanh())
        };
        assert!((tanh_form(2.7) - 2.690639171).abs() > 4e-4);
    }

    #[test]
    fn rope_styles_rotate_different_pairs() {
        let (cos, sin) = ([0.0f32, 1.0], [1.0f32, 0.0]); // pair 0 rotated by 90°, pair 1 untouched
        let mut normal = [1.0, 2.0, 3.0, 4.0];
        rope_rotate(&mut normal, &cos, &sin, false);
        assert_eq!(normal, [-2.0, 1.0, 3.0, 4.0]);
        let mut neox = [1.0, 2.0, 3.0, 4.0];
        rope_rotate(&mut neox, &cos, &sin, true);
        assert_eq!(neox, [-3.0, 2.0, 1.0, 4.0]);
    }
}
