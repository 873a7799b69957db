#!/usr/bin/env node
// A static server for lowbit's pages: serves the repository (web/ and models/) on loopback,
// cross-origin isolated (COOP/COEP) unless --no-isolation, and counts requests per path (the
// tests check that a cached model is not fetched again).
//
//   node web/serve.mjs [--port 8080] [--no-isolation]     then open the printed demo URL
import http from 'node:http';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');

const TYPES = {
  '.html': 'text/html; charset=utf-8',
  '.js': 'text/javascript; charset=utf-8',
  '.mjs': 'text/javascript; charset=utf-8',
  '.css': 'text/css; charset=utf-8',
  '.json': 'application/json',
  '.wasm': 'application/wasm',
  '.png': 'image/png',
  '.svg': 'image/svg+xml',
  '.gguf': 'application/octet-stream',
};

/**
 * Starts the server. Resolves with `{url, requests, close}`; `requests` maps a path to the
 * number of GET requests for it.
 */
export function startServer({ port = 0, isolate = true, root = ROOT } = {}) {
  const requests = new Map();
  const server = http.createServer((req, res) => {
    const url = new URL(req.url, 'http://localhost');
    let rel = decodeURIComponent(url.pathname);
    if (rel.endsWith('/')) rel += 'index.html';
    requests.set(rel, (requests.get(rel) || 0) + 1);
    const file = path.resolve(root, '.' + rel);
    const headers = { 'Cache-Control': 'no-store' };
    if (isolate) {
      headers['Cross-Origin-Opener-Policy'] = 'same-origin';
      headers['Cross-Origin-Embedder-Policy'] = 'require-corp';
      headers['Cross-Origin-Resource-Policy'] = 'same-origin';
    }
    if (!file.startsWith(root + path.sep) && file !== root) {
      res.writeHead(403, headers).end('forbidden');
      return;
    }
    fs.stat(file, (err, st) => {
      if (err || !st.isFile()) {
        res.writeHead(404, headers).end('not found');
        return;
      }
      headers['Content-Type'] = TYPES[path.extname(file)] || 'application/octet-stream';
      headers['Content-Length'] = st.size;
      res.writeHead(200, headers);
      if (req.method === 'HEAD') {
        res.end();
        return;
      }
      fs.createReadStream(file).pipe(res);
    });
  });
  return new Promise((resolve, reject) => {
    server.on('error', reject);
    server.listen(port, '127.0.0.1', () => {
      const url = `http://127.0.0.1:${server.address().port}`;
      resolve({ url, requests, close: () => new Promise((r) => server.close(r)) });
    });
  });
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  const args = process.argv.slice(2);
  if (args.includes('--help') || args.includes('-h')) {
    console.log('usage: node web/serve.mjs [--port N] [--no-isolation]\n' +
      'Serves the repository on 127.0.0.1 (web/ pages, models/ files) and prints the demo URL.\n' +
      'Build the engine first: web/build.sh');
    process.exit(0);
  }
  const i = args.indexOf('--port');
  const port = i >= 0 ? Number(args[i + 1]) : 8080;
  if (!fs.existsSync(path.join(ROOT, 'web/pkg/lowbit_web_bg.wasm'))) {
    console.error('error: web/pkg is missing: run web/build.sh first');
    process.exit(1);
  }
  const s = await startServer({ port, isolate: !args.includes('--no-isolation') });
  console.log(`lowbit demo: ${s.url}/web/demo/`);
}
