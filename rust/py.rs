//! The Python binding, `pycompat._kernel`. Every PyO3 item lives here.
//!
//! Only plain values cross: token ids in, token ids or f32 logits (as bytes)
//! out, weight bytes through the buffer protocol at load. Compute runs with
//! the GIL released so the server's event loop keeps serving meanwhile.

use pyo3::buffer::PyBuffer;
use pyo3::create_exception;
use pyo3::exceptions::PyException;
use pyo3::prelude::*;
use pyo3::types::PyBytes;

use std::collections::HashMap;
use std::sync::Mutex;

use crate::kv_cache::KvStore;
use crate::logprobs::Scores;
use crate::model::bert::{Bert, Pooling};
use crate::model::{Arch, Entry, KernelError as CoreError, Model, Want};
use crate::sampler::{Penalties, Sampler as CoreSampler, SamplingParams};
use crate::dtype::DType;
use crate::grammar::{Constraint, Kind as GrammarKind, Vocabulary};
use crate::tensor::Tensor;
use crate::weights::{self, Quantize, TensorSource};

create_exception!(
    _kernel,
    KernelError,
    PyException,
    "An invalid model or request reached the kernel."
);

create_exception!(
    _kernel,
    GrammarError,
    PyException,
    "A grammar (a JSON schema, a regular expression, a Lark grammar) could not be compiled; the message says why."
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

/// `ModelConfig.arch` (a str) as the kernel's enum; an unknown one is a KernelError.
impl<'a, 'py> FromPyObject<'a, 'py> for Arch {
    type Error = PyErr;

    fn extract(obj: Borrowed<'a, 'py, PyAny>) -> PyResult<Arch> {
        Ok(Arch::parse(&obj.extract::<String>()?)?)
    }
}

/// `EncoderConfig.pooling` (a str) as the kernel's enum; an unknown one is a KernelError.
impl<'a, 'py> FromPyObject<'a, 'py> for Pooling {
    type Error = PyErr;

    fn extract(obj: Borrowed<'a, 'py, PyAny>) -> PyResult<Pooling> {
        Ok(Pooling::parse(&obj.extract::<String>()?)?)
    }
}

/// Reads a config's attributes (a ModelConfig's as `Config`, an
/// EncoderConfig's as `BertConfig`). A missing or ill-typed one is a
/// KernelError that names it and says why.
fn extract_config<'a, 'py, T: FromPyObject<'a, 'py, Error = PyErr>>(
    config: &'a Bound<'py, PyAny>,
) -> PyResult<T> {
    config.extract::<T>().map_err(|e| {
        let py = config.py();
        let why = e.cause(py).map_or(String::new(), |c| format!(": {}", c.value(py)));
        kernel_err(format!("{}{why}", e.value(py)))
    })
}

/// `quantize` as the loader's enum: None, "q8_0" or "q4_0".
fn parse_quantize(quantize: Option<&str>) -> PyResult<Option<Quantize>> {
    quantize
        .map(|q| {
            Quantize::parse(q)
                .ok_or_else(|| kernel_err(format!("cannot quantize to {q:?}: choose q8_0 or q4_0")))
        })
        .transpose()
}

/// A tensor as Python describes it: (name, dtype name, shape, file path, byte offset, byte length).
type TensorTuple = (String, String, Vec<usize>, String, u64, usize);

/// Where each tensor's bytes lie, for `weights::load`; 1-D and 2-D tensors only.
fn tensor_sources(tensors: Vec<TensorTuple>) -> PyResult<Vec<TensorSource>> {
    let mut sources = Vec::with_capacity(tensors.len());
    for (name, dtype_name, shape, path, offset, nbytes) in tensors {
        let dtype = DType::parse(&dtype_name)
            .ok_or_else(|| kernel_err(format!("{name}: unsupported dtype {dtype_name}")))?;
        let (rows, cols) = match shape[..] {
            [c] => (1, c),
            [r, c] => (r, c),
            _ => return Err(kernel_err(format!("{name}: shape {shape:?} is not 1-D or 2-D"))),
        };
        sources.push(TensorSource { name, dtype, rows, cols, path, offset, nbytes });
    }
    Ok(sources)
}

/// Reads the weights (each from its file, once, converted by `quantize`) and
/// builds a model of them with `make`, the GIL released throughout.
fn build<M: Send>(
    py: Python<'_>,
    tensors: Vec<TensorTuple>,
    quantize: Option<&str>,
    make: impl FnOnce(HashMap<String, Tensor>) -> Result<M, CoreError> + Send,
) -> PyResult<M> {
    let quantize = parse_quantize(quantize)?;
    let sources = tensor_sources(tensors)?;
    Ok(py.detach(|| {
        contain_panic(|| make(weights::load(&sources, quantize).map_err(CoreError)?))
    })?)
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

/// A sequence's sampling parameters, penalties and seeded random generator.
/// `prompt` is the sequence's prompt: the repetition penalty looks at its
/// tokens (it is not kept when that penalty is 1). `ignore_eos` is not used in
/// sampling: the engine reads it to generate past the tokenizer's stop tokens
/// (vLLM keeps it among its sampling parameters too).
///
/// `grammar`: a compiled Grammar the sequence's output must follow; the
/// sampler keeps its own position in it (each choice of a request has its own).
#[pyclass(module = "pycompat._kernel")]
struct Sampler {
    inner: CoreSampler,
    constraint: Option<Constraint>,
    #[pyo3(get)]
    ignore_eos: bool,
}

#[pymethods]
impl Sampler {
    #[new]
    #[pyo3(signature = (temperature=1.0, top_p=1.0, top_k=0, min_p=0.0, seed=0, logit_bias=Vec::new(),
                        presence_penalty=0.0, frequency_penalty=0.0, repetition_penalty=1.0, prompt=Vec::new(),
                        ignore_eos=false, grammar=None))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        temperature: f32,
        top_p: f32,
        top_k: usize,
        min_p: f32,
        seed: u64,
        logit_bias: Vec<(u32, f32)>,
        presence_penalty: f32,
        frequency_penalty: f32,
        repetition_penalty: f32,
        prompt: Vec<u32>,
        ignore_eos: bool,
        grammar: Option<PyRef<'_, Grammar>>,
    ) -> PyResult<Self> {
        if !(presence_penalty.is_finite() && frequency_penalty.is_finite()) {
            return Err(kernel_err("presence_penalty and frequency_penalty must be finite"));
        }
        if !(repetition_penalty.is_finite() && repetition_penalty > 0.0) {
            return Err(kernel_err("repetition_penalty must be a finite number above 0"));
        }
        let params = SamplingParams {
            temperature,
            top_p,
            top_k,
            min_p,
        };
        let penalties = Penalties {
            presence: presence_penalty,
            frequency: frequency_penalty,
            repetition: repetition_penalty,
        };
        Ok(Sampler {
            inner: CoreSampler::new(params, seed).with_bias(logit_bias).with_penalties(penalties, &prompt),
            constraint: grammar.map(|g| g.inner.constraint()),
            ignore_eos,
        })
    }

    /// Whether the output has completed its grammar (False without one).
    #[getter]
    fn grammar_complete(&self) -> bool {
        self.constraint.as_ref().is_some_and(|c| c.is_complete())
    }
}

/// The grammars of one model's vocabulary: `tokenizer_json` (Hugging Face's
/// tokenizer.json text, byte-level or byte-fallback BPE) padded to
/// `vocab_size` ids, and `end_tokens`, the tokens that may end an output
/// (allowed exactly where a grammar is complete; the first is the main one).
#[pyclass(module = "pycompat._kernel", frozen)]
struct Grammars {
    inner: Vocabulary,
}

#[pymethods]
impl Grammars {
    #[new]
    fn new(py: Python<'_>, tokenizer_json: &str, vocab_size: usize, end_tokens: Vec<u32>) -> PyResult<Self> {
        let inner = py
            .detach(|| contain_panic(|| Vocabulary::from_tokenizer_json(tokenizer_json, vocab_size, &end_tokens).map_err(CoreError)))?;
        Ok(Grammars { inner })
    }

    /// The grammar `source` of `kind` ("json_schema", "regex" or "lark"),
    /// compiled with the GIL released, or the one compiled before from the same
    /// source. A GrammarError says why one cannot be compiled.
    fn compile(&self, py: Python<'_>, kind: &str, source: &str) -> PyResult<Grammar> {
        let kind = GrammarKind::parse(kind).map_err(GrammarError::new_err)?;
        let compiled = py.detach(|| {
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.inner.compile(kind, source)))
                .unwrap_or_else(|_| Err("the grammar compiler failed (a bug: please report it)".into()))
        });
        Ok(Grammar { inner: compiled.map_err(GrammarError::new_err)? })
    }

    /// How many compiled grammars are kept.
    #[getter]
    fn compiled(&self) -> usize {
        self.inner.compiled_count()
    }
}

/// A compiled grammar, for `Sampler(grammar=...)`.
#[pyclass(module = "pycompat._kernel", frozen)]
struct Grammar {
    inner: std::sync::Arc<crate::grammar::Grammar>,
}

/// Model weights and configuration, shared read-only by all steps.
#[pyclass(module = "pycompat._kernel", frozen, weakref)]
struct KernelModel {
    inner: Model,
    /// The logits a step samples from or returns, kept between steps so a
    /// decode step allocates nothing.
    logits: Mutex<Vec<f32>>,
}

/// What one sequence asks of a step, read from the attributes of any object
/// that has them (the engine's `StepInput`): its block table, how many of its
/// positions are cached, its new tokens, a sampler to pick its next token
/// (None for a prompt chunk before the prompt's end), and which logits to
/// return: "none", "last" (its last new token's) or "all" (every new token's);
/// `top_logprobs`: None, or k to get the chosen token's log-probability
/// and the k most likely tokens' (see logprobs.rs); and `prompt_targets`:
/// None, or the token each new row is scored against (row j's is the token at
/// position start + j + 1: a prompt's own next token), with the same k.
#[derive(FromPyObject)]
struct StepInput<'py> {
    blocks: Vec<u32>,
    start: usize,
    tokens: Vec<u32>,
    sampler: Option<PyRefMut<'py, Sampler>>,
    logits: String,
    top_logprobs: Option<usize>,
    prompt_targets: Option<Vec<u32>>,
}

/// What a step gives back for one sequence: the token its sampler chose, the
/// logits it asked for (f32, tokens × vocab, row-major, as bytes), and with
/// `top_logprobs`, the chosen token's log-probability and the most likely
/// tokens as (id, log-probability), most likely first; with `prompt_targets`,
/// the same (log-probability, most likely tokens) for each target, in order.
/// With a grammar: `grammar_complete` once the token completes it (nothing but
/// an end token may follow), and `grammar_error` if the grammar failed (the
/// token is then an end token).
#[pyclass(module = "pycompat._kernel", frozen, get_all)]
struct StepOutput {
    token: Option<u32>,
    logits: Option<Py<PyBytes>>,
    logprob: Option<f32>,
    top_logprobs: Option<Vec<(u32, f32)>>,
    prompt_logprobs: Option<Vec<Scores>>,
    grammar_complete: bool,
    grammar_error: Option<String>,
}

fn f32_bytes<'py>(py: Python<'py>, v: &[f32]) -> Bound<'py, PyBytes> {
    let mut raw = Vec::with_capacity(v.len() * 4);
    v.iter().for_each(|x| raw.extend_from_slice(&x.to_le_bytes()));
    PyBytes::new(py, &raw)
}

#[pymethods]
impl KernelModel {
    /// `config`: a pycompat.models.ModelConfig (any object with its attributes).
    /// `tensors`: (name, dtype name, shape, file path, byte offset, byte length)
    /// for each weight, named as in GGUF. Each is read from its file once into
    /// the kernel's own memory; `quantize` ("q8_0" or "q4_0") converts float
    /// matrices on the way in.
    #[new]
    #[pyo3(signature = (config, tensors, quantize=None))]
    fn new(
        py: Python<'_>,
        config: &Bound<'_, PyAny>,
        tensors: Vec<TensorTuple>,
        quantize: Option<&str>,
    ) -> PyResult<Self> {
        let cfg = extract_config(config)?;
        let inner = build(py, tensors, quantize, |map| Model::new(cfg, map))?;
        Ok(KernelModel {
            inner,
            logits: Mutex::default(),
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

    /// The width of the model's hidden states (and of its embeddings).
    #[getter]
    fn dim(&self) -> usize {
        self.inner.cfg.dim
    }

    /// Sentence embeddings of `batch` (lists of token ids): each input's final
    /// hidden states averaged and scaled to unit length, as llama.cpp's server
    /// gives for a decoder; len(batch) × dim f32 as bytes, row-major. Runs in a
    /// cache of its own, between the engine's steps.
    fn embed<'py>(&self, py: Python<'py>, batch: Vec<Vec<u32>>) -> PyResult<Bound<'py, PyBytes>> {
        let mut out = vec![0f32; batch.len() * self.inner.cfg.dim];
        py.detach(|| contain_panic(|| self.inner.embed(&batch, &mut out)))?;
        Ok(f32_bytes(py, &out))
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

    /// One step over sequences of a shared cache: one batched forward pass
    /// (every input's new tokens through each weight matrix together), then
    /// every sampler picks its sequence's next token. The inputs are checked
    /// before any cache block changes.
    fn step<'py>(
        &self,
        py: Python<'py>,
        cache: &KvCache,
        mut inputs: Vec<StepInput<'py>>,
    ) -> PyResult<Vec<StepOutput>> {
        let mut returned = Vec::with_capacity(inputs.len());
        for input in &inputs {
            returned.push(match input.logits.as_str() {
                "none" => Want::Nothing,
                "last" => Want::Last,
                "all" => Want::All,
                other => return Err(kernel_err(format!("logits must be none, last or all, not {other:?}"))),
            });
        }
        let vocab = self.inner.cfg.vocab_size;
        let top_k: Vec<Option<usize>> = inputs.iter().map(|i| i.top_logprobs).collect();
        let scores: Vec<bool> = inputs.iter().map(|i| i.prompt_targets.is_some()).collect();
        let mut targets: Vec<Vec<u32>> = Vec::with_capacity(inputs.len());
        for input in &mut inputs {
            let t = input.prompt_targets.take().unwrap_or_default();
            if t.len() > input.tokens.len() {
                return Err(kernel_err(format!("{} prompt targets for {} new tokens", t.len(), input.tokens.len())));
            }
            if let Some(bad) = t.iter().find(|&&t| t as usize >= vocab) {
                return Err(kernel_err(format!("target token id {bad} is outside the vocabulary of {vocab}")));
            }
            targets.push(t);
        }
        // Scored entries' rows come from the model as they are made (in parts),
        // and only what was asked for, or what sampling needs, is kept.
        let mut needs_last = Vec::with_capacity(inputs.len());
        let mut entries = Vec::with_capacity(inputs.len());
        let mut samplers: Vec<Option<&mut CoreSampler>> = Vec::with_capacity(inputs.len());
        let mut constraints: Vec<Option<&mut Constraint>> = Vec::with_capacity(inputs.len());
        for ((input, &asked), t) in inputs.iter_mut().zip(&returned).zip(&targets) {
            // A sampler needs the last token's logits at least.
            let want = match (asked, input.sampler.is_some()) {
                _ if !t.is_empty() => Want::All,
                (Want::Nothing, true) => Want::Last,
                (want, _) => want,
            };
            needs_last.push(asked == Want::Last || input.sampler.is_some());
            entries.push(Entry { blocks: &input.blocks, start: input.start, tokens: &input.tokens, want });
            match input.sampler.as_mut() {
                Some(s) => {
                    let s: &mut Sampler = s;
                    samplers.push(Some(&mut s.inner));
                    constraints.push(s.constraint.as_mut());
                }
                None => {
                    samplers.push(None);
                    constraints.push(None);
                }
            }
        }
        let constrained = constraints.iter().any(Option::is_some);
        let all_rows = returned.contains(&Want::All);
        let (chosen, logits, scored, prompt_scored, grammar_state) = py.detach(|| {
            let mut store = cache.store.lock().unwrap_or_else(|e| e.into_inner());
            // Every token's logits of a long prompt take much memory: those go in
            // a buffer of their own, not in the one kept for decoding.
            let mut kept = self.logits.lock().unwrap_or_else(|e| e.into_inner());
            let mut own = Vec::new();
            let rows: &mut Vec<f32> = if all_rows { &mut own } else { &mut kept };
            contain_panic(|| {
                rows.clear();
                // Each entry's logits arrive in order, entry after entry: one span of `rows` each.
                let mut spans = vec![0..0; entries.len()];
                let mut prompt_scored: Vec<Vec<Scores>> = vec![Vec::new(); entries.len()];
                let mut delivered = vec![0usize; entries.len()]; // rows so far, for scored entries
                let deliver = |i: usize, mut logits: &[f32]| {
                    if !targets[i].is_empty() {
                        let (first, n) = (delivered[i], logits.len() / vocab);
                        delivered[i] += n;
                        let t = &targets[i][first.min(targets[i].len())..targets[i].len().min(first + n)];
                        crate::logprobs::score_rows(logits, vocab, t, top_k[i].unwrap_or(0), &mut prompt_scored[i]);
                        if returned[i] != Want::All {
                            let ends = delivered[i] == entries[i].tokens.len();
                            if !(ends && needs_last[i]) {
                                return;
                            }
                            logits = &logits[(n - 1) * vocab..];
                        }
                    }
                    if spans[i].is_empty() {
                        spans[i] = rows.len()..rows.len();
                    }
                    rows.extend_from_slice(logits);
                    spans[i].end = rows.len();
                };
                // The grammar masks do not depend on this step's logits: they are
                // computed on a thread of their own while the forward pass runs.
                std::thread::scope(|scope| {
                    let masking = constrained.then(|| {
                        scope.spawn(|| constraints.iter_mut().flatten().for_each(|c| c.compute_mask()))
                    });
                    let forward = self.inner.forward(&mut store, &entries, deliver);
                    if let Some(masking) = masking {
                        if let Err(panic) = masking.join() {
                            std::panic::resume_unwind(panic);
                        }
                    }
                    forward
                })?;
                let mut jobs: Vec<(&mut CoreSampler, &[f32], Option<&[u32]>)> = Vec::new();
                let mut which = Vec::new();
                for (i, s) in samplers.iter_mut().enumerate() {
                    if let Some(s) = s.as_mut() {
                        let allowed = constraints[i].as_ref().map(|c| c.allowed());
                        jobs.push((&mut **s, &rows[spans[i].end - vocab..spans[i].end], allowed));
                        which.push(i);
                    }
                }
                let mut picked = vec![0u32; jobs.len()];
                crate::sampler::sample_all(&mut jobs, &mut picked);
                drop(jobs);
                let mut chosen = vec![None; entries.len()];
                for (i, t) in which.into_iter().zip(picked) {
                    chosen[i] = Some(t);
                }
                // Each grammar advances by its sequence's token.
                let mut grammar_state = vec![(false, None); entries.len()];
                for (i, c) in constraints.iter_mut().enumerate() {
                    if let (Some(c), Some(token)) = (c.as_mut(), chosen[i]) {
                        let failed_before = c.error().is_some();
                        if !failed_before {
                            c.commit(token);
                        }
                        grammar_state[i] = (c.is_complete(), c.error().map(String::from));
                    }
                }
                // Log-probabilities where asked for, one sequence per unit of work.
                let asked: Vec<usize> = (0..entries.len())
                    .filter(|&i| top_k[i].is_some() && chosen[i].is_some())
                    .collect();
                let mut scored: Vec<Option<Scores>> = vec![None; entries.len()];
                let slots = crate::pool::SendPtr(scored.as_mut_ptr());
                crate::pool::global().for_each_unit(asked.len(), |j| {
                    let i = asked[j];
                    let (k, token) = (top_k[i].unwrap_or(0), chosen[i].unwrap_or(0));
                    let mut top = Vec::with_capacity(k);
                    let lp = crate::logprobs::logprobs(&rows[spans[i].end - vocab..spans[i].end], token, k, &mut top);
                    // SAFETY: each unit writes its own slot, `asked` holds distinct indices.
                    unsafe { *slots.get().add(i) = Some((lp, top)) };
                });
                // Copied out only where asked for (the engine never asks).
                let logits: Vec<Option<Vec<f32>>> = spans
                    .into_iter()
                    .zip(&returned)
                    .map(|(span, &asked)| match asked {
                        Want::Nothing => None,
                        Want::Last => Some(rows[span.end - vocab..span.end].to_vec()),
                        Want::All => Some(rows[span].to_vec()),
                        Want::Hidden => unreachable!("the binding never asks a step for hidden states"),
                    })
                    .collect();
                Ok((chosen, logits, scored, prompt_scored, grammar_state))
            })
        })?;
        Ok(chosen
            .into_iter()
            .zip(logits)
            .zip(scored)
            .zip(prompt_scored.into_iter().zip(scores))
            .zip(grammar_state)
            .map(|((((token, logits), scored), (prompt, scores)), (grammar_complete, grammar_error))| {
                let (logprob, top_logprobs) = scored.map_or((None, None), |(lp, top)| (Some(lp), Some(top)));
                let prompt_logprobs = scores.then_some(prompt);
                StepOutput {
                    token,
                    logits: logits.map(|l| f32_bytes(py, &l).unbind()),
                    logprob,
                    top_logprobs,
                    prompt_logprobs,
                    grammar_complete,
                    grammar_error,
                }
            })
            .collect())
    }
}

/// A sentence-embedding encoder (BERT, rust/model/bert.rs): token lists in,
/// one vector per list out. Read-only once built; calls from several threads
/// take turns.
#[pyclass(module = "pycompat._kernel", frozen, weakref)]
struct EncoderModel {
    inner: Bert,
}

#[pymethods]
impl EncoderModel {
    /// `config`: a pycompat.models.bert.EncoderConfig (any object with its
    /// attributes). `tensors` and `quantize`: as for KernelModel, the tensors
    /// named as rust/model/bert.rs names them.
    #[new]
    #[pyo3(signature = (config, tensors, quantize=None))]
    fn new(
        py: Python<'_>,
        config: &Bound<'_, PyAny>,
        tensors: Vec<TensorTuple>,
        quantize: Option<&str>,
    ) -> PyResult<Self> {
        let cfg = extract_config(config)?;
        let inner = build(py, tensors, quantize, |map| Bert::new(cfg, map))?;
        Ok(EncoderModel { inner })
    }

    /// The width of an embedding.
    #[getter]
    fn dim(&self) -> usize {
        self.inner.cfg.dim
    }

    /// The most tokens a sequence may have, special tokens included.
    #[getter]
    fn max_seq_len(&self) -> usize {
        self.inner.cfg.max_seq_len
    }

    #[getter]
    fn vocab_size(&self) -> usize {
        self.inner.cfg.vocab_size
    }

    /// One embedding per token list of `batch` (special tokens included, each
    /// list 1..=max_seq_len ids below vocab_size, else a KernelError naming the
    /// list): len(batch) × dim little-endian f32, row-major, as bytes. All
    /// lists go through the model together.
    fn embed<'py>(&self, py: Python<'py>, batch: Vec<Vec<i64>>) -> PyResult<Bound<'py, PyBytes>> {
        let vocab = self.inner.cfg.vocab_size;
        let mut ids = Vec::with_capacity(batch.len());
        for (i, seq) in batch.iter().enumerate() {
            // A negative id is refused here; the model checks the rest.
            let seq: Vec<u32> = seq
                .iter()
                .map(|&t| u32::try_from(t).map_err(|_| kernel_err(format!(
                    "sequence {i}: token id {t} is outside the vocabulary of {vocab}"
                ))))
                .collect::<PyResult<_>>()?;
            ids.push(seq);
        }
        let out = py.detach(|| contain_panic(|| self.inner.embed(&ids)))?;
        Ok(f32_bytes(py, &out))
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
    m.add_class::<EncoderModel>()?;
    m.add_class::<StepOutput>()?;
    m.add_class::<KvCache>()?;
    m.add_class::<Sampler>()?;
    m.add_class::<Grammars>()?;
    m.add_class::<Grammar>()?;
    m.add("KernelError", m.py().get_type::<KernelError>())?;
    m.add("GrammarError", m.py().get_type::<GrammarError>())?;
    Ok(())
}
