//! AVX2 kernels, for x86-64 CPUs with AVX2, FMA and F16C (the callers check at
//! run time and otherwise take the portable code, which the tests hold these to):
//!
//! - `float_matmul`: float matrix products, R weight rows × T tokens, each
//!   output one accumulator, the same sum whatever tile it falls in.
//! - `matmul`: quantized matrix products. Weights in the grouped layout
//!   (`row_groups.rs`) put eight rows' block sums in one register's lanes (8×1
//!   tiles for decode, 8×4 for prompts); rows in GGUF order take R×T tiles with
//!   a horizontal sum per output.
//! - `attention`: scores and weighted sums over the KV cache (f16 or f32),
//!   summed in ggml's order, alone or shared among the queries that read the
//!   same keys.
//! - `vector`: softmax (with its own exp), SwiGLU, 8-bit activation quantization.

#![cfg(target_arch = "x86_64")]

use std::arch::x86_64::*;

mod attention;
mod float_matmul;
mod matmul;
mod vector;

pub use attention::{scores, scores_shared, weighted_sum, weighted_sum_shared, CacheLanes};
pub use float_matmul::{float_tiles, ROW_TILE};
pub use matmul::{matmul_groups, matmul_rows, Q4_0, Q4_1, Q8_0};
pub use vector::{bias_gelu, quantize_q8, softmax, swiglu};

/// 16 bytes of nibbles -> 32 bytes: low nibbles first, then high nibbles (ggml's order).
#[inline(always)]
pub(super) unsafe fn nibbles(p: *const u8) -> __m256i {
    let bytes = _mm_loadu_si128(p as *const __m128i);
    let both = _mm256_set_m128i(_mm_srli_epi16(bytes, 4), bytes);
    _mm256_and_si256(both, _mm256_set1_epi8(0x0F))
}

/// Σ over 32 lanes of unsigned `x` times signed `y`, as 8 i32 partial sums.
#[inline(always)]
pub(super) unsafe fn mul_sum_u8_i8(x: __m256i, y: __m256i) -> __m256i {
    _mm256_madd_epi16(_mm256_maddubs_epi16(x, y), _mm256_set1_epi16(1))
}

/// Σ over 32 lanes of signed `x` times signed `y` (sign moved onto y so x can be unsigned).
#[inline(always)]
pub(super) unsafe fn mul_sum_i8_i8(x: __m256i, y: __m256i) -> __m256i {
    mul_sum_u8_i8(_mm256_sign_epi8(x, x), _mm256_sign_epi8(y, x))
}

#[inline(always)]
pub(super) unsafe fn hsum(v: __m256) -> f32 {
    let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    let s = _mm_add_ss(s, _mm_movehdup_ps(s));
    _mm_cvtss_f32(s)
}
