//! `.npy` decoding of arbitrary bytes: an error, never a panic; what decodes re-encodes to the same array.
#![no_main]
use distilserve::npy;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok((shape, values)) = npy::decode::<f32>(data) {
        let again = npy::encode(&shape, &values);
        let (shape2, values2) = npy::decode::<f32>(&again).expect("our own encoding decodes");
        assert_eq!(shape, shape2);
        assert_eq!(values.len(), values2.len());
    }
    let _ = npy::decode::<i64>(data);
});
