//! Attention over the KV cache: scores (q·k) and weighted sums of values.
//! Every score's lanes are summed in ggml's order, whichever kernel computes
//! it, so prompt and decode paths give the same numbers.

use std::arch::x86_64::*;

/// Lane k of the result = the sum of the eight lanes of `a[k]`, each summed in
/// the order ggml's horizontal sum uses (halves first, then pairs), so that
/// scores round as llama.cpp's do.
#[inline(always)]
unsafe fn sum_lanes_of_8_ps(a: [__m256; 8]) -> __m256 {
    let half = |v: __m256| _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    let four = |w: [__m256; 4]| {
        let p = _mm_hadd_ps(half(w[0]), half(w[1]));
        let q = _mm_hadd_ps(half(w[2]), half(w[3]));
        _mm_hadd_ps(p, q)
    };
    _mm256_set_m128(
        four([a[4], a[5], a[6], a[7]]),
        four([a[0], a[1], a[2], a[3]]),
    )
}

/// What the attention kernels read a cache row as: f16 bit patterns (converted
/// by F16C) or f32 (a cache widened once for a whole prompt chunk).
pub trait CacheLanes: Copy {
    /// Eight consecutive elements as f32.
    ///
    /// # Safety
    /// AVX2 and F16C; eight elements readable from `p`.
    unsafe fn load8(p: *const Self) -> __m256;
}

impl CacheLanes for u16 {
    #[inline(always)]
    unsafe fn load8(p: *const u16) -> __m256 {
        _mm256_cvtph_ps(_mm_loadu_si128(p as *const __m128i))
    }
}

impl CacheLanes for f32 {
    #[inline(always)]
    unsafe fn load8(p: *const f32) -> __m256 {
        _mm256_loadu_ps(p)
    }
}

/// Attention scores: `out[j] = scale · Σ_d q[d]·k_j[d]` for `out.len()` keys,
/// key j at `keys + j·stride`. Eight keys at a time, each with its own
/// accumulator (independent chains), summed across lanes together at the end.
///
/// # Safety
/// AVX2, FMA and F16C; `q.len()` a multiple of 8; every key readable for `q.len()` values.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn scores<E: CacheLanes>(
    q: &[f32],
    keys: *const E,
    stride: usize,
    scale: f32,
    out: &mut [f32],
) {
    let hd = q.len();
    let n = out.len();
    let key = |j: usize, d: usize| E::load8(keys.add(j * stride + d));
    let mut j = 0;
    while j + 8 <= n {
        let mut acc = [_mm256_setzero_ps(); 8];
        for d in (0..hd).step_by(8) {
            let qv = _mm256_loadu_ps(q.as_ptr().add(d));
            for (k, a) in acc.iter_mut().enumerate() {
                *a = _mm256_fmadd_ps(qv, key(j + k, d), *a);
            }
        }
        let s = _mm256_mul_ps(sum_lanes_of_8_ps(acc), _mm256_set1_ps(scale));
        _mm256_storeu_ps(out.as_mut_ptr().add(j), s);
        j += 8;
    }
    for (jj, o) in out.iter_mut().enumerate().skip(j) {
        let mut acc = _mm256_setzero_ps();
        for d in (0..hd).step_by(8) {
            acc = _mm256_fmadd_ps(_mm256_loadu_ps(q.as_ptr().add(d)), key(jj, d), acc);
        }
        *o = hsum_ggml(acc) * scale;
    }
}

/// `out += Σ_j p[j]·v_j`, value j at `values + j·stride`. The output stays in
/// registers (up to 64 values at a time) while the values stream by; each
/// output is one chain of multiply-adds in key order.
///
/// # Safety
/// AVX2, FMA and F16C; `out.len()` a multiple of 8; every value readable for `out.len()`.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn weighted_sum<E: CacheLanes>(
    p: &[f32],
    values: *const E,
    stride: usize,
    out: &mut [f32],
) {
    let mut start = 0;
    while start < out.len() {
        let lanes = ((out.len() - start) / 8).min(8);
        let o = out.as_mut_ptr().add(start);
        let v = values.add(start);
        match lanes {
            8 => weighted_sum_chunk::<E, 8>(p, v, stride, o),
            7 => weighted_sum_chunk::<E, 7>(p, v, stride, o),
            6 => weighted_sum_chunk::<E, 6>(p, v, stride, o),
            5 => weighted_sum_chunk::<E, 5>(p, v, stride, o),
            4 => weighted_sum_chunk::<E, 4>(p, v, stride, o),
            3 => weighted_sum_chunk::<E, 3>(p, v, stride, o),
            2 => weighted_sum_chunk::<E, 2>(p, v, stride, o),
            _ => weighted_sum_chunk::<E, 1>(p, v, stride, o),
        }
        start += 8 * lanes;
    }
}

#[inline(always)]
unsafe fn weighted_sum_chunk<E: CacheLanes, const K: usize>(
    p: &[f32],
    values: *const E,
    stride: usize,
    out: *mut f32,
) {
    let mut acc = [_mm256_setzero_ps(); K];
    for (k, a) in acc.iter_mut().enumerate() {
        *a = _mm256_loadu_ps(out.add(8 * k));
    }
    for (j, &pj) in p.iter().enumerate() {
        let w = _mm256_set1_ps(pj);
        let row = values.add(j * stride);
        for (k, a) in acc.iter_mut().enumerate() {
            *a = _mm256_fmadd_ps(w, E::load8(row.add(8 * k)), *a);
        }
    }
    for (k, a) in acc.iter().enumerate() {
        _mm256_storeu_ps(out.add(8 * k), *a);
    }
}

/// `scores` for `R` queries at once (the heads that share one KV head): each
/// key is loaded once for all of them. Per score, the same arithmetic in the
/// same order as `scores`, so the results are identical.
///
/// # Safety
/// As for `scores`; every `qs[r]` of length `hd`, every `outs[r]` of length `n`.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn scores_shared<const R: usize>(
    qs: [*const f32; R],
    hd: usize,
    keys: *const f32,
    stride: usize,
    scale: f32,
    outs: [*mut f32; R],
    n: usize,
) {
    let mut j = 0;
    while j + 4 <= n {
        let mut acc = [[_mm256_setzero_ps(); 4]; R];
        for d in (0..hd).step_by(8) {
            let k = [0, 1, 2, 3].map(|i| _mm256_loadu_ps(keys.add((j + i) * stride + d)));
            for r in 0..R {
                let qv = _mm256_loadu_ps(qs[r].add(d));
                for i in 0..4 {
                    acc[r][i] = _mm256_fmadd_ps(qv, k[i], acc[r][i]);
                }
            }
        }
        for r in 0..R {
            let s = _mm_mul_ps(sum_lanes_of_4_ps(acc[r]), _mm_set1_ps(scale));
            _mm_storeu_ps(outs[r].add(j), s);
        }
        j += 4;
    }
    for jj in j..n {
        for r in 0..R {
            let mut acc = _mm256_setzero_ps();
            for d in (0..hd).step_by(8) {
                acc = _mm256_fmadd_ps(
                    _mm256_loadu_ps(qs[r].add(d)),
                    _mm256_loadu_ps(keys.add(jj * stride + d)),
                    acc,
                );
            }
            *outs[r].add(jj) = hsum_ggml(acc) * scale;
        }
    }
}

/// Lane k of the result = the sum of the eight lanes of `a[k]`, in ggml's order
/// (as `sum_lanes_of_8_ps`, for four).
#[inline(always)]
unsafe fn sum_lanes_of_4_ps(a: [__m256; 4]) -> __m128 {
    let half = |v: __m256| _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    let p = _mm_hadd_ps(half(a[0]), half(a[1]));
    let q = _mm_hadd_ps(half(a[2]), half(a[3]));
    _mm_hadd_ps(p, q)
}

/// The sum of the eight lanes of `v` in ggml's order (halves, then pairs): the
/// attention kernels reduce every score this way, however keys are grouped.
#[inline(always)]
pub(super) unsafe fn hsum_ggml(v: __m256) -> f32 {
    let h = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    let p = _mm_hadd_ps(h, h);
    _mm_cvtss_f32(_mm_hadd_ps(p, p))
}

/// `weighted_sum` for `P` rows of weights at once (several queries over the same
/// values): each value is loaded once for all of them. `ps[r]` has `n` weights
/// (zeros past a row's own context); per output, the same sum in the same
/// order as `weighted_sum`.
///
/// # Safety
/// AVX2, FMA and F16C; `hd` a multiple of 16; `values` readable for `n` rows of
/// `hd` at `stride`; `outs[r]` writable for `hd`.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn weighted_sum_shared<const P: usize>(
    ps: [*const f32; P],
    n: usize,
    values: *const f32,
    stride: usize,
    hd: usize,
    outs: [*mut f32; P],
) {
    for d in (0..hd).step_by(16) {
        let mut acc = [[_mm256_setzero_ps(); 2]; P];
        for j in 0..n {
            let row = values.add(j * stride + d);
            let (v0, v1) = (_mm256_loadu_ps(row), _mm256_loadu_ps(row.add(8)));
            for r in 0..P {
                let w = _mm256_broadcast_ss(&*ps[r].add(j));
                acc[r][0] = _mm256_fmadd_ps(w, v0, acc[r][0]);
                acc[r][1] = _mm256_fmadd_ps(w, v1, acc[r][1]);
            }
        }
        for r in 0..P {
            _mm256_storeu_ps(outs[r].add(d), acc[r][0]);
            _mm256_storeu_ps(outs[r].add(d + 8), acc[r][1]);
        }
    }
}
