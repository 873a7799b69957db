// lowbit's page API. The engine runs in a dedicated Web Worker (worker.js); every method here
// sends it a message and returns a promise, so the page's main thread never blocks.
//
//   const llm = new WebGPUStreamingInference({ model: 'models/SmolLM2.gguf', config: { quantization: { method: 'int4' } } });
//   await llm.ready;                       // worker started, backend chosen, model loaded
//   const text = await llm.generate({ prompt: 'The capital of France is', maxTokens: 32,
//                                     callback: (token, isLast) => out.append(token) });
//   for await (const ev of llm.stream({ prompt })) { ... }
//   llm.stop();                            // ends the generation within one token
//
// Errors are `Error`s with a stable `.code`: WEBGPU_NOT_SUPPORTED, MODEL_LOADING_FAILED,
// OUT_OF_MEMORY, INVALID_CONFIG, UNSUPPORTED_MODEL, CONTEXT_OVERFLOW, CANCELLED.

const WORKER_URL = new URL('./worker.js', import.meta.url);

function codedError(code, message) {
  const e = new Error(message);
  e.code = code;
  return e;
}

/** A connection to one engine worker. */
class EngineWorker {
  constructor() {
    this.worker = new Worker(WORKER_URL, { type: 'module' });
    this.next = 1;
    this.pending = new Map();
    this.worker.onmessage = (ev) => this.receive(ev.data);
    this.worker.onerror = (ev) => {
      const err = codedError('MODEL_LOADING_FAILED', `the engine worker failed: ${ev.message || 'unknown error'}`);
      for (const p of this.pending.values()) p.reject(err);
      this.pending.clear();
    };
  }

  request(op, fields = {}, on = {}) {
    const id = this.next++;
    return new Promise((resolve, reject) => {
      this.pending.set(id, { resolve, reject, ...on });
      this.worker.postMessage({ id, op, ...fields });
    });
  }

  receive(msg) {
    const p = this.pending.get(msg.id);
    if (!p) return;
    switch (msg.type) {
      case 'result':
        this.pending.delete(msg.id);
        p.resolve(msg.value);
        break;
      case 'error':
        this.pending.delete(msg.id);
        p.reject(codedError(msg.code, msg.message));
        break;
      case 'progress':
        if (p.onProgress) p.onProgress(msg);
        break;
      case 'token':
        if (p.onToken) p.onToken(msg);
        break;
    }
  }

  terminate() {
    this.worker.terminate();
  }
}

/** Latencies kept for percentiles: the last this many tokens. */
const LATENCY_WINDOW = 4096;

function percentile(sorted, p) {
  if (!sorted.length) return 0;
  const i = Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1));
  return sorted[i];
}

/**
 * Streaming text generation with a quantized model, on the browser's WebGPU or the WASM-SIMD
 * CPU backend.
 */
export class WebGPUStreamingInference {
  /**
   * @param {{model?: string|File|Blob, config?: object, onProgress?: Function, cache?: boolean, userAgent?: string}} options
   *   `model`: URL, File or Blob of a GGUF file (loaded at once when given; else call `load`).
   *   `config`: the TOML configuration's keys (SPEC §2), as sections or dotted keys.
   *   `onProgress({phase, loaded, total, detail})`: phases `download`, `cache`, `quantize`, `compile`.
   *   `cache`: keep downloaded models in Cache Storage (default true).
   */
  constructor({ model, config = {}, onProgress, cache = true, userAgent } = {}) {
    this.config = config;
    this.userAgent = userAgent || navigator.userAgent;
    this.onProgress = onProgress;
    this.cache = cache;
    this.engine = new EngineWorker();
    this.latencies = [];
    this.last = null;
    this.model = null;
    this.created = this.engine.request('create', { config, userAgent: this.userAgent }).then((r) => {
      this.capabilities = r.capabilities;
      this.validation = r.validation;
      return r;
    });
    /** Resolves once the worker is up and, when `model` was given, the model is loaded. */
    this.ready = model === undefined ? this.created : this.load(model);
  }

  /**
   * Loads a model (URL, File or Blob), replacing the loaded one. Resolves with its description
   * (name, layers, quantization, weight bytes, `fromCache`, `bytesFetched`, `loadMs`).
   */
  async load(model, { onProgress } = {}) {
    await this.created;
    const report = onProgress || this.onProgress;
    this.modelSource = model;
    this.model = await this.engine.request('load', { model, cache: this.cache }, { onProgress: report });
    return this.model;
  }

  /**
   * Generates from `prompt`; `callback(token, isLast)` fires per token as it is decoded.
   * Resolves with the whole text. Options: maxTokens, temperature (0 = greedy), topP, topK,
   * seed, stop (strings), chat (wrap the prompt in the model's chat template).
   */
  async generate({ prompt, callback, ...params } = {}) {
    const r = await this.generateDetailed({ prompt, callback, ...params });
    return r.text;
  }

  /** As `generate`, resolving with text, token ids, finish reason and statistics. */
  async generateDetailed({ prompt, callback, maxTokens, temperature, topP, topK, seed, stop, chat } = {}) {
    await this.ready;
    if (typeof prompt !== 'string') throw codedError('INVALID_CONFIG', 'generate: `prompt` must be a string');
    const params = { maxTokens, temperature, topP, topK, seed, stop, chat };
    let prev = performance.now();
    const t0 = prev;
    let first = null;
    let count = 0;
    this.live = { timeToFirstTokenMs: null, tokensPerSecond: null, generatedTokens: 0 };
    const r = await this.engine.request('generate', { prompt, params }, {
      onToken: (ev) => {
        const now = performance.now();
        count += 1;
        if (first === null) first = now - t0;
        else this.latencies.push(now - prev);
        this.live = {
          timeToFirstTokenMs: first,
          tokensPerSecond: count > 1 ? ((count - 1) * 1000) / (now - t0 - first) : null,
          generatedTokens: count,
        };
        if (this.latencies.length > LATENCY_WINDOW) this.latencies.splice(0, this.latencies.length - LATENCY_WINDOW);
        prev = now;
        if (callback) callback(ev.text, ev.isLast, ev.tokenId);
      },
    });
    this.live = null;
    this.last = { ...r.stats, pageTtftMs: first, wallMs: performance.now() - t0, finishReason: r.finishReason };
    return r;
  }

  /**
   * Teacher-forced agreement with a reference continuation (token ids): for each, this engine's
   * own argmax there and the reference token's logit gap below it (0 where they agree).
   */
  async score(prompt, tokens) {
    await this.ready;
    return this.engine.request('score', { prompt, tokens });
  }

  /** Async iterator of `{token, isLast, tokenId}` events of one generation. */
  async *stream(options = {}) {
    const queue = [];
    let wake = null;
    let done = false;
    let error = null;
    const run = this.generateDetailed({
      ...options,
      callback: (token, isLast, tokenId) => {
        queue.push({ token, isLast, tokenId });
        if (wake) wake();
      },
    }).then(
      () => { done = true; if (wake) wake(); },
      (e) => { error = e; done = true; if (wake) wake(); },
    );
    while (true) {
      if (queue.length) {
        yield queue.shift();
        continue;
      }
      if (done) break;
      await new Promise((r) => (wake = r));
      wake = null;
    }
    await run;
    if (error) throw error;
  }

  /** Ends the running generation within one token; its promise resolves (finishReason `cancelled`). */
  stop() {
    return this.engine.request('stop');
  }

  /**
   * Time to first token, tokens/s, p50/p95 token latency (ms, over recent tokens), and memory
   * (weights, KV cache) of the last generation.
   */
  getPerformanceStats() {
    const sorted = [...this.latencies].sort((a, b) => a - b);
    const s = this.last || {};
    if (this.live) {
      // Mid-generation: what the page has seen so far.
      return {
        ...this.live,
        prefillTokensPerSecond: null,
        promptTokens: 0,
        latencyP50Ms: percentile(sorted, 50),
        latencyP95Ms: percentile(sorted, 95),
        memory: { weightBytes: this.model ? this.model.weightBytes : 0, kvCacheBytes: 0, jsHeapBytes: null },
        backend: this.capabilities ? this.capabilities.backend : null,
        profile: this.capabilities ? this.capabilities.profile : null,
        running: true,
      };
    }
    return {
      timeToFirstTokenMs: s.time_to_first_token_ms ?? null,
      prefillTokensPerSecond: s.prefill_tokens_per_s ?? null,
      tokensPerSecond: s.decode_tokens_per_s ?? null,
      promptTokens: s.prompt_tokens ?? 0,
      generatedTokens: s.generated_tokens ?? 0,
      latencyP50Ms: percentile(sorted, 50),
      latencyP95Ms: percentile(sorted, 95),
      memory: {
        weightBytes: s.weight_bytes ?? (this.model ? this.model.weightBytes : 0),
        kvCacheBytes: s.kv_cache_bytes ?? 0,
        jsHeapBytes: (performance.memory && performance.memory.usedJSHeapSize) || null,
      },
      backend: this.capabilities ? this.capabilities.backend : null,
      profile: this.capabilities ? this.capabilities.profile : null,
      running: false,
    };
  }

  /** What the engine detected: adapter, features, limits, backend and profile, and why. */
  async detectCapabilities() {
    await this.created;
    return this.capabilities;
  }

  /** Restarts the engine with `config` merged over the current one (the model is reloaded). */
  async reconfigure(config) {
    const model = this.modelSource;
    this.engine.terminate();
    const next = new WebGPUStreamingInference({
      model,
      config: { ...this.config, ...config },
      onProgress: this.onProgress,
      cache: this.cache,
      userAgent: this.userAgent,
    });
    Object.assign(this, next);
    return this.ready;
  }

  /**
   * Favours time per token over throughput. The worker runs one generation at a time, decoding
   * each token as soon as the previous one is out, which is already that mode; this records
   * `performance.optimize_for_latency = true` in the configuration (no reload).
   */
  optimizeForLatency() {
    this.config = { ...this.config, 'performance.optimize_for_latency': true };
    return Promise.resolve(this.config);
  }

  /** Applies a browser's profile (`chrome`, `edge`, `firefox`, `safari`, `mobile`). */
  optimizeForBrowser(name) {
    return this.reconfigure({ 'runtime.profile': name });
  }

  /** Ends the worker and frees its memory. */
  dispose() {
    this.engine.terminate();
  }
}

/**
 * Checks a configuration under a browser's profile (a name or a user agent; default this
 * browser) without loading anything: status, errors, warnings, corrections (key, old, new,
 * reason) and the corrected configuration.
 */
export async function validateConfiguration(config, { browser } = {}) {
  const w = new EngineWorker();
  try {
    return await w.request('validate', { config, browser: browser || navigator.userAgent });
  } finally {
    w.terminate();
  }
}

/**
 * Opens the engine as `config` asks (no model) and reports the adapter, its features and
 * limits, the backend and profile chosen, and why.
 */
export async function detectCapabilities(config = {}) {
  const w = new EngineWorker();
  try {
    const r = await w.request('create', { config, userAgent: navigator.userAgent });
    return r.capabilities;
  } finally {
    w.terminate();
  }
}

/** Runs the op conformance suite on the backend `config` selects; resolves with its rows. */
export async function runConformance(config = {}, filter = '') {
  const w = new EngineWorker();
  try {
    return await w.request('conformance', { config, filter });
  } finally {
    w.terminate();
  }
}

/** The adapters, backends and profiles registered in the wasm module. */
export async function registrations() {
  const w = new EngineWorker();
  try {
    return await w.request('registrations');
  } finally {
    w.terminate();
  }
}
