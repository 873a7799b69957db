//! Model-file readers: GGUF (v2/v3), safetensors and CTranslate2 `model.bin`, the model folders
//! built on them (Hugging Face checkpoints, CTranslate2 models), plus the GGML tensor types and
//! their dequantization.
//!
//! Every reader validates the whole header against the file size on open, so a malformed file
//! gives `MODEL_LOADING_FAILED` with a message, never a panic or a huge allocation.

pub mod ct2;
pub mod file_bytes;
pub mod ggml;
pub mod gguf;
pub mod gguf_write;
pub mod model_folder;
pub mod safetensors;

pub use ct2::{Ct2Dtype, Ct2Model, Ct2Variable};
pub use file_bytes::FileBytes;
pub use ggml::GgmlType;
pub use gguf::{GgufFile, GgufTensorInfo, GgufValue};
pub use gguf_write::GgufWriter;
pub use model_folder::{Ct2Folder, FolderFiles, HfFolder};
pub use safetensors::{SafeDtype, SafeTensorInfo, SafeTensors};
