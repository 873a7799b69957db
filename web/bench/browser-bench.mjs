#!/usr/bin/env node
// Browser benchmark: serves the repository and the models on 127.0.0.1, opens web/bench/bench.html in Debian's
// headless Chromium (Playwright), and has the page load each model and time a prefill and a greedy
// decode with each engine. Prints a markdown table; --output appends JSON lines. --help says more.
import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { appendFileSync, existsSync, readFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { startStaticServer } from './static-server.mjs';

const here = path.dirname(fileURLToPath(import.meta.url));
const repo = path.resolve(here, '../..');

// Each engine's models: the label of its quantization and the file under the models folder.
// `opts` go to the adapter's load() beside threads and backend. An engine listed here needs
// web/bench/engines/NAME.js (see bench.js for the adapter contract).
const ENGINES = {
  wllama: {
    models: [
      { quant: 'Q8_0', file: 'peer/smollm2-q8_0.gguf' },
      { quant: 'Q4_0', file: 'peer/smollm2-q4_0.gguf' },
      { quant: 'Q2_K', file: 'peer/smollm2-q2_k.gguf' },
    ],
    missing: 'run scripts/peer-reference.sh --browser-ggufs first',
  },
  lowbit: {
    // lowbit quantizes the same source GGUF to each precision at load (web/build.sh first).
    models: ['int8', 'int4', 'int2'].map((q) => ({ quant: q, file: 'SmolLM2-135M-Instruct.Q4_1.gguf', opts: { quant: q } })),
    missing: 'run scripts/fetch-models.sh smollm2 first',
  },
};

const HELP = `usage: node web/bench/browser-bench.mjs [options]

Times model load, prefill and greedy decode in headless Chromium (WebGPU = SwiftShader here,
CPU = wasm SIMD) for each engine x model x backend x thread count, one fresh page per row,
all in one browser run. Prints a markdown table; --output appends one JSON line per row.

Before the first run:
  (cd web/bench && npm ci)                      playwright-core and @wllama/wllama (pinned)
  scripts/peer-reference.sh --browser-ggufs     models/peer/smollm2-{q8_0,q4_0,q2_k}.gguf (wllama)

Options:
  --engines LIST      engines to run (default wllama; known: ${Object.keys(ENGINES).join(', ')})
  --quants LIST       only these quantizations (default: each engine's list; wllama Q8_0,Q4_0,Q2_K)
  --backends LIST     cpu and/or webgpu (default cpu)
  --threads LIST      thread counts (default 1,2); threads > 1 need cross-origin isolation
  --tokens N          greedy tokens to decode (default 32)
  --reps N            measured repetitions per row after one warm-up; medians are reported (default 3)
  --prompt-file FILE  prompt text (default: models/brown.txt, its first --prompt-lines lines)
  --prompt-lines N    lines of the prompt file to use (default 3: about 120 tokens)
  --models-dir DIR    models folder (default $LOWBIT_MODELS_DIR, else <repo>/models)
  --no-isolation      serve without COOP/COEP: no SharedArrayBuffer, so wasm runs on one thread
  --chromium PATH     browser binary (default $CHROMIUM, else /usr/lib/chromium/chromium)
  --machine NAME      machine label for the JSON lines (default <cores>core-<arch>, e.g. 2core-x86)
  --timeout S         seconds allowed per row (default 900)
  --output FILE       append one JSON line per row to FILE (.jsonl)
  --serve             only serve the page and models, print the URL, run until Ctrl-C
  --table FILE        print the table of the JSON lines in FILE (a past --output) and exit
  --verbose           print the page's console and failed requests
  -h, --help          this text

Figures are timed inside the page with performance.now(): prefill tok/s = prompt tokens / time
from the request to the first generated token; decode tok/s = (tokens - 1) / time from the
first to the last token; load s = fetch of the model over loopback + the engine's load.
An engine's own figures (e.g. llama.cpp's timings) go to the JSON lines beside them.`;

function die(msg) {
  process.stderr.write(`error: ${msg}\n`);
  process.exit(2);
}

function parseArgs(argv) {
  const o = {
    engines: ['wllama'],
    quants: null,
    backends: ['cpu'],
    threads: [1, 2],
    tokens: 32,
    reps: 3,
    promptFile: null,
    promptLines: 3,
    modelsDir: process.env.LOWBIT_MODELS_DIR || path.join(repo, 'models'),
    isolate: true,
    chromium: process.env.CHROMIUM || '/usr/lib/chromium/chromium',
    machine: `${os.cpus().length}core-${os.arch() === 'x64' ? 'x86' : os.arch()}`,
    timeout: 900,
    output: null,
    serve: false,
    table: null,
    verbose: false,
  };
  const list = (s) => s.split(',').map((x) => x.trim()).filter(Boolean);
  const int = (s, name) => {
    const n = Number(s);
    if (!Number.isInteger(n) || n < 1) die(`${name} wants a positive integer, got '${s}'`);
    return n;
  };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    const val = () => {
      if (i + 1 >= argv.length) die(`${a} needs a value (try --help)`);
      return argv[++i];
    };
    switch (a) {
      case '-h':
      case '--help':
        process.stdout.write(HELP + '\n');
        process.exit(0);
        break;
      case '--engines': o.engines = list(val()); break;
      case '--quants': o.quants = list(val()); break;
      case '--backends': o.backends = list(val()); break;
      case '--threads': o.threads = list(val()).map((t) => int(t, a)); break;
      case '--tokens': o.tokens = int(val(), a); break;
      case '--reps': o.reps = int(val(), a); break;
      case '--prompt-file': o.promptFile = val(); break;
      case '--prompt-lines': o.promptLines = int(val(), a); break;
      case '--models-dir': o.modelsDir = val(); break;
      case '--no-isolation': o.isolate = false; break;
      case '--chromium': o.chromium = val(); break;
      case '--machine': o.machine = val(); break;
      case '--timeout': o.timeout = int(val(), a); break;
      case '--output': o.output = val(); break;
      case '--serve': o.serve = true; break;
      case '--table': o.table = val(); break;
      case '--verbose': o.verbose = true; break;
      default: die(`unknown argument: ${a} (try --help)`);
    }
  }
  if (o.tokens < 2) die('--tokens must be at least 2 (decode is timed from the first token to the last)');
  for (const e of o.engines) if (!ENGINES[e]) die(`unknown engine ${e} (known: ${Object.keys(ENGINES).join(', ')})`);
  for (const b of o.backends) if (b !== 'cpu' && b !== 'webgpu') die(`unknown backend ${b} (cpu, webgpu)`);
  return o;
}

/** The rows to measure, checked against the files on disk before the browser starts. */
function planJobs(o) {
  const jobs = [];
  const missing = [];
  for (const engine of o.engines) {
    const models = ENGINES[engine].models.filter((m) => !o.quants || o.quants.includes(m.quant));
    if (models.length === 0) die(`--quants ${o.quants.join(',')} matches none of ${engine}'s models`);
    for (const m of models) {
      const file = path.join(o.modelsDir, m.file);
      if (!existsSync(file)) {
        missing.push(`${file} (${engine} ${m.quant}): ${ENGINES[engine].missing}`);
        continue;
      }
      for (const backend of o.backends) {
        for (const threads of o.threads) jobs.push({ engine, model: m, file, backend, threads });
      }
    }
  }
  if (o.engines.includes('lowbit') && !existsSync(path.join(repo, 'web/pkg/lowbit_web_bg.wasm'))) {
    missing.push('web/pkg/lowbit_web_bg.wasm (lowbit): run web/build.sh first');
  }
  if (missing.length) die(`model files missing:\n  ${missing.join('\n  ')}`);
  return jobs;
}

function readPrompt(o) {
  const file = o.promptFile ?? path.join(o.modelsDir, 'brown.txt');
  if (!existsSync(file)) die(`prompt file ${file} is missing: run scripts/fetch-models.sh, or give --prompt-file`);
  const lines = readFileSync(file, 'utf8').split('\n').filter((l) => l.trim());
  return lines.slice(0, o.promptLines).join('\n');
}

function sh(cmd, args) {
  try {
    return execFileSync(cmd, args, { cwd: repo, encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] }).trim();
  } catch {
    return null;
  }
}

function gitCommit() {
  const c = sh('git', ['rev-parse', '--short', 'HEAD']);
  if (!c) return 'unknown';
  return sh('git', ['status', '--porcelain', '--untracked-files=no'])?.length ? `${c}-dirty` : c;
}

function cpuModel() {
  try {
    const m = readFileSync('/proc/cpuinfo', 'utf8').match(/^model name\s*:\s*(.*)$/m);
    if (m) return m[1].trim();
  } catch {
    // not Linux: fall through
  }
  return os.cpus()[0]?.model ?? 'unknown';
}

async function loadPlaywright() {
  const pkg = path.join(here, 'node_modules');
  for (const dep of ['playwright-core', '@wllama/wllama']) {
    if (!existsSync(path.join(pkg, dep, 'package.json'))) {
      die(`${path.join(pkg, dep)} is missing: run (cd web/bench && npm ci) first`);
    }
  }
  return (await import('playwright-core')).chromium;
}

const fmt = (x, d = 1) => (x === null || x === undefined || Number.isNaN(x) ? '-' : x.toFixed(d));
// median, then the range over the repetitions when they differ (a shared machine shows here)
const withRange = (x, range) => (range && range[0] !== range[1] ? `${fmt(x)} (${fmt(range[0])}–${fmt(range[1])})` : fmt(x));

function tableOf(rows) {
  const head = [
    '| engine | model | quant | backend | threads (used) | isolated | load s | prefill tok/s (min–max) | decode tok/s (min–max) | tokens (prompt+gen) | engine-reported prefill / decode tok/s | load avg 1m |',
    '|---|---|---|---|---:|---|---:|---:|---:|---:|---:|---:|',
  ];
  const body = rows.map((r) => {
    if (r.error) {
      return `| ${r.engine} | ${r.model} | ${r.quant} | ${r.backend} | ${r.threads} | - | - | - | - | - | error: ${r.error.split('\n')[0]} | - |`;
    }
    return `| ${r.engine} | ${r.model} | ${r.quant} | ${r.backend} | ${r.threads} (${r.threads_used}) | ${r.cross_origin_isolated ? 'yes' : 'no'} | ${fmt(r.load_s, 2)} | ${withRange(r.prefill_tokens_per_s, r.prefill_range)} | ${withRange(r.decode_tokens_per_s, r.decode_range)} | ${r.prompt_tokens}+${r.gen_tokens} | ${fmt(r.engine_prefill_tokens_per_s)} / ${fmt(r.engine_decode_tokens_per_s)} | ${fmt(r.load_average_1m, 2)} |`;
  });
  return [...head, ...body].join('\n');
}

async function main() {
  const o = parseArgs(process.argv.slice(2));
  if (o.table) {
    if (!existsSync(o.table)) die(`${o.table} not found`);
    const rows = readFileSync(o.table, 'utf8').split('\n').filter((l) => l.trim()).map((l) => JSON.parse(l));
    process.stdout.write(tableOf(rows) + '\n');
    return;
  }
  const jobs = o.serve ? [] : planJobs(o);
  const prompt = o.serve ? '' : readPrompt(o);
  if (!o.serve && !existsSync(o.chromium)) {
    die(`Chromium not found at ${o.chromium}: apt-get install -y chromium, or give --chromium PATH`);
  }
  const chromium = o.serve ? null : await loadPlaywright();
  const log = o.verbose ? (l) => process.stderr.write(`[server] ${l}\n`) : () => {};
  const server = await startStaticServer({
    root: repo,
    modelsDir: o.modelsDir,
    isolate: o.isolate,
    log,
  });
  const pageUrl = `${server.url}/web/bench/bench.html`;
  if (o.serve) {
    process.stderr.write(`serving ${pageUrl} (models from ${o.modelsDir}${o.isolate ? ', cross-origin isolated' : ''}); Ctrl-C stops\n`);
    return;
  }

  const launch = () => chromium.launch({
    executablePath: o.chromium,
    headless: true,
    args: [
      '--no-sandbox', '--disable-gpu-sandbox', '--disable-dev-shm-usage', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync', '--enable-unsafe-webgpu',
    ],
  });
  let browser = await launch();
  const base = {
    date: new Date().toISOString().replace(/\.\d+Z$/, 'Z'),
    commit: gitCommit(),
    command: ['node', path.relative(repo, fileURLToPath(import.meta.url)), ...process.argv.slice(2)].join(' '),
    machine: o.machine,
    device: cpuModel(),
    browser: `Chromium ${browser.version()}`,
  };
  const promptSha = createHash('sha256').update(prompt).digest('hex').slice(0, 16);
  process.stderr.write(`${base.browser}, ${jobs.length} rows, ${o.reps} reps + 1 warm-up each, ${o.tokens} tokens, page ${pageUrl}\n`);

  const rows = [];
  try {
    for (const job of jobs) {
      const label = `${job.engine} ${job.model.quant} ${job.backend} t${job.threads}`;
      process.stderr.write(`  ${label} ...`);
      // a browser that died under the previous row must not take the remaining rows with it
      if (!browser.isConnected()) browser = await launch();
      const row = {
        ...base,
        engine: job.engine,
        model: path.basename(job.file),
        quant: job.model.quant,
        backend: job.backend,
        threads: job.threads,
      };
      const t0 = Date.now();
      let context = null;
      try {
        context = await browser.newContext();
        const page = await context.newPage();
        if (o.verbose) {
          page.on('console', (m) => process.stderr.write(`\n[page ${m.type()}] ${m.text()}`));
          page.on('pageerror', (e) => process.stderr.write(`\n[page error] ${e.message}`));
        }
        await page.goto(pageUrl);
        await page.waitForFunction(() => window.benchReady === true, null, { timeout: 60_000 });
        let timer;
        const timeout = new Promise((_, reject) => {
          timer = setTimeout(() => reject(new Error(`no result after --timeout ${o.timeout} s`)), o.timeout * 1000);
        });
        const run = page.evaluate((j) => window.benchRun(j), {
          engine: job.engine,
          modelUrl: `/models/${job.model.file}`,
          modelOpts: { ...(job.model.opts ?? {}), verbose: o.verbose },
          threads: job.threads,
          backend: job.backend,
          prompt,
          nTokens: o.tokens,
          reps: o.reps,
        });
        const r = await Promise.race([run, timeout]).finally(() => clearTimeout(timer));
        if (r.skipped) throw new Error(r.skipped);
        Object.assign(row, {
          version: r.version,
          threads_used: r.load.threads_used,
          cross_origin_isolated: r.env.cross_origin_isolated,
          config: {
            prompt_tokens: r.prompt_tokens,
            gen_tokens: r.gen_tokens,
            reps: o.reps,
            warm_up: 'whole prompt + 2 tokens',
            prompt_sha256_16: promptSha,
            prompt_lines: o.promptFile ? null : o.promptLines,
            isolation_headers: o.isolate,
          },
          prompt_tokens: r.prompt_tokens,
          gen_tokens: r.gen_tokens,
          load_s: r.load.ms / 1000,
          prefill_tokens_per_s: r.prefill_tokens_per_s,
          decode_tokens_per_s: r.decode_tokens_per_s,
          prefill_range: r.prefill_range,
          decode_range: r.decode_range,
          engine_prefill_tokens_per_s: r.engine_prefill_tokens_per_s,
          engine_decode_tokens_per_s: r.engine_decode_tokens_per_s,
          load: r.load,
          runs: r.runs,
          webgpu_adapter: r.env.webgpu,
          user_agent: r.env.user_agent,
          text: r.text,
        });
        process.stderr.write(` load ${fmt(row.load_s, 2)} s, prefill ${fmt(row.prefill_tokens_per_s)} tok/s, decode ${fmt(row.decode_tokens_per_s)} tok/s (${((Date.now() - t0) / 1000).toFixed(0)} s)\n`);
        // the machine may be shared: the 1-minute load average when the row ended, to judge the figures
        row.load_average_1m = os.loadavg()[0];
      } catch (e) {
        row.error = String(e?.message ?? e).replace(/^page\.evaluate: (Error: )?/, '');
        process.stderr.write(` error: ${row.error.split('\n')[0]}\n`);
      } finally {
        await context?.close().catch(() => {});
      }
      rows.push(row);
      if (o.output) appendFileSync(o.output, JSON.stringify(row) + '\n');
    }
  } finally {
    await browser.close();
    await server.close();
  }
  process.stdout.write(tableOf(rows) + '\n');
  if (rows.some((r) => r.error)) process.exit(1);
}

await main();
