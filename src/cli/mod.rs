//! Command-line interface: argument definitions and dispatch.

mod bench;
mod bench_chaos;
mod bench_rows;
mod bench_serve;
mod common;
mod config;
mod conformance;
mod doctor;
mod generate;
mod passkey;
mod perplexity;
mod quantize;
mod serve;

use clap::{Parser, Subcommand};

/// lowbit: run quantized (2- to 8-bit) transformer models on WebGPU or a SIMD CPU backend,
/// streaming their output token by token.
#[derive(Parser)]
#[command(name = "lowbit", version, about, long_about = None, max_term_width = 100)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Generate text from a prompt, streaming tokens to stdout as they are produced.
    Generate(generate::GenerateArgs),
    /// Measure perplexity on a text file, by the same method as llama.cpp's llama-perplexity.
    Perplexity(perplexity::PerplexityArgs),
    /// Passkey retrieval: hide a number at several depths of a long filler text, ask for it,
    /// and count how often the model answers it, with the configured KV cache beside f32.
    Passkey(passkey::PasskeyArgs),
    /// Quantize a model once (optionally calibrated, rotated, with per-tensor widths) into a
    /// quantized model file that later runs load directly; --report prints each tensor's width
    /// and measured error.
    Quantize(quantize::QuantizeArgs),
    /// Measure prefill and decode speed (tokens/s) and memory, as a table; optionally run
    /// llama.cpp's llama-bench side by side in the same run.
    Bench(bench::BenchArgs),
    /// Serve the model: the WebSocket protocol at /ws and an OpenAI-compatible HTTP API
    /// (/v1/completions, /v1/chat/completions with SSE streaming), continuous batching.
    Serve(serve::ServeArgs),
    /// Load-test the server over loopback: N concurrent streaming clients per level,
    /// aggregate tokens/s and per-token latency; optionally llama-server side by side.
    BenchServe(bench_serve::BenchServeArgs),
    /// Validate a config file (with auto-corrections) or show the effective configuration.
    Config(config::ConfigArgs),
    /// List WebGPU adapters and CPU features, and say which backend and profile `auto` picks.
    Doctor(doctor::DoctorArgs),
    /// Check every op and fused op pattern on each backend against a float64 reference, as a
    /// table (op, shape, weight format, backend, error, tolerance).
    Conformance(conformance::ConformanceArgs),
}

/// Parses arguments, runs the command, returns the exit code.
pub fn run() -> i32 {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("LOWBIT_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let (result, json) = match &cli.command {
        Command::Generate(a) => (generate::run(a), a.model.json),
        Command::Perplexity(a) => (perplexity::run(a), a.model.json),
        Command::Passkey(a) => (passkey::run(a), a.model.json),
        Command::Quantize(a) => (quantize::run(a), a.model.json),
        Command::Bench(a) => (bench::run(a), a.model.json),
        Command::Serve(a) => (serve::run(a), a.model.json),
        Command::BenchServe(a) => (bench_serve::run(a), a.model.json),
        Command::Config(a) => return config::run(a),
        Command::Doctor(a) => (doctor::run(a), a.json),
        Command::Conformance(a) => (conformance::run(a), false),
    };
    match result {
        Ok(()) => 0,
        Err(e) => {
            common::report_error(&e, json);
            1
        }
    }
}
