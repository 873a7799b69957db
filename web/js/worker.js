// The engine's Web Worker: owns the wasm module (web/pkg) and one Engine; the page talks to it
// through web/js/lowbit.js by messages, so the page's main thread never blocks.
//
// Requests: {id, op, ...}; answers: {id, type: "result", value} | {id, type: "error", code,
// message} | {id, type: "progress", phase, loaded, total, detail} | {id, type: "token", text,
// isLast, tokenId}.

import init, * as wasm from '../pkg/lowbit_web.js';

const ready = init();
let engine = null;
let running = null; // the id of the generation in progress

const CACHE = 'lowbit-models-v1';

function fail(id, e) {
  const code = (e && e.code) || 'MODEL_LOADING_FAILED';
  postMessage({ id, type: 'error', code, message: String((e && e.message) || e) });
}

function progress(id, phase, loaded, total, detail) {
  postMessage({ id, type: 'progress', phase, loaded, total, detail: detail || '' });
}

// A promise settled after the event loop has had a turn (a MessageChannel round trip, not
// setTimeout, which browsers clamp to 4 ms once nested).
function yieldToEventLoop() {
  return new Promise((resolve) => {
    const ch = new MessageChannel();
    ch.port1.onmessage = () => resolve();
    ch.port2.postMessage(null);
  });
}

function codedError(code, message) {
  const e = new Error(message);
  e.code = code;
  return e;
}

// The model's bytes as a stream and its size: from Cache Storage when a URL was fetched
// before (no request then), else fetched and stored; a File or Blob is read as it is.
async function openModel(id, model, useCache) {
  if (typeof model !== 'string') {
    return { stream: model.stream(), total: model.size, cached: false, fetched: 0 };
  }
  const url = new URL(model, self.location.href).href;
  let cache = null;
  if (useCache && self.caches) {
    try {
      cache = await caches.open(CACHE);
      const hit = await cache.match(url);
      if (hit) {
        const total = Number(hit.headers.get('content-length')) || 0;
        return { stream: hit.body, total, cached: true, fetched: 0 };
      }
    } catch (e) {
      cache = null; // an opaque origin has no Cache Storage: fetch every time
    }
  }
  let resp;
  try {
    resp = await fetch(url);
  } catch (e) {
    throw codedError('MODEL_LOADING_FAILED', `cannot fetch ${url}: ${e.message}`);
  }
  if (!resp.ok) throw codedError('MODEL_LOADING_FAILED', `cannot fetch ${url}: HTTP ${resp.status}`);
  const total = Number(resp.headers.get('content-length')) || 0;
  if (!cache) return { stream: resp.body, total, cached: false, fetched: total };
  // Tee: one branch feeds the engine, the other the cache (stored whole once it ends).
  const [a, b] = resp.body.tee();
  const stored = cache.put(url, new Response(b, { headers: resp.headers })).catch(() => {});
  return { stream: a, total, cached: false, fetched: total, stored };
}

async function load(id, msg) {
  await ready;
  if (!engine) throw codedError('INVALID_CONFIG', 'the engine is not created');
  const t0 = performance.now();
  const src = await openModel(id, msg.model, msg.cache !== false);
  engine.begin_load(src.total);
  const reader = src.stream.getReader();
  let loaded = 0;
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    engine.push_bytes(value);
    loaded += value.length;
    progress(id, src.cached ? 'cache' : 'download', loaded, src.total);
  }
  if (src.stored) await src.stored;
  const downloadMs = performance.now() - t0;
  // Weights quantized by an earlier load of the same bytes with the same plan.
  const weightsUrl = new URL(`/__lowbit_weights__/${engine.weights_key()}`, self.location.origin).href;
  let weightsCache = null;
  if (msg.cache !== false && self.caches) {
    try {
      weightsCache = await caches.open(CACHE);
      const hit = await weightsCache.match(weightsUrl);
      if (hit) {
        try {
          engine.provide_weights(new Uint8Array(await hit.arrayBuffer()));
        } catch (e) {
          await weightsCache.delete(weightsUrl); // damaged: quantize again and replace it
        }
      }
    } catch (e) {
      weightsCache = null;
    }
  }
  const info = JSON.parse(
    await engine.finish_load((done, total, detail) => {
      const phase = detail === 'compiling kernels' ? 'compile' : 'quantize';
      progress(id, phase, done, total, detail);
    }),
  );
  if (weightsCache) {
    const made = engine.take_weights();
    if (made) await weightsCache.put(weightsUrl, new Response(made)).catch(() => {});
  }
  info.fromCache = src.cached;
  info.bytesFetched = src.cached ? 0 : loaded;
  info.downloadMs = downloadMs;
  info.loadMs = performance.now() - t0;
  return info;
}

async function handle(msg) {
  const { id, op } = msg;
  switch (op) {
    case 'create': {
      await ready;
      if (engine) engine.free();
      engine = null;
      engine = await wasm.Engine.create(JSON.stringify(msg.config || {}), msg.userAgent || navigator.userAgent);
      const caps = JSON.parse(engine.capabilities());
      caps.crossOriginIsolated = self.crossOriginIsolated === true;
      return { capabilities: caps, validation: JSON.parse(engine.validation()) };
    }
    case 'load':
      return load(id, msg);
    case 'generate': {
      if (!engine) throw codedError('INVALID_CONFIG', 'the engine is not created');
      running = id;
      try {
        const out = await engine.generate(msg.prompt, JSON.stringify(msg.params || {}), (text, isLast, tokenId) => {
          postMessage({ id, type: 'token', text, isLast, tokenId });
          return yieldToEventLoop();
        });
        return JSON.parse(out);
      } finally {
        running = null;
      }
    }
    case 'score':
      if (!engine) throw codedError('INVALID_CONFIG', 'the engine is not created');
      return JSON.parse(await engine.score(msg.prompt, JSON.stringify(msg.tokens)));
    case 'stop':
      if (engine) engine.stop();
      return { stopped: running !== null };
    case 'validate':
      await ready;
      return JSON.parse(wasm.validateConfiguration(JSON.stringify(msg.config || {}), msg.browser || navigator.userAgent));
    case 'registrations':
      await ready;
      return JSON.parse(wasm.registrations());
    case 'conformance':
      await ready;
      return JSON.parse(await wasm.runConformance(JSON.stringify(msg.config || {}), navigator.userAgent, msg.filter || ''));
    default:
      throw codedError('INVALID_CONFIG', `unknown request ${op}`);
  }
}

self.onmessage = async (ev) => {
  const msg = ev.data;
  try {
    const value = await handle(msg);
    postMessage({ id: msg.id, type: 'result', value });
  } catch (e) {
    fail(msg.id, e);
  }
};
