// Debug aid: loads the model in the page with the given config and prints progress and timings.
//   node web/tests/debug-load.mjs '{"runtime":{"backend":"webgpu"}}' [maxTokens]
import { chromium } from 'playwright-core';
import { startServer } from '../serve.mjs';
const config = JSON.parse(process.argv[2] || '{}');
const n = Number(process.argv[3] || 4);
const server = await startServer({});
const browser = await chromium.launch({ executablePath: '/usr/lib/chromium/chromium',
  args: ['--no-sandbox', '--disable-gpu-sandbox', '--disable-dev-shm-usage', '--disable-quic', '--no-first-run',
    '--disable-background-networking', '--disable-component-update', '--disable-sync', '--enable-unsafe-webgpu'] });
const page = await browser.newPage();
page.on('console', (m) => console.log(`[page ${m.type()}] ${m.text()}`));
await page.goto(`${server.url}/web/tests/page.html`);
await page.waitForFunction(() => window.lowbit !== undefined);
const r = await page.evaluate(async ({ config, n }) => {
  const t0 = performance.now();
  let last = '';
  const llm = new window.lowbit.WebGPUStreamingInference({ model: '/models/SmolLM2-135M-Instruct.Q4_1.gguf', config,
    onProgress: (p) => { const s = `${p.phase}`; if (s !== last) { console.log(`${(performance.now() - t0).toFixed(0)} ms: ${s} ${p.loaded}/${p.total} ${p.detail}`); last = s; } } });
  const info = await llm.ready;
  console.log(`${(performance.now() - t0).toFixed(0)} ms: loaded`);
  const out = await llm.generateDetailed({ prompt: 'The capital of France is', maxTokens: n, temperature: 0,
    callback: (t) => console.log(`${(performance.now() - t0).toFixed(0)} ms: token ${JSON.stringify(t)}`) });
  return { info, stats: out.stats, text: out.text };
}, { config, n });
console.log(JSON.stringify(r, null, 1));
await browser.close();
await server.close();
