//! Server request readers: the input is one WebSocket text message and, the same bytes, the
//! body of `POST /v1/completions` and `/v1/chat/completions`. Each must give a request within
//! the served limits or an `ApiError` with a stable code, never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use lowbit::server::{
    parse_client_message, parse_completion_request, ClientMessage, GenerationRequest, ServedModel,
};

const SERVED: ServedModel<'static> = ServedModel {
    model_id: "SmolLM2-135M-Instruct.Q4_1",
    model_name: "SmolLM2 135M Instruct",
    quantization: "int4",
    max_new_tokens: 512,
};
const MAX_FRAME_BYTES: usize = 16 * 1024;
const CODES: [&str; 3] = ["invalid_request", "model_not_found", "payload_too_large"];

fn check(req: &GenerationRequest) {
    let o = &req.opts;
    assert!(
        (1..=SERVED.max_new_tokens).contains(&o.max_tokens),
        "{req:?}"
    );
    assert!((0.0..=2.0).contains(&o.sampling.temperature), "{req:?}");
    assert!(o.sampling.top_p > 0.0 && o.sampling.top_p <= 1.0, "{req:?}");
}

fuzz_target!(|data: &[u8]| {
    match parse_client_message(data, &SERVED, MAX_FRAME_BYTES) {
        Ok(ClientMessage::Generate(req)) => check(&req),
        Ok(ClientMessage::Stop) => {}
        Err(e) => assert!(CODES.contains(&e.code), "{e:?}"),
    }
    for chat in [false, true] {
        match parse_completion_request(data, chat, &SERVED) {
            Ok(req) => check(&req),
            Err(e) => assert!(CODES.contains(&e.code), "{e:?}"),
        }
    }
});
