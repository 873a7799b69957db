//! Results as data. The measuring commands (`lowbit bench`, `perplexity`, `bench-serve`) append
//! one JSON object per measured row to a JSON-lines file (`--output FILE.jsonl`), written as
//! the row is measured. Every record names what produced it — date, commit, command, device,
//! backend, driver — beside the row's full configuration and its figures, so a published
//! figure can be traced to the run, and runs on different days and machines can be compared.

use crate::core::BackendInfo;
use crate::plan::{ModelChoice, RunPlan};
use crate::{Error, Result};
use serde_json::{Map, Value};
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

/// Short git hash of the commit this binary was built from (`unknown` when it was built
/// outside a git checkout).
pub const COMMIT: &str = env!("LOWBIT_COMMIT");

/// The engine name of lowbit's own rows; a peer's rows carry theirs (`llama.cpp`).
pub const ENGINE: &str = "lowbit";

/// A JSON-lines results file being appended to, and the fields every record of the run shares.
pub struct ResultsFile {
    path: PathBuf,
    file: File,
    command: String,
    backend: Option<BackendInfo>,
}

impl ResultsFile {
    /// Opens `path` for appending (creating it and missing parent folders) for the records of
    /// `command` (the command line, as the user would retype it).
    pub fn open(path: &Path, command: &str) -> Result<Self> {
        let fail = |e: std::io::Error| {
            Error::invalid_config(format!("cannot write results to {}: {e}", path.display()))
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(fail)?;
        }
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(fail)?;
        Ok(Self {
            path: path.to_owned(),
            file,
            command: command.to_owned(),
            backend: None,
        })
    }

    /// Sets the backend the following rows ran on (device, backend name, driver, features).
    pub fn set_backend(&mut self, info: &BackendInfo) {
        self.backend = Some(info.clone());
    }

    /// Appends one record: the shared fields, then `row`'s (an object; its fields win, so a
    /// peer's row names its own engine, device and backend), and flushes it, so a run that is
    /// stopped keeps every row it measured.
    pub fn write(&mut self, row: Value) -> Result<()> {
        let mut rec = self.header();
        match row {
            Value::Object(fields) => rec.extend(fields),
            other => {
                rec.insert("value".into(), other);
            }
        }
        let mut line = Value::Object(rec).to_string();
        line.push('\n');
        self.file
            .write_all(line.as_bytes())
            .and_then(|()| self.file.flush())
            .map_err(|e| {
                Error::invalid_config(format!(
                    "cannot write results to {}: {e}",
                    self.path.display()
                ))
            })
    }

    /// The fields every record carries.
    fn header(&self) -> Map<String, Value> {
        let mut h = Map::new();
        h.insert("date".into(), utc_now_rfc3339().into());
        h.insert("commit".into(), COMMIT.into());
        h.insert("command".into(), self.command.clone().into());
        h.insert("engine".into(), ENGINE.into());
        let b = self.backend.as_ref();
        h.insert("device".into(), b.map(|b| b.device.clone()).into());
        h.insert("backend".into(), b.map(|b| b.name.clone()).into());
        h.insert("driver".into(), b.map(|b| b.driver.clone()).into());
        h.insert(
            "features".into(),
            b.map(|b| b.features.clone()).unwrap_or_default().into(),
        );
        h
    }
}

/// Opens the results file of `--output` when one was given.
pub fn open_output(path: Option<&Path>) -> Result<Option<ResultsFile>> {
    path.map(|p| ResultsFile::open(p, &command_line()))
        .transpose()
}

/// This process's command line, arguments separated by spaces (quoted where they hold one).
pub fn command_line() -> String {
    std::env::args()
        .enumerate()
        .map(|(i, a)| {
            let a = if i == 0 {
                // The program by its name, not the path it was run from.
                Path::new(&a)
                    .file_name()
                    .map_or(a.clone(), |f| f.to_string_lossy().into_owned())
            } else {
                a
            };
            if a.is_empty() || a.contains(char::is_whitespace) {
                format!("'{a}'")
            } else {
                a
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// The plan a model was loaded with, as record fields: model file (the default resolved) or
/// synthetic shape, quantization method and per-role precisions, KV-cache policy, requested
/// backend, threads, profile and backend switches.
pub fn load_config(plan: &RunPlan) -> Map<String, Value> {
    let mut c = Map::new();
    let (path, synthetic) = match &plan.model {
        ModelChoice::Synthetic(s) => (None, Some(s.clone())),
        // The file the default resolves to, so the record names what was read.
        _ => (plan.model_path().ok().flatten(), None),
    };
    c.insert(
        "model_path".into(),
        path.map(|p| p.display().to_string()).into(),
    );
    c.insert("synthetic".into(), synthetic.into());
    let w = &plan.weights;
    c.insert("quant".into(), w.method().into());
    if let Some((group, scheme)) = w.group_scheme() {
        c.insert("group_size".into(), group.into());
        c.insert("scheme".into(), scheme.config_name().into());
    }
    c.insert("weights".into(), w.label().into());
    c.insert("attention".into(), w.attention.label().into());
    c.insert("feedforward".into(), w.feedforward.label().into());
    c.insert("embedding".into(), w.embedding.label().into());
    c.insert("lm_head".into(), w.lm_head.label().into());
    let kv = &plan.kv_cache;
    c.insert("kv_cache_bits".into(), kv.bits.into());
    if kv.bits < 16 {
        c.insert("kv_group_size".into(), kv.group_size.into());
        c.insert("kv_recent_window".into(), kv.recent_window.into());
        c.insert("kv_sink_tokens".into(), kv.sink_tokens.into());
        // As stored: per-channel keys need a window of at least a group.
        let channels = kv.format().is_ok_and(|f| f.key_channels);
        c.insert(
            "kv_key_grouping".into(),
            if channels { "channel" } else { "token" }.into(),
        );
        c.insert("kv_rotate".into(), kv.rotate.into());
    }
    c.insert("requested_backend".into(), plan.backend.name.clone().into());
    c.insert("threads".into(), plan.backend.threads.into());
    c.insert("profile".into(), plan.backend.profile.clone().into());
    c.insert(
        "backend_tuning".into(),
        format!("{:?}", plan.backend.tuning).into(),
    );
    c
}

/// The current time as an RFC 3339 UTC timestamp, e.g. `2026-12-03T10:18:00Z`.
pub fn utc_now_rfc3339() -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    rfc3339(secs)
}

/// Seconds since the Unix epoch as an RFC 3339 UTC timestamp (the proleptic Gregorian
/// calendar, by Howard Hinnant's days-to-civil algorithm).
fn rfc3339(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3_600,
        rem / 60 % 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::rfc3339;

    /// Dates checked against `date -u -d @SECS +%Y-%m-%dT%H:%M:%SZ`.
    #[test]
    fn rfc3339_matches_the_calendar() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(1_709_251_199), "2024-02-29T23:59:59Z");
        assert_eq!(rfc3339(1_796_296_680), "2026-12-03T11:18:00Z");
    }
}
