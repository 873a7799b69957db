//! `lowbit conformance`: every op and fused op pattern of the op set, run on each backend and
//! compared with one float64 reference (`lowbit_core::conformance`), as a table.

use super::common::parse_set;
use clap::Args;
use lowbit::core::block_on;
use lowbit::core::config::Source;
use lowbit::core::conformance::{self, CaseResult};
use lowbit::core::registry::create_backend;
use lowbit::plan::RunPlan;
use lowbit::results;
use lowbit::selection::ConfigRequest;
use lowbit::{Error, ErrorCode, Result};
use std::path::PathBuf;

/// `lowbit conformance`.
#[derive(Args, Debug)]
pub struct ConformanceArgs {
    /// Backends to check: cpu, webgpu, or all (every registered backend that opens here).
    #[arg(long, default_value = "all")]
    pub backend: String,
    /// Only cases whose op, shape or format contains this text.
    #[arg(long)]
    pub filter: Option<String>,
    /// Config file (TOML) for the backends' settings, e.g. `backend.webgpu.*`.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Set any config key for this run, e.g. `--set backend.webgpu.wide_matvec=false`
    /// (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,
    /// Append one JSON record per case to this JSON-lines file.
    #[arg(long, value_name = "FILE.jsonl")]
    pub output: Option<PathBuf>,
    /// Only the failed cases in the table (the summary line counts all).
    #[arg(long)]
    pub failures_only: bool,
}

/// Runs the suite on each backend, prints the table; fails unless every case passed.
pub fn run(a: &ConformanceArgs) -> Result<()> {
    let mut req = ConfigRequest {
        file: a.config.clone(),
        ..Default::default()
    };
    for item in &a.set {
        let (key, value) = parse_set(item)?;
        req.cli
            .push(key, value, Source::Cli(format!("--set {item}")));
    }
    let (plan, _) = RunPlan::resolve(&req)?;
    let opts = plan.backend_options()?;
    let names: Vec<String> = match a.backend.as_str() {
        "all" => lowbit::core::registry::backend_names()
            .into_iter()
            .map(str::to_owned)
            .collect(),
        list => list.split(',').map(|s| s.trim().to_owned()).collect(),
    };
    let mut out = results::open_output(a.output.as_deref())?;
    let cases: Vec<_> = conformance::cases()
        .into_iter()
        .filter(|c| a.filter.as_deref().is_none_or(|f| c.matches(f)))
        .collect();
    let (mut all, mut ran) = (Vec::<CaseResult>::new(), 0usize);
    for name in &names {
        let backend = match create_backend(name, &opts) {
            Ok(b) => b,
            // `all` means every backend this machine has; one asked for by name must open.
            Err(e) if a.backend == "all" => {
                eprintln!("conformance: skipping backend {name}: {e}");
                continue;
            }
            Err(e) => return Err(e),
        };
        ran += 1;
        eprintln!(
            "conformance: {} cases on {} ({})",
            cases.len(),
            name,
            backend.info().device
        );
        if let Some(out) = &mut out {
            out.set_backend(&backend.info());
        }
        for case in &cases {
            let r = block_on(conformance::run_case(backend.as_ref(), case));
            if let Some(out) = &mut out {
                out.write(
                    serde_json::to_value(&r).map_err(|e| {
                        Error::invalid_config(format!("cannot encode a result: {e}"))
                    })?,
                )?;
            }
            all.push(r);
        }
    }
    if ran == 0 {
        return Err(Error::new(
            ErrorCode::WebgpuNotSupported,
            "conformance: no backend could be opened",
        ));
    }
    let shown: Vec<CaseResult> = all
        .iter()
        .filter(|r| !a.failures_only || !r.passed)
        .cloned()
        .collect();
    println!("{}", conformance::table(&shown));
    let failed = all.iter().filter(|r| !r.passed).count();
    println!(
        "{} cases on {ran} backend(s): {} passed, {failed} failed",
        all.len(),
        all.len() - failed
    );
    if failed > 0 {
        return Err(Error::invalid_config(format!(
            "conformance: {failed} case(s) failed"
        )));
    }
    Ok(())
}
