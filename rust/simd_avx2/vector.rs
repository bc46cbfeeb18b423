//! Element-wise kernels: softmax, SwiGLU, GELU, and the 8-bit quantization of
//! activations before a quantized matrix product.

use std::arch::x86_64::*;

use super::hsum;

/// e^x in eight lanes: x = n·ln2 + r with |r| ≤ ln2/2, e^r by its Taylor series
/// to the r^7 term (relative error below 1e-8), times 2^n built in the exponent
/// bits. Inputs are clamped to where the result is a normal f32.
#[inline(always)]
unsafe fn exp8(x: __m256) -> __m256 {
    let x = _mm256_max_ps(
        _mm256_min_ps(x, _mm256_set1_ps(88.0)),
        _mm256_set1_ps(-87.0),
    );
    let n = _mm256_round_ps(
        _mm256_mul_ps(x, _mm256_set1_ps(std::f32::consts::LOG2_E)),
        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC,
    );
    // ln 2 in two parts, so n·ln2 is subtracted without losing r's low bits.
    let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693_145_75), x);
    let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(1.428_606_8e-6), r);
    let mut p = _mm256_set1_ps(1.0 / 5040.0);
    for c in [
        1.0 / 720.0,
        1.0 / 120.0,
        1.0 / 24.0,
        1.0 / 6.0,
        0.5,
        1.0,
        1.0,
    ] {
        p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(c));
    }
    let two_n = _mm256_slli_epi32(
        _mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)),
        23,
    );
    _mm256_mul_ps(p, _mm256_castsi256_ps(two_n))
}

/// In-place softmax; with `round_f16`, the results rounded to f16 (as llama.cpp
/// rounds attention weights before they meet an f16 cache). Sums go through
/// f64 eight values at a time, as ggml's softmax does.
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn softmax(x: &mut [f32], round_f16: bool) {
    let n = x.len();
    let body = n / 8 * 8;
    let p = x.as_mut_ptr();
    let mut vmax = _mm256_set1_ps(f32::NEG_INFINITY);
    for i in (0..body).step_by(8) {
        vmax = _mm256_max_ps(vmax, _mm256_loadu_ps(p.add(i)));
    }
    let mut lanes = [0f32; 8];
    _mm256_storeu_ps(lanes.as_mut_ptr(), vmax);
    let max = lanes
        .iter()
        .chain(&x[body..])
        .copied()
        .fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0f64;
    for i in (0..body).step_by(8) {
        let e = exp8(_mm256_sub_ps(
            _mm256_loadu_ps(p.add(i)),
            _mm256_set1_ps(max),
        ));
        _mm256_storeu_ps(p.add(i), e);
        sum += hsum(e) as f64;
    }
    for v in &mut x[body..] {
        *v = (*v - max).exp();
        sum += *v as f64;
    }
    let inv = _mm256_set1_ps((1.0 / sum) as f32);
    for i in (0..body).step_by(8) {
        let mut v = _mm256_mul_ps(_mm256_loadu_ps(p.add(i)), inv);
        if round_f16 {
            v = _mm256_cvtph_ps(_mm256_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT));
        }
        _mm256_storeu_ps(p.add(i), v);
    }
    let inv = (1.0 / sum) as f32;
    for v in &mut x[body..] {
        *v *= inv;
        if round_f16 {
            *v = crate::quant::round_to_f16(*v);
        }
    }
}

/// `Q8Activations` quantization of whole blocks: per 32 values the largest
/// magnitude, the scale, the quants rounded to nearest (ties to even, as ggml's
/// AVX2 quantizer rounds) and their exact sum. Writes `d`, `s`, `isum` and `qs`.
///
/// # Safety
/// AVX2 and F16C; `x.len()` a multiple of 32, the outputs sized for its blocks.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn quantize_q8(
    x: &[f32],
    d: &mut [f32],
    s: &mut [f32],
    isum: &mut [i32],
    qs: &mut [i8],
) {
    let sign = _mm256_set1_ps(-0.0);
    let order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
    for b in 0..x.len() / 32 {
        let src = x.as_ptr().add(b * 32);
        let v = [
            _mm256_loadu_ps(src),
            _mm256_loadu_ps(src.add(8)),
            _mm256_loadu_ps(src.add(16)),
            _mm256_loadu_ps(src.add(24)),
        ];
        let mut m = _mm256_andnot_ps(sign, v[0]);
        for vi in &v[1..] {
            m = _mm256_max_ps(m, _mm256_andnot_ps(sign, *vi));
        }
        let m4 = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
        let m2 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
        let amax = _mm_cvtss_f32(_mm_max_ss(m2, _mm_movehdup_ps(m2)));
        let id = _mm256_set1_ps(if amax != 0.0 { 127.0 / amax } else { 0.0 });
        let q = v.map(|vi| {
            _mm256_cvtps_epi32(_mm256_round_ps(
                _mm256_mul_ps(vi, id),
                _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC,
            ))
        });
        let total = _mm256_add_epi32(_mm256_add_epi32(q[0], q[1]), _mm256_add_epi32(q[2], q[3]));
        let t4 = _mm_add_epi32(
            _mm256_castsi256_si128(total),
            _mm256_extracti128_si256(total, 1),
        );
        let t2 = _mm_add_epi32(t4, _mm_unpackhi_epi64(t4, t4));
        let sum = _mm_cvtsi128_si32(_mm_add_epi32(t2, _mm_shuffle_epi32(t2, 1)));
        // i32 → i16 → i8 packs interleave 128-bit halves; the permute restores order.
        let bytes = _mm256_packs_epi16(
            _mm256_packs_epi32(q[0], q[1]),
            _mm256_packs_epi32(q[2], q[3]),
        );
        let bytes = _mm256_permutevar8x32_epi32(bytes, order);
        _mm256_storeu_si256(qs.as_mut_ptr().add(b * 32) as *mut __m256i, bytes);
        let scale = amax / 127.0;
        d[b] = crate::quant::round_to_f16(scale);
        s[b] = crate::quant::round_to_f16(scale * sum as f32);
        isum[b] = sum;
    }
}

/// `gate[i] = silu(gate[i]) · up[i]`, eight at a time.
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C; `up` at least as long as `gate`.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn swiglu(gate: &mut [f32], up: &[f32]) {
    let body = gate.len() / 8 * 8;
    let (g, u) = (gate.as_mut_ptr(), up.as_ptr());
    let one = _mm256_set1_ps(1.0);
    for i in (0..body).step_by(8) {
        let x = _mm256_loadu_ps(g.add(i));
        let e = exp8(_mm256_sub_ps(_mm256_setzero_ps(), x));
        let silu = _mm256_div_ps(x, _mm256_add_ps(one, e));
        _mm256_storeu_ps(g.add(i), _mm256_mul_ps(silu, _mm256_loadu_ps(u.add(i))));
    }
    for i in body..gate.len() {
        gate[i] = gate[i] / (1.0 + (-gate[i]).exp()) * up[i];
    }
}

/// `x[i] = gelu(x[i] + bias[i])`, eight at a time (the last few padded to eight).
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C; `bias` at least as long as `x`.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn bias_gelu(x: &mut [f32], bias: &[f32]) {
    let body = x.len() / 8 * 8;
    let (p, b) = (x.as_mut_ptr(), bias.as_ptr());
    for i in (0..body).step_by(8) {
        let v = _mm256_add_ps(_mm256_loadu_ps(p.add(i)), _mm256_loadu_ps(b.add(i)));
        _mm256_storeu_ps(p.add(i), gelu8(v));
    }
    if body < x.len() {
        let mut rest = [0f32; 8];
        for (r, i) in rest.iter_mut().zip(body..x.len()) {
            *r = x[i] + bias[i];
        }
        _mm256_storeu_ps(rest.as_mut_ptr(), gelu8(_mm256_loadu_ps(rest.as_ptr())));
        let n = x.len() - body;
        x[body..].copy_from_slice(&rest[..n]);
    }
}

/// GELU in eight lanes, `v · Φ(v)`. Φ comes from erfc by the Chebyshev-fitted
/// form in Numerical Recipes (`erfcc`: fractional error below 1.2e-7 for every
/// argument), taken at |v|/√2 so that negative v loses no digits:
/// Φ(v) = erfc(|v|/√2)/2 for v < 0, 1 − that for v ≥ 0.
#[inline(always)]
unsafe fn gelu8(v: __m256) -> __m256 {
    const C: [f32; 10] = [
        0.170_872_77,
        -0.822_152_23,
        1.488_515_87,
        -1.135_203_98,
        0.278_868_07,
        -0.186_288_06,
        0.096_784_18,
        0.374_091_96,
        1.000_023_68,
        -1.265_512_23,
    ];
    let (one, half) = (_mm256_set1_ps(1.0), _mm256_set1_ps(0.5));
    let abs = _mm256_and_ps(v, _mm256_castsi256_ps(_mm256_set1_epi32(0x7fff_ffff)));
    let t = _mm256_mul_ps(abs, _mm256_set1_ps(std::f32::consts::FRAC_1_SQRT_2));
    let u = _mm256_div_ps(one, _mm256_fmadd_ps(half, t, one));
    let mut poly = _mm256_set1_ps(C[0]);
    for &c in &C[1..] {
        poly = _mm256_fmadd_ps(poly, u, _mm256_set1_ps(c));
    }
    // erfc(t) = u · e^(−t² + poly(u))
    let erfc = _mm256_mul_ps(u, exp8(_mm256_fnmadd_ps(t, t, poly)));
    let tail = _mm256_mul_ps(half, erfc); // Φ(−|v|)
    let negative = _mm256_cmp_ps(v, _mm256_setzero_ps(), _CMP_LT_OQ);
    _mm256_mul_ps(v, _mm256_blendv_ps(_mm256_sub_ps(one, tail), tail, negative))
}
