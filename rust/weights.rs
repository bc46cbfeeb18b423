//! Getting weights into the kernel's memory: each tensor is read from its file
//! once, straight into one allocation that holds them all, and kept there in
//! its compact format (optionally quantized on the way in: `--quantize`), block
//! formats regrouped eight rows at a time for the SIMD kernels (`row_groups.rs`).
//!
//! Why not use the file mapping itself: a mapping is paged in 4 KiB pages, and
//! decode streams every weight once per token, so TLB misses add up. The arena
//! is anonymous memory that Linux may back with 2 MiB pages. The file's bytes
//! pass through the page cache (not this process's resident set), so the
//! weights are held once.

use std::collections::HashMap;
use std::fs::File;
use std::sync::Arc;

use crate::arena::Arena;
use crate::cpu;
use crate::dtype::DType;
use crate::quant;
use crate::tensor::{regroup, Tensor};

/// Where a tensor's bytes are, and what it is.
pub struct TensorSource {
    pub name: String,
    pub dtype: DType,
    pub rows: usize,
    pub cols: usize,
    pub path: String,
    pub offset: u64,
    pub nbytes: usize,
}

/// Block format to quantize float weights into while loading.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Quantize {
    Q8_0,
    Q4_0,
}

impl Quantize {
    pub fn parse(name: &str) -> Option<Quantize> {
        match name.to_ascii_lowercase().as_str() {
            "q8_0" => Some(Quantize::Q8_0),
            "q4_0" => Some(Quantize::Q4_0),
            _ => None,
        }
    }

    /// The format `src` is stored in: matrices of float weights are quantized
    /// (vectors, such as norms, stay as they are). With q4_0 the embedding and
    /// LM head take q8_0: at 4 bits they cost the most quality for their size,
    /// and llama.cpp's quantizer also keeps the output layer wider.
    fn target(self, src: &TensorSource) -> DType {
        let float = matches!(src.dtype, DType::F32 | DType::F16 | DType::BF16);
        if !float || src.rows < 2 || !src.cols.is_multiple_of(32) {
            return src.dtype;
        }
        match self {
            Quantize::Q8_0 => DType::Q8_0,
            Quantize::Q4_0
                if matches!(src.name.as_str(), "token_embd.weight" | "output.weight") =>
            {
                DType::Q8_0
            }
            Quantize::Q4_0 => DType::Q4_0,
        }
    }
}

/// Tensors start at multiples of this in the arena (a cache line; SIMD loads
/// then never straddle one at a row's start).
const ALIGN: usize = 64;

/// Reads every tensor into one arena, quantizing float matrices if asked.
pub fn load(
    sources: &[TensorSource],
    quantize: Option<Quantize>,
) -> Result<HashMap<String, Tensor>, String> {
    let mut layout = Vec::with_capacity(sources.len());
    let mut total = 0usize;
    for s in sources {
        let src_row = s.dtype.nbytes(s.cols).ok_or_else(|| {
            format!(
                "{}: {} columns is not a whole number of {:?} blocks",
                s.name, s.cols, s.dtype
            )
        })?;
        if src_row.checked_mul(s.rows) != Some(s.nbytes) {
            return Err(format!(
                "{}: {:?} [{}, {}] needs {} bytes, the file gives {}",
                s.name,
                s.dtype,
                s.rows,
                s.cols,
                src_row * s.rows,
                s.nbytes
            ));
        }
        let dtype = quantize.map_or(s.dtype, |q| q.target(s));
        let bytes = dtype.nbytes(s.cols).expect("target formats divide the row") * s.rows;
        total = total.next_multiple_of(ALIGN);
        layout.push((total, dtype, bytes));
        total += bytes;
    }
    // Filled while owned here, then shared by the tensors.
    let mut arena = Arena::new(total)?;
    let mut files: HashMap<&str, File> = HashMap::new();
    let mut grouped = Vec::with_capacity(sources.len());
    for (s, &(start, dtype, bytes)) in sources.iter().zip(&layout) {
        if !files.contains_key(s.path.as_str()) {
            let f = File::open(&s.path).map_err(|e| format!("{}: {e}", s.path))?;
            files.insert(&s.path, f);
        }
        let file = &files[s.path.as_str()];
        let dest = arena.slice_mut(start, bytes);
        let read_err =
            |e: std::io::Error| format!("{}: reading {} from {}: {e}", s.name, s.path, s.offset);
        if dtype == s.dtype {
            read_at(file, dest, s.offset).map_err(read_err)?;
        } else {
            convert(file, s, dtype, dest).map_err(read_err)?;
        }
        // The grouped layout is what the SIMD kernels read fastest; the portable
        // path reads rows one after another.
        grouped.push(
            cpu::grouped_kernels_available()
                && regroup(dtype, s.rows, dtype.nbytes(s.cols).unwrap(), dest),
        );
    }
    let arena = Arc::new(arena);
    let mut tensors = HashMap::with_capacity(sources.len());
    for ((s, &(start, dtype, _)), &grouped) in sources.iter().zip(&layout).zip(&grouped) {
        let tensor = Tensor::in_arena(dtype, s.rows, s.cols, Arc::clone(&arena), start, grouped)
            .map_err(|e| format!("{}: {e}", s.name))?;
        tensors.insert(s.name.clone(), tensor);
    }
    Ok(tensors)
}

/// Reads float rows a few at a time and writes them quantized into `dest`,
/// so no more than a small buffer of f32 ever exists.
fn convert(file: &File, s: &TensorSource, dtype: DType, dest: &mut [u8]) -> std::io::Result<()> {
    let src_row = s.dtype.nbytes(s.cols).unwrap();
    let dst_row = dtype.nbytes(s.cols).unwrap();
    let rows_per_chunk = ((1 << 20) / src_row.max(1)).max(1);
    let mut raw = vec![0u8; rows_per_chunk * src_row];
    let mut row = vec![0f32; s.cols];
    for first in (0..s.rows).step_by(rows_per_chunk) {
        let n = rows_per_chunk.min(s.rows - first);
        let chunk = &mut raw[..n * src_row];
        read_at(file, chunk, s.offset + (first * src_row) as u64)?;
        for (i, src) in chunk.chunks_exact(src_row).enumerate() {
            quant::dequantize(s.dtype, src, &mut row);
            let at = (first + i) * dst_row;
            quant::quantize_into(dtype, &row, &mut dest[at..at + dst_row]);
        }
    }
    Ok(())
}

#[cfg(unix)]
fn read_at(file: &File, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
    use std::os::unix::fs::FileExt;
    file.read_exact_at(buf, offset)
}

#[cfg(not(unix))]
fn read_at(mut file: &File, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
    use std::io::{Read, Seek, SeekFrom};
    file.seek(SeekFrom::Start(offset))?;
    file.read_exact(buf)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn write_temp(bytes: &[u8], tag: &str) -> String {
        let path =
            std::env::temp_dir().join(format!("pycompat-weights-{}-{tag}", std::process::id()));
        File::create(&path).unwrap().write_all(bytes).unwrap();
        path.to_string_lossy().into_owned()
    }

    fn source(
        name: &str,
        dtype: DType,
        rows: usize,
        cols: usize,
        path: &str,
        offset: u64,
    ) -> TensorSource {
        TensorSource {
            name: name.into(),
            dtype,
            rows,
            cols,
            path: path.into(),
            offset,
            nbytes: dtype.nbytes(cols).unwrap() * rows,
        }
    }

    #[test]
    fn reads_tensors_at_their_offsets_and_quantizes_float_matrices() {
        let values: Vec<f32> = (0..4 * 64)
            .map(|i| ((i * 7 % 23) as f32 - 11.0) / 5.0)
            .collect();
        let f16 = quant::quantize(DType::F16, &values);
        let norm = quant::quantize(DType::F32, &[1.0, 2.0, 3.0]);
        let mut file = vec![0xAAu8; 5]; // data need not start aligned
        file.extend(&f16);
        file.extend(&norm);
        let path = write_temp(&file, "a");
        let sources = [
            source("blk.0.attn_q.weight", DType::F16, 4, 64, &path, 5),
            source(
                "blk.0.attn_norm.weight",
                DType::F32,
                1,
                3,
                &path,
                5 + f16.len() as u64,
            ),
        ];

        let dq = |dtype: DType, bytes: &[u8]| {
            let mut out = vec![0f32; values.len()];
            quant::dequantize(dtype, bytes, &mut out);
            out
        };
        let plain = load(&sources, None).unwrap();
        assert_eq!(plain["blk.0.attn_q.weight"].to_f32(), dq(DType::F16, &f16));
        assert_eq!(
            plain["blk.0.attn_norm.weight"].to_f32(),
            vec![1.0, 2.0, 3.0]
        );

        for (q, dtype) in [(Quantize::Q8_0, DType::Q8_0), (Quantize::Q4_0, DType::Q4_0)] {
            let t = load(&sources, Some(q)).unwrap();
            let w = &t["blk.0.attn_q.weight"];
            assert_eq!(w.dtype, dtype);
            // Same bytes as quantizing the f16-rounded values in one go.
            let expected = quant::quantize(dtype, &dq(DType::F16, &f16));
            assert_eq!(w.to_f32(), dq(dtype, &expected));
            assert_eq!(
                t["blk.0.attn_norm.weight"].dtype,
                DType::F32,
                "vectors stay as they are"
            );
        }
        std::fs::remove_file(path).unwrap();
    }

    #[test]
    fn q4_0_keeps_the_embedding_at_q8_0() {
        let values = vec![0.5f32; 2 * 32];
        let path = write_temp(&quant::quantize(DType::F32, &values), "b");
        let t = load(
            &[source("token_embd.weight", DType::F32, 2, 32, &path, 0)],
            Some(Quantize::Q4_0),
        )
        .unwrap();
        assert_eq!(t["token_embd.weight"].dtype, DType::Q8_0);
        std::fs::remove_file(path).unwrap();
    }

    #[test]
    fn short_files_and_wrong_sizes_are_errors() {
        let path = write_temp(&[0u8; 10], "c");
        let err = load(&[source("x", DType::F32, 2, 4, &path, 0)], None)
            .err()
            .unwrap();
        assert!(err.contains("reading"), "{err}");
        let mut bad = source("y", DType::F32, 2, 4, &path, 0);
        bad.nbytes = 7;
        assert!(load(&[bad], None).err().unwrap().contains("needs 32 bytes"));
        std::fs::remove_file(path).unwrap();
    }
}
