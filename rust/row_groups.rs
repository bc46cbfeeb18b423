//! The grouped row layout of block-quantized weight matrices: the same blocks
//! as in GGUF, the same bytes, with eight rows interleaved in an order that
//! suits SIMD. (Groups of rows of a matrix; nothing to do with the groups of
//! query heads in grouped-query attention.)
//!
//! Rows are taken eight at a time. For each block index b, a group stores the
//! eight rows' block-b scales side by side (8 × f16), then for Q4_1 their eight
//! minimums, then their quants. So one 16-byte load gives eight rows' scales
//! (one F16C conversion for all), and the kernel computes eight rows' block
//! sums into the eight lanes of one register: no horizontal sum per row, and
//! one sequential stream per eight rows for the prefetcher.
//!
//! Quants, per pair of rows (r, r+1) in a group:
//! - Q8_0: row r's 32 bytes, then row r+1's;
//! - Q4_0/Q4_1: 32 bytes where byte k holds row r's quant in its low nibble and
//!   row r+1's in its high one; k < 16 are quants 0..16, k ≥ 16 quants 16..32.
//!   A 32-byte load masked with 0x0F is then row r's 32 quants in order, and
//!   shifted right by 4, row r+1's (GGUF packs quant j and j+16 into one byte,
//!   which would need a lane shuffle per row).

use crate::dtype::DType;

/// Rows per group.
pub const ROWS: usize = 8;

/// Whether `dtype` has a grouped layout.
pub fn groupable(dtype: DType) -> bool {
    matches!(dtype, DType::Q8_0 | DType::Q4_0 | DType::Q4_1)
}

/// Bytes of the scale (and minimum) headers at the start of a group's block.
pub const fn header_bytes(dtype: DType) -> usize {
    match dtype {
        DType::Q4_1 => 32,
        _ => 16,
    }
}

/// Bytes of one pair of rows' quants in a group's block.
pub const fn pair_bytes(dtype: DType) -> usize {
    match dtype {
        DType::Q8_0 => 64,
        _ => 32,
    }
}

/// Within one block of a GGUF row: (f16 scale at 0, f16 minimum at 2 for Q4_1, quants at `quant_at`).
fn quant_at(dtype: DType) -> usize {
    match dtype {
        DType::Q4_1 => 4,
        _ => 2,
    }
}

/// Where things are, for rows of `row_bytes` of one format.
struct Layout {
    bb: usize,   // bytes of one GGUF block
    nb: usize,   // blocks per row
    gb: usize,   // bytes of one grouped block (eight rows' block b)
    head: usize, // bytes of a grouped block's scales (and minimums)
    qa: usize,   // offset of the quants in a GGUF block
}

impl Layout {
    fn of(dtype: DType, row_bytes: usize) -> Layout {
        let (_, bb) = dtype.block();
        Layout {
            bb,
            nb: row_bytes / bb,
            gb: ROWS * bb,
            head: header_bytes(dtype),
            qa: quant_at(dtype),
        }
    }
}

/// Rewrites eight rows (`rows`, GGUF layout, `row_bytes` each) as one group in `out`.
pub fn group(dtype: DType, row_bytes: usize, rows: &[u8], out: &mut [u8]) {
    let Layout {
        bb,
        nb,
        gb,
        head,
        qa,
    } = Layout::of(dtype, row_bytes);
    debug_assert_eq!(rows.len(), ROWS * row_bytes);
    for b in 0..nb {
        let o = &mut out[b * gb..(b + 1) * gb];
        let blk = |r: usize| &rows[r * row_bytes + b * bb..r * row_bytes + (b + 1) * bb];
        for r in 0..ROWS {
            o[2 * r..2 * r + 2].copy_from_slice(&blk(r)[0..2]);
            if dtype == DType::Q4_1 {
                o[16 + 2 * r..16 + 2 * r + 2].copy_from_slice(&blk(r)[2..4]);
            }
        }
        for pair in 0..ROWS / 2 {
            let (a, c) = (blk(2 * pair), blk(2 * pair + 1));
            let q = &mut o[head + pair * pair_bytes(dtype)..head + (pair + 1) * pair_bytes(dtype)];
            if dtype == DType::Q8_0 {
                q[..32].copy_from_slice(&a[qa..qa + 32]);
                q[32..].copy_from_slice(&c[qa..qa + 32]);
            } else {
                for (k, v) in q.iter_mut().enumerate() {
                    *v = nibble(&a[qa..], k) | nibble(&c[qa..], k) << 4;
                }
            }
        }
    }
}

/// Quant `k` (0..32) of a GGUF 4-bit block: low nibbles hold 0..16, high ones 16..32.
fn nibble(quants: &[u8], k: usize) -> u8 {
    if k < 16 {
        quants[k] & 0x0F
    } else {
        quants[k - 16] >> 4
    }
}

/// Row `r` (0..8) of a group, back in GGUF layout, into `out` (`row_bytes`).
pub fn ungroup_row(dtype: DType, row_bytes: usize, grp: &[u8], r: usize, out: &mut [u8]) {
    let Layout {
        bb,
        nb,
        gb,
        head,
        qa,
    } = Layout::of(dtype, row_bytes);
    for b in 0..nb {
        let g = &grp[b * gb..(b + 1) * gb];
        let o = &mut out[b * bb..(b + 1) * bb];
        o[0..2].copy_from_slice(&g[2 * r..2 * r + 2]);
        if dtype == DType::Q4_1 {
            o[2..4].copy_from_slice(&g[16 + 2 * r..16 + 2 * r + 2]);
        }
        let pair = &g[head + (r / 2) * pair_bytes(dtype)..][..pair_bytes(dtype)];
        if dtype == DType::Q8_0 {
            o[qa..qa + 32].copy_from_slice(&pair[(r % 2) * 32..(r % 2) * 32 + 32]);
        } else {
            let shift = 4 * (r % 2);
            for j in 0..16 {
                let lo = (pair[j] >> shift) & 0x0F;
                let hi = (pair[16 + j] >> shift) & 0x0F;
                o[qa + j] = lo | hi << 4;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grouping_round_trips_every_row() {
        for dtype in [DType::Q8_0, DType::Q4_0, DType::Q4_1] {
            let (_, bb) = dtype.block();
            let row_bytes = 3 * bb;
            let rows: Vec<u8> = (0..ROWS * row_bytes)
                .map(|i| (i * 37 % 251) as u8)
                .collect();
            let mut grp = vec![0u8; rows.len()];
            group(dtype, row_bytes, &rows, &mut grp);
            for r in 0..ROWS {
                let mut back = vec![0u8; row_bytes];
                ungroup_row(dtype, row_bytes, &grp, r, &mut back);
                assert_eq!(
                    back,
                    rows[r * row_bytes..(r + 1) * row_bytes],
                    "{dtype:?} row {r}"
                );
            }
        }
    }

    #[test]
    fn q4_pairs_share_bytes_low_nibble_first() {
        // Row 0 all quants 1 (bytes 0x11), row 1 all quants 2 (0x22): byte k = 1 | 2 << 4.
        let bb = 20;
        let mut rows = vec![0u8; ROWS * bb];
        rows[4..20].fill(0x11);
        rows[bb + 4..bb + 20].fill(0x22);
        let mut grp = vec![0u8; rows.len()];
        group(DType::Q4_1, bb, &rows, &mut grp);
        assert!(grp[32..64].iter().all(|&b| b == 0x21)); // after the 32-byte header
    }
}
