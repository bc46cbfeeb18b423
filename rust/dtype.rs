//! The element formats a weight tensor can be stored in.

/// Element formats. The block geometry matches ggml's so GGUF bytes are used as they are.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DType {
    F32,
    F16,
    BF16,
    /// 32 values: f16 scale `d`, 32 × i8. value = d·q
    Q8_0,
    /// 32 values: f16 scale `d`, 16 bytes of nibbles. value = d·(q − 8)
    Q4_0,
    /// 32 values: f16 scale `d`, f16 min `m`, 16 bytes of nibbles. value = d·q + m
    Q4_1,
}

impl DType {
    /// The format named as in GGUF and safetensors headers ("F16", "Q8_0", ...).
    pub fn parse(name: &str) -> Option<DType> {
        Some(match name {
            "F32" => DType::F32,
            "F16" => DType::F16,
            "BF16" => DType::BF16,
            "Q8_0" => DType::Q8_0,
            "Q4_0" => DType::Q4_0,
            "Q4_1" => DType::Q4_1,
            _ => return None,
        })
    }

    /// (elements per block, bytes per block)
    pub fn block(self) -> (usize, usize) {
        match self {
            DType::F32 => (1, 4),
            DType::F16 | DType::BF16 => (1, 2),
            DType::Q8_0 => (32, 34),
            DType::Q4_0 => (32, 18),
            DType::Q4_1 => (32, 20),
        }
    }

    /// Block formats, whose matrix products run on 8-bit quantized activations.
    pub fn is_quantized(self) -> bool {
        matches!(self, DType::Q8_0 | DType::Q4_0 | DType::Q4_1)
    }

    /// Bytes taken by `n` elements, or None if `n` is not a whole number of blocks.
    pub fn nbytes(self, n: usize) -> Option<usize> {
        let (elems, bytes) = self.block();
        n.is_multiple_of(elems).then(|| n / elems * bytes)
    }
}
