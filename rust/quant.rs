//! Element formats: f16/bf16 conversion and ggml block dequantization.
//!
//! These are the plain, portable definitions. They are `#[inline(always)]` so
//! that the SIMD-enabled callers in `ops.rs` get them compiled for their
//! instruction set; the same source is the reference the tests compare with.

use crate::tensor::DType;
use half::{bf16, f16};

#[inline(always)]
fn f16_at(bytes: &[u8], at: usize) -> f32 {
    f16::from_le_bytes([bytes[at], bytes[at + 1]]).to_f32()
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
                *o = f16::from_le_bytes([b[0], b[1]]).to_f32();
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

/// Quantizes f32 values into `dtype` (used by tests and by `--quantize` later).
/// Follows ggml's reference rounding so files we write read back the same in llama.cpp.
pub fn quantize(dtype: DType, src: &[f32]) -> Vec<u8> {
    let mut out = Vec::with_capacity(dtype.nbytes(src.len()).unwrap_or(0));
    match dtype {
        DType::F32 => src.iter().for_each(|v| out.extend(v.to_le_bytes())),
        DType::F16 => src.iter().for_each(|v| out.extend(f16::from_f32(*v).to_le_bytes())),
        DType::BF16 => src.iter().for_each(|v| out.extend(bf16::from_f32(*v).to_le_bytes())),
        DType::Q8_0 => {
            for block in src.chunks_exact(32) {
                let amax = block.iter().fold(0f32, |a, v| a.max(v.abs()));
                let d = amax / 127.0;
                let id = if d != 0.0 { 1.0 / d } else { 0.0 };
                out.extend(f16::from_f32(d).to_le_bytes());
                out.extend(block.iter().map(|v| ((v * id).round() as i8) as u8));
            }
        }
        DType::Q4_0 => {
            for block in src.chunks_exact(32) {
                // The value of largest magnitude, with its sign, maps to -8.
                let max = block.iter().fold(0f32, |a, &v| if v.abs() > a.abs() { v } else { a });
                let d = max / -8.0;
                let id = if d != 0.0 { 1.0 / d } else { 0.0 };
                out.extend(f16::from_f32(d).to_le_bytes());
                let q = |v: f32| ((v * id + 8.5) as i32).clamp(0, 15) as u8;
                out.extend((0..16).map(|j| q(block[j]) | q(block[j + 16]) << 4));
            }
        }
        DType::Q4_1 => {
            for block in src.chunks_exact(32) {
                let min = block.iter().fold(f32::INFINITY, |a, &v| a.min(v));
                let max = block.iter().fold(f32::NEG_INFINITY, |a, &v| a.max(v));
                let d = (max - min) / 15.0;
                let id = if d != 0.0 { 1.0 / d } else { 0.0 };
                out.extend(f16::from_f32(d).to_le_bytes());
                out.extend(f16::from_f32(min).to_le_bytes());
                let q = |v: f32| (((v - min) * id + 0.5) as i32).clamp(0, 15) as u8;
                out.extend((0..16).map(|j| q(block[j]) | q(block[j + 16]) << 4));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roundtrip_error(dtype: DType) -> f32 {
        let src: Vec<f32> = (0..96).map(|i| ((i * 37 % 101) as f32 - 50.0) / 17.0).collect();
        let bytes = quantize(dtype, &src);
        assert_eq!(bytes.len(), dtype.nbytes(src.len()).unwrap());
        let mut back = vec![0.0; src.len()];
        dequantize(dtype, &bytes, &mut back);
        src.iter().zip(&back).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max)
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
