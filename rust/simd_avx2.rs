//! AVX2 versions of the block dot products in `quant::dot_q8`, for x86-64 CPUs
//! that have AVX2 and FMA (checked at run time by the caller).
//!
//! Each block's 32 products are summed exactly in integers (`maddubs` pairs
//! into i16, `madd` into i32), then scaled and accumulated in eight f32 lanes.
//! The portable `quant::dot_q8` is the reference these are tested against.

#![cfg(target_arch = "x86_64")]

use std::arch::x86_64::*;

use crate::tensor::DType;

/// An f16 scale from a block header, converted by the F16C unit (a table lookup
/// would add a 256 KiB table to the cache traffic of every block).
#[inline(always)]
unsafe fn f16_at(b: &[u8], at: usize) -> f32 {
    _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(
        u16::from_le_bytes([b[at], b[at + 1]]) as i32,
    )))
}

/// 16 bytes of nibbles -> 32 bytes: low nibbles first, then high nibbles (ggml's order).
#[inline(always)]
unsafe fn nibbles(p: *const u8) -> __m256i {
    let bytes = _mm_loadu_si128(p as *const __m128i);
    let both = _mm256_set_m128i(_mm_srli_epi16(bytes, 4), bytes);
    _mm256_and_si256(both, _mm256_set1_epi8(0x0F))
}

/// Σ over 32 lanes of unsigned `x` times signed `y`, as 8 i32 partial sums.
#[inline(always)]
unsafe fn mul_sum_u8_i8(x: __m256i, y: __m256i) -> __m256i {
    _mm256_madd_epi16(_mm256_maddubs_epi16(x, y), _mm256_set1_epi16(1))
}

/// Σ over 32 lanes of signed `x` times signed `y` (sign moved onto y so x can be unsigned).
#[inline(always)]
unsafe fn mul_sum_i8_i8(x: __m256i, y: __m256i) -> __m256i {
    mul_sum_u8_i8(_mm256_sign_epi8(x, x), _mm256_sign_epi8(y, x))
}

#[inline(always)]
unsafe fn hsum(v: __m256) -> f32 {
    let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    let s = _mm_add_ss(s, _mm_movehdup_ps(s));
    _mm_cvtss_f32(s)
}

/// Same contract as `quant::dot_q8`.
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C; `row` must hold whole blocks of
/// `dtype` and `d`, `s`, `qs` the matching quantized activations.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn dot_q8(dtype: DType, row: &[u8], d: &[f32], s: &[f32], qs: &[i8]) -> f32 {
    let mut acc = _mm256_setzero_ps();
    let mut mins = 0f32;
    let q = qs.as_ptr();
    match dtype {
        DType::Q8_0 => {
            for (b, blk) in row.chunks_exact(34).enumerate() {
                let x = _mm256_loadu_si256(blk.as_ptr().add(2) as *const __m256i);
                let y = _mm256_loadu_si256(q.add(b * 32) as *const __m256i);
                let sum = _mm256_cvtepi32_ps(mul_sum_i8_i8(x, y));
                acc = _mm256_fmadd_ps(_mm256_set1_ps(f16_at(blk, 0) * d[b]), sum, acc);
            }
        }
        DType::Q4_0 => {
            for (b, blk) in row.chunks_exact(18).enumerate() {
                let x = _mm256_sub_epi8(nibbles(blk.as_ptr().add(2)), _mm256_set1_epi8(8));
                let y = _mm256_loadu_si256(q.add(b * 32) as *const __m256i);
                let sum = _mm256_cvtepi32_ps(mul_sum_i8_i8(x, y));
                acc = _mm256_fmadd_ps(_mm256_set1_ps(f16_at(blk, 0) * d[b]), sum, acc);
            }
        }
        DType::Q4_1 => {
            for (b, blk) in row.chunks_exact(20).enumerate() {
                let x = nibbles(blk.as_ptr().add(4));
                let y = _mm256_loadu_si256(q.add(b * 32) as *const __m256i);
                let sum = _mm256_cvtepi32_ps(mul_sum_u8_i8(x, y));
                acc = _mm256_fmadd_ps(_mm256_set1_ps(f16_at(blk, 0) * d[b]), sum, acc);
                mins += f16_at(blk, 2) * s[b];
            }
        }
        DType::F32 | DType::F16 | DType::BF16 => unreachable!("float weights take the f32 path"),
    }
    hsum(acc) + mins
}

/// Σ a[i]·b[i] for f16 `b` (bit patterns); `a.len()` a multiple of 8.
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C; `a` and `b` must have the same length.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn dot_f16(a: &[f32], b: &[u16]) -> f32 {
    let mut acc = _mm256_setzero_ps();
    for i in (0..a.len()).step_by(8) {
        let y = _mm256_cvtph_ps(_mm_loadu_si128(b.as_ptr().add(i) as *const __m128i));
        acc = _mm256_fmadd_ps(_mm256_loadu_ps(a.as_ptr().add(i)), y, acc);
    }
    hsum(acc)
}

/// out[i] += a·x[i] for f16 `x` (bit patterns); `out.len()` a multiple of 8.
///
/// # Safety
/// As for `dot_f16`.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn axpy_f16(a: f32, x: &[u16], out: &mut [f32]) {
    let av = _mm256_set1_ps(a);
    for i in (0..out.len()).step_by(8) {
        let v = _mm256_cvtph_ps(_mm_loadu_si128(x.as_ptr().add(i) as *const __m128i));
        let o = out.as_mut_ptr().add(i);
        _mm256_storeu_ps(o, _mm256_fmadd_ps(av, v, _mm256_loadu_ps(o)));
    }
}

/// `dot_q8` of one weight row with four tokens' activations at once: each weight
/// block is unpacked once and used four times (prefill is bound by this work).
///
/// # Safety
/// As for `dot_q8`; `acts[k]` are the (d, s, qs) of four tokens.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn dot_q8_x4(dtype: DType, row: &[u8], acts: [(&[f32], &[f32], &[i8]); 4]) -> [f32; 4] {
    let mut acc = [_mm256_setzero_ps(); 4];
    let mut mins = [0f32; 4];
    let (width, data_at) = match dtype {
        DType::Q8_0 => (34, 2),
        DType::Q4_0 => (18, 2),
        DType::Q4_1 => (20, 4),
        DType::F32 | DType::F16 | DType::BF16 => unreachable!("float weights take the f32 path"),
    };
    for (b, blk) in row.chunks_exact(width).enumerate() {
        let dw = f16_at(blk, 0);
        let p = blk.as_ptr().add(data_at);
        // Q8_0 and Q4_0 are signed: products go through the sign trick; Q4_1 is unsigned.
        let (x, signed) = match dtype {
            DType::Q8_0 => (_mm256_loadu_si256(p as *const __m256i), true),
            DType::Q4_0 => (_mm256_sub_epi8(nibbles(p), _mm256_set1_epi8(8)), true),
            _ => (nibbles(p), false),
        };
        let ax = if signed { _mm256_sign_epi8(x, x) } else { x };
        for t in 0..4 {
            let (d, s, qs) = acts[t];
            let y = _mm256_loadu_si256(qs.as_ptr().add(b * 32) as *const __m256i);
            let y = if signed { _mm256_sign_epi8(y, x) } else { y };
            let sum = _mm256_cvtepi32_ps(mul_sum_u8_i8(ax, y));
            acc[t] = _mm256_fmadd_ps(_mm256_set1_ps(dw * d[b]), sum, acc[t]);
            if dtype == DType::Q4_1 {
                mins[t] += f16_at(blk, 2) * s[b];
            }
        }
    }
    [
        hsum(acc[0]) + mins[0],
        hsum(acc[1]) + mins[1],
        hsum(acc[2]) + mins[2],
        hsum(acc[3]) + mins[3],
    ]
}
