//! The bytes of a model file: memory-mapped under feature `native`, otherwise read into memory.

use crate::error::{Error, Result};
use std::ops::Deref;
use std::path::Path;

/// A whole model file's bytes, owned or memory-mapped.
pub enum FileBytes {
    /// Bytes read into memory (or handed over by the caller).
    Owned(Vec<u8>),
    /// A read-only memory map of the file.
    #[cfg(feature = "native")]
    Mapped(memmap2::Mmap),
}

impl FileBytes {
    /// Maps `path` read-only (feature `native`), falling back to reading it whole when mapping
    /// fails (empty files, file systems without mmap) or the feature is off.
    pub fn open(path: &Path) -> Result<Self> {
        Self::open_inner(path)
    }

    /// Opens `path` and hands its bytes to `parse`; errors of either step name the file.
    pub fn parse_file<T>(path: &Path, parse: impl FnOnce(FileBytes) -> Result<T>) -> Result<T> {
        parse(Self::open_inner(path)?)
            .map_err(|e| Error::new(e.code, format!("{}: {}", path.display(), e.message)))
    }

    fn open_inner(path: &Path) -> Result<Self> {
        let file_error =
            |e: std::io::Error| Error::model_loading(format!("{}: {e}", path.display()));
        #[cfg(feature = "native")]
        {
            let file = std::fs::File::open(path).map_err(file_error)?;
            // SAFETY: the map is read-only; like every mmap-based model loader we rely on the
            // file not being truncated or rewritten while it is open.
            match unsafe { memmap2::Mmap::map(&file) } {
                Ok(map) => return Ok(FileBytes::Mapped(map)),
                Err(e) => {
                    tracing::debug!("{}: mmap failed ({e}), reading instead", path.display())
                }
            }
        }
        std::fs::read(path)
            .map(FileBytes::Owned)
            .map_err(file_error)
    }
}

impl Deref for FileBytes {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            FileBytes::Owned(v) => v,
            #[cfg(feature = "native")]
            FileBytes::Mapped(m) => m,
        }
    }
}

impl std::fmt::Debug for FileBytes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match self {
            FileBytes::Owned(_) => "owned",
            #[cfg(feature = "native")]
            FileBytes::Mapped(_) => "mapped",
        };
        write!(f, "FileBytes({kind}, {} bytes)", self.len())
    }
}
