//! Weight matrices kept in their file's format (f32, f16, bf16 or a ggml block
//! format), with row access and row dequantization.
//!
//! A matrix is stored row-major: `rows` rows of `cols` elements, each row a
//! whole number of blocks. Rows are what the matrix products stream through
//! (`ops.rs`): float rows widened to f32 one at a time into a small buffer,
//! block rows met as they are by 8-bit activations. Block formats may instead
//! keep their rows eight by eight in the grouped layout (`row_groups.rs`).

use std::sync::Arc;

use crate::arena::Arena;
use crate::dtype::DType;
use crate::quant;
use crate::row_groups;

/// What keeps a tensor's bytes alive.
enum Owner {
    Vec(#[allow(dead_code)] Vec<u8>),
    Arena(#[allow(dead_code)] Arc<Arena>),
}

/// A 2-D weight matrix (a vector is a matrix of one row).
pub struct Tensor {
    pub dtype: DType,
    pub rows: usize,
    pub cols: usize,
    row_bytes: usize,
    /// Rows stored in groups of eight (`row_groups.rs`) rather than one after another.
    grouped: bool,
    // The bytes, owned by `_owner` (a Vec's or the arena's heap memory does not
    // move when they do). Kept as a pointer so row access is one add.
    ptr: *const u8,
    len: usize,
    _owner: Owner,
}

// SAFETY: the bytes are never written after construction, and their owners are Send + Sync.
unsafe impl Send for Tensor {}
unsafe impl Sync for Tensor {}

impl Tensor {
    /// Wraps raw bytes; fails with a message if their length does not match the shape.
    pub fn new(dtype: DType, rows: usize, cols: usize, data: Vec<u8>) -> Result<Tensor, String> {
        let row_bytes = dtype
            .nbytes(cols)
            .ok_or_else(|| format!("{cols} columns is not a whole number of {dtype:?} blocks"))?;
        if data.len() != row_bytes * rows {
            return Err(format!(
                "{dtype:?} [{rows}, {cols}] needs {} bytes, got {}",
                row_bytes * rows,
                data.len()
            ));
        }
        Ok(Tensor {
            dtype,
            rows,
            cols,
            row_bytes,
            grouped: false,
            ptr: data.as_ptr(),
            len: data.len(),
            _owner: Owner::Vec(data),
        })
    }

    /// `new`, then regrouped into the grouped layout where the format and row count allow.
    pub fn new_grouped(
        dtype: DType,
        rows: usize,
        cols: usize,
        mut data: Vec<u8>,
    ) -> Result<Tensor, String> {
        let row_bytes = dtype.nbytes(cols).unwrap_or(0);
        let fits = row_bytes > 0 && data.len() == row_bytes * rows;
        let grouped = fits && regroup(dtype, rows, row_bytes, &mut data);
        let mut t = Tensor::new(dtype, rows, cols, data)?; // reports any mismatch
        t.grouped = grouped;
        Ok(t)
    }

    /// A tensor whose bytes start at `start` in `arena`.
    pub fn in_arena(
        dtype: DType,
        rows: usize,
        cols: usize,
        arena: Arc<Arena>,
        start: usize,
        grouped: bool,
    ) -> Result<Tensor, String> {
        let row_bytes = dtype
            .nbytes(cols)
            .ok_or_else(|| format!("{cols} columns is not a whole number of {dtype:?} blocks"))?;
        let len = row_bytes * rows;
        if start + len > arena.len() {
            return Err(format!("{dtype:?} [{rows}, {cols}] does not fit the arena"));
        }
        Ok(Tensor {
            dtype,
            rows,
            cols,
            row_bytes,
            grouped,
            ptr: arena.ptr_at(start),
            len,
            _owner: Owner::Arena(arena),
        })
    }

    /// All of the tensor's bytes.
    #[inline(always)]
    pub fn bytes(&self) -> &[u8] {
        // SAFETY: `ptr..ptr+len` is owned by `_owner`, which lives as long as self.
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }

    pub fn row_bytes(&self) -> usize {
        self.row_bytes
    }

    pub fn is_grouped(&self) -> bool {
        self.grouped
    }

    /// Row `r` in GGUF layout: borrowed as it is, or (grouped) gathered into `buf`.
    #[inline(always)]
    pub fn row_in<'a>(&'a self, r: usize, buf: &'a mut Vec<u8>) -> &'a [u8] {
        if !self.grouped {
            return self.row(r);
        }
        let group = r / row_groups::ROWS * row_groups::ROWS * self.row_bytes;
        buf.resize(self.row_bytes, 0);
        row_groups::ungroup_row(
            self.dtype,
            self.row_bytes,
            &self.bytes()[group..group + row_groups::ROWS * self.row_bytes],
            r % row_groups::ROWS,
            buf,
        );
        buf
    }

    pub fn from_f32(rows: usize, cols: usize, values: &[f32]) -> Tensor {
        let data = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        Tensor::new(DType::F32, rows, cols, data).expect("shape matches")
    }

    /// Row `r`'s bytes; rows-one-after-another layout only (see `row_in`).
    #[inline(always)]
    pub fn row(&self, r: usize) -> &[u8] {
        debug_assert!(!self.grouped);
        &self.bytes()[r * self.row_bytes..(r + 1) * self.row_bytes]
    }

    /// Writes row `r` as f32 into `out` (length `cols`).
    #[inline(always)]
    pub fn dequantize_row(&self, r: usize, out: &mut [f32]) {
        if !self.grouped {
            return quant::dequantize(self.dtype, self.row(r), out);
        }
        GATHERED.with_borrow_mut(|buf| quant::dequantize(self.dtype, self.row_in(r, buf), out))
    }

    /// The whole tensor as f32 (for small tensors: norms, tests).
    pub fn to_f32(&self) -> Vec<f32> {
        let mut out = vec![0.0; self.rows * self.cols];
        for (r, chunk) in out.chunks_mut(self.cols.max(1)).enumerate() {
            self.dequantize_row(r, chunk);
        }
        out
    }
}

thread_local! {
    /// A row gathered out of the grouped layout (each thread keeps its own).
    static GATHERED: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Rewrites `data` (`rows` rows of `row_bytes`, GGUF layout) in the grouped
/// layout, in place, if the format has one and the rows fill whole groups.
/// Returns whether it did.
pub fn regroup(dtype: DType, rows: usize, row_bytes: usize, data: &mut [u8]) -> bool {
    if !row_groups::groupable(dtype) || rows == 0 || !rows.is_multiple_of(row_groups::ROWS) {
        return false;
    }
    let size = row_groups::ROWS * row_bytes;
    let mut plain = vec![0u8; size];
    for chunk in data.chunks_exact_mut(size) {
        plain.copy_from_slice(chunk);
        row_groups::group(dtype, row_bytes, &plain, chunk);
    }
    true
}
