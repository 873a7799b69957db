//! CTranslate2 `model.bin` reader: any bytes must open as a consistent model or fail with
//! `MODEL_LOADING_FAILED` (or `UNSUPPORTED_MODEL` for an unknown binary version); what opens
//! must give every variable's bytes (matching its shape and dtype), resolve every alias, and
//! convert each variable to f32 or refuse it cleanly (a quantized weight without a usable
//! scale).
#![no_main]

use libfuzzer_sys::fuzz_target;
use lowbit_core::formats::Ct2Model;
use lowbit_core::ErrorCode;

fuzz_target!(|data: &[u8]| {
    let m = match Ct2Model::from_bytes(data.to_vec()) {
        Ok(m) => m,
        Err(e) => {
            assert!(
                matches!(
                    e.code,
                    ErrorCode::ModelLoadingFailed | ErrorCode::UnsupportedModel
                ),
                "{e}"
            );
            return;
        }
    };
    let _ = m.architecture();
    for v in m.variables() {
        let bytes = m.variable_bytes(&v.name).expect("a listed variable has bytes");
        assert_eq!(
            bytes.len() as u64,
            v.n_elements() * v.dtype.size() as u64,
            "variable {}",
            v.name
        );
        assert_eq!(m.variable(&v.name), Some(v));
        match m.variable_f32(&v.name) {
            Ok(values) => assert_eq!(values.len() as u64, v.n_elements(), "{}", v.name),
            Err(e) => assert_eq!(e.code, ErrorCode::ModelLoadingFailed, "{e}"),
        }
    }
    for (alias, target) in m.aliases() {
        assert_eq!(m.variable(alias), m.variable(target), "alias {alias}");
    }
});
