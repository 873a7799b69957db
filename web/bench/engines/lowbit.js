// The lowbit adapter of the browser benchmark (contract: bench.js): lowbit's page API
// (web/js/lowbit.js, engine in a worker) on the page's WebGPU or the WASM-SIMD CPU backend.
// lowbit quantizes the GGUF it is given to the precision of `quant` (int8, int4, int2) at load.
import { WebGPUStreamingInference } from '../../js/lowbit.js';

export function createEngine() {
  let llm = null;
  let loaded = null;
  return {
    name: 'lowbit',
    version: 'web/pkg (this checkout)',
    backends: ['cpu', 'webgpu'],
    async load(url, { threads, backend, quant }) {
      llm = new WebGPUStreamingInference({
        model: url,
        cache: false,
        config: { runtime: { backend, fallback: false }, quantization: { method: quant } },
      });
      const model = await llm.ready;
      const caps = llm.capabilities;
      if (caps.backend !== backend) throw new Error(`asked for ${backend}, got ${caps.backend}`);
      loaded = {
        backend: caps.backend,
        // One thread: wasm threads need a std built with atomics (see capabilities).
        threads_used: caps.backend === 'cpu' ? caps.cpuThreads : null,
        threads_asked: threads,
        weights: model.weights,
        weight_bytes: model.weightBytes,
        adapter: caps.adapter ? caps.adapter.name || caps.device : null,
        profile: caps.profile,
        kernels: caps.backend === 'cpu' ? caps.simd : caps.kernelFeatures.join(','),
      };
      return loaded;
    },
    async prefillAndDecode(prompt, nTokens) {
      const t0 = performance.now();
      let first = null;
      let last = null;
      const r = await llm.generateDetailed({
        prompt,
        maxTokens: nTokens,
        temperature: 0,
        callback: (text, isLast, tokenId) => {
          if (tokenId === null) return;
          const now = performance.now();
          if (first === null) first = now;
          last = now;
        },
      });
      return {
        prompt_tokens: r.promptTokens,
        gen_tokens: r.tokens.length,
        prefill_ms: first - t0,
        decode_ms: last - first,
        decode_tokens: r.tokens.length - 1,
        text: r.text,
      };
    },
    info() {
      return loaded;
    },
    async unload() {
      if (llm) llm.dispose();
      llm = null;
    },
  };
}
