//! Request and response bodies of every route, with their OpenAPI schemas,
//! a file per family; everything is re-exported here.

mod fields;
mod heads;
mod native;
mod openai;
mod tei;

pub use fields::{EmbeddingInputs, Inputs};
pub use heads::*;
pub use native::*;
pub use openai::*;
pub use tei::*;
