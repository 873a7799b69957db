//! [`ModelSource`]: an opened model (a GGUF file, a Hugging Face checkpoint folder or a
//! CTranslate2 model folder), its format recognised from content, before any adapter reads it.

use crate::error::{Error, Result};
use crate::formats::ct2::Ct2Model;
use crate::formats::gguf::GgufFile;
use crate::formats::model_folder::{Ct2Folder, HfFolder};
use std::path::Path;
use std::sync::Arc;

/// An opened model, before any adapter has read its weights.
pub enum ModelSource {
    /// A GGUF file (metadata, tokenizer and tensors in one file).
    Gguf(Arc<GgufFile>),
    /// A Hugging Face checkpoint folder (`config.json`, safetensors weights, `tokenizer.json`).
    HuggingFace(Arc<HfFolder>),
    /// A CTranslate2 model folder (`model.bin`, `config.json`, vocabulary or `tokenizer.json`).
    Ct2(Arc<Ct2Folder>),
}

impl ModelSource {
    /// Opens a model, recognising the format from content: a GGUF file, a Hugging Face
    /// checkpoint folder or a CTranslate2 model folder. A folder's weights file (or, for a
    /// Hugging Face checkpoint, its `config.json` or shard index) opens its folder.
    ///
    /// Errors: `MODEL_LOADING_FAILED` for a missing, unreadable or malformed model,
    /// `UNSUPPORTED_MODEL` for content of no known format.
    pub fn open(path: &Path) -> Result<Self> {
        let meta = std::fs::metadata(path)
            .map_err(|e| Error::model_loading(format!("{}: {e}", path.display())))?;
        if meta.is_dir() {
            return Self::open_folder(path);
        }
        let head = read_head(path)?;
        let dir = path
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        // A `.gguf` name without the magic is a damaged GGUF file: its reader says what is wrong.
        let gguf_name = path
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("gguf"));
        if head.starts_with(b"GGUF") || gguf_name {
            return Ok(ModelSource::Gguf(Arc::new(GgufFile::open(path)?)));
        }
        if Ct2Model::looks_like(&head) {
            if path.file_name() != Some("model.bin".as_ref()) {
                return Err(Error::unsupported(format!(
                    "{}: a CTranslate2 model is read as `model.bin` in its folder",
                    path.display()
                )));
            }
            return Ok(ModelSource::Ct2(Arc::new(Ct2Folder::open(dir)?)));
        }
        let safetensors = head.len() > 8 && head[8] == b'{';
        let side_file = path
            .file_name()
            .is_some_and(|n| n == "config.json" || n == crate::formats::model_folder::SHARD_INDEX);
        if (safetensors || side_file) && HfFolder::looks_like(dir) {
            return Ok(ModelSource::HuggingFace(Arc::new(HfFolder::open(dir)?)));
        }
        Err(Error::unsupported(format!(
            "{}: not a GGUF file, nor the weights of a Hugging Face checkpoint (config.json \
             beside model.safetensors) or of a CTranslate2 model (model.bin)",
            path.display()
        )))
    }

    fn open_folder(dir: &Path) -> Result<Self> {
        let model_bin = dir.join("model.bin");
        if model_bin.is_file() && Ct2Model::looks_like(&read_head(&model_bin)?) {
            return Ok(ModelSource::Ct2(Arc::new(Ct2Folder::open(dir)?)));
        }
        if HfFolder::looks_like(dir) {
            return Ok(ModelSource::HuggingFace(Arc::new(HfFolder::open(dir)?)));
        }
        Err(Error::unsupported(format!(
            "{}: the folder holds neither a Hugging Face checkpoint (config.json and \
             model.safetensors or its shards) nor a CTranslate2 model (model.bin)",
            dir.display()
        )))
    }

    /// The architecture name, if the model states one: `general.architecture` for GGUF,
    /// `model_type` of `config.json` for a Hugging Face checkpoint, the spec name for
    /// CTranslate2 (`WhisperSpec` → `whisper`).
    pub fn architecture(&self) -> Option<String> {
        match self {
            ModelSource::Gguf(g) => g.get_str("general.architecture").map(str::to_owned),
            ModelSource::HuggingFace(h) => h.architecture().map(str::to_owned),
            ModelSource::Ct2(c) => Some(c.architecture()),
        }
    }

    /// The format's name, for messages (`GGUF`, `Hugging Face safetensors`, `CTranslate2`).
    pub fn format_name(&self) -> &'static str {
        match self {
            ModelSource::Gguf(_) => "GGUF",
            ModelSource::HuggingFace(_) => "Hugging Face safetensors",
            ModelSource::Ct2(_) => "CTranslate2",
        }
    }
}

/// The first 16 bytes of a file (fewer if it is shorter): enough to recognise its format.
fn read_head(path: &Path) -> Result<Vec<u8>> {
    use std::io::Read;
    let fail = |e: std::io::Error| Error::model_loading(format!("{}: {e}", path.display()));
    let mut head = Vec::with_capacity(16);
    std::fs::File::open(path)
        .map_err(fail)?
        .take(16)
        .read_to_end(&mut head)
        .map_err(fail)?;
    Ok(head)
}
