//! Attention kernels over the KV cache: scores (`scale · q·k`) and weighted
//! sums of values.
//!
//! - Decode: one query at a time (`scores`, `weighted_sum_onto`), over a cache
//!   of f16 or f32 read a block at a time.
//! - Prompt chunks: the queries of one KV head's group, and of consecutive
//!   positions, together over the cache widened to f32 (`prompt_scores`,
//!   `prompt_weighted_sums`), so each key and value is loaded once for several
//!   queries.
//!
//! Each kernel has an AVX2 version (`simd_avx2/attention.rs`) and a portable
//! one, chosen per call (`cpu.rs`). On either path the prompt kernels sum every
//! score and every output in the same order as the decode kernels, so a
//! prompt's tokens get the same numbers whichever way they are computed.

use std::ops::Range;

use crate::kv_cache::{Bits, KvElem};

/// Attention scores: `out[j] = scale · q·k_j`, key j at `keys[j·stride..]`.
pub fn scores<T: KvElem>(q: &[f32], keys: &[T], stride: usize, scale: f32, out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if simd_ok(q.len()) && fits(keys.len(), out.len(), stride, q.len()) {
        use crate::simd_avx2::scores as simd;
        // SAFETY: features checked, every key in bounds; BITS says what the elements are.
        return unsafe {
            match T::BITS {
                Bits::F32 => simd(q, keys.as_ptr() as *const f32, stride, scale, out),
                Bits::F16 => simd(q, keys.as_ptr() as *const u16, stride, scale, out),
            }
        };
    }
    scores_portable(q, keys, stride, scale, out)
}

fn scores_portable<T: KvElem>(q: &[f32], keys: &[T], stride: usize, scale: f32, out: &mut [f32]) {
    for (j, s) in out.iter_mut().enumerate() {
        let key = &keys[j * stride..][..q.len()];
        *s = q.iter().zip(key).map(|(a, b)| a * b.to_f32()).sum::<f32>() * scale;
    }
}

/// `out = Σ_j p[j]·v_j`, value j at `values[j·stride..]`.
pub fn weighted_sum<T: KvElem>(p: &[f32], values: &[T], stride: usize, out: &mut [f32]) {
    out.fill(0.0);
    weighted_sum_onto(p, values, stride, out)
}

/// `out += Σ_j p[j]·v_j`, each output one chain of multiply-adds in key order,
/// so a sum taken a cache block at a time equals the sum taken at once.
pub fn weighted_sum_onto<T: KvElem>(p: &[f32], values: &[T], stride: usize, out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if simd_ok(out.len()) && fits(values.len(), p.len(), stride, out.len()) {
        use crate::simd_avx2::weighted_sum as simd;
        // SAFETY: as in `scores`.
        return unsafe {
            match T::BITS {
                Bits::F32 => simd(p, values.as_ptr() as *const f32, stride, out),
                Bits::F16 => simd(p, values.as_ptr() as *const u16, stride, out),
            }
        };
    }
    weighted_sum_onto_portable(p, values, stride, out)
}

fn weighted_sum_onto_portable<T: KvElem>(p: &[f32], values: &[T], stride: usize, out: &mut [f32]) {
    let width = out.len();
    for (j, &pj) in p.iter().enumerate() {
        for (o, v) in out.iter_mut().zip(&values[j * stride..][..width]) {
            *o += pj * v.to_f32();
        }
    }
}

/// Whether the SIMD attention kernels run here, for vectors of `len`.
#[cfg(target_arch = "x86_64")]
fn simd_ok(len: usize) -> bool {
    len.is_multiple_of(8) && crate::cpu::avx2_enabled()
}

/// Whether `n` rows of `width` at `stride` lie within `len` elements.
#[cfg(target_arch = "x86_64")]
fn fits(len: usize, n: usize, stride: usize, width: usize) -> bool {
    n == 0 || (n - 1) * stride + width <= len
}

/// Scores of query rows `rows` (of `qv`, `hd` each) against keys 0..`ctx`, into
/// `scores[r·ctx_max..][..ctx]`: with AVX2, through the shared-key kernel in
/// groups of up to three queries; otherwise one query at a time, as `scores`.
#[allow(clippy::too_many_arguments)]
pub fn prompt_scores(
    qv: &[f32],
    hd: usize,
    rows: Range<usize>,
    keys: &[f32],
    stride: usize,
    scale: f32,
    scores: &mut [f32],
    ctx_max: usize,
    ctx: usize,
) {
    assert!(ctx == 0 || (ctx - 1) * stride + hd <= keys.len());
    assert!(ctx <= ctx_max && rows.end * ctx_max <= scores.len() && rows.end * hd <= qv.len());
    #[cfg(target_arch = "x86_64")]
    if simd_ok(hd) {
        // SAFETY: features checked (with hd a multiple of 8); bounds asserted above.
        return unsafe {
            prompt_scores_avx2(qv, hd, rows, keys, stride, scale, scores, ctx_max, ctx)
        };
    }
    prompt_scores_portable(qv, hd, rows, keys, stride, scale, scores, ctx_max, ctx)
}

/// `prompt_scores` with AVX2.
///
/// # Safety
/// AVX2, FMA and F16C; `hd` a multiple of 8; the bounds `prompt_scores` asserts.
#[cfg(target_arch = "x86_64")]
#[allow(clippy::too_many_arguments)]
unsafe fn prompt_scores_avx2(
    qv: &[f32],
    hd: usize,
    rows: Range<usize>,
    keys: &[f32],
    stride: usize,
    scale: f32,
    scores: &mut [f32],
    ctx_max: usize,
    ctx: usize,
) {
    use crate::simd_avx2::scores_shared;
    let (qp, op) = (qv.as_ptr(), scores.as_mut_ptr());
    let q = |r: usize| qp.add(r * hd);
    let o = |r: usize| op.add(r * ctx_max);
    let mut r = rows.start;
    while r + 3 <= rows.end {
        scores_shared::<3>(
            [q(r), q(r + 1), q(r + 2)],
            hd,
            keys.as_ptr(),
            stride,
            scale,
            [o(r), o(r + 1), o(r + 2)],
            ctx,
        );
        r += 3;
    }
    while r < rows.end {
        scores_shared::<1>([q(r)], hd, keys.as_ptr(), stride, scale, [o(r)], ctx);
        r += 1;
    }
}

/// The portable twin of `prompt_scores_avx2`: each query on its own, summed as `scores` sums.
#[allow(clippy::too_many_arguments)]
fn prompt_scores_portable(
    qv: &[f32],
    hd: usize,
    rows: Range<usize>,
    keys: &[f32],
    stride: usize,
    scale: f32,
    scores: &mut [f32],
    ctx_max: usize,
    ctx: usize,
) {
    for r in rows {
        let out = &mut scores[r * ctx_max..][..ctx];
        scores_portable(&qv[r * hd..][..hd], keys, stride, scale, out);
    }
}

/// Outputs of `n_rows` rows of weights (`scores[r·ctx_max..][..ctx]`) over
/// values 0..`ctx`, written to `out(r)`: with AVX2, through the shared-value
/// kernel in groups of up to six rows; otherwise one row at a time, as
/// `weighted_sum`.
///
/// # Safety
/// For every r in 0..`n_rows`, `out(r)` is valid for writing `hd` values, and
/// those ranges overlap neither one another nor `scores` or `values`.
#[allow(clippy::too_many_arguments)]
pub unsafe fn prompt_weighted_sums(
    scores: &[f32],
    ctx_max: usize,
    ctx: usize,
    n_rows: usize,
    values: &[f32],
    stride: usize,
    hd: usize,
    out: impl Fn(usize) -> *mut f32,
) {
    assert!(ctx == 0 || (ctx - 1) * stride + hd <= values.len());
    assert!(ctx <= ctx_max && n_rows * ctx_max <= scores.len());
    #[cfg(target_arch = "x86_64")]
    if hd.is_multiple_of(16) && crate::cpu::avx2_enabled() {
        // SAFETY: features checked (with hd a multiple of 16); bounds asserted
        // above; `out` as the caller promises.
        return prompt_weighted_sums_avx2(scores, ctx_max, ctx, n_rows, values, stride, hd, out);
    }
    prompt_weighted_sums_portable(scores, ctx_max, ctx, n_rows, values, stride, hd, out)
}

/// The portable twin of `prompt_weighted_sums_avx2`: each row on its own,
/// summed as `weighted_sum` sums.
///
/// # Safety
/// As for `prompt_weighted_sums`.
#[allow(clippy::too_many_arguments)]
unsafe fn prompt_weighted_sums_portable(
    scores: &[f32],
    ctx_max: usize,
    ctx: usize,
    n_rows: usize,
    values: &[f32],
    stride: usize,
    hd: usize,
    out: impl Fn(usize) -> *mut f32,
) {
    for r in 0..n_rows {
        // SAFETY: as the caller promises.
        let o = std::slice::from_raw_parts_mut(out(r), hd);
        o.fill(0.0);
        weighted_sum_onto_portable(&scores[r * ctx_max..][..ctx], values, stride, o);
    }
}

/// `prompt_weighted_sums` with AVX2.
///
/// # Safety
/// AVX2, FMA and F16C; `hd` a multiple of 16; as for `prompt_weighted_sums`.
#[cfg(target_arch = "x86_64")]
#[allow(clippy::too_many_arguments)]
unsafe fn prompt_weighted_sums_avx2(
    scores: &[f32],
    ctx_max: usize,
    ctx: usize,
    n_rows: usize,
    values: &[f32],
    stride: usize,
    hd: usize,
    out: impl Fn(usize) -> *mut f32,
) {
    use crate::simd_avx2::weighted_sum_shared;
    let p = |r: usize| scores[r * ctx_max..].as_ptr();
    let v = values.as_ptr();
    let mut r = 0;
    while r + 6 <= n_rows {
        weighted_sum_shared::<6>(
            [p(r), p(r + 1), p(r + 2), p(r + 3), p(r + 4), p(r + 5)],
            ctx,
            v,
            stride,
            hd,
            [
                out(r),
                out(r + 1),
                out(r + 2),
                out(r + 3),
                out(r + 4),
                out(r + 5),
            ],
        );
        r += 6;
    }
    while r + 3 <= n_rows {
        weighted_sum_shared::<3>(
            [p(r), p(r + 1), p(r + 2)],
            ctx,
            v,
            stride,
            hd,
            [out(r), out(r + 1), out(r + 2)],
        );
        r += 3;
    }
    while r < n_rows {
        weighted_sum_shared::<1>([p(r)], ctx, v, stride, hd, [out(r)]);
        r += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kv_cache::F16;

    fn values(n: usize, seed: u32) -> Vec<f32> {
        (0..n)
            .map(|i| {
                ((i as u32).wrapping_mul(2654435761).wrapping_add(seed) >> 20) as f32 / 2048.0 - 1.0
            })
            .collect()
    }

    /// The f16 cache's attention kernels (SIMD where the CPU has it) against plain
    /// f64 sums, for key counts and head sizes that leave remainders: fewer than
    /// eight keys, not a multiple of eight, heads wider than the 64 values kept in
    /// registers at once.
    #[test]
    fn f16_scores_and_weighted_sums_match_plain_sums() {
        for hd in [8, 64, 72, 136] {
            for n_keys in [1, 7, 8, 19] {
                let stride = hd + 16; // keys of one head inside wider rows, as in the cache
                let cache: Vec<F16> = values(n_keys * stride, 1)
                    .into_iter()
                    .map(F16::from_f32)
                    .collect();
                let q = values(hd, 2);
                let mut got = vec![0f32; n_keys];
                scores(&q, &cache, stride, 0.5, &mut got);
                let mut out = vec![0f32; hd];
                let p = values(n_keys, 3);
                weighted_sum(&p, &cache, stride, &mut out);
                for j in 0..n_keys {
                    let exact: f64 = (0..hd)
                        .map(|d| q[d] as f64 * cache[j * stride + d].to_f32() as f64)
                        .sum::<f64>()
                        * 0.5;
                    assert!(
                        (got[j] as f64 - exact).abs() < 1e-4,
                        "hd {hd}, {n_keys} keys, key {j}"
                    );
                }
                for d in 0..hd {
                    let exact: f64 = (0..n_keys)
                        .map(|j| p[j] as f64 * cache[j * stride + d].to_f32() as f64)
                        .sum();
                    assert!(
                        (out[d] as f64 - exact).abs() < 1e-4,
                        "hd {hd}, {n_keys} keys, dim {d}"
                    );
                }
            }
        }
    }

    /// `Σ x·y` in f64, and the most rounding an f32 sum of those products may
    /// carry in any order, with or without fused multiply-adds: n·ε·Σ|x·y| for
    /// n terms. A kernel that drops, repeats or misplaces a term misses by far more.
    fn exact_and_margin(terms: impl Iterator<Item = (f32, f32)>) -> (f64, f64) {
        let (mut sum, mut size, mut n) = (0f64, 0f64, 0);
        for (x, y) in terms {
            sum += x as f64 * y as f64;
            size += (x as f64 * y as f64).abs();
            n += 1;
        }
        (sum, n as f64 * f32::EPSILON as f64 * size)
    }

    /// Both prompt kernels, as dispatched (AVX2 where it runs) and portable,
    /// against f64 sums. Sizes leave remainders in every grouping: 7 query rows
    /// (3 + 3 + 1 keys-sharing, 6 + 1 values-sharing), key counts below and
    /// past a tile of four, heads of one and several 16-value steps, heads the
    /// AVX2 kernels do not take (8 and 24 values: portable on every path).
    /// Whatever lies outside the rows and keys asked for must stay untouched.
    #[test]
    fn prompt_kernels_match_plain_sums_on_every_path() {
        const UNTOUCHED: f32 = 12345.0;
        let rows = 1..8; // row 0 is not asked for
        let n_rows = rows.len();
        for hd in [8, 16, 24, 64, 80] {
            for ctx in [1, 3, 4, 5, 9, 19] {
                let (stride, ctx_max) = (2 * hd + 8, ctx + 3);
                let keys = values(ctx * stride, 1);
                let vals = values(ctx * stride, 2);
                let qv = values(rows.end * hd, 3);
                // A power of two: scaling rounds nothing.
                let scale = 0.25;
                // Weights in 0..1 with some keys masked, as after a causal softmax.
                let mut p = vec![UNTOUCHED; n_rows * ctx_max];
                for (i, w) in values(n_rows * ctx_max, 4).into_iter().enumerate() {
                    if i % ctx_max < ctx {
                        p[i] = if i % 5 == 4 { 0.0 } else { w.abs() };
                    }
                }
                for path in ["dispatched", "portable"] {
                    let at = format!("{path}, hd {hd}, {ctx} keys");
                    let mut s = vec![UNTOUCHED; rows.end * ctx_max];
                    let ask = rows.clone();
                    match path {
                        "portable" => prompt_scores_portable(
                            &qv, hd, ask, &keys, stride, scale, &mut s, ctx_max, ctx,
                        ),
                        _ => {
                            prompt_scores(&qv, hd, ask, &keys, stride, scale, &mut s, ctx_max, ctx)
                        }
                    }
                    for (i, got) in s.iter().enumerate() {
                        let (r, j) = (i / ctx_max, i % ctx_max);
                        if r == 0 || j >= ctx {
                            assert_eq!(*got, UNTOUCHED, "{at}: score {r}, {j} written");
                            continue;
                        }
                        let terms = (0..hd).map(|d| (qv[r * hd + d], keys[j * stride + d]));
                        let (exact, margin) = exact_and_margin(terms);
                        let err = (*got as f64 - exact * scale as f64).abs();
                        assert!(
                            err <= margin * scale as f64,
                            "{at}: score {r}, {j} off by {err:e}"
                        );
                    }
                    let mut out = vec![UNTOUCHED; (n_rows + 1) * hd];
                    let base = out.as_mut_ptr();
                    // SAFETY: row r writes out[r·hd..][..hd], inside `out` and disjoint.
                    let row = |r: usize| unsafe { base.add(r * hd) };
                    // SAFETY: as above.
                    unsafe {
                        match path {
                            "portable" => prompt_weighted_sums_portable(
                                &p, ctx_max, ctx, n_rows, &vals, stride, hd, row,
                            ),
                            _ => prompt_weighted_sums(
                                &p, ctx_max, ctx, n_rows, &vals, stride, hd, row,
                            ),
                        }
                    };
                    assert!(
                        out[n_rows * hd..].iter().all(|&v| v == UNTOUCHED),
                        "{at}: wrote past the rows"
                    );
                    for r in 0..n_rows {
                        for d in 0..hd {
                            let terms =
                                (0..ctx).map(|j| (p[r * ctx_max + j], vals[j * stride + d]));
                            let (exact, margin) = exact_and_margin(terms);
                            let err = (out[r * hd + d] as f64 - exact).abs();
                            assert!(err <= margin, "{at}: output {r}, {d} off by {err:e}");
                        }
                    }
                }
            }
        }
    }

    /// The prompt kernels give the very numbers the decode kernels give (on the
    /// same path, whichever runs), for the heads the model sends them (multiples
    /// of 16): masked weights of 0 add nothing, and every sum runs in the same order.
    #[test]
    fn prompt_kernels_equal_the_decode_kernels() {
        let n = 7; // shared by 3 + 3 + 1 (keys) and 6 + 1 (values)
        for hd in [16, 64, 80] {
            for ctx in [1, 4, 5, 19] {
                let (stride, ctx_max) = (2 * hd + 8, ctx + 3);
                let keys = values(ctx * stride, 5);
                let vals = values(ctx * stride, 6);
                let qv = values(n * hd, 7);
                let mut s = vec![0f32; n * ctx_max];
                prompt_scores(&qv, hd, 0..n, &keys, stride, 0.25, &mut s, ctx_max, ctx);
                let mut p = values(n * ctx_max, 8);
                p.iter_mut().for_each(|w| *w = w.abs());
                p[ctx - 1] = 0.0; // row 0's last key masked
                let mut out = vec![0f32; n * hd];
                let base = out.as_mut_ptr();
                // SAFETY: row r writes out[r·hd..][..hd], inside `out` and disjoint.
                unsafe {
                    prompt_weighted_sums(&p, ctx_max, ctx, n, &vals, stride, hd, |r| {
                        base.add(r * hd)
                    })
                };
                for r in 0..n {
                    let at = format!("hd {hd}, {ctx} keys, row {r}");
                    let mut one = vec![0f32; ctx];
                    scores(&qv[r * hd..][..hd], &keys, stride, 0.25, &mut one);
                    assert_eq!(&s[r * ctx_max..][..ctx], &one[..], "{at}");
                    let mut sum = vec![0f32; hd];
                    weighted_sum(&p[r * ctx_max..][..ctx], &vals, stride, &mut sum);
                    assert_eq!(&out[r * hd..][..hd], &sum[..], "{at}");
                }
            }
        }
    }
}
