#!/usr/bin/env node
// First load vs cached reload of lowbit in headless Chromium: for each backend, a fresh browser
// profile loads the model from the server (download, quantize, upload, compile), then the page
// reloads and loads it again (Cache Storage: the file and the quantized weights). Each row:
// time to first token from page start (a new engine, load, one greedy token), load time,
// bytes fetched from the server, matrices quantized vs taken from the cache.
//
//   node web/bench/reload-bench.mjs [--backends cpu,webgpu] [--quant int4] [--output FILE.jsonl]
// Needs: web/build.sh, (cd web && npm ci), models/SmolLM2-135M-Instruct.Q4_1.gguf.
import { chromium } from 'playwright-core';
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { startServer } from '../serve.mjs';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
const args = process.argv.slice(2);
const opt = (name, dflt) => {
  const i = args.indexOf(`--${name}`);
  return i >= 0 ? args[i + 1] : dflt;
};
if (args.includes('--help') || args.includes('-h')) {
  console.log(fs.readFileSync(fileURLToPath(import.meta.url), 'utf8').split('\n').slice(1, 10).join('\n'));
  process.exit(0);
}
const backends = opt('backends', 'cpu,webgpu').split(',');
const quant = opt('quant', 'int4');
const output = opt('output', '');
const MODEL = '/models/SmolLM2-135M-Instruct.Q4_1.gguf';
for (const [f, fix] of [['web/pkg/lowbit_web_bg.wasm', 'web/build.sh'], [MODEL.slice(1), 'scripts/fetch-models.sh smollm2']]) {
  if (!fs.existsSync(path.join(ROOT, f))) {
    console.error(`error: ${f} is missing: run ${fix}`);
    process.exit(2);
  }
}
const chromiumPath = process.env.CHROMIUM || '/usr/lib/chromium/chromium';
const commit = execFileSync('git', ['rev-parse', '--short', 'HEAD'], { cwd: ROOT, encoding: 'utf8' }).trim();

const server = await startServer({});
const browser = await chromium.launch({
  executablePath: chromiumPath,
  args: ['--no-sandbox', '--disable-gpu-sandbox', '--disable-dev-shm-usage', '--disable-quic', '--no-first-run',
    '--disable-background-networking', '--disable-component-update', '--disable-sync', '--enable-unsafe-webgpu'],
});

async function once(page, backend) {
  const before = server.requests.get(MODEL) || 0;
  const r = await page.evaluate(async ({ model, backend, quant }) => {
    const t0 = performance.now();
    const llm = new window.lowbit.WebGPUStreamingInference({ model, config: { runtime: { backend, fallback: false }, quantization: { method: quant } } });
    const info = await llm.ready;
    let first = null;
    await llm.generate({ prompt: 'The capital of France is', maxTokens: 1, temperature: 0, callback: () => { if (first === null) first = performance.now() - t0; } });
    llm.dispose();
    return { info, ttftMs: first };
  }, { model: MODEL, backend, quant });
  return { ...r, requests: (server.requests.get(MODEL) || 0) - before };
}

const rows = [];
for (const backend of backends) {
  const ctx = await browser.newContext();
  const page = await ctx.newPage();
  for (const load of ['first', 'reload']) {
    await page.goto(`${server.url}/web/tests/page.html`);
    await page.waitForFunction(() => window.lowbit !== undefined);
    const r = await once(page, backend);
    const row = {
      date: new Date().toISOString().slice(0, 10), commit, machine: `${os.cpus().length}core-${os.arch()}`,
      engine: 'lowbit', backend, quant, load, ttft_ms: r.ttftMs, load_ms: r.info.loadMs,
      bytes_fetched: r.info.bytesFetched, model_requests: r.requests,
      matrices_quantized: r.info.matricesQuantized, matrices_from_cache: r.info.matricesFromCache,
      chromium: browser.version(),
    };
    rows.push(row);
    process.stderr.write(`${backend} ${load}: TTFT ${(row.ttft_ms / 1000).toFixed(1)} s\n`);
    if (output) fs.appendFileSync(output, JSON.stringify(row) + '\n');
  }
  await ctx.close();
}
await browser.close();
await server.close();
console.log('| backend | load | time to first token s | load s | bytes fetched | model requests | matrices quantized | from cache |');
console.log('|---|---|---:|---:|---:|---:|---:|---:|');
for (const r of rows) {
  console.log(`| ${r.backend} | ${r.load} | ${(r.ttft_ms / 1000).toFixed(2)} | ${(r.load_ms / 1000).toFixed(2)} | ${r.bytes_fetched} | ${r.model_requests} | ${r.matrices_quantized} | ${r.matrices_from_cache} |`);
}
