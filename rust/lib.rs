//! pycompat's compute kernel: a Llama-family forward pass over weights kept in
//! their file formats, token sampling, and the grammars that constrain it.
//!
//! The core (everything but `py`) is plain Rust and tests with `cargo test`.
//! `py` holds every PyO3 item; it is built only with the `python` feature.

pub mod arena;
pub mod attention;
pub mod cpu;
pub mod dtype;
pub mod grammar;
pub mod kv_cache;
pub mod logprobs;
pub mod model;
pub mod ops;
pub mod pool;
pub mod q8_activations;
pub mod quant;
pub mod row_groups;
pub mod sampler;
pub mod simd_avx2;
pub mod tensor;
pub mod weights;

#[cfg(feature = "python")]
mod py;
