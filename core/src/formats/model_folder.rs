//! Model folders: a Hugging Face checkpoint (`config.json`, `model.safetensors` or its shards,
//! `tokenizer.json`) and a CTranslate2 model (`model.bin` beside `config.json` and a vocabulary
//! or `tokenizer.json`). Each opens the files it needs and checks that they agree; the weights
//! stay memory-mapped.

use crate::error::{Error, Result};
use crate::formats::ct2::Ct2Model;
use crate::formats::safetensors::{SafeTensorInfo, SafeTensors};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// Largest `config.json` or shard index read (real ones are kilobytes; a sharded index of a
/// huge model is a few hundred).
const MAX_JSON_BYTES: u64 = 16 << 20;

/// The index of a sharded safetensors checkpoint.
pub const SHARD_INDEX: &str = "model.safetensors.index.json";

/// The side files of a model folder.
#[derive(Clone, Debug)]
pub struct FolderFiles {
    /// The folder.
    pub dir: PathBuf,
    /// `config.json`, parsed (empty when the folder has none).
    pub config: serde_json::Map<String, serde_json::Value>,
    /// `tokenizer.json`, when present.
    pub tokenizer_json: Option<PathBuf>,
    /// A plain vocabulary (`vocabulary.txt`, `vocabulary.json`, `vocab.txt`, ...), when present.
    pub vocabulary: Option<PathBuf>,
}

impl FolderFiles {
    /// Reads the side files of `dir`; `config.json` must exist when `config_required`.
    fn read(dir: &Path, config_required: bool) -> Result<Self> {
        let config_path = dir.join("config.json");
        let config = if config_path.is_file() {
            read_json_object(&config_path)?
        } else if config_required {
            return Err(Error::model_loading(format!(
                "{}: no config.json",
                dir.display()
            )));
        } else {
            serde_json::Map::new()
        };
        let existing = |name: &str| Some(dir.join(name)).filter(|p| p.is_file());
        Ok(FolderFiles {
            dir: dir.to_owned(),
            config,
            tokenizer_json: existing("tokenizer.json"),
            vocabulary: [
                "vocabulary.txt",
                "vocabulary.json",
                "shared_vocabulary.txt",
                "shared_vocabulary.json",
                "vocab.txt",
            ]
            .into_iter()
            .find_map(existing),
        })
    }

    /// The string `key` of `config.json`.
    pub fn config_str(&self, key: &str) -> Option<&str> {
        self.config.get(key).and_then(|v| v.as_str())
    }

    /// The non-negative integer `key` of `config.json`.
    pub fn config_u64(&self, key: &str) -> Option<u64> {
        self.config.get(key).and_then(|v| v.as_u64())
    }

    /// The number `key` of `config.json`.
    pub fn config_f64(&self, key: &str) -> Option<f64> {
        self.config.get(key).and_then(|v| v.as_f64())
    }
}

/// Reads a JSON object from a file of at most [`MAX_JSON_BYTES`].
fn read_json_object(path: &Path) -> Result<serde_json::Map<String, serde_json::Value>> {
    let fail = |m: String| Error::model_loading(format!("{}: {m}", path.display()));
    let len = std::fs::metadata(path)
        .map_err(|e| fail(e.to_string()))?
        .len();
    if len > MAX_JSON_BYTES {
        return Err(fail(format!(
            "{len} bytes is too large for a JSON side file"
        )));
    }
    let text = std::fs::read(path).map_err(|e| fail(e.to_string()))?;
    match serde_json::from_slice(&text) {
        Ok(serde_json::Value::Object(map)) => Ok(map),
        Ok(_) => Err(fail("is not a JSON object".into())),
        Err(e) => Err(fail(format!("is not valid JSON: {e}"))),
    }
}

/// A Hugging Face checkpoint folder: `config.json`, the weights in `model.safetensors` or in
/// shards listed by `model.safetensors.index.json`, and usually `tokenizer.json`.
pub struct HfFolder {
    files: FolderFiles,
    shards: Vec<SafeTensors>,
    /// Shard of each tensor name.
    by_name: HashMap<String, usize>,
}

impl HfFolder {
    /// Whether `dir` looks like a Hugging Face checkpoint (a `config.json` and safetensors
    /// weights); [`HfFolder::open`] checks the content.
    pub fn looks_like(dir: &Path) -> bool {
        dir.join("config.json").is_file()
            && (dir.join("model.safetensors").is_file()
                || dir.join(SHARD_INDEX).is_file()
                || !unindexed_shards(dir).is_empty())
    }

    /// Opens the checkpoint in `dir`.
    ///
    /// Errors: `MODEL_LOADING_FAILED` for a missing or malformed `config.json`, no weights, a
    /// malformed index or shard, an index naming a file outside the folder or a tensor its
    /// shard lacks, or a tensor in two shards.
    pub fn open(dir: &Path) -> Result<Self> {
        let files = FolderFiles::read(dir, true)?;
        let single = dir.join("model.safetensors");
        let index = dir.join(SHARD_INDEX);
        let (shard_names, weight_map) = if single.is_file() {
            (vec!["model.safetensors".to_owned()], None)
        } else if index.is_file() {
            let index = read_shard_index(&index)?;
            (index.shards, Some(index.weight_map))
        } else {
            let names = unindexed_shards(dir);
            if names.is_empty() {
                return Err(Error::model_loading(format!(
                    "{}: no model.safetensors, {SHARD_INDEX} or model-*-of-*.safetensors",
                    dir.display()
                )));
            }
            (names, None)
        };
        let mut shards = Vec::with_capacity(shard_names.len());
        let mut by_name = HashMap::new();
        for (i, shard_name) in shard_names.iter().enumerate() {
            let shard = SafeTensors::open(&dir.join(shard_name))?;
            for t in shard.tensors() {
                if by_name.insert(t.name.clone(), i).is_some() {
                    return Err(Error::model_loading(format!(
                        "{}: tensor {} is in two shards",
                        dir.display(),
                        t.name
                    )));
                }
            }
            shards.push(shard);
        }
        if let Some(map) = weight_map {
            for (tensor, shard_name) in map {
                let listed = shard_names.iter().position(|s| *s == shard_name);
                if listed.is_none() || by_name.get(&tensor) != listed.as_ref() {
                    return Err(Error::model_loading(format!(
                        "{}: the index puts tensor {tensor} in {shard_name}, which does not hold it",
                        dir.display()
                    )));
                }
            }
        }
        Ok(HfFolder {
            files,
            shards,
            by_name,
        })
    }

    /// The architecture: `model_type` of `config.json` (`bert`, `llama`, `whisper`, ...).
    pub fn architecture(&self) -> Option<&str> {
        self.files.config_str("model_type")
    }

    /// The side files (`config.json`, `tokenizer.json`, vocabulary).
    pub fn files(&self) -> &FolderFiles {
        &self.files
    }

    /// Every tensor of every shard (each shard's sorted by name, shards in order).
    pub fn tensors(&self) -> impl Iterator<Item = &SafeTensorInfo> {
        self.shards.iter().flat_map(|s| s.tensors())
    }

    /// The entry of tensor `name`.
    pub fn tensor(&self, name: &str) -> Option<&SafeTensorInfo> {
        self.shard(name).ok()?.tensor(name)
    }

    /// Tensor `name` converted to f32 (row-major), for F32, F16 and BF16 tensors.
    ///
    /// Errors: `MODEL_LOADING_FAILED` for a missing tensor, `UNSUPPORTED_MODEL` for other
    /// dtypes.
    pub fn tensor_f32(&self, name: &str) -> Result<Vec<f32>> {
        self.shard(name)?.tensor_f32(name)
    }

    fn shard(&self, name: &str) -> Result<&SafeTensors> {
        self.by_name
            .get(name)
            .map(|&i| &self.shards[i])
            .ok_or_else(|| {
                Error::model_loading(format!(
                    "{}: tensor {name} not found",
                    self.files.dir.display()
                ))
            })
    }
}

impl std::fmt::Debug for HfFolder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HfFolder")
            .field("dir", &self.files.dir)
            .field("shards", &self.shards.len())
            .field("tensors", &self.by_name.len())
            .finish()
    }
}

/// `model-*-of-*.safetensors` in `dir`, sorted (shards of a checkpoint without its index).
fn unindexed_shards(dir: &Path) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut names: Vec<String> = entries
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.starts_with("model-") && n.contains("-of-") && n.ends_with(".safetensors"))
        .collect();
    names.sort();
    names
}

/// A shard index's content.
struct ShardIndex {
    /// The distinct shard file names, in order of first mention.
    shards: Vec<String>,
    /// `weight_map`: tensor name and the shard file holding it.
    weight_map: Vec<(String, String)>,
}

/// Reads a shard index, checking that every shard is a plain file name in the folder.
fn read_shard_index(path: &Path) -> Result<ShardIndex> {
    let fail = |m: String| Error::model_loading(format!("{}: {m}", path.display()));
    let index = read_json_object(path)?;
    let map = index
        .get("weight_map")
        .and_then(|m| m.as_object())
        .ok_or_else(|| fail("no weight_map object".into()))?;
    let mut shards: Vec<String> = Vec::new();
    let mut weight_map = Vec::with_capacity(map.len());
    for (tensor, file) in map {
        let file = file
            .as_str()
            .ok_or_else(|| fail(format!("weight_map.{tensor} is not a file name")))?;
        // Shards live beside the index: a path elsewhere is a malformed (or hostile) index.
        let plain = Path::new(file).file_name().and_then(|n| n.to_str()) == Some(file);
        if !plain || file == ".." {
            return Err(fail(format!(
                "weight_map.{tensor} names {file:?}, not a file in the folder"
            )));
        }
        if !shards.iter().any(|s| s == file) {
            shards.push(file.to_owned());
        }
        weight_map.push((tensor.clone(), file.to_owned()));
    }
    if shards.is_empty() {
        return Err(fail("weight_map is empty".into()));
    }
    Ok(ShardIndex { shards, weight_map })
}

/// A CTranslate2 model folder: `model.bin` plus `config.json` and a vocabulary or
/// `tokenizer.json` where the converter wrote them.
pub struct Ct2Folder {
    files: FolderFiles,
    model: Ct2Model,
}

impl Ct2Folder {
    /// Opens the CTranslate2 model in `dir`.
    ///
    /// Errors: `MODEL_LOADING_FAILED` for a missing or malformed `model.bin` or a malformed
    /// `config.json`; `UNSUPPORTED_MODEL` for a binary version the reader does not know.
    pub fn open(dir: &Path) -> Result<Self> {
        let model = Ct2Model::open(&dir.join("model.bin"))?;
        let files = FolderFiles::read(dir, false)?;
        Ok(Ct2Folder { files, model })
    }

    /// The architecture named by the spec (`whisper` for `WhisperSpec`).
    pub fn architecture(&self) -> String {
        self.model.architecture()
    }

    /// The parsed `model.bin`.
    pub fn model(&self) -> &Ct2Model {
        &self.model
    }

    /// The side files (`config.json`, `tokenizer.json`, vocabulary).
    pub fn files(&self) -> &FolderFiles {
        &self.files
    }
}

impl std::fmt::Debug for Ct2Folder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ct2Folder")
            .field("dir", &self.files.dir)
            .field("model", &self.model)
            .finish()
    }
}
