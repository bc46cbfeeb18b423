//! Activations quantized to 8 bits, the form in which they meet block-quantized
//! weights in the matrix products (`ops.rs` chooses the quantizer: this file's
//! portable one or `simd_avx2::quantize_q8`, which give the same bytes).

use crate::quant::round_to_f16;

/// Activations quantized to 8 bits in blocks of 32, as ggml quantizes them before
/// a quantized matrix product (its Q8_0 and Q8_1 formats): per block a scale `d`
/// (f16-rounded), the sum `s` = d·Σq (f16-rounded; used against Q4_1's minimum)
/// and 32 signed bytes. Integer block products then replace f32 ones, and our
/// logits round the way llama.cpp's do.
pub struct Q8Activations {
    pub d: Vec<f32>, // (tokens · blocks)
    pub s: Vec<f32>, // (tokens · blocks)
    /// Σq of each block, exact (Q4_0's offset of 8 is taken off with it).
    pub isum: Vec<i32>, // (tokens · blocks)
    pub qs: Vec<i8>, // (tokens · cols)
    pub cols: usize,
}

impl Q8Activations {
    pub fn new() -> Self {
        Q8Activations {
            d: Vec::new(),
            s: Vec::new(),
            isum: Vec::new(),
            qs: Vec::new(),
            cols: 0,
        }
    }

    /// Sizes the buffers for `x`: rows of `cols` values, `cols` a multiple of 32.
    pub fn resize_for(&mut self, x: &[f32], cols: usize) {
        debug_assert_eq!(cols % 32, 0);
        let blocks = x.len() / 32;
        self.cols = cols;
        self.d.resize(blocks, 0.0);
        self.s.resize(blocks, 0.0);
        self.isum.resize(blocks, 0);
        self.qs.resize(x.len(), 0);
    }

    /// Quantizes `x` (rows of `cols` values, `cols` a multiple of 32), reusing
    /// the buffers: the portable code, which `simd_avx2::quantize_q8` matches
    /// bit for bit.
    #[inline(always)]
    pub fn quantize_portable(&mut self, x: &[f32], cols: usize) {
        self.resize_for(x, cols);
        for (b, block) in x.chunks_exact(32).enumerate() {
            let amax = block.iter().fold(0f32, |a, v| a.max(v.abs()));
            let d = amax / 127.0;
            let id = if amax != 0.0 { 127.0 / amax } else { 0.0 };
            let q = &mut self.qs[b * 32..(b + 1) * 32];
            let mut sum = 0i32;
            for (qv, v) in q.iter_mut().zip(block) {
                *qv = (v * id).round_ties_even() as i8;
                sum += *qv as i32;
            }
            self.d[b] = round_to_f16(d);
            self.s[b] = round_to_f16(d * sum as f32);
            self.isum[b] = sum;
        }
    }

    /// The blocks of token `t`: (d, s, qs).
    #[inline(always)]
    pub fn token(&self, t: usize) -> (&[f32], &[f32], &[i8]) {
        let nb = self.cols / 32;
        (
            &self.d[t * nb..(t + 1) * nb],
            &self.s[t * nb..(t + 1) * nb],
            &self.qs[t * self.cols..(t + 1) * self.cols],
        )
    }
}

impl Default for Q8Activations {
    fn default() -> Self {
        Self::new()
    }
}
