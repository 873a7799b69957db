#!/usr/bin/env node
// lowbit's browser tests: Debian's headless Chromium (WebGPU on SwiftShader), driven by
// playwright-core, against the pages served by web/serve.mjs. Every test runs the real engine
// (web/pkg, built by web/build.sh) on the real model; references come from the native build in
// the same run (target/release/lowbit).
//
//   node web/tests/run.mjs [--filter NAME] [--headed-screenshot-only]
// Needs: web/build.sh done, `npm ci` in web/, /usr/lib/chromium/chromium, models/ fetched,
// target/release/lowbit built.
import { chromium } from 'playwright-core';
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { startServer } from '../serve.mjs';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
const CHROMIUM = process.env.CHROMIUM || '/usr/lib/chromium/chromium';
const MODELS = process.env.LOWBIT_MODELS_DIR || path.join(ROOT, 'models');
const MODEL_FILE = 'SmolLM2-135M-Instruct.Q4_1.gguf';
const PROMPT = 'The capital of France is';
const N_TOKENS = 16;
const SAFARI_UA = 'Mozilla/5.0 (Macintosh; Intel Mac OS X 14_7) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/18.1 Safari/605.1.15';

function need(cond, msg) {
  if (!cond) {
    console.error(`error: ${msg}`);
    process.exit(2);
  }
}

const args = process.argv.slice(2);
if (args.includes('--help')) {
  console.log(fs.readFileSync(fileURLToPath(import.meta.url), 'utf8').split('\n').slice(1, 9).join('\n'));
  process.exit(0);
}
const fi = args.indexOf('--filter');
const filter = fi >= 0 ? args[fi + 1] : '';
need(fs.existsSync(CHROMIUM), `${CHROMIUM} not found (apt-get install chromium)`);
need(fs.existsSync(path.join(ROOT, 'web/pkg/lowbit_web_bg.wasm')), 'web/pkg missing: run web/build.sh');
need(fs.existsSync(path.join(MODELS, MODEL_FILE)), `${MODELS}/${MODEL_FILE} missing: scripts/fetch-models.sh smollm2`);
const NATIVE = path.join(path.resolve(ROOT, process.env.CARGO_TARGET_DIR || 'target'), 'release/lowbit');
need(fs.existsSync(NATIVE), `${NATIVE} missing: cargo build --release`);

// Served paths: the model under /models/ (a symlink-free copy is not needed: the server reads
// the repository, and LOWBIT_MODELS_DIR may point elsewhere, so serve it through a link).
const modelsLink = path.join(ROOT, 'web/tests/.models');
if (path.resolve(MODELS) !== path.join(ROOT, 'models')) {
  fs.rmSync(modelsLink, { force: true, recursive: true });
  fs.symlinkSync(path.resolve(MODELS), modelsLink);
}
const MODEL_PATH = path.resolve(MODELS) === path.join(ROOT, 'models') ? `/models/${MODEL_FILE}` : `/web/tests/.models/${MODEL_FILE}`;

/** The native CPU backend's greedy tokens for the same prompt and precision. */
function nativeTokens(quant, kernels) {
  const out = execFileSync(NATIVE, ['generate', '--backend', 'cpu', '--quant', quant, '--temperature', '0',
    '--set', `backend.cpu.kernels=${kernels}`,
    '-n', String(N_TOKENS), '--json', '--model', path.join(MODELS, MODEL_FILE), '--prompt', PROMPT],
  { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'], env: { ...process.env, HOME: process.env.HOME || '/tmp' } });
  return JSON.parse(out).tokens;
}

const server = await startServer({});
const browser = await chromium.launch({
  executablePath: CHROMIUM,
  args: ['--no-sandbox', '--disable-gpu-sandbox', '--disable-dev-shm-usage', '--disable-quic', '--no-first-run',
    '--disable-background-networking', '--disable-component-update', '--disable-sync', '--enable-unsafe-webgpu'],
});

async function openPage(ctx) {
  const page = await (ctx || browser).newPage();
  page.on('console', (m) => { if (m.type() === 'error') console.error(`  [page] ${m.text()}`); });
  page.on('pageerror', (e) => console.error(`  [page error] ${e.message}`));
  await page.goto(`${server.url}/web/tests/page.html`);
  await page.waitForFunction(() => window.lowbit !== undefined);
  return page;
}

const tests = [];
const test = (name, fn) => tests.push({ name, fn });
const eq = (a, b, what) => {
  if (JSON.stringify(a) !== JSON.stringify(b)) throw new Error(`${what}: got ${JSON.stringify(a)}, want ${JSON.stringify(b)}`);
};
const ok = (c, what) => { if (!c) throw new Error(what); };

test('registrations', async () => {
  const page = await openPage();
  const r = await page.evaluate(() => window.lowbit.registrations());
  ok(r.adapters.includes('llama'), `llama adapter registered: ${JSON.stringify(r)}`);
  ok(r.backends.includes('webgpu') && r.backends.includes('cpu'), `backends: ${r.backends}`);
  ok(r.profiles.includes('safari') && r.profiles.includes('chrome'), `profiles: ${r.profiles}`);
  await page.close();
});

test('capabilities', async () => {
  const page = await openPage();
  const c = await page.evaluate(() => window.lowbit.detectCapabilities({}));
  eq(c.backend, 'webgpu', 'backend');
  ok(c.adapter && c.adapter.backend === 'BrowserWebGpu', `adapter: ${JSON.stringify(c.adapter)}`);
  eq(c.profile, 'chrome', 'profile from the user agent');
  eq(c.simd, 'simd128', 'CPU kernels');
  const cpu = await page.evaluate(() => window.lowbit.detectCapabilities({ runtime: { backend: 'cpu' } }));
  eq(cpu.backend, 'cpu', 'forced CPU backend');
  await page.close();
});

for (const backend of ['webgpu', 'cpu']) {
  test(`conformance-${backend}`, async () => {
    const page = await openPage();
    const r = await page.evaluate((b) => window.lowbit.runConformance({ runtime: { backend: b } }), backend);
    eq(r.backend.name, backend, 'backend');
    const failed = r.results.filter((x) => !x.passed);
    console.log(`  ${r.results.length} cases on ${backend} (${r.backend.device}), ${failed.length} failed`);
    ok(r.results.length > 100, `the whole suite ran (${r.results.length} cases)`);
    ok(failed.length === 0, `failed: ${failed.map((x) => `${x.op} ${x.shape} ${x.format}: ${x.error || x.nmse}`).join('; ')}`);
    await page.close();
  });
}

// Greedy decoding against the native CPU backend. A 135M model at 4 bits meets near-ties
// (two tokens within a fraction of a logit) within a few tokens, where kernels that sum in
// another order (AVX2 vs simd128 vs GPU; natively, AVX2 vs scalar already differ) pick
// differently and every later token follows. So: the page's 16 tokens must equal the native
// ones up to the first near-tie, and, teacher-forced on the native continuation, every native
// token must be the page's choice or within NEAR_TIE logits of it. With the portable kernels
// on both sides the 16 tokens must be equal outright.
const NEAR_TIE = 0.5;
for (const [backend, kernels] of [['webgpu', 'auto'], ['cpu', 'auto'], ['cpu', 'scalar']]) {
  test(`greedy-int4-${backend}-${kernels}`, async () => {
    const want = nativeTokens('int4', kernels);
    const page = await openPage();
    const got = await page.evaluate(async ({ model, backend, kernels, prompt, n, want }) => {
      const llm = new window.lowbit.WebGPUStreamingInference({ model, config: { runtime: { backend }, quantization: { method: 'int4' }, backend: { cpu: { kernels } } } });
      await llm.ready;
      const r = await llm.generateDetailed({ prompt, maxTokens: n, temperature: 0 });
      const score = await llm.score(prompt, want);
      const caps = await llm.detectCapabilities();
      llm.dispose();
      return { tokens: r.tokens, text: r.text, backend: caps.backend, score };
    }, { model: MODEL_PATH, backend, kernels, prompt: PROMPT, n: N_TOKENS, want });
    eq(got.backend, backend, 'backend');
    const same = got.tokens.findIndex((t, i) => t !== want[i]);
    const agree = same < 0 ? want.length : same;
    const gaps = got.score.map((s) => s.gap);
    console.log(`  ${backend}/${kernels}: ${JSON.stringify(got.text)}; equal for ${agree}/${want.length} tokens; ` +
      `teacher-forced gaps ${gaps.map((g) => g.toFixed(2)).join(' ')}`);
    if (kernels === 'scalar') {
      eq(got.tokens, want, '16 greedy tokens, portable kernels in the page and natively');
      return;
    }
    gaps.forEach((g, i) => ok(g <= NEAR_TIE, `native token ${i} (${want[i]}) is ${g.toFixed(3)} logits below the page's choice ${got.score[i].argmax}`));
    if (agree < want.length) {
      ok(gaps[agree] > 0 || got.score[agree].argmax !== want[agree], 'a divergence where the teacher-forced choice agrees');
      ok(gaps[agree] <= NEAR_TIE, `first divergence at token ${agree} is a near-tie`);
    }
    await page.close();
  });
}

test('stop-and-reuse', async () => {
  const page = await openPage();
  const r = await page.evaluate(async ({ model, prompt }) => {
    const llm = new window.lowbit.WebGPUStreamingInference({ model, config: { runtime: { backend: 'cpu' }, quantization: { method: 'int4' } } });
    await llm.ready;
    let n = 0;
    let atStop = -1;
    const first = await llm.generateDetailed({
      prompt, maxTokens: 64, temperature: 0,
      callback: () => { n += 1; if (n === 3) { atStop = n; llm.stop(); } },
    });
    const second = await llm.generateDetailed({ prompt, maxTokens: 4, temperature: 0 });
    llm.dispose();
    return { first: { finish: first.finishReason, tokens: first.tokens.length, callbacks: n, atStop }, second: { finish: second.finishReason, tokens: second.tokens.length } };
  }, { model: MODEL_PATH, prompt: PROMPT });
  eq(r.first.finish, 'cancelled', 'finish reason after stop()');
  ok(r.first.tokens <= r.first.atStop + 1, `ended within one token of stop(): ${JSON.stringify(r.first)}`);
  eq(r.second, { finish: 'length', tokens: 4 }, 'the worker generates again afterwards');
  await page.close();
});

test('truncated-gguf', async () => {
  const page = await openPage();
  const r = await page.evaluate(async ({ model, prompt }) => {
    const whole = await (await fetch(model)).arrayBuffer();
    const cut = new Blob([whole.slice(0, Math.floor(whole.byteLength / 3))]);
    let code = null;
    let message = '';
    const llm = new window.lowbit.WebGPUStreamingInference({ config: { runtime: { backend: 'cpu' } } });
    try {
      await llm.load(cut);
    } catch (e) {
      code = e.code;
      message = e.message;
    }
    // The same engine still loads the whole model and generates.
    await llm.load(new Blob([whole]));
    const text = await llm.generate({ prompt, maxTokens: 2, temperature: 0 });
    llm.dispose();
    return { code, message, text, alive: document.getElementById('status').textContent };
  }, { model: MODEL_PATH, prompt: PROMPT });
  eq(r.code, 'MODEL_LOADING_FAILED', `error code (${r.message})`);
  ok(r.text.length > 0, 'generation after the failed load');
  eq(r.alive, 'ready', 'the page stays usable');
  await page.close();
});

test('safari-config-corrected', async () => {
  const page = await openPage();
  const v = await page.evaluate((ua) => window.lowbit.validateConfiguration({ quantization: { method: 'int2' } }, { browser: ua }), SAFARI_UA);
  eq(v.profile, 'safari', 'profile from the Safari user agent');
  eq(v.status, 'corrected', 'status');
  const c = v.corrections.find((x) => x.key === 'quantization.method');
  ok(c && c.old === '"int2"' && c.new === '"int4"' && c.reason.length > 0, `correction: ${JSON.stringify(v.corrections)}`);
  eq(v.corrected.quantization.method, 'int4', 'corrected config');
  const bad = await page.evaluate(() => window.lowbit.validateConfiguration({ runtime: { threads: 'many' } }, { browser: 'chrome' }));
  eq(bad.status, 'invalid', 'a mistyped value is an error');
  await page.close();
});

test('cached-reload', async () => {
  const ctx = await browser.newContext();
  const page = await openPage(ctx);
  const before = server.requests.get(MODEL_PATH) || 0;
  const run = () => page.evaluate(async ({ model }) => {
    const llm = new window.lowbit.WebGPUStreamingInference({ model, config: { runtime: { backend: 'cpu' } } });
    const info = await llm.ready;
    llm.dispose();
    return info;
  }, { model: MODEL_PATH });
  const first = await run();
  const afterFirst = server.requests.get(MODEL_PATH) || 0;
  await page.reload();
  await page.waitForFunction(() => window.lowbit !== undefined);
  const second = await run();
  const afterSecond = server.requests.get(MODEL_PATH) || 0;
  console.log(`  first load ${first.loadMs.toFixed(0)} ms (${first.bytesFetched} bytes fetched, ${first.matricesQuantized} matrices quantized), ` +
    `reload ${second.loadMs.toFixed(0)} ms (${second.bytesFetched} bytes fetched, ${second.matricesFromCache} matrices from cache)`);
  eq(afterFirst - before, 1, 'the first load fetches the model once');
  eq(afterSecond - afterFirst, 0, 'the reload makes no request for the model');
  ok(second.fromCache && second.bytesFetched === 0, `reload from Cache Storage: ${JSON.stringify(second)}`);
  ok(first.matricesQuantized > 0 && first.matricesFromCache === 0, `the first load quantizes: ${JSON.stringify(first)}`);
  eq([second.matricesFromCache, second.matricesQuantized], [first.matricesQuantized, 0], 'the reload quantizes nothing');
  await ctx.close();
});

test('demo-screenshot', async () => {
  const page = await browser.newPage({ viewport: { width: 1100, height: 760 } });
  page.on('pageerror', (e) => console.error(`  [page error] ${e.message}`));
  await page.goto(`${server.url}/web/demo/`);
  await page.fill('#model-url', MODEL_PATH);
  // The in-page CPU backend: SwiftShader's WebGPU takes seconds per token here.
  await page.selectOption('#backend', 'cpu');
  await page.click('#load');
  await page.waitForFunction(() => !document.getElementById('send').disabled, null, { timeout: 600000 });
  await page.fill('#max-tokens', '48');
  await page.click('#send');
  // Mid-generation: some tokens are out and Stop is still enabled.
  await page.waitForFunction(() => {
    const bots = document.querySelectorAll('.msg.bot');
    return bots.length && bots[bots.length - 1].textContent.length > 12 && !document.getElementById('stop').disabled;
  }, null, { timeout: 600000 });
  const out = path.join(ROOT, 'docs/browser-demo.png');
  await page.screenshot({ path: out });
  const stats = await page.textContent('#stats');
  ok(/decode [0-9.]+ tok\/s/.test(stats), `live statistics shown: ${stats}`);
  await page.click('#stop');
  await page.waitForFunction(() => document.getElementById('stop').disabled, null, { timeout: 600000 });
  console.log(`  screenshot: ${path.relative(ROOT, out)}`);
  await page.close();
});

let failed = 0;
const t0 = Date.now();
for (const t of tests) {
  if (filter && !t.name.includes(filter)) continue;
  const s = Date.now();
  try {
    await t.fn();
    console.log(`ok   ${t.name} (${((Date.now() - s) / 1000).toFixed(1)} s)`);
  } catch (e) {
    failed += 1;
    console.log(`FAIL ${t.name}: ${e.message}`);
  }
}
await browser.close();
await server.close();
console.log(`${failed ? 'FAILED' : 'passed'}: ${failed} failed, ${((Date.now() - t0) / 1000).toFixed(0)} s`);
process.exit(failed ? 1 : 0);
