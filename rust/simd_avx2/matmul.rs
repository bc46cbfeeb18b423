//! Quantized matrix products: R weight rows × T tokens' 8-bit activations.
//! Each block's 32 products are summed exactly in integers (`maddubs` pairs into
//! i16, `madd` into i32), then scaled and accumulated in f32.

use std::arch::x86_64::*;

use super::{hsum, mul_sum_i8_i8, mul_sum_u8_i8, nibbles};
use crate::q8_activations::Q8Activations;

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
#[allow(clippy::too_many_arguments)]
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
            for (i, oi) in o.iter().enumerate() {
                *out.add(r + i) = oi[0];
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

/// Eight rows' quants of one block from a grouped block (`row_groups.rs`): Q8_0
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
