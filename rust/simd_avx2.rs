//! AVX2 kernels, for x86-64 CPUs that have AVX2, FMA and F16C (checked at run
//! time by the caller): the quantized matrix product's inner tiles, and the f16
//! dot product and axpy of attention over an f16 cache.
//!
//! A quantized tile multiplies R weight rows by T tokens' 8-bit activations.
//! Each block's 32 products are summed exactly in integers (`maddubs` pairs into
//! i16, `madd` into i32), then scaled and accumulated in eight f32 lanes per
//! (row, token). A weight block is unpacked once for T tokens and an activation
//! block loaded once for R rows; the R·T accumulators are independent, so the
//! CPU overlaps their latencies. Decode (one token) takes 4×1 tiles, prefill 2×4.
//! The portable `quant::dot_q8` is the reference these are tested against.

#![cfg(target_arch = "x86_64")]

use std::arch::x86_64::*;

use crate::quant::Q8Activations;

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

/// The block formats as const parameters, so each tile is compiled per format.
pub const Q8_0: u8 = 0;
pub const Q4_0: u8 = 1;
pub const Q4_1: u8 = 2;

/// (bytes per block, offset of the quants in a block)
#[inline(always)]
const fn geometry(fmt: u8) -> (usize, usize) {
    match fmt {
        Q8_0 => (34, 2),
        Q4_0 => (18, 2),
        _ => (20, 4),
    }
}

/// One weight block's 32 quants as bytes: signed for Q8_0 and Q4_0, unsigned (0..15) for Q4_1.
#[inline(always)]
unsafe fn unpack<const F: u8>(blk: *const u8) -> __m256i {
    let p = blk.add(geometry(F).1);
    match F {
        Q8_0 => _mm256_loadu_si256(p as *const __m256i),
        Q4_0 => _mm256_sub_epi8(nibbles(p), _mm256_set1_epi8(8)),
        _ => nibbles(p),
    }
}

/// An f16 scale from a block header, converted by the F16C unit (a table lookup
/// would add a 256 KiB table to the cache traffic of every block).
#[inline(always)]
unsafe fn f16_ptr(p: *const u8) -> f32 {
    _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(
        u16::from_le_bytes([*p, *p.add(1)]) as i32,
    )))
}

/// R rows × T tokens over `nb` blocks. `rows[r]` points at a weight row; token t's
/// activations are block scales `d[t]`, block sums `s[t]` and quants `q[t]`.
#[inline(always)]
unsafe fn tile<const F: u8, const R: usize, const T: usize>(
    rows: [*const u8; R],
    d: [*const f32; T],
    s: [*const f32; T],
    q: [*const i8; T],
    nb: usize,
) -> [[f32; T]; R] {
    let (width, _) = geometry(F);
    let mut acc = [[_mm256_setzero_ps(); T]; R];
    let mut mins = [[0f32; T]; R];
    for b in 0..nb {
        let mut x = [_mm256_setzero_si256(); R];
        let mut dw = [0f32; R];
        for r in 0..R {
            let blk = rows[r].add(b * width);
            x[r] = unpack::<F>(blk);
            dw[r] = f16_ptr(blk);
            if F == Q4_1 {
                let m = f16_ptr(blk.add(2));
                for t in 0..T {
                    mins[r][t] += m * *s[t].add(b);
                }
            }
        }
        for t in 0..T {
            let y = _mm256_loadu_si256(q[t].add(b * 32) as *const __m256i);
            let dt = *d[t].add(b);
            for r in 0..R {
                let ints = if F == Q4_1 {
                    mul_sum_u8_i8(x[r], y)
                } else {
                    mul_sum_i8_i8(x[r], y)
                };
                acc[r][t] = _mm256_fmadd_ps(
                    _mm256_set1_ps(dw[r] * dt),
                    _mm256_cvtepi32_ps(ints),
                    acc[r][t],
                );
            }
        }
    }
    let mut out = [[0f32; T]; R];
    for r in 0..R {
        for t in 0..T {
            out[r][t] = hsum(acc[r][t]) + mins[r][t];
        }
    }
    out
}

/// Rows `first..first+n` of a quantized matrix times every token of `acts`:
/// `out[t·stride + r]` for each row r (relative to `out`) and token t.
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C. `w` must hold `first + n` rows of
/// `row_bytes` bytes in format `F`, `acts` the matching activations, and `out`
/// must be valid for those writes.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn matmul_rows<const F: u8>(
    w: &[u8],
    row_bytes: usize,
    first: usize,
    n: usize,
    acts: &Q8Activations,
    n_tok: usize,
    out: *mut f32,
    stride: usize,
) {
    let nb = acts.cols / 32;
    debug_assert!(w.len() >= (first + n) * row_bytes);
    let row = |r: usize| w.as_ptr().add((first + r) * row_bytes);
    let tok = |t: usize| {
        (
            acts.d.as_ptr().add(t * nb),
            acts.s.as_ptr().add(t * nb),
            acts.qs.as_ptr().add(t * acts.cols),
        )
    };
    let mut r = 0;
    if n_tok == 1 {
        let (d, s, q) = tok(0);
        while r + 4 <= n {
            let o = tile::<F, 4, 1>(
                [row(r), row(r + 1), row(r + 2), row(r + 3)],
                [d],
                [s],
                [q],
                nb,
            );
            for i in 0..4 {
                *out.add(r + i) = o[i][0];
            }
            r += 4;
        }
        while r < n {
            *out.add(r) = tile::<F, 1, 1>([row(r)], [d], [s], [q], nb)[0][0];
            r += 1;
        }
        return;
    }
    while r < n {
        let pair = r + 2 <= n;
        let mut t = 0;
        while t + 4 <= n_tok {
            let (d0, s0, q0) = tok(t);
            let (d1, s1, q1) = tok(t + 1);
            let (d2, s2, q2) = tok(t + 2);
            let (d3, s3, q3) = tok(t + 3);
            let (d4, s4, q4) = ([d0, d1, d2, d3], [s0, s1, s2, s3], [q0, q1, q2, q3]);
            if pair {
                let o = tile::<F, 2, 4>([row(r), row(r + 1)], d4, s4, q4, nb);
                for (i, or) in o.iter().enumerate() {
                    for (j, v) in or.iter().enumerate() {
                        *out.add((t + j) * stride + r + i) = *v;
                    }
                }
            } else {
                let o = tile::<F, 1, 4>([row(r)], d4, s4, q4, nb);
                for (j, v) in o[0].iter().enumerate() {
                    *out.add((t + j) * stride + r) = *v;
                }
            }
            t += 4;
        }
        while t < n_tok {
            let (d, s, q) = tok(t);
            if pair {
                let o = tile::<F, 2, 1>([row(r), row(r + 1)], [d], [s], [q], nb);
                *out.add(t * stride + r) = o[0][0];
                *out.add(t * stride + r + 1) = o[1][0];
            } else {
                *out.add(t * stride + r) = tile::<F, 1, 1>([row(r)], [d], [s], [q], nb)[0][0];
            }
            t += 1;
        }
        r += if pair { 2 } else { 1 };
    }
}

/// Lane r of the result = the sum of the eight i32 lanes of `p[r]`.
#[inline(always)]
unsafe fn sum_lanes_of_8(p: [__m256i; 8]) -> __m256i {
    let a = _mm256_hadd_epi32(p[0], p[1]);
    let b = _mm256_hadd_epi32(p[2], p[3]);
    let c = _mm256_hadd_epi32(p[4], p[5]);
    let d = _mm256_hadd_epi32(p[6], p[7]);
    // Per 128-bit half: [Σp0, Σp1, Σp2, Σp3] of that half's lanes, and the same for p4..p7.
    let e = _mm256_hadd_epi32(a, b);
    let f = _mm256_hadd_epi32(c, d);
    _mm256_add_epi32(
        _mm256_permute2x128_si256(e, f, 0x20),
        _mm256_permute2x128_si256(e, f, 0x31),
    )
}

/// Eight rows' quants of one block from a grouped block (`groups.rs`): Q8_0
/// signed bytes as stored; Q4 pairs split by nibble (0..15, unsigned).
#[inline(always)]
unsafe fn group_quants<const F: u8>(blk: *const u8) -> [__m256i; 8] {
    let head = if F == Q4_1 { 32 } else { 16 };
    let mut x = [_mm256_setzero_si256(); 8];
    for pair in 0..4 {
        if F == Q8_0 {
            let p = blk.add(head + pair * 64);
            x[2 * pair] = _mm256_loadu_si256(p as *const __m256i);
            x[2 * pair + 1] = _mm256_loadu_si256(p.add(32) as *const __m256i);
        } else {
            let v = _mm256_loadu_si256(blk.add(head + pair * 32) as *const __m256i);
            let low = _mm256_set1_epi8(0x0F);
            x[2 * pair] = _mm256_and_si256(v, low);
            x[2 * pair + 1] = _mm256_and_si256(_mm256_srli_epi16(v, 4), low);
        }
    }
    x
}

/// Groups `first_group..first_group+n_groups` of a grouped matrix times every token
/// of `acts`: `out[t·stride + 8g + i]` for row i of group g (relative to `out`).
///
/// Per block and token, the eight rows' integer sums land in the eight lanes
/// of one register, are scaled by the eight rows' scales at once, and
/// accumulate there: the finished register is eight outputs, stored as they are.
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C. `w` must hold those groups in
/// format `F`, `acts` the matching activations, and `out` be valid for the writes.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn matmul_groups<const F: u8>(
    w: &[u8],
    first_group: usize,
    n_groups: usize,
    acts: &Q8Activations,
    n_tok: usize,
    out: *mut f32,
    stride: usize,
) {
    let nb = acts.cols / 32;
    let block = 8 * geometry(F).0; // bytes of one block of eight rows
    debug_assert!(w.len() >= (first_group + n_groups) * nb * block);
    for g in 0..n_groups {
        let grp = w.as_ptr().add((first_group + g) * nb * block);
        let mut t = 0;
        while t + 4 <= n_tok {
            let o = group_tile::<F, 4>(grp, nb, acts, t);
            for (j, v) in o.iter().enumerate() {
                _mm256_storeu_ps(out.add((t + j) * stride + 8 * g), *v);
            }
            t += 4;
        }
        while t + 2 <= n_tok {
            let o = group_tile::<F, 2>(grp, nb, acts, t);
            _mm256_storeu_ps(out.add(t * stride + 8 * g), o[0]);
            _mm256_storeu_ps(out.add((t + 1) * stride + 8 * g), o[1]);
            t += 2;
        }
        if t < n_tok {
            let o = group_tile::<F, 1>(grp, nb, acts, t);
            _mm256_storeu_ps(out.add(t * stride + 8 * g), o[0]);
        }
    }
}

/// One group (eight rows) × tokens `t0..t0+T`: per token, eight outputs.
#[inline(always)]
unsafe fn group_tile<const F: u8, const T: usize>(
    grp: *const u8,
    nb: usize,
    acts: &Q8Activations,
    t0: usize,
) -> [__m256; T] {
    let block = 8 * geometry(F).0;
    let mut acc = [_mm256_setzero_ps(); T];
    for b in 0..nb {
        let blk = grp.add(b * block);
        let scales = _mm256_cvtph_ps(_mm_loadu_si128(blk as *const __m128i));
        let x = group_quants::<F>(blk);
        for (t, acc_t) in acc.iter_mut().enumerate() {
            let at = (t0 + t) * nb + b;
            let y = _mm256_loadu_si256(acts.qs.as_ptr().add(at * 32) as *const __m256i);
            let mut p = [_mm256_setzero_si256(); 8];
            for r in 0..8 {
                p[r] = if F == Q8_0 {
                    mul_sum_i8_i8(x[r], y)
                } else {
                    mul_sum_u8_i8(x[r], y)
                };
            }
            let mut ints = sum_lanes_of_8(p);
            if F == Q4_0 {
                // Quants were stored 0..15 for 4-bit weights of q − 8: Σ(q−8)·y = Σq·y − 8Σy, exactly.
                ints = _mm256_sub_epi32(ints, _mm256_set1_epi32(8 * *acts.isum.get_unchecked(at)));
            }
            let scale = _mm256_mul_ps(scales, _mm256_set1_ps(*acts.d.get_unchecked(at)));
            *acc_t = _mm256_fmadd_ps(scale, _mm256_cvtepi32_ps(ints), *acc_t);
            if F == Q4_1 {
                let mins = _mm256_cvtph_ps(_mm_loadu_si128(blk.add(16) as *const __m128i));
                *acc_t = _mm256_fmadd_ps(mins, _mm256_set1_ps(*acts.s.get_unchecked(at)), *acc_t);
            }
        }
    }
    acc
}

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

/// `out = Σ_j p[j]·v_j`, value j at `values + j·stride`. The output stays in
/// registers (up to 64 values at a time) while the values stream by.
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
unsafe fn hsum_ggml(v: __m256) -> f32 {
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
