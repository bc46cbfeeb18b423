//! A model's tensors by name, as the weight loader hands them over: each
//! architecture's layout (llama.rs, bert.rs) takes the ones it has, shapes checked.

use std::collections::HashMap;

use super::KernelError;
use crate::tensor::Tensor;

/// The model's tensors by name, taken one by one with their shapes checked.
pub(super) struct Tensors(pub HashMap<String, Tensor>);

impl Tensors {
    pub fn take(&mut self, name: &str, rows: usize, cols: usize) -> Result<Tensor, KernelError> {
        let t = self
            .0
            .remove(name)
            .ok_or_else(|| KernelError(format!("missing tensor {name}")))?;
        if (t.rows, t.cols) != (rows, cols) {
            return Err(KernelError(format!(
                "tensor {name} is [{}, {}], expected [{rows}, {cols}]",
                t.rows, t.cols
            )));
        }
        Ok(t)
    }

    /// A vector (a norm's weights, a bias) as f32.
    pub fn vector(&mut self, name: &str, len: usize) -> Result<Vec<f32>, KernelError> {
        Ok(self.take(name, 1, len)?.to_f32())
    }

    /// A vector the architecture has when `has` (then it is required), or None.
    pub fn optional_vector(
        &mut self,
        has: bool,
        name: &str,
        len: usize,
    ) -> Result<Option<Vec<f32>>, KernelError> {
        has.then(|| self.vector(name, len)).transpose()
    }
}
