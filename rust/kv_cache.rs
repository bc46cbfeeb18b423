//! One sequence's attention cache: the keys and values of every token it has
//! seen, per layer. The forward pass appends to it; `truncate` rolls it back.
//!
//! Entries are f16 (as bit patterns), as in llama.cpp's default cache: half the
//! memory and bandwidth of f32, and the same rounding as our peer.

pub struct KvCache {
    /// Per layer: (position, kv_heads · head_dim), row-major.
    pub(crate) keys: Vec<Vec<u16>>,
    pub(crate) values: Vec<Vec<u16>>,
    kv_dim: usize,
    len: usize,
}

impl KvCache {
    pub fn new(n_layers: usize, kv_dim: usize) -> KvCache {
        KvCache { keys: vec![Vec::new(); n_layers], values: vec![Vec::new(); n_layers], kv_dim, len: 0 }
    }

    /// Tokens whose keys and values are cached.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Forgets every position from `len` on (no-op if it is not shorter).
    pub fn truncate(&mut self, len: usize) {
        if len < self.len {
            self.len = len;
            for layer in self.keys.iter_mut().chain(self.values.iter_mut()) {
                layer.truncate(len * self.kv_dim);
            }
        }
    }

    /// Called by the forward pass once every layer has appended `n` positions.
    pub(crate) fn advance(&mut self, n: usize) {
        self.len += n;
        debug_assert!(self.keys.iter().all(|k| k.len() == self.len * self.kv_dim));
    }
}
