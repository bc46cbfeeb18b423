//! The paged KV cache's storage: per layer, the keys and values of `n_blocks`
//! blocks of `block_size` positions, shared by every sequence. Which blocks
//! hold a sequence's positions is its block table, kept by the caller (the
//! engine's `blocks.py`); the forward pass writes each new position into its
//! block, and the attention kernels (`attention.rs`) read them back.
//!
//! Entries are f16 for models with f16 or block-quantized weights, as in
//! llama.cpp's default cache: half the memory and bandwidth, and the same
//! rounding as our peer. All-f32 models keep an f32 cache and exact attention.

use crate::quant::{f16_to_f32, f32_to_f16};

/// How a cache element's bits are laid out, for the kernels that read them raw.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Bits {
    F32,
    /// IEEE half precision, as `u16`. Attention then rounds its f32 operands
    /// (queries, softmax weights) to f16 before they meet the cache, as
    /// llama.cpp's f16 path does.
    F16,
}

/// Element type of a cache: how a value is stored and read back.
pub trait KvElem: Copy + Send + Sync + 'static {
    const BITS: Bits;
    fn from_f32(v: f32) -> Self;
    fn to_f32(self) -> f32;
}

impl KvElem for f32 {
    const BITS: Bits = Bits::F32;
    #[inline(always)]
    fn from_f32(v: f32) -> Self {
        v
    }
    #[inline(always)]
    fn to_f32(self) -> f32 {
        self
    }
}

/// An f16 value as its bit pattern.
#[derive(Clone, Copy)]
#[repr(transparent)]
pub struct F16(pub u16);

impl KvElem for F16 {
    const BITS: Bits = Bits::F16;
    #[inline(always)]
    fn from_f32(v: f32) -> Self {
        F16(f32_to_f16(v))
    }
    #[inline(always)]
    fn to_f32(self) -> f32 {
        f16_to_f32(self.0)
    }
}

/// Whether attention over a cache of `T` rounds its operands to f16.
pub fn rounds<T: KvElem>() -> bool {
    T::BITS == Bits::F16
}

/// The cache's storage: per layer, keys and values of `n_blocks` blocks of
/// `block_size` positions, each position `kv_dim` wide. Which blocks hold which
/// sequence's positions is the caller's business (a block table per sequence):
/// the forward pass writes a sequence's new positions into its blocks and
/// attends over the blocks that hold its earlier ones.
pub struct Blocks<T> {
    pub keys: Vec<Vec<T>>,
    pub values: Vec<Vec<T>>,
}

/// A zero-filled vector of `n` elements from `alloc_zeroed`: large ones come
/// straight from the OS as untouched pages, so a cache's budget costs memory
/// only as its blocks are first written.
fn zeroed<T: KvElem>(n: usize) -> Vec<T> {
    if n == 0 {
        return Vec::new();
    }
    let layout = std::alloc::Layout::array::<T>(n).expect("cache size overflows");
    // SAFETY: the layout is non-empty; all-zero bits are a valid f32 and a valid F16
    // (the only KvElem types); the vector takes ownership with the same layout.
    unsafe {
        let p = std::alloc::alloc_zeroed(layout) as *mut T;
        if p.is_null() {
            std::alloc::handle_alloc_error(layout);
        }
        Vec::from_raw_parts(p, n, n)
    }
}

impl<T: KvElem> Blocks<T> {
    fn new(n_layers: usize, per_layer: usize) -> Self {
        let layer = || (0..n_layers).map(|_| zeroed(per_layer)).collect();
        Blocks {
            keys: layer(),
            values: layer(),
        }
    }
}

pub enum Store {
    F32(Blocks<f32>),
    F16(Blocks<F16>),
}

/// A paged KV cache: `n_blocks` blocks shared by any number of sequences.
pub struct KvStore {
    pub(crate) store: Store,
    pub kv_dim: usize,
    pub n_layers: usize,
    pub block_size: usize,
    pub n_blocks: usize,
}

impl KvStore {
    pub fn new(
        n_layers: usize,
        kv_dim: usize,
        f16: bool,
        block_size: usize,
        n_blocks: usize,
    ) -> KvStore {
        assert!(block_size > 0, "a cache block holds at least one position");
        let per_layer = n_blocks
            .checked_mul(block_size * kv_dim)
            .expect("cache size overflows");
        let store = if f16 {
            Store::F16(Blocks::new(n_layers, per_layer))
        } else {
            Store::F32(Blocks::new(n_layers, per_layer))
        };
        KvStore {
            store,
            kv_dim,
            n_layers,
            block_size,
            n_blocks,
        }
    }

    /// Bytes one block takes: keys and values of every layer.
    pub fn bytes_per_block(&self) -> usize {
        let elem = match self.store {
            Store::F32(_) => 4,
            Store::F16(_) => 2,
        };
        2 * self.n_layers * self.block_size * self.kv_dim * elem
    }
}

/// Where position `pos` of a sequence with block table `blocks` lives in a
/// layer's storage: the element offset of its row.
#[inline]
pub fn row_offset(blocks: &[u32], block_size: usize, kv_dim: usize, pos: usize) -> usize {
    (blocks[pos / block_size] as usize * block_size + pos % block_size) * kv_dim
}
