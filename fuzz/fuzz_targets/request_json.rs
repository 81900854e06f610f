//! Request decoding: every request type from arbitrary bytes, never a panic;
//! what decodes is a value the handlers accept.
#![no_main]
use distilserve::http::types::{ClassifyRequest, EmbedRequest, OpenAiEmbeddingRequest, TokenizeRequest};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = serde_json::from_slice::<EmbedRequest>(data);
    let _ = serde_json::from_slice::<ClassifyRequest>(data);
    let _ = serde_json::from_slice::<TokenizeRequest>(data);
    let _ = serde_json::from_slice::<OpenAiEmbeddingRequest>(data);
});
