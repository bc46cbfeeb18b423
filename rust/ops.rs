//! The numeric building blocks of the forward pass: matrix products over
//! weight tensors in any `DType`, RMSNorm, RoPE, softmax, SwiGLU.
//!
//! Performance notes (first version; the speed issue replaces the matmul):
//! - The matmul dequantizes one weight row into an L1-sized buffer and takes its
//!   dot product with every token's activations, so a row is decoded once per
//!   call however many tokens there are (prefill reuses it T times).
//! - The row loop is compiled twice, portable and AVX2+FMA, from one generic
//!   body; the choice is made once per call from the CPU's features.
//! - Rows are split evenly across the kernel's own thread pool (`pool.rs`).

use crate::pool::{self, SendPtr};
use crate::quant::Q8Activations;
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

/// What a weight row is multiplied with: f32 activations (float weights), or
/// activations quantized to 8 bits (block-quantized weights).
#[derive(Clone, Copy)]
enum Acts<'a> {
    F32(&'a [f32]),
    Q8(&'a Q8Activations),
}

type DotQ8 = unsafe fn(crate::tensor::DType, &[u8], &[f32], &[f32], &[i8]) -> f32;
type DotQ8x4 = unsafe fn(crate::tensor::DType, &[u8], [(&[f32], &[f32], &[i8]); 4]) -> [f32; 4];

#[inline(always)]
fn rows_body(
    w: &Tensor,
    x: Acts,
    n_tok: usize,
    first_row: usize,
    out: &mut [f32],
    buf: &mut [f32],
    dot_q8: DotQ8,
    dot_q8_x4: Option<DotQ8x4>,
) {
    let k = w.cols;
    for (i, o) in out.chunks_exact_mut(n_tok).enumerate() {
        match x {
            Acts::F32(x) => {
                w.dequantize_row(first_row + i, buf);
                for (t, ov) in o.iter_mut().enumerate() {
                    *ov = dot(buf, &x[t * k..(t + 1) * k]);
                }
            }
            Acts::Q8(q) => {
                let row = w.row(first_row + i);
                let mut t = 0;
                if let Some(dot4) = dot_q8_x4 {
                    while t + 4 <= n_tok {
                        // SAFETY: as below.
                        let r = unsafe {
                            dot4(
                                w.dtype,
                                row,
                                [q.token(t), q.token(t + 1), q.token(t + 2), q.token(t + 3)],
                            )
                        };
                        o[t..t + 4].copy_from_slice(&r);
                        t += 4;
                    }
                }
                for (t, ov) in o.iter_mut().enumerate().skip(t) {
                    let (d, s, qs) = q.token(t);
                    // SAFETY: the caller passes a dot product its CPU supports.
                    *ov = unsafe { dot_q8(w.dtype, row, d, s, qs) };
                }
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn rows_avx2(
    w: &Tensor,
    x: Acts,
    n_tok: usize,
    first_row: usize,
    out: &mut [f32],
    buf: &mut [f32],
) {
    rows_body(
        w,
        x,
        n_tok,
        first_row,
        out,
        buf,
        crate::simd_avx2::dot_q8,
        Some(crate::simd_avx2::dot_q8_x4),
    )
}

fn rows_portable(
    w: &Tensor,
    x: Acts,
    n_tok: usize,
    first_row: usize,
    out: &mut [f32],
    buf: &mut [f32],
) {
    unsafe fn portable(
        dtype: crate::tensor::DType,
        row: &[u8],
        d: &[f32],
        s: &[f32],
        qs: &[i8],
    ) -> f32 {
        crate::quant::dot_q8(dtype, row, d, s, qs)
    }
    rows_body(w, x, n_tok, first_row, out, buf, portable, None)
}

type RowsFn = fn(&Tensor, Acts, usize, usize, &mut [f32], &mut [f32]);

fn pick_rows_fn(allow_simd: bool) -> RowsFn {
    #[cfg(target_arch = "x86_64")]
    {
        if allow_simd
            && is_x86_feature_detected!("avx2")
            && is_x86_feature_detected!("fma")
            && is_x86_feature_detected!("f16c")
        {
            // SAFETY: the features rows_avx2 is compiled for are present on this CPU.
            return |w, x, n, r, o, b| unsafe { rows_avx2(w, x, n, r, o, b) };
        }
    }
    let _ = allow_simd;
    rows_portable
}

/// `out[t, n] = Σ_k x[t, k] · w[n, k]` for `n_tok` tokens: x is [n_tok, w.cols],
/// out is [n_tok, w.rows]. Runs on the kernel's thread pool.
pub fn matmul(w: &Tensor, x: &[f32], n_tok: usize, out: &mut [f32]) {
    matmul_with(w, x, n_tok, out, true)
}

/// `matmul`, optionally forcing the portable code path (for tests comparing paths).
pub fn matmul_with(w: &Tensor, x: &[f32], n_tok: usize, out: &mut [f32], allow_simd: bool) {
    assert_eq!(
        x.len(),
        n_tok * w.cols,
        "matmul: activations do not match the weight's columns"
    );
    assert_eq!(
        out.len(),
        n_tok * w.rows,
        "matmul: output does not match the weight's rows"
    );
    let mut q8 = Q8Activations::new();
    if w.dtype.is_quantized() {
        q8.quantize(x, w.cols);
    }
    matmul_acts(w, x, &q8, n_tok, out, allow_simd)
}

/// Several matmuls of the same activations (Q, K and V; gate and up): the
/// activations are quantized once for all of them.
pub fn matmul_shared(x: &[f32], n_tok: usize, products: &mut [(&Tensor, &mut [f32])]) {
    let mut q8 = Q8Activations::new();
    if let Some((w, _)) = products.iter().find(|(w, _)| w.dtype.is_quantized()) {
        q8.quantize(x, w.cols);
    }
    for (w, out) in products.iter_mut() {
        matmul_acts(w, x, &q8, n_tok, out, true);
    }
}

/// `matmul` given `x` and, for block-quantized weights, `q8` = `x` quantized.
fn matmul_acts(
    w: &Tensor,
    x: &[f32],
    q8: &Q8Activations,
    n_tok: usize,
    out: &mut [f32],
    allow_simd: bool,
) {
    let rows_fn = pick_rows_fn(allow_simd);
    let pool = pool::global();
    let acts = if w.dtype.is_quantized() {
        Acts::Q8(q8)
    } else {
        Acts::F32(x)
    };
    // Each thread writes whole weight rows: with one token that is `out` itself;
    // with several, a row-major [rows, n_tok] buffer transposed at the end.
    let mut transposed = if n_tok == 1 {
        Vec::new()
    } else {
        vec![0f32; out.len()]
    };
    let target: &mut [f32] = if n_tok == 1 { out } else { &mut transposed };
    let target_ptr = SendPtr(target.as_mut_ptr());
    pool.run(&|part, parts| {
        let rows = pool::split(w.rows, part, parts, 4);
        // SAFETY: the row ranges of different parts are disjoint, and `target` outlives `run`.
        let chunk = unsafe {
            std::slice::from_raw_parts_mut(
                target_ptr.get().add(rows.start * n_tok),
                rows.len() * n_tok,
            )
        };
        let mut buf = if matches!(acts, Acts::F32(_)) {
            vec![0f32; w.cols]
        } else {
            Vec::new()
        };
        rows_fn(w, acts, n_tok, rows.start, chunk, &mut buf);
    });
    if n_tok > 1 {
        for (r, row) in transposed.chunks_exact(n_tok).enumerate() {
            for (t, v) in row.iter().enumerate() {
                out[t * w.rows + r] = *v;
            }
        }
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

/// In-place softmax.
pub fn softmax(x: &mut [f32]) {
    let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0.0;
    for v in x.iter_mut() {
        *v = (*v - max).exp();
        sum += *v;
    }
    let inv = 1.0 / sum;
    x.iter_mut().for_each(|v| *v *= inv);
}

/// `gate[i] = silu(gate[i]) · up[i]`
pub fn swiglu(gate: &mut [f32], up: &[f32]) {
    for (g, u) in gate.iter_mut().zip(up) {
        *g = *g / (1.0 + (-*g).exp()) * u;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::quantize;
    use crate::tensor::DType;

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
        q.quantize(x, cols);
        x.iter()
            .enumerate()
            .map(|(i, _)| q.d[i / 32] * q.qs[i] as f32)
            .collect()
    }

    #[test]
    fn dot_matches_naive_on_awkward_lengths() {
        for n in [1, 7, 15, 16, 17, 33, 100] {
            let (a, b) = (pseudo_random(n, 1), pseudo_random(n, 2));
            let naive: f64 = a.iter().zip(&b).map(|(x, y)| *x as f64 * *y as f64).sum();
            assert!((dot(&a, &b) as f64 - naive).abs() < 1e-5, "n = {n}");
        }
    }

    #[test]
    fn matmul_paths_agree_with_reference_for_every_dtype() {
        let (rows, cols) = (37, 96);
        for dtype in [
            DType::F32,
            DType::F16,
            DType::BF16,
            DType::Q8_0,
            DType::Q4_0,
            DType::Q4_1,
        ] {
            let w = Tensor::new(
                dtype,
                rows,
                cols,
                quantize(dtype, &pseudo_random(rows * cols, 3)),
            )
            .unwrap();
            let wf = w.to_f32();
            for n_tok in [1, 3, 9] {
                let x = pseudo_random(n_tok * cols, 4);
                let (mut simd, mut portable) = (vec![0.0; n_tok * rows], vec![0.0; n_tok * rows]);
                matmul_with(&w, &x, n_tok, &mut simd, true);
                matmul_with(&w, &x, n_tok, &mut portable, false);
                // Quantized weights meet activations rounded to 8 bits, as in ggml: the
                // reference uses those same rounded activations.
                let xr = if dtype.is_quantized() {
                    q8_rounded(&x, cols)
                } else {
                    x.clone()
                };
                for t in 0..n_tok {
                    for r in 0..rows {
                        let dot_with = |xs: &[f32]| -> f64 {
                            (0..cols)
                                .map(|k| wf[r * cols + k] as f64 * xs[t * cols + k] as f64)
                                .sum()
                        };
                        let (s, p) = (simd[t * rows + r] as f64, portable[t * rows + r] as f64);

                        let tol = if dtype == DType::Q4_1 { 1e-2 } else { 1e-4 }; // Q4_1: s = d·Σq is kept at f16 precision
                        assert!(
                            (s - dot_with(&xr)).abs() < tol,
                            "{dtype:?} simd {s} vs {}",
                            dot_with(&xr)
                        );
                        assert!(
                            (s - dot_with(&x)).abs() < 0.05,
                            "{dtype:?} drifts from exact f32"
                        );
                        assert!((s - p).abs() < 1e-4, "{dtype:?} simd {s} vs portable {p}");
                    }
                }
            }
        }
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
