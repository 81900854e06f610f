//! Head file parsing of arbitrary bytes: an error naming the file, never a panic.
#![no_main]
use distilserve::heads::logistic::LogisticHead;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Err(e) = LogisticHead::parse(data, "fuzz.json") {
        assert!(e.to_string().contains("fuzz.json"));
    }
});
