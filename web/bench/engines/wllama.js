// The wllama engine adapter: llama.cpp compiled to wasm (`@wllama/wllama` from npm), the browser peer.
//
// Contract of an engine adapter (see bench.js): `{name, version, load(url, opts), prefillAndDecode(prompt,
// nTokens), info(), unload()}`. `opts` = `{threads, backend, verbose}` with backend `cpu` (wasm SIMD)
// or `webgpu`; verbose passes llama.cpp's log to the console.
import { Wllama } from '../node_modules/@wllama/wllama/esm/index.js';

// The worker that wllama starts is a blob, so the wasm path must be absolute.
const PACKAGE_URL = new URL('../node_modules/@wllama/wllama/', import.meta.url);
const WASM_URL = new URL('esm/wasm/wllama.wasm', PACKAGE_URL).href;
const PACKAGE_VERSION = (await (await fetch(new URL('package.json', PACKAGE_URL))).json()).version;

/** What llama.cpp's load log says about where the weights and the compute went. */
function placement(lines) {
  const text = lines.join('\n');
  const offloaded = text.match(/offloaded (\d+)\/(\d+) layers to GPU/);
  return {
    layers_on_gpu: offloaded ? Number(offloaded[1]) : null,
    layers_total: offloaded ? Number(offloaded[2]) : null,
    buffers: [...text.matchAll(/(\S+) model buffer size =\s*([\d.]+) MiB/g)].map((m) => `${m[1]} ${m[2]} MiB`),
  };
}

/** wllama: `cpu` runs every layer in wasm SIMD (n_gpu_layers 0), `webgpu` offloads all layers. */
export function createEngine() {
  let wllama = null;
  let loaded = null; // what load() asked for and what wllama made of it

  return {
    name: 'wllama',
    version: `@wllama/wllama ${PACKAGE_VERSION} (llama.cpp ${Wllama.getLibllamaVersion()})`,
    backends: ['cpu', 'webgpu'],

    async load(url, { threads, backend, verbose = false }) {
      if (!this.backends.includes(backend)) throw new Error(`wllama: unknown backend ${backend}`);
      // llama.cpp's own log says where the layers went: kept to check the backend, shown with --verbose
      const nativeLog = [];
      const keep = (level) => (...args) => {
        const line = args.map(String).join(' ');
        nativeLog.push(line);
        if (verbose) console[level](line);
      };
      const logger = { debug: keep('debug'), log: keep('log'), warn: keep('warn'), error: keep('error') };
      wllama = new Wllama({ default: WASM_URL }, { logger });
      // Fetching ourselves (not loadModelFromUrl) keeps the download out of wllama's cache manager,
      // so every load is the same cold path: HTTP body -> Blob -> wasm.
      const t0 = performance.now();
      const resp = await fetch(url);
      if (!resp.ok) throw new Error(`wllama: GET ${url}: HTTP ${resp.status}`);
      const blob = await resp.blob();
      const fetchMs = performance.now() - t0;
      await wllama.loadModel([blob], {
        n_threads: threads,
        n_gpu_layers: backend === 'webgpu' ? 999 : 0,
        n_ctx: 512,
        // one sequence: the batch sizes stay llama.cpp's defaults, as in llama-bench
        warmup: true,
        log_level: verbose ? 1 : 2,
      });
      loaded = {
        fetch_ms: fetchMs,
        threads_requested: threads,
        threads_used: wllama.getNumThreads(),
        multithread: wllama.isMultithread(),
        webgpu_supported: wllama.isSupportWebGPU(),
        backend,
        model_bytes: blob.size,
        ...placement(nativeLog),
      };
      // wllama falls back to the CPU silently when llama.cpp finds no usable WebGPU device (its
      // WebGPU backend needs shader-f16, which SwiftShader lacks): a webgpu row must not hide that.
      if (backend === 'webgpu' && !loaded.buffers.some((b) => !b.startsWith('CPU'))) {
        const where = loaded.buffers.join(', ') || 'nowhere (no buffer lines in the log)';
        await this.unload();
        throw new Error(`wllama: WebGPU asked, but llama.cpp put the weights on the CPU (${where}); ` +
          'its WebGPU backend needs the shader-f16 feature');
      }
      return loaded;
    },

    async prefillAndDecode(prompt, nTokens) {
      if (!wllama) throw new Error('wllama: load() first');
      let tFirst = null;
      let tLast = null;
      let chunks = 0;
      let text = '';
      let last = null;
      const t0 = performance.now();
      await wllama.createCompletion({
        prompt,
        max_tokens: nTokens,
        temperature: 0,
        top_k: 1,
        ignore_eos: true,
        // every repetition must prefill the whole prompt again
        cache_prompt: false,
        stream: true,
        onData: (chunk) => {
          const now = performance.now();
          const choice = chunk.choices?.[0];
          const piece = choice?.text ?? '';
          // one chunk per token (its text may be empty: part of a UTF-8 character); the closing
          // chunk carries finish_reason and the timings, no token
          if (choice && !choice.finish_reason) {
            if (tFirst === null) tFirst = now;
            tLast = now;
            chunks += 1;
          }
          text += piece;
          last = chunk;
        },
      });
      const tEnd = performance.now();
      const timings = last?.timings ?? null;
      if (!timings) throw new Error('wllama: the last stream chunk carries no timings');
      if (timings.cache_n > 0) throw new Error(`wllama: ${timings.cache_n} prompt tokens came from the cache`);
      if (timings.predicted_n !== nTokens) {
        throw new Error(`wllama: generated ${timings.predicted_n} tokens, asked for ${nTokens}`);
      }
      return {
        prompt_tokens: timings.prompt_n,
        gen_tokens: timings.predicted_n,
        // in-page: the first token arrives when the prompt is processed (and one token sampled)
        prefill_ms: tFirst - t0,
        // the tokens after the first, from the first to the last arrival
        decode_ms: tLast - tFirst,
        decode_tokens: timings.predicted_n - 1,
        total_ms: tEnd - t0,
        stream_chunks: chunks,
        text,
        engine_timings: {
          prompt_n: timings.prompt_n,
          prompt_ms: timings.prompt_ms,
          prompt_per_second: timings.prompt_per_second,
          predicted_n: timings.predicted_n,
          predicted_ms: timings.predicted_ms,
          predicted_per_second: timings.predicted_per_second,
        },
      };
    },

    info() {
      return loaded;
    },

    async unload() {
      if (wllama) await wllama.exit();
      wllama = null;
      loaded = null;
    },
  };
}
