// The page side of the browser benchmark: runs one job (engine, model, threads, backend) and returns
// its figures, all timed here with performance.now(). browser-bench.mjs drives it through Playwright.
//
// An engine is a module `engines/NAME.js` exporting `createEngine()`, which returns an adapter:
//   name                         engine name (e.g. 'wllama', 'lowbit')
//   version                      a string that identifies the build (package version, commit)
//   backends                     the backends it accepts: 'cpu' (wasm SIMD) and/or 'webgpu'
//   async load(url, {threads, backend, ...modelOpts}) -> {threads_used, backend, ...}: fetch the model and
//       make it ready (modelOpts: the engine's per-model options from browser-bench.mjs, e.g. a quantization)
//   async prefillAndDecode(prompt, nTokens) -> {prompt_tokens, gen_tokens, prefill_ms, decode_ms,
//       decode_tokens, text, engine_timings?}: greedy, exactly nTokens generated, no prompt cache
//   info() -> what load() returned          async unload(): free everything
// prefill_ms runs from the call to the first generated token; decode_ms from the first to the last
// token (decode_tokens = gen_tokens - 1 tokens).

/** What the page knows about the browser it runs in. */
async function environment() {
  const env = {
    user_agent: navigator.userAgent,
    hardware_concurrency: navigator.hardwareConcurrency,
    cross_origin_isolated: self.crossOriginIsolated === true,
    shared_array_buffer: typeof SharedArrayBuffer !== 'undefined',
    webgpu: null,
  };
  if (navigator.gpu) {
    const adapter = await navigator.gpu.requestAdapter();
    if (adapter) {
      const info = adapter.info ?? {};
      env.webgpu = {
        vendor: info.vendor,
        architecture: info.architecture,
        device: info.device,
        description: info.description,
        is_fallback_adapter: info.isFallbackAdapter ?? adapter.isFallbackAdapter ?? null,
        shader_f16: adapter.features.has('shader-f16'),
        subgroups: adapter.features.has('subgroups'),
      };
    }
  }
  return env;
}

function median(xs) {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
}

/**
 * Runs one job: load, one warm-up call (the whole prompt, 2 tokens: compiles shaders, warms the JIT),
 * then `reps` measured calls. Returns the per-repetition figures and their medians.
 */
async function runJob(job) {
  const { engine: engineName, modelUrl, modelOpts = {}, threads, backend, prompt, nTokens, reps } = job;
  const env = await environment();
  const mod = await import(`./engines/${engineName}.js`);
  const engine = mod.createEngine();
  if (!engine.backends.includes(backend)) {
    return { skipped: `${engineName} has no backend ${backend} (it has ${engine.backends.join(', ')})`, env };
  }
  const t0 = performance.now();
  const loadInfo = await engine.load(modelUrl, { ...modelOpts, threads, backend });
  const loadMs = performance.now() - t0;
  try {
    await engine.prefillAndDecode(prompt, 2);
    const runs = [];
    for (let i = 0; i < reps; i++) runs.push(await engine.prefillAndDecode(prompt, nTokens));
    const prefill = runs.map((r) => (r.prompt_tokens * 1000) / r.prefill_ms);
    const decode = runs.map((r) => (r.decode_tokens * 1000) / r.decode_ms);
    const reported = runs.filter((r) => r.engine_timings);
    return {
      env,
      engine: engine.name,
      version: engine.version,
      load: { ms: loadMs, ...loadInfo },
      prompt_tokens: runs[0].prompt_tokens,
      gen_tokens: runs[0].gen_tokens,
      prefill_tokens_per_s: median(prefill),
      decode_tokens_per_s: median(decode),
      prefill_range: [Math.min(...prefill), Math.max(...prefill)],
      decode_range: [Math.min(...decode), Math.max(...decode)],
      engine_prefill_tokens_per_s: reported.length ? median(reported.map((r) => r.engine_timings.prompt_per_second)) : null,
      engine_decode_tokens_per_s: reported.length ? median(reported.map((r) => r.engine_timings.predicted_per_second)) : null,
      text: runs[0].text,
      runs: runs.map(({ text, ...rest }) => rest),
    };
  } finally {
    await engine.unload();
  }
}

window.benchEnvironment = environment;
window.benchRun = runJob;
window.benchReady = true;
document.getElementById('status').textContent = 'ready';
