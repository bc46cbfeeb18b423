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

use crate::kv_cache::{CachePool, KvCache};
use crate::model::{Config, KernelError as CoreError, Model, SeqInput};
use crate::sampler::{Sampler as CoreSampler, SamplingParams};
use crate::tensor::DType;
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

/// A sequence's KV cache. Used by one step at a time. When the sequence goes,
/// its cache goes back to the model's pool for the next one.
#[pyclass(module = "pycompat._kernel")]
struct Sequence {
    cache: KvCache,
    pool: Arc<CachePool>,
}

impl Drop for Sequence {
    fn drop(&mut self) {
        self.pool.give(std::mem::take(&mut self.cache));
    }
}

#[pymethods]
impl Sequence {
    fn __len__(&self) -> usize {
        self.cache.len()
    }

    /// Forgets cached positions from `length` on.
    fn truncate(&mut self, length: usize) {
        self.cache.truncate(length);
    }
}

/// A request's sampling parameters and seeded random generator.
#[pyclass(module = "pycompat._kernel")]
struct Sampler {
    inner: CoreSampler,
}

#[pymethods]
impl Sampler {
    #[new]
    #[pyo3(signature = (temperature=1.0, top_p=1.0, top_k=0, min_p=0.0, seed=0))]
    fn new(temperature: f32, top_p: f32, top_k: usize, min_p: f32, seed: u64) -> Self {
        let params = SamplingParams {
            temperature,
            top_p,
            top_k,
            min_p,
        };
        Sampler {
            inner: CoreSampler::new(params, seed),
        }
    }
}

/// Model weights and configuration, shared read-only by all steps.
#[pyclass(module = "pycompat._kernel", frozen)]
struct KernelModel {
    inner: Model,
    caches: Arc<CachePool>,
}

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
            caches: Arc::default(),
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
        Sequence {
            cache: self.caches.take(|| self.inner.new_cache()),
            pool: Arc::clone(&self.caches),
        }
    }

    /// One forward step over a batch of (sequence, new token ids).
    /// Returns per sequence the f32 logits, as bytes, of its last new token,
    /// or of every new token when `all_logits` (tokens × vocab, row-major).
    #[pyo3(signature = (batch, all_logits=false))]
    fn forward<'py>(
        &self,
        py: Python<'py>,
        mut batch: Vec<(PyRefMut<'py, Sequence>, Vec<u32>)>,
        all_logits: bool,
    ) -> PyResult<Vec<Bound<'py, PyBytes>>> {
        let mut inputs: Vec<SeqInput> = batch
            .iter_mut()
            .map(|(seq, tokens)| SeqInput {
                cache: &mut seq.cache,
                tokens,
                all_logits,
            })
            .collect();
        let logits = py.detach(|| contain_panic(|| self.inner.forward(&mut inputs)))?;
        Ok(logits.iter().map(|l| f32_bytes(py, l)).collect())
    }

    /// One forward step over a batch of (sequence, new token ids, sampler);
    /// returns the next token chosen for each sequence.
    fn step<'py>(
        &self,
        py: Python<'py>,
        mut batch: Vec<(PyRefMut<'py, Sequence>, Vec<u32>, PyRefMut<'py, Sampler>)>,
    ) -> PyResult<Vec<u32>> {
        let mut inputs = Vec::with_capacity(batch.len());
        let mut samplers = Vec::with_capacity(batch.len());
        for (seq, tokens, sampler) in batch.iter_mut() {
            inputs.push(SeqInput {
                cache: &mut seq.cache,
                tokens,
                all_logits: false,
            });
            samplers.push(&mut sampler.inner);
        }
        let chosen = py.detach(|| {
            contain_panic(|| -> Result<Vec<u32>, CoreError> {
                let mut chosen = vec![0; samplers.len()];
                self.inner.forward_each(&mut inputs, |i, logits| {
                    chosen[i] = samplers[i].sample(logits)
                })?;
                Ok(chosen)
            })
        })?;
        Ok(chosen)
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

/// Sets the number of compute threads. Must come before the first forward pass;
/// returns False if the pool has already started.
#[pyfunction]
fn set_threads(n: usize) -> bool {
    crate::pool::configure(n)
}

/// The number of compute threads (starting the pool if needed).
#[pyfunction]
fn threads() -> usize {
    crate::pool::global().threads()
}

#[pymodule]
fn _kernel(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(set_threads, m)?)?;
    m.add_function(wrap_pyfunction!(threads, m)?)?;
    m.add_function(wrap_pyfunction!(dequantize, m)?)?;
    m.add_class::<KernelModel>()?;
    m.add_class::<Sequence>()?;
    m.add_class::<Sampler>()?;
    m.add("KernelError", m.py().get_type::<KernelError>())?;
    Ok(())
}
