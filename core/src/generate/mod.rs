//! The generation engine: sampling, the decode loop with stop conditions, streaming text that
//! never splits a UTF-8 character, and timing/memory statistics.

mod engine;
mod sampler;
mod sequence;
mod stats;
mod text_stream;

pub use engine::{generate, FinishReason, GenerateOptions, Generation};
pub use sampler::{argmax, Sampler, SamplingParams};
pub use sequence::{Sequence, StepOutput};
pub use stats::{peak_rss_bytes, percentile, GenerationStats};
pub use text_stream::TextStream;
