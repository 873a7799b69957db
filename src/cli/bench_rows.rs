//! The rows `lowbit bench` measures and where they go as they are measured: the printed
//! markdown table and the `--output` JSON-lines records.

use super::bench::BenchArgs;
use lowbit::core::generate::peak_rss_bytes;
use lowbit::plan::RunPlan;
use lowbit::results::{self, ResultsFile};
use lowbit::Result;
use serde::Serialize;
use serde_json::{json, Map, Value};

/// One row of the table.
#[derive(Serialize)]
pub(super) struct Row {
    pub(super) engine: String,
    pub(super) model: String,
    pub(super) precision: String,
    pub(super) bits_per_weight: f64,
    pub(super) size_mb: f64,
    pub(super) threads: usize,
    pub(super) test: String,
    pub(super) tokens_per_s: f64,
    pub(super) stddev: f64,
    /// Bytes of weights read per decoded token / decode time: effective bandwidth.
    pub(super) weight_gb_per_s: Option<f64>,
    /// The peer's own record of the row (llama-bench's JSON object), kept for `--output`.
    #[serde(skip)]
    pub(super) peer: Option<Value>,
}

/// Where measured rows go as they are measured: the printed table and the `--output` file.
pub(super) struct RowSink {
    /// Print the markdown table (not with `--json`).
    pub(super) table: bool,
    pub(super) header_printed: bool,
    pub(super) out: Option<ResultsFile>,
    /// The configuration of the model being measured (`--output` records).
    pub(super) config: Map<String, Value>,
}

impl RowSink {
    /// Prints `r` (the header first) and appends its record.
    pub(super) fn emit(&mut self, r: &Row) -> Result<()> {
        if self.table {
            if !self.header_printed {
                println!(
                    "| engine | model | precision | bits/weight | size MB | threads | test | tokens/s | weight GB/s |"
                );
                println!("|---|---|---|---|---|---|---|---|---|");
                self.header_printed = true;
            }
            print_row(r);
        }
        let Some(out) = &mut self.out else {
            return Ok(());
        };
        let mut config = match &r.peer {
            Some(_) => Map::new(),
            None => self.config.clone(),
        };
        config.insert("model".into(), r.model.clone().into());
        config.insert("precision".into(), r.precision.clone().into());
        config.insert("bits_per_weight".into(), r.bits_per_weight.into());
        config.insert("size_mb".into(), r.size_mb.into());
        config.insert("threads".into(), r.threads.into());
        let mut rec = json!({
            "engine": r.engine,
            "test": r.test,
            "tokens_per_s": r.tokens_per_s,
            "stddev": r.stddev,
            "weight_gb_per_s": r.weight_gb_per_s,
        });
        if let Some(p) = &r.peer {
            // The peer ran on its own backend: its record says which, by its own fields.
            let device = [&p["gpu_info"], &p["cpu_info"]]
                .into_iter()
                .filter_map(|v| v.as_str())
                .find(|s| !s.is_empty())
                .map(str::to_owned);
            for k in [
                "model_filename",
                "n_prompt",
                "n_gen",
                "n_batch",
                "n_ubatch",
                "n_gpu_layers",
                "type_k",
                "type_v",
                "flash_attn",
            ] {
                if let Some(v) = p.get(k) {
                    config.insert(k.into(), v.clone());
                }
            }
            rec["device"] = device.into();
            rec["backend"] = p["backends"].clone();
            rec["driver"] = Value::Null;
            rec["features"] = json!([]);
            rec["engine_commit"] = p["build_commit"].clone();
            rec["peer_record"] = p.clone();
        } else {
            rec["peak_rss_bytes"] = peak_rss_bytes().into();
        }
        rec["config"] = Value::Object(config);
        out.write(rec)
    }

    /// Appends a record that is not a table row (copy bandwidth, start-up).
    pub(super) fn record(&mut self, test: &str, figures: Value) -> Result<()> {
        let Some(out) = &mut self.out else {
            return Ok(());
        };
        let mut rec = json!({ "test": test, "config": self.config });
        if let (Value::Object(r), Value::Object(f)) = (&mut rec, figures) {
            r.extend(f);
        }
        out.write(rec)
    }
}

/// One row of the results table (markdown, as llama-bench prints).
fn print_row(r: &Row) {
    println!(
        "| {} | {} | {} | {:.2} | {:.1} | {} | {} | {:.2} ± {:.2} | {} |",
        r.engine,
        r.model,
        r.precision,
        r.bits_per_weight,
        r.size_mb,
        r.threads,
        r.test,
        r.tokens_per_s,
        r.stddev,
        r.weight_gb_per_s
            .map(|b| format!("{b:.2}"))
            .unwrap_or_else(|| "-".into())
    );
}

/// The configuration of one model's rows for `--output`: how it was loaded and the tests'
/// settings.
pub(super) fn run_config(plan: &RunPlan, a: &BenchArgs, threads: usize) -> Map<String, Value> {
    let mut c = results::load_config(plan);
    c.insert("prompt_tokens".into(), a.prompt_tokens.into());
    c.insert("gen_tokens".into(), a.gen_tokens.into());
    c.insert("reps".into(), a.reps.into());
    c.insert("threads".into(), threads.into());
    c.insert("kernel_timings".into(), a.kernel_timings.into());
    c.insert("host_timings".into(), a.host_timings.into());
    c.insert("pipeline_warm_up".into(), plan.warm_up.into());
    c.insert("rotation".into(), plan.methods.rotation.into());
    c.insert(
        "grid".into(),
        if plan.methods.learned_grid {
            "learned"
        } else {
            "uniform"
        }
        .into(),
    );
    c
}
