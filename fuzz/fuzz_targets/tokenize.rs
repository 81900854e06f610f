//! Tokenization of arbitrary text (the tiny fixture's WordPiece tokenizer, at
//! most 64 tokens): truncation never fails nor exceeds the maximum, offsets stay
//! on character boundaries inside the text.
#![no_main]
use std::sync::OnceLock;

use distilserve::tokenize::TextTokenizer;
use libfuzzer_sys::fuzz_target;

fn tokenizer() -> &'static TextTokenizer {
    static T: OnceLock<TextTokenizer> = OnceLock::new();
    T.get_or_init(|| {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures/tiny-distilbert/tokenizer.json");
        TextTokenizer::from_file(std::path::Path::new(path), 64).expect("fixture tokenizer")
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let t = tokenizer().encode(0, text, true).expect("truncating never fails");
    assert!(t.len() <= 64);
    for &(start, end) in &t.offsets {
        assert!(start <= end && end <= text.len());
        assert!(text.is_char_boundary(start) && text.is_char_boundary(end));
    }
    let _ = tokenizer().encode(0, text, false);
});
