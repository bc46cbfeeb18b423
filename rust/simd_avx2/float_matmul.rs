//! Float matrix products: tiles of R weight rows (f32, as stored or widened)
//! × T tokens, every output its own 8-lane accumulator.
//!
//! Invariant (the batch-independence rule): each output is one chain of
//! multiply-adds over k in steps of eight lanes, the last partial step read
//! with a mask, then its lanes summed in ggml's order (`hsum_ggml`). Every
//! tile size, edge tiles and a single token included, computes each output
//! exactly so, so a value does not depend on which tile, batch or thread it
//! falls in. (It is also the sum the attention scores kernel forms, which this
//! path used before tiles: results for k a multiple of 8 did not change.)
//!
//! Performance notes (all-MiniLM-L6-v2, 2 × 1,000 sentences at batch 64, CPU
//! seconds under `perf stat` on the 2-core VM with other load; the row-at-a-time
//! kernel before tiles: 47):
//! - 4×3 is the tile: 12 accumulators, three token vectors and one weight
//!   operand fill the 16 registers; per step of k it loads 7 vectors for 12
//!   multiply-adds (one widened row against 8 tokens loaded 9 for 8). 23 s;
//!   6×2 22-25 s (within noise, and needs row parts in sixes), 4×2 27-28,
//!   3×4 27, 2×4 31.
//! - Tokens blocked to stay in L2 (512 KiB or 128 KiB of activations at a
//!   time) measured within noise of no blocking (23.4-24.1 s each): the 1.4 and
//!   5.8 MB of activations here stream well enough from L3. Not kept.

use std::arch::x86_64::*;

use super::attention::hsum_ggml;

/// Weight rows per tile.
pub const ROW_TILE: usize = 4;
/// Tokens per tile.
pub const TOKEN_TILE: usize = 3;

/// `out[t·ldo + r] = Σ_j w_r[j] · x_t[j]` for rows `r < n_rows` (row r at
/// `w + r·k`) and tokens `t < n_tok` (token t at `x + t·k`).
///
/// # Safety
/// AVX2 and FMA; `n_rows` ≤ `ROW_TILE`; rows and tokens readable for `k` values;
/// `out` writable at every (t, r).
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn float_tiles(
    w: *const f32,
    n_rows: usize,
    x: *const f32,
    n_tok: usize,
    k: usize,
    out: *mut f32,
    ldo: usize,
) {
    match n_rows {
        4 => rows_of::<4>(w, x, n_tok, k, out, ldo),
        3 => rows_of::<3>(w, x, n_tok, k, out, ldo),
        2 => rows_of::<2>(w, x, n_tok, k, out, ldo),
        1 => rows_of::<1>(w, x, n_tok, k, out, ldo),
        _ => debug_assert_eq!(n_rows, 0),
    }
}

/// R rows against every token: whole tiles of `TOKEN_TILE`, then one narrower.
#[inline(always)]
unsafe fn rows_of<const R: usize>(
    w: *const f32,
    x: *const f32,
    n_tok: usize,
    k: usize,
    out: *mut f32,
    ldo: usize,
) {
    let rows: [*const f32; R] = std::array::from_fn(|r| w.add(r * k));
    let mut t = 0;
    while t + TOKEN_TILE <= n_tok {
        tile::<R, TOKEN_TILE>(rows, x.add(t * k), k, out.add(t * ldo), ldo);
        t += TOKEN_TILE;
    }
    let (x, out) = (x.add(t * k), out.add(t * ldo));
    match n_tok - t {
        3 => tile::<R, 3>(rows, x, k, out, ldo),
        2 => tile::<R, 2>(rows, x, k, out, ldo),
        1 => tile::<R, 1>(rows, x, k, out, ldo),
        _ => debug_assert_eq!(n_tok, t),
    }
}

/// Lanes below `n` (1..=7) set, for the masked loads of the last step of k.
#[inline(always)]
unsafe fn mask_below(n: usize) -> __m256i {
    let lanes = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    _mm256_cmpgt_epi32(_mm256_set1_epi32(n as i32), lanes)
}

/// One R × T tile: rows `w[r]`, tokens at `x + t·k`, out at `out + t·ldo + r`.
#[inline(always)]
unsafe fn tile<const R: usize, const T: usize>(
    w: [*const f32; R],
    x: *const f32,
    k: usize,
    out: *mut f32,
    ldo: usize,
) {
    let mut acc = [[_mm256_setzero_ps(); T]; R];
    let whole = k - k % 8;
    let mut j = 0;
    while j < whole {
        let xv: [__m256; T] = std::array::from_fn(|t| _mm256_loadu_ps(x.add(t * k + j)));
        for r in 0..R {
            let wv = _mm256_loadu_ps(w[r].add(j));
            for t in 0..T {
                acc[r][t] = _mm256_fmadd_ps(wv, xv[t], acc[r][t]);
            }
        }
        j += 8;
    }
    if whole < k {
        // Lanes past k load as 0 and add 0·0 to every chain alike.
        let m = mask_below(k - whole);
        let xv: [__m256; T] = std::array::from_fn(|t| _mm256_maskload_ps(x.add(t * k + j), m));
        for r in 0..R {
            let wv = _mm256_maskload_ps(w[r].add(j), m);
            for t in 0..T {
                acc[r][t] = _mm256_fmadd_ps(wv, xv[t], acc[r][t]);
            }
        }
    }
    for (r, row) in acc.iter().enumerate() {
        for (t, &a) in row.iter().enumerate() {
            *out.add(t * ldo + r) = hsum_ggml(a);
        }
    }
}
