//! The seam between batching and the model runtime: anything that turns a
//! batch of tokenized texts into each text's rows. ONNX Runtime sessions
//! (`model::OrtSession`) implement it; so does the service's queue for batch
//! jobs (`inference::QueuedForwardPass`), and tests use fakes without ONNX Runtime.

use crate::pooling::Rows;
use crate::tokenize::Tokenized;

pub trait ForwardPass: Send {
    /// One model call over `batch`: per sequence, in order, its real rows only.
    fn encode(&mut self, batch: &[&Tokenized]) -> anyhow::Result<Vec<Rows>>;
}

impl<E: ForwardPass + ?Sized> ForwardPass for &mut E {
    fn encode(&mut self, batch: &[&Tokenized]) -> anyhow::Result<Vec<Rows>> {
        (**self).encode(batch)
    }
}

impl<E: ForwardPass + ?Sized> ForwardPass for Box<E> {
    fn encode(&mut self, batch: &[&Tokenized]) -> anyhow::Result<Vec<Rows>> {
        (**self).encode(batch)
    }
}
