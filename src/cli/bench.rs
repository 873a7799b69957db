//! `lowbit bench`: prefill and decode speed, memory, and llama.cpp's llama-bench beside it.

use super::bench_rows::{run_config, Row, RowSink};
use super::common::{mb, ModelArgs};
use clap::Args;
use lowbit::core::adapter::{Logits, TextModel};
use lowbit::core::block_on;
use lowbit::core::generate::peak_rss_bytes;
use lowbit::results;
use lowbit::{Error, Result};
use serde_json::{json, Map};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

/// Arguments of `lowbit bench`.
#[derive(Args, Debug)]
pub struct BenchArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Several precisions in one run, comma-separated (overrides --quant), e.g. int8,int4.
    #[arg(long)]
    pub quants: Option<String>,
    /// Prompt tokens of the prefill test (ppN); 0 skips it.
    #[arg(long, default_value_t = 128)]
    pub prompt_tokens: usize,
    /// Generated tokens of the decode test (tgN): greedy decoding from an empty context, each
    /// token selected on the device and fed to the next step, as `generate` does; 0 skips it.
    #[arg(long, default_value_t = 64)]
    pub gen_tokens: usize,
    /// Repetitions of each test (the mean and standard deviation are reported).
    #[arg(long, short = 'r', default_value_t = 3)]
    pub reps: usize,
    /// Benchmark a synthetic model of this published shape with random weights made in memory
    /// (smollm2-135m, llama-3.2-1b, llama-3-8b) instead of reading --model. With --rotate its
    /// integer matrices are stored in a rotated basis, so the backend rotates the activations
    /// (the model's name ends in `+rot`); with --grid learned its 2-4-bit matrices carry a
    /// table of levels, decoded by lookup (`+grid`).
    #[arg(long)]
    pub synthetic: Option<String>,
    /// Print per-kernel device timings of the tests (GPU timestamp queries around a pass of
    /// each kernel's own). The timestamps and passes add several µs to every kernel and each
    /// step waits for its timings, so the times are for comparing kernels, and tokens/s drop.
    #[arg(long)]
    pub kernel_timings: bool,
    /// Print where the host's time goes around the device during the tests (recording
    /// dispatches, submitting, waiting on read-backs), without GPU profiling.
    #[arg(long)]
    pub host_timings: bool,
    /// Also measure the backend's own buffer-to-buffer copy bandwidth (GB/s, read + write
    /// counted). Through wgpu this is well below the hardware's (H100: 817 GB/s vs 3,013 GB/s
    /// by CUDA's device-to-device copy), so for a fraction of what the GPU can do pass that
    /// figure with --reference-copy-gbs.
    #[arg(long)]
    pub copy_bandwidth: bool,
    /// The device's copy bandwidth measured elsewhere (GB/s, read + write; e.g. CUDA's
    /// bandwidthTest device-to-device): decode weight bandwidth is also printed as a fraction
    /// of it.
    #[arg(long, value_name = "GB/S")]
    pub reference_copy_gbs: Option<f64>,
    /// Also time a cold start: loading, compiling every kernel (the warm-up, through the
    /// on-disk pipeline cache where the backend has one) and the first token of a
    /// --prompt-tokens prompt. Run twice to compare a cold and a warm pipeline cache.
    #[arg(long)]
    pub ttft: bool,
    /// Path of llama.cpp's llama-bench, to run the peer side by side in the same run.
    #[arg(long)]
    pub llama_bench: Option<PathBuf>,
    /// GGUF files for the peer (e.g. Q8_0 and Q4_0 made by llama-quantize), comma-separated.
    #[arg(long, value_delimiter = ',')]
    pub peer_models: Vec<PathBuf>,
    /// Append one JSON object per measured row (prefill, decode, copy bandwidth, start-up) to
    /// this JSON-lines file, each written as it is measured: date, commit, command, device,
    /// backend, driver, the row's full configuration and its figures. llama-bench's rows are
    /// lines of their own, with "engine": "llama.cpp".
    #[arg(long, value_name = "FILE.jsonl")]
    pub output: Option<PathBuf>,
}

fn mean_std(v: &[f64]) -> (f64, f64) {
    let m = v.iter().sum::<f64>() / v.len() as f64;
    let var = v.iter().map(|x| (x - m) * (x - m)).sum::<f64>() / (v.len().max(2) - 1) as f64;
    (m, var.sqrt())
}

/// Deterministic pseudo-random token ids (speed does not depend on them).
fn random_tokens(n: usize, vocab: usize, seed: u64) -> Vec<u32> {
    let mut s = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 33) % vocab as u64) as u32
        })
        .collect()
}

/// KV-cache positions the tests need (pp: the prompt's; tg: one first token's and its own; the
/// TTFT prompt is pp's), or `INVALID_CONFIG` when that is more than the model's context.
fn kv_positions(model: &dyn TextModel, a: &BenchArgs) -> Result<usize> {
    let need = a.prompt_tokens.max(a.gen_tokens + 1);
    let limit = model.config().context_length;
    if limit > 0 && need > limit {
        return Err(Error::invalid_config(format!(
            "--prompt-tokens {} / --gen-tokens {}: a test needs {need} positions, more than \
             {}'s context length of {limit}",
            a.prompt_tokens,
            a.gen_tokens,
            model.config().name
        )));
    }
    Ok(need)
}

/// Runs the tests on one model in a KV cache of `positions` ([`kv_positions`]); returns the
/// rows and the bytes of the KV cache they used.
fn bench_model(
    model: &dyn TextModel,
    a: &BenchArgs,
    threads: usize,
    positions: usize,
    kv: lowbit_core::kv::KvFormat,
    sink: &mut RowSink,
) -> Result<(Vec<Row>, usize)> {
    let vocab = model.config().vocab_size;
    let mut cache = model.new_cache_as(positions, kv)?;
    let mut rows = Vec::new();
    let base = |test: String, (tps, sd): (f64, f64), bw: Option<f64>| Row {
        engine: "lowbit".into(),
        model: model.config().name.clone(),
        precision: model.plan().label(),
        bits_per_weight: model.bits_per_weight(),
        size_mb: mb(model.weight_bytes()),
        threads,
        test,
        tokens_per_s: tps,
        stddev: sd,
        weight_gb_per_s: bw,
        peer: None,
    };
    if a.prompt_tokens > 0 {
        let toks = random_tokens(a.prompt_tokens, vocab, 1);
        let mut v = Vec::new();
        for rep in 0..=a.reps {
            cache.clear();
            let t = Instant::now();
            block_on(model.forward(&mut cache, &toks, Logits::Last))?;
            if rep > 0 {
                v.push(a.prompt_tokens as f64 / t.elapsed().as_secs_f64());
            }
        }
        let row = base(format!("pp{}", a.prompt_tokens), mean_std(&v), None);
        sink.emit(&row)?;
        rows.push(row);
    }
    if a.gen_tokens > 0 {
        // Greedy decoding as `generate` runs it: each step's token is selected on the device
        // and fed to the next step (llama-bench's tg also times single-token steps from an
        // empty context).
        let first = random_tokens(1, vocab, 2)[0];
        let mut v = Vec::new();
        for rep in 0..=a.reps {
            cache.clear();
            let t = Instant::now();
            let mut produced = 0usize;
            let mut count = |_| {
                produced += 1;
                true
            };
            block_on(model.decode_greedy(&mut cache, first, a.gen_tokens, &mut count))?;
            if rep > 0 {
                v.push(produced as f64 / t.elapsed().as_secs_f64());
            }
        }
        let (m, sd) = mean_std(&v);
        let bw = m * model.weight_bytes() as f64 / 1e9;
        let row = base(format!("tg{}", a.gen_tokens), (m, sd), Some(bw));
        sink.emit(&row)?;
        rows.push(row);
    }
    Ok((rows, cache.bytes()))
}

/// Times buffer-to-buffer copies of 64 MiB (fits every storage-binding limit) on the backend:
/// GB/s with read and write counted.
fn copy_bandwidth(b: &dyn lowbit::core::Backend) -> Result<f64> {
    let len = 16 << 20; // f32 values
    let f32 = lowbit::core::DType::F32;
    let (src, dst) = (b.alloc(f32, len)?, b.alloc(f32, len)?);
    let copy = [lowbit::core::Op::Copy {
        src,
        src_offset: 0,
        dst,
        dst_offset: 0,
        len,
    }];
    b.run(&copy)?;
    block_on(b.read(dst, 0, 1))?;
    let reps = 50;
    let t = Instant::now();
    for _ in 0..reps {
        b.run(&copy)?;
    }
    block_on(b.read(dst, 0, 1))?;
    let s = t.elapsed().as_secs_f64();
    b.free(src);
    b.free(dst);
    Ok(2.0 * (len * 4 * reps) as f64 / s / 1e9)
}

/// Runs llama-bench on one GGUF and turns its JSON into rows.
fn bench_peer(bin: &Path, model: &Path, a: &BenchArgs, threads: usize) -> Result<Vec<Row>> {
    let out = Command::new(bin)
        .args(["-m", &model.to_string_lossy()])
        .args([
            "-p",
            &a.prompt_tokens.to_string(),
            "-n",
            &a.gen_tokens.to_string(),
        ])
        .args([
            "-t",
            &threads.to_string(),
            "-r",
            &a.reps.to_string(),
            "-o",
            "json",
        ])
        .output()
        .map_err(|e| Error::invalid_config(format!("cannot run {}: {e}", bin.display())))?;
    if !out.status.success() {
        return Err(Error::invalid_config(format!(
            "llama-bench failed on {}: {}",
            model.display(),
            String::from_utf8_lossy(&out.stderr)
                .lines()
                .last()
                .unwrap_or("")
        )));
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)
        .map_err(|e| Error::invalid_config(format!("llama-bench printed no JSON: {e}")))?;
    let mut rows = Vec::new();
    for r in v.as_array().into_iter().flatten() {
        let n_prompt = r["n_prompt"].as_u64().unwrap_or(0);
        let n_gen = r["n_gen"].as_u64().unwrap_or(0);
        let size = r["model_size"].as_f64().unwrap_or(0.0);
        let params = r["model_n_params"].as_f64().unwrap_or(1.0);
        let tps = r["avg_ts"].as_f64().unwrap_or(0.0);
        let decode = n_gen > 0;
        rows.push(Row {
            engine: "llama.cpp".into(),
            model: model
                .file_name()
                .map(|f| f.to_string_lossy().into_owned())
                .unwrap_or_default(),
            precision: r["model_type"].as_str().unwrap_or("?").to_owned(),
            bits_per_weight: size * 8.0 / params,
            size_mb: size / 1e6,
            threads,
            test: if decode {
                format!("tg{n_gen}")
            } else {
                format!("pp{n_prompt}")
            },
            tokens_per_s: tps,
            stddev: r["stddev_ts"].as_f64().unwrap_or(0.0),
            weight_gb_per_s: decode.then(|| tps * size / 1e9),
            peer: Some(r.clone()),
        });
    }
    Ok(rows)
}

/// Runs `lowbit bench`.
pub fn run(a: &BenchArgs) -> Result<()> {
    if a.reps == 0 {
        return Err(Error::invalid_config("--reps must be at least 1"));
    }
    if a.prompt_tokens == 0 && a.gen_tokens == 0 && !a.ttft {
        return Err(Error::invalid_config(
            "nothing to measure: --prompt-tokens and --gen-tokens are both 0",
        ));
    }
    let threads = match a.model.plan(None)?.backend.threads {
        0 => std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1),
        n => n,
    };
    let quants = super::common::quant_list(a.quants.as_deref());
    let mut rows = Vec::new();
    let mut kv_bytes = 0;
    let mut timings = Vec::new();
    let mut copy_gbs = None;
    let mut starts = Vec::new();
    let mut backend_info = None;
    // The table's rows (and the --output records) are written as they are measured (a long run
    // that is stopped keeps what it measured); JSON is one object at the end.
    let mut sink = RowSink {
        table: !a.model.json,
        header_printed: false,
        out: results::open_output(a.output.as_deref())?,
        config: Map::new(),
    };
    for q in &quants {
        let mut plan = a.model.plan(q.as_deref())?;
        if let Some(shape) = &a.synthetic {
            plan.model = lowbit::plan::ModelChoice::Synthetic(shape.clone());
        }
        plan.profiling = a.kernel_timings;
        plan.warm_up = !a.ttft;
        let t = Instant::now();
        let (model, backend) = a.model.load(&plan)?;
        let positions = kv_positions(model.as_ref(), a)?;
        if let Some(out) = &mut sink.out {
            out.set_backend(&backend.info());
        }
        sink.config = run_config(&plan, a, threads);
        if a.ttft {
            let load_ms = t.elapsed().as_secs_f64() * 1e3;
            let w = lowbit::plan::warm_up(model.as_ref(), backend.as_ref())?;
            let n = a.prompt_tokens.max(1);
            let toks = random_tokens(n, model.config().vocab_size, 3);
            let mut cache = model.new_cache_as(n + 1, plan.kv_cache.format()?)?;
            let t = Instant::now();
            let logits = block_on(model.forward(&mut cache, &toks, Logits::Last))?;
            let _first = lowbit::core::generate::argmax(&logits);
            let ttft_ms = t.elapsed().as_secs_f64() * 1e3;
            let start = json!({
                "precision": model.plan().label(),
                "backend": backend.info().device,
                "pipeline_cache": match w.pipeline_cache_warm {
                    Some(true) => "warm",
                    Some(false) => "cold",
                    None => "none",
                },
                "load_ms": load_ms,
                "compile_ms": w.ms,
                "prompt_tokens": n,
                "ttft_ms": ttft_ms,
                "start_to_first_token_ms": load_ms + w.ms + ttft_ms,
            });
            sink.record("ttft", start.clone())?;
            starts.push(start);
        }
        if a.copy_bandwidth && copy_gbs.is_none() {
            let c = copy_bandwidth(backend.as_ref())?;
            sink.record(
                "copy_bandwidth",
                json!({
                    "copy_gb_per_s": c,
                    "reference_copy_gb_per_s": a.reference_copy_gbs,
                }),
            )?;
            copy_gbs = Some(c);
        }
        backend_info = Some(backend.info());
        backend.reset_kernel_timings();
        let (r, kv) = bench_model(
            model.as_ref(),
            a,
            threads,
            positions,
            plan.kv_cache.format()?,
            &mut sink,
        )?;
        rows.extend(r);
        kv_bytes = kv;
        if a.kernel_timings || a.host_timings {
            let mut t = if a.kernel_timings {
                backend.kernel_timings()
            } else {
                Vec::new()
            };
            if a.host_timings {
                t.extend(backend.host_timings());
            }
            timings.push((model.plan().label(), t));
        }
    }
    if let Some(bin) = &a.llama_bench {
        for m in &a.peer_models {
            let r = bench_peer(bin, m, a, threads)?;
            for row in &r {
                sink.emit(row)?;
            }
            rows.extend(r);
        }
    }
    if a.model.json {
        let v = serde_json::json!({
            "rows": rows,
            "copy_bandwidth_gb_per_s": copy_gbs,
            "reference_copy_gb_per_s": a.reference_copy_gbs,
            "kernel_timings": timings,
            "startup": starts,
            "kv_cache_bytes": kv_bytes,
            "peak_rss_bytes": peak_rss_bytes(),
            "backend": backend_info.as_ref().map(|b| serde_json::json!({
                "name": b.name,
                "device": b.device,
                "features": b.features,
            })),
        });
        println!("{v}");
        return Ok(());
    }
    if !starts.is_empty() {
        println!("\nstart-up (load = weights read and uploaded; compile = warm-up forward passes that build every kernel):");
        println!("| precision | backend | pipeline cache | load ms | compile ms | TTFT ms (prompt) | start → first token ms |");
        println!("|---|---|---|---|---|---|---|");
        for s in &starts {
            println!(
                "| {} | {} | {} | {:.0} | {:.0} | {:.1} ({}) | {:.0} |",
                s["precision"].as_str().unwrap_or(""),
                s["backend"].as_str().unwrap_or(""),
                s["pipeline_cache"].as_str().unwrap_or(""),
                s["load_ms"].as_f64().unwrap_or(0.0),
                s["compile_ms"].as_f64().unwrap_or(0.0),
                s["ttft_ms"].as_f64().unwrap_or(0.0),
                s["prompt_tokens"],
                s["start_to_first_token_ms"].as_f64().unwrap_or(0.0),
            );
        }
    }
    let mut bases = Vec::new();
    if let Some(c) = copy_gbs {
        println!("\nbackend copy bandwidth (read + write): {c:.1} GB/s");
        bases.push(("the backend's copy", c));
    }
    if let Some(c) = a.reference_copy_gbs.filter(|c| *c > 0.0) {
        println!("reference copy bandwidth (read + write, given): {c:.1} GB/s");
        bases.push(("the reference copy", c));
    }
    for (what, c) in bases {
        for r in rows.iter().filter(|r| r.engine == "lowbit") {
            if let Some(bw) = r.weight_gb_per_s {
                println!(
                    "  {} {}: decode weight bandwidth {:.1} GB/s = {:.1}% of {what}",
                    r.model,
                    r.precision,
                    bw,
                    bw / c * 100.0
                );
            }
        }
    }
    for (label, t) in &timings {
        let total: u64 = t.iter().map(|k| k.total_ns).sum();
        println!(
            "\nkernel timings ({label}, all tests; {:.1} ms total):",
            total as f64 / 1e6
        );
        println!("| kernel | calls | total ms | µs / call | share |");
        println!("|---|---|---|---|---|");
        let mut t = t.clone();
        t.sort_by_key(|k| std::cmp::Reverse(k.total_ns));
        for k in t.iter().take(15) {
            println!(
                "| {} | {} | {:.2} | {:.2} | {:.1}% |",
                k.kernel,
                k.count,
                k.total_ns as f64 / 1e6,
                k.total_ns as f64 / 1e3 / k.count.max(1) as f64,
                k.total_ns as f64 / total.max(1) as f64 * 100.0
            );
        }
    }
    if let Some(b) = &backend_info {
        // Which kernel paths ran (e.g. `cooperative-matrix`: prefill on the tensor cores).
        let features = if b.features.is_empty() {
            "none".to_string()
        } else {
            b.features.join(", ")
        };
        println!(
            "\nbackend: {} on {}; features: {features}",
            b.name, b.device
        );
    }
    println!(
        "\nKV cache (f32) for {} tokens: {:.1} MB; peak RSS {:.1} MB",
        a.prompt_tokens.max(a.gen_tokens) + 1,
        mb(kv_bytes),
        mb(peak_rss_bytes())
    );
    Ok(())
}
