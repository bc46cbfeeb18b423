//! The Python binding, `pycompat._kernel`. Every PyO3 item lives here.
//!
//! Only plain values cross: token ids in, token ids or f32 logits (as bytes)
//! out, weight bytes through the buffer protocol at load. Compute runs with
//! the GIL released so the server's event loop keeps serving meanwhile.

use std::sync::Arc;

use pyo3::buffer::PyBuffer;
use pyo3::create_exception;
use pyo3::exceptions::PyException;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict};

use std::sync::Mutex;

use crate::kv_cache::{KvStore, StorePool};
use crate::model::{Config, Entry, KernelError as CoreError, Model, Want};
use crate::sampler::{Sampler as CoreSampler, SamplingParams};
use crate::dtype::DType;
use crate::weights::{self, Quantize, TensorSource};

create_exception!(
    _kernel,
    KernelError,
    PyException,
    "An invalid model or request reached the kernel."
);

/// Runs a compute call so that a bug (a panic) becomes a KernelError, which the
/// server answers with a 500, rather than PyO3's PanicException, which derives
/// from BaseException and would escape the server's error handling.
fn contain_panic<T>(f: impl FnOnce() -> Result<T, CoreError>) -> Result<T, CoreError> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).unwrap_or_else(|_| {
        Err(CoreError(
            "internal error in the kernel (a bug: please report it)".into(),
        ))
    })
}

fn kernel_err(e: impl std::fmt::Display) -> PyErr {
    KernelError::new_err(e.to_string())
}

impl From<CoreError> for PyErr {
    fn from(e: CoreError) -> PyErr {
        kernel_err(e)
    }
}

fn item<'py, T: for<'a> FromPyObject<'a, 'py>>(d: &Bound<'py, PyDict>, key: &str) -> PyResult<T> {
    match d.get_item(key)? {
        Some(v) => v
            .extract::<T>()
            .map_err(|_| kernel_err(format!("config[{key:?}] has the wrong type"))),
        None => Err(kernel_err(format!("config is missing {key:?}"))),
    }
}

fn config_from_dict(d: &Bound<'_, PyDict>) -> PyResult<Config> {
    Ok(Config {
        dim: item(d, "dim")?,
        n_layers: item(d, "n_layers")?,
        n_heads: item(d, "n_heads")?,
        n_kv_heads: item(d, "n_kv_heads")?,
        head_dim: item(d, "head_dim")?,
        ffn_dim: item(d, "ffn_dim")?,
        vocab_size: item(d, "vocab_size")?,
        norm_eps: item(d, "norm_eps")?,
        rope_neox: item(d, "rope_neox")?,
        rope_inv_freq: item(d, "rope_inv_freq")?,
        max_seq_len: item(d, "max_seq_len")?,
        kv_f16: item(d, "kv_f16")?,
    })
}

/// One sequence with a cache of its own, for a whole context (tests and
/// tools; the server's engine shares a `KvCache` among all its sequences).
/// When the sequence goes, its cache goes back to the model's pool for the next one.
#[pyclass(module = "pycompat._kernel")]
struct Sequence {
    store: Option<KvStore>,
    table: Vec<u32>,
    len: usize,
    pool: Arc<StorePool>,
}

impl Drop for Sequence {
    fn drop(&mut self) {
        if let Some(store) = self.store.take() {
            self.pool.give(store);
        }
    }
}

#[pymethods]
impl Sequence {
    fn __len__(&self) -> usize {
        self.len
    }

    /// Forgets cached positions from `length` on.
    fn truncate(&mut self, length: usize) {
        self.len = self.len.min(length);
    }
}

/// A paged KV cache shared by the sequences of a server: `n_blocks` blocks of
/// `block_size` positions. Which blocks a sequence uses is the caller's choice
/// (its block table); the engine in Python allocates, shares and frees them.
#[pyclass(module = "pycompat._kernel", frozen)]
struct KvCache {
    store: Mutex<KvStore>,
    #[pyo3(get)]
    n_blocks: usize,
    #[pyo3(get)]
    block_size: usize,
    #[pyo3(get)]
    bytes_per_block: usize,
}

/// A request's sampling parameters and seeded random generator.
#[pyclass(module = "pycompat._kernel")]
struct Sampler {
    inner: CoreSampler,
}

#[pymethods]
impl Sampler {
    #[new]
    #[pyo3(signature = (temperature=1.0, top_p=1.0, top_k=0, min_p=0.0, seed=0, logit_bias=Vec::new()))]
    fn new(temperature: f32, top_p: f32, top_k: usize, min_p: f32, seed: u64, logit_bias: Vec<(u32, f32)>) -> Self {
        let params = SamplingParams {
            temperature,
            top_p,
            top_k,
            min_p,
        };
        Sampler {
            inner: CoreSampler::new(params, seed).with_bias(logit_bias),
        }
    }
}

/// Model weights and configuration, shared read-only by all steps.
#[pyclass(module = "pycompat._kernel", frozen)]
struct KernelModel {
    inner: Model,
    stores: Arc<StorePool>,
    /// The logits a batched step samples from, kept between steps.
    sampled_logits: Mutex<Vec<f32>>,
}

/// Block size of a `Sequence`'s own cache.
const SEQUENCE_BLOCK: usize = 16;

fn f32_bytes<'py>(py: Python<'py>, v: &[f32]) -> Bound<'py, PyBytes> {
    let mut raw = Vec::with_capacity(v.len() * 4);
    v.iter()
        .for_each(|x| raw.extend_from_slice(&x.to_le_bytes()));
    PyBytes::new(py, &raw)
}

#[pymethods]
impl KernelModel {
    /// `tensors`: (name, dtype name, shape, file path, byte offset, byte length)
    /// for each weight, named as in GGUF. Each is read from its file once into
    /// the kernel's own memory; `quantize` ("q8_0" or "q4_0") converts float
    /// matrices on the way in.
    #[new]
    #[pyo3(signature = (config, tensors, quantize=None))]
    fn new(
        py: Python<'_>,
        config: &Bound<'_, PyDict>,
        tensors: Vec<(String, String, Vec<usize>, String, u64, usize)>,
        quantize: Option<&str>,
    ) -> PyResult<Self> {
        let cfg = config_from_dict(config)?;
        let quantize = match quantize {
            None => None,
            Some(q) => Some(Quantize::parse(q).ok_or_else(|| {
                kernel_err(format!("cannot quantize to {q:?}: choose q8_0 or q4_0"))
            })?),
        };
        let mut sources = Vec::with_capacity(tensors.len());
        for (name, dtype_name, shape, path, offset, nbytes) in tensors {
            let dtype = DType::parse(&dtype_name)
                .ok_or_else(|| kernel_err(format!("{name}: unsupported dtype {dtype_name}")))?;
            let (rows, cols) = match shape[..] {
                [c] => (1, c),
                [r, c] => (r, c),
                _ => {
                    return Err(kernel_err(format!(
                        "{name}: shape {shape:?} is not 1-D or 2-D"
                    )))
                }
            };
            sources.push(TensorSource {
                name,
                dtype,
                rows,
                cols,
                path,
                offset,
                nbytes,
            });
        }
        let inner = py.detach(|| {
            contain_panic(|| {
                let map = weights::load(&sources, quantize).map_err(CoreError)?;
                Model::new(cfg, map)
            })
        })?;
        Ok(KernelModel {
            inner,
            stores: Arc::default(),
            sampled_logits: Mutex::default(),
        })
    }

    #[getter]
    fn vocab_size(&self) -> usize {
        self.inner.cfg.vocab_size
    }

    #[getter]
    fn max_seq_len(&self) -> usize {
        self.inner.cfg.max_seq_len
    }

    fn new_sequence(&self) -> Sequence {
        let n_blocks = self.inner.cfg.max_seq_len.div_ceil(SEQUENCE_BLOCK);
        Sequence {
            store: Some(self.stores.take(|| self.inner.new_store(SEQUENCE_BLOCK, n_blocks))),
            table: (0..n_blocks as u32).collect(),
            len: 0,
            pool: Arc::clone(&self.stores),
        }
    }

    /// A paged cache of `n_blocks` blocks of `block_size` positions. Its memory
    /// is reserved, and becomes resident as blocks are first written.
    #[pyo3(signature = (n_blocks, block_size=16))]
    fn new_cache(&self, n_blocks: usize, block_size: usize) -> PyResult<KvCache> {
        if block_size == 0 || n_blocks == 0 {
            return Err(kernel_err("a cache needs at least one block of at least one position"));
        }
        let store = self.inner.new_store(block_size, n_blocks);
        Ok(KvCache {
            bytes_per_block: store.bytes_per_block(),
            store: Mutex::new(store),
            n_blocks,
            block_size,
        })
    }

    /// One forward step over (sequence, new token ids) pairs, each sequence on
    /// its own. Returns per sequence the f32 logits, as bytes, of its last new
    /// token, or of every new token when `all_logits` (tokens × vocab, row-major).
    #[pyo3(signature = (batch, all_logits=false))]
    fn forward<'py>(
        &self,
        py: Python<'py>,
        mut batch: Vec<(PyRefMut<'py, Sequence>, Vec<u32>)>,
        all_logits: bool,
    ) -> PyResult<Vec<Bound<'py, PyBytes>>> {
        let want = if all_logits { Want::All } else { Want::Last };
        let mut out = Vec::with_capacity(batch.len());
        for (seq, tokens) in batch.iter_mut() {
            let seq: &mut Sequence = seq;
            let mut logits = Vec::new();
            py.detach(|| self.sequence_forward(seq, tokens, want, |l| logits.extend_from_slice(l)))?;
            out.push(f32_bytes(py, &logits));
        }
        Ok(out)
    }

    /// One forward step over (sequence, new token ids, sampler) triples, each
    /// sequence on its own; returns the next token chosen for each.
    fn step<'py>(
        &self,
        py: Python<'py>,
        mut batch: Vec<(PyRefMut<'py, Sequence>, Vec<u32>, PyRefMut<'py, Sampler>)>,
    ) -> PyResult<Vec<u32>> {
        let mut chosen = Vec::with_capacity(batch.len());
        for (seq, tokens, sampler) in batch.iter_mut() {
            let (seq, sampler): (&mut Sequence, _) = (seq, &mut sampler.inner);
            let mut token = 0;
            py.detach(|| self.sequence_forward(seq, tokens, Want::Last, |l| token = sampler.sample(l)))?;
            chosen.push(token);
        }
        Ok(chosen)
    }

    /// One batched step over the sequences of a shared cache: each entry is
    /// (block table, cached positions, new token ids, logits wanted). Returns
    /// per entry its logits as bytes (the last new token's, every new token's
    /// with `all_logits`), or None for an entry that wants none.
    #[pyo3(signature = (cache, batch, all_logits=false))]
    fn forward_paged<'py>(
        &self,
        py: Python<'py>,
        cache: &KvCache,
        batch: Vec<(Vec<u32>, usize, Vec<u32>, bool)>,
        all_logits: bool,
    ) -> PyResult<Vec<Option<Bound<'py, PyBytes>>>> {
        let want = |wants: bool| match (wants, all_logits) {
            (false, _) => Want::Nothing,
            (true, false) => Want::Last,
            (true, true) => Want::All,
        };
        let entries: Vec<Entry> = batch
            .iter()
            .map(|(blocks, start, tokens, wants)| Entry { blocks, start: *start, tokens, want: want(*wants) })
            .collect();
        let mut got: Vec<Vec<f32>> = vec![Vec::new(); batch.len()];
        py.detach(|| {
            let mut store = cache.store.lock().unwrap_or_else(|e| e.into_inner());
            contain_panic(|| self.inner.forward(&mut store, &entries, |i, l| got[i].extend_from_slice(l)))
        })?;
        Ok(batch
            .iter()
            .zip(&got)
            .map(|(e, l)| e.3.then(|| f32_bytes(py, l)))
            .collect())
    }

    /// The engine's step: one batched forward pass over the sequences of a
    /// shared cache, each entry (block table, cached positions, new token ids,
    /// sampler or None), then each sampler picks its sequence's next token.
    /// Returns per entry the token, or None where there is no sampler (a
    /// prompt chunk before the prompt's end).
    fn step_paged<'py>(
        &self,
        py: Python<'py>,
        cache: &KvCache,
        mut batch: Vec<(Vec<u32>, usize, Vec<u32>, Option<PyRefMut<'py, Sampler>>)>,
    ) -> PyResult<Vec<Option<u32>>> {
        let mut entries = Vec::with_capacity(batch.len());
        let mut samplers: Vec<Option<&mut CoreSampler>> = Vec::with_capacity(batch.len());
        for (blocks, start, tokens, sampler) in batch.iter_mut() {
            let want = if sampler.is_some() { Want::Last } else { Want::Nothing };
            entries.push(Entry { blocks, start: *start, tokens, want });
            samplers.push(sampler.as_mut().map(|s| &mut s.inner));
        }
        let vocab = self.inner.cfg.vocab_size;
        let chosen = py.detach(|| {
            let mut store = cache.store.lock().unwrap_or_else(|e| e.into_inner());
            let mut rows = self.sampled_logits.lock().unwrap_or_else(|e| e.into_inner());
            contain_panic(|| {
                // The logits of every entry that samples, then all samplers at once.
                rows.clear();
                let mut row_of = vec![usize::MAX; entries.len()];
                self.inner.forward(&mut store, &entries, |i, logits| {
                    row_of[i] = rows.len() / vocab;
                    rows.extend_from_slice(logits);
                })?;
                let mut jobs: Vec<(&mut CoreSampler, &[f32])> = Vec::new();
                let mut which = Vec::new();
                for (i, s) in samplers.iter_mut().enumerate() {
                    if let Some(s) = s.as_mut() {
                        jobs.push((&mut **s, &rows[row_of[i] * vocab..][..vocab]));
                        which.push(i);
                    }
                }
                let mut picked = vec![0u32; jobs.len()];
                crate::sampler::sample_all(&mut jobs, &mut picked);
                let mut chosen = vec![None; entries.len()];
                for (i, t) in which.into_iter().zip(picked) {
                    chosen[i] = Some(t);
                }
                Ok(chosen)
            })
        })?;
        Ok(chosen)
    }
}

impl KernelModel {
    /// A `Sequence`'s new tokens through the model; `take` gets its logits
    /// (once for `Want::Last`; row chunks in order for `Want::All`).
    fn sequence_forward(
        &self,
        seq: &mut Sequence,
        tokens: &[u32],
        want: Want,
        mut take: impl FnMut(&[f32]),
    ) -> Result<(), CoreError> {
        contain_panic(|| {
            let store = seq.store.as_mut().expect("a live sequence has its cache");
            let entry = Entry { blocks: &seq.table, start: seq.len, tokens, want };
            self.inner.forward(store, &[entry], |_, l| take(l))?;
            seq.len += tokens.len();
            Ok(())
        })
    }
}

/// Dequantizes `count` elements of `dtype` from `data` into f32 bytes
/// (used by `pycompat convert`, so conversion decodes exactly as inference does).
#[pyfunction]
fn dequantize<'py>(
    py: Python<'py>,
    dtype: &str,
    data: PyBuffer<u8>,
    count: usize,
) -> PyResult<Bound<'py, PyBytes>> {
    let dtype =
        DType::parse(dtype).ok_or_else(|| kernel_err(format!("unsupported dtype {dtype}")))?;
    let raw = data.to_vec(py)?;
    if dtype.nbytes(count) != Some(raw.len()) {
        return Err(kernel_err(format!(
            "{} bytes are not {count} elements of {dtype:?}",
            raw.len()
        )));
    }
    let mut out = vec![0f32; count];
    py.detach(|| crate::quant::dequantize(dtype, &raw, &mut out));
    Ok(f32_bytes(py, &out))
}

/// Sets the number of compute threads (over `PYCOMPAT_THREADS`). Must come before
/// the first forward pass; returns False if the pool has already started.
#[pyfunction]
fn set_threads(n: usize) -> bool {
    crate::pool::configure(n)
}

/// The number of compute threads (starting the pool if needed).
#[pyfunction]
fn threads() -> usize {
    crate::pool::global().threads()
}

/// Which kernels run: "avx2", or "portable" on CPUs without AVX2, FMA and F16C
/// or when `PYCOMPAT_KERNEL=portable` (read once, at the first use).
#[pyfunction]
fn simd_path() -> &'static str {
    crate::cpu::simd_path()
}

#[pymodule]
fn _kernel(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(set_threads, m)?)?;
    m.add_function(wrap_pyfunction!(threads, m)?)?;
    m.add_function(wrap_pyfunction!(simd_path, m)?)?;
    m.add_function(wrap_pyfunction!(dequantize, m)?)?;
    m.add_class::<KernelModel>()?;
    m.add_class::<Sequence>()?;
    m.add_class::<KvCache>()?;
    m.add_class::<Sampler>()?;
    m.add("KernelError", m.py().get_type::<KernelError>())?;
    Ok(())
}
