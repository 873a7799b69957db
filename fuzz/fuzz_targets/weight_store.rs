//! Weight-store blobs (`LBWS`, what a browser keeps in Cache Storage): any bytes must read as
//! a store whose every matrix fits its shape and format, or fail with `MODEL_LOADING_FAILED`;
//! what reads must write back to the same bytes' meaning (a second read gives the same store).
#![no_main]

use libfuzzer_sys::fuzz_target;
use lowbit_core::quant::WeightStore;
use lowbit_core::ErrorCode;

fuzz_target!(|data: &[u8]| {
    match WeightStore::from_bytes(data) {
        Ok(s) => {
            let again = WeightStore::from_bytes(&s.to_bytes()).expect("a written store reads");
            assert_eq!(again.to_bytes().len(), s.to_bytes().len());
        }
        Err(e) => assert_eq!(e.code, ErrorCode::ModelLoadingFailed, "{e}"),
    }
});
