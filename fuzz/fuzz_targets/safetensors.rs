//! safetensors reader: any bytes must open as a consistent file or fail with
//! `MODEL_LOADING_FAILED`; what opens must give every tensor's bytes (matching its shape and
//! dtype) and convert the float ones to f32.
#![no_main]

use libfuzzer_sys::fuzz_target;
use lowbit_core::formats::{SafeDtype, SafeTensors};
use lowbit_core::ErrorCode;

fuzz_target!(|data: &[u8]| {
    let st = match SafeTensors::from_bytes(data.to_vec()) {
        Ok(st) => st,
        Err(e) => {
            assert_eq!(e.code, ErrorCode::ModelLoadingFailed, "{e}");
            return;
        }
    };
    let _ = st.metadata().len();
    for t in st.tensors() {
        let bytes = st.tensor_bytes(&t.name).expect("a listed tensor has bytes");
        assert_eq!(
            bytes.len() as u64,
            t.n_elements() * t.dtype.size() as u64,
            "tensor {}",
            t.name
        );
        assert_eq!(st.tensor(&t.name), Some(t));
        match st.tensor_f32(&t.name) {
            Ok(v) => assert_eq!(v.len() as u64, t.n_elements(), "tensor {}", t.name),
            Err(e) => {
                assert_eq!(e.code, ErrorCode::UnsupportedModel, "{e}");
                assert!(!matches!(
                    t.dtype,
                    SafeDtype::F32 | SafeDtype::F16 | SafeDtype::BF16
                ));
            }
        }
    }
});
