//! Element formats: f16/bf16 conversion, ggml block dequantization and
//! quantization, and the dot product of a block-quantized row with 8-bit
//! activations (`q8_activations.rs`).
//!
//! These are the plain, portable definitions, with no SIMD of their own. They
//! are `#[inline(always)]` so that the SIMD-enabled callers in `ops.rs` get
//! them compiled for their instruction set; the same source is the reference
//! the tests compare with.

use std::sync::LazyLock;

use crate::dtype::DType;
use half::{bf16, f16};

/// Every f16 bit pattern's f32 value. A lookup is cheaper than converting in
/// software, and exact; ggml uses the same device on CPUs without F16C.
static F16_TABLE: LazyLock<Box<[f32]>> =
    LazyLock::new(|| (0..=u16::MAX).map(|b| f16::from_bits(b).to_f32()).collect());

#[inline(always)]
pub fn f16_to_f32(bits: u16) -> f32 {
    // SAFETY: the table has an entry for every u16.
    unsafe { *F16_TABLE.get_unchecked(bits as usize) }
}

#[inline(always)]
pub fn f32_to_f16(v: f32) -> u16 {
    f16::from_f32(v).to_bits()
}

/// `v` rounded to the nearest f16 value.
#[inline(always)]
pub fn round_to_f16(v: f32) -> f32 {
    f16_to_f32(f32_to_f16(v))
}

#[inline(always)]
fn f16_at(bytes: &[u8], at: usize) -> f32 {
    f16_to_f32(u16::from_le_bytes([bytes[at], bytes[at + 1]]))
}

/// Dot product of one quantized weight row with one token's quantized activations.
/// Block sums are exact integers; only the per-block scaling is floating point.
#[inline(always)]
pub fn dot_q8(dtype: DType, row: &[u8], d: &[f32], s: &[f32], qs: &[i8]) -> f32 {
    let mut acc = 0f32;
    match dtype {
        DType::Q8_0 => {
            for (b, blk) in row.chunks_exact(34).enumerate() {
                let q = &qs[b * 32..b * 32 + 32];
                let mut isum = 0i32;
                for j in 0..32 {
                    isum += (blk[2 + j] as i8) as i32 * q[j] as i32;
                }
                acc += f16_at(blk, 0) * d[b] * isum as f32;
            }
        }
        DType::Q4_0 => {
            for (b, blk) in row.chunks_exact(18).enumerate() {
                let q = &qs[b * 32..b * 32 + 32];
                let mut isum = 0i32;
                for j in 0..16 {
                    let byte = blk[2 + j];
                    isum += ((byte & 0x0F) as i32 - 8) * q[j] as i32
                        + ((byte >> 4) as i32 - 8) * q[j + 16] as i32;
                }
                acc += f16_at(blk, 0) * d[b] * isum as f32;
            }
        }
        DType::Q4_1 => {
            let mut mins = 0f32;
            for (b, blk) in row.chunks_exact(20).enumerate() {
                let q = &qs[b * 32..b * 32 + 32];
                let mut isum = 0i32;
                for j in 0..16 {
                    let byte = blk[4 + j];
                    isum +=
                        (byte & 0x0F) as i32 * q[j] as i32 + (byte >> 4) as i32 * q[j + 16] as i32;
                }
                acc += f16_at(blk, 0) * d[b] * isum as f32;
                mins += f16_at(blk, 2) * s[b];
            }
            acc += mins;
        }
        DType::F32 | DType::F16 | DType::BF16 => unreachable!("float weights take the f32 path"),
    }
    acc
}

/// Dequantizes `src` (a whole number of blocks of `dtype`) into `out`.
#[inline(always)]
pub fn dequantize(dtype: DType, src: &[u8], out: &mut [f32]) {
    match dtype {
        DType::F32 => {
            for (o, b) in out.iter_mut().zip(src.chunks_exact(4)) {
                *o = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
            }
        }
        DType::F16 => {
            for (o, b) in out.iter_mut().zip(src.chunks_exact(2)) {
                *o = f16_to_f32(u16::from_le_bytes([b[0], b[1]]));
            }
        }
        DType::BF16 => {
            for (o, b) in out.iter_mut().zip(src.chunks_exact(2)) {
                *o = bf16::from_le_bytes([b[0], b[1]]).to_f32();
            }
        }
        DType::Q8_0 => {
            for (o, b) in out.chunks_exact_mut(32).zip(src.chunks_exact(34)) {
                let d = f16_at(b, 0);
                for (v, &q) in o.iter_mut().zip(&b[2..34]) {
                    *v = d * (q as i8) as f32;
                }
            }
        }
        DType::Q4_0 => {
            for (o, b) in out.chunks_exact_mut(32).zip(src.chunks_exact(18)) {
                let d = f16_at(b, 0);
                let (lo, hi) = o.split_at_mut(16);
                for j in 0..16 {
                    let q = b[2 + j];
                    lo[j] = d * ((q & 0x0F) as i32 - 8) as f32;
                    hi[j] = d * ((q >> 4) as i32 - 8) as f32;
                }
            }
        }
        DType::Q4_1 => {
            for (o, b) in out.chunks_exact_mut(32).zip(src.chunks_exact(20)) {
                let d = f16_at(b, 0);
                let m = f16_at(b, 2);
                let (lo, hi) = o.split_at_mut(16);
                for j in 0..16 {
                    let q = b[4 + j];
                    lo[j] = d * (q & 0x0F) as f32 + m;
                    hi[j] = d * (q >> 4) as f32 + m;
                }
            }
        }
    }
}

/// Quantizes f32 values into `dtype` (tests, `--quantize`, the GGUF writer's checks).
/// Follows ggml's reference rounding so files we write read back the same in llama.cpp.
pub fn quantize(dtype: DType, src: &[f32]) -> Vec<u8> {
    let mut out = vec![0u8; dtype.nbytes(src.len()).expect("whole blocks")];
    quantize_into(dtype, src, &mut out);
    out
}

/// `quantize` into a buffer of exactly `dtype.nbytes(src.len())` bytes.
pub fn quantize_into(dtype: DType, src: &[f32], out: &mut [u8]) {
    assert_eq!(
        Some(out.len()),
        dtype.nbytes(src.len()),
        "quantize_into: output size"
    );
    match dtype {
        DType::F32 => {
            for (o, v) in out.chunks_exact_mut(4).zip(src) {
                o.copy_from_slice(&v.to_le_bytes());
            }
        }
        DType::F16 => {
            for (o, v) in out.chunks_exact_mut(2).zip(src) {
                o.copy_from_slice(&f16::from_f32(*v).to_le_bytes());
            }
        }
        DType::BF16 => {
            for (o, v) in out.chunks_exact_mut(2).zip(src) {
                o.copy_from_slice(&bf16::from_f32(*v).to_le_bytes());
            }
        }
        DType::Q8_0 => {
            for (o, block) in out.chunks_exact_mut(34).zip(src.chunks_exact(32)) {
                let amax = block.iter().fold(0f32, |a, v| a.max(v.abs()));
                let d = amax / 127.0;
                let id = if d != 0.0 { 1.0 / d } else { 0.0 };
                o[..2].copy_from_slice(&f16::from_f32(d).to_le_bytes());
                for (q, v) in o[2..].iter_mut().zip(block) {
                    *q = ((v * id).round() as i8) as u8;
                }
            }
        }
        DType::Q4_0 => {
            for (o, block) in out.chunks_exact_mut(18).zip(src.chunks_exact(32)) {
                // The value of largest magnitude, with its sign, maps to -8.
                let max = block
                    .iter()
                    .fold(0f32, |a, &v| if v.abs() > a.abs() { v } else { a });
                let d = max / -8.0;
                let id = if d != 0.0 { 1.0 / d } else { 0.0 };
                o[..2].copy_from_slice(&f16::from_f32(d).to_le_bytes());
                let q = |v: f32| ((v * id + 8.5) as i32).clamp(0, 15) as u8;
                for j in 0..16 {
                    o[2 + j] = q(block[j]) | q(block[j + 16]) << 4;
                }
            }
        }
        DType::Q4_1 => {
            for (o, block) in out.chunks_exact_mut(20).zip(src.chunks_exact(32)) {
                let min = block.iter().fold(f32::INFINITY, |a, &v| a.min(v));
                let max = block.iter().fold(f32::NEG_INFINITY, |a, &v| a.max(v));
                let d = (max - min) / 15.0;
                let id = if d != 0.0 { 1.0 / d } else { 0.0 };
                o[..2].copy_from_slice(&f16::from_f32(d).to_le_bytes());
                o[2..4].copy_from_slice(&f16::from_f32(min).to_le_bytes());
                let q = |v: f32| (((v - min) * id + 0.5) as i32).clamp(0, 15) as u8;
                for j in 0..16 {
                    o[4 + j] = q(block[j]) | q(block[j + 16]) << 4;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roundtrip_error(dtype: DType) -> f32 {
        let src: Vec<f32> = (0..96)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) / 17.0)
            .collect();
        let bytes = quantize(dtype, &src);
        assert_eq!(bytes.len(), dtype.nbytes(src.len()).unwrap());
        let mut back = vec![0.0; src.len()];
        dequantize(dtype, &bytes, &mut back);
        src.iter()
            .zip(&back)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f32::max)
    }

    #[test]
    fn roundtrips_within_format_precision() {
        // Inputs span about ±3; the bound is half a quantization step (plus f16 scale rounding).
        assert_eq!(roundtrip_error(DType::F32), 0.0);
        assert!(roundtrip_error(DType::F16) < 2e-3);
        assert!(roundtrip_error(DType::BF16) < 2e-2);
        assert!(roundtrip_error(DType::Q8_0) < 3.0 / 127.0);
        // Q4_0 is asymmetric: the far end opposite the largest magnitude can be a whole step off.
        assert!(roundtrip_error(DType::Q4_0) < 3.0 / 8.0 + 0.01);
        assert!(roundtrip_error(DType::Q4_1) < 6.0 / 15.0 * 0.6);
    }

    #[test]
    fn q4_layout_puts_low_nibbles_first() {
        // Block of 32 with d = 1, m = 0: element j is the low nibble of byte j, j+16 the high one.
        let mut b = vec![0u8; 20];
        b[0..2].copy_from_slice(&f16::from_f32(1.0).to_le_bytes());
        b[4] = 0x21; // elements 0 and 16
        let mut out = vec![0.0; 32];
        dequantize(DType::Q4_1, &b, &mut out);
        assert_eq!((out[0], out[16], out[1]), (1.0, 2.0, 0.0));
    }
}
