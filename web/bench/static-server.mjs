// A tiny static file server on 127.0.0.1 for the browser benchmark: the repository at `/` (pages
// under `/web/`) and a models folder at `/models/`, the same URLs as web/serve.mjs gives. With `isolate` it sends COOP/COEP (and CORP) headers, so the
// page is cross-origin isolated: SharedArrayBuffer and wasm threads work only then.
import { createReadStream } from 'node:fs';
import { stat } from 'node:fs/promises';
import { createServer } from 'node:http';
import path from 'node:path';

const TYPES = {
  '.html': 'text/html; charset=utf-8',
  '.js': 'text/javascript; charset=utf-8',
  '.mjs': 'text/javascript; charset=utf-8',
  '.json': 'application/json',
  '.wasm': 'application/wasm',
  '.txt': 'text/plain; charset=utf-8',
  '.css': 'text/css; charset=utf-8',
};

/** Maps a URL path onto a file below one of the roots, or null when it leaves them. */
function resolveFile(roots, urlPath) {
  let decoded;
  try {
    decoded = decodeURIComponent(urlPath);
  } catch {
    return null;
  }
  for (const [prefix, dir] of roots) {
    if (!decoded.startsWith(prefix)) continue;
    const file = path.resolve(dir, '.' + path.posix.normalize('/' + decoded.slice(prefix.length)));
    if (file === dir || file.startsWith(dir + path.sep)) return file;
    return null;
  }
  return null;
}

/**
 * Starts the server. `root` is served at `/`, `modelsDir` at `/models/`; `port` 0 picks a free
 * one. Resolves to `{url, close()}`; `log(line)` receives one line per request that failed.
 */
export async function startStaticServer({ root, modelsDir, isolate, port = 0, log = () => {} }) {
  const roots = [
    ['/models/', path.resolve(modelsDir)],
    ['/', path.resolve(root)],
  ];
  const server = createServer(async (req, res) => {
    const headers = { 'Cache-Control': 'no-store' };
    if (isolate) {
      headers['Cross-Origin-Opener-Policy'] = 'same-origin';
      headers['Cross-Origin-Embedder-Policy'] = 'require-corp';
      headers['Cross-Origin-Resource-Policy'] = 'same-origin';
    }
    const urlPath = new URL(req.url, 'http://127.0.0.1').pathname;
    const file = resolveFile(roots, urlPath.endsWith('/') ? urlPath + 'index.html' : urlPath);
    if (req.method !== 'GET' && req.method !== 'HEAD') {
      res.writeHead(405, headers).end();
      return;
    }
    let info = null;
    if (file) {
      try {
        info = await stat(file);
      } catch {
        info = null;
      }
    }
    if (!info || !info.isFile()) {
      log(`404 ${urlPath}`);
      res.writeHead(404, { ...headers, 'Content-Type': 'text/plain' }).end(`not found: ${urlPath}\n`);
      return;
    }
    headers['Content-Type'] = TYPES[path.extname(file)] ?? 'application/octet-stream';
    headers['Content-Length'] = info.size;
    res.writeHead(200, headers);
    if (req.method === 'HEAD') {
      res.end();
      return;
    }
    createReadStream(file)
      .on('error', (e) => {
        log(`read error ${file}: ${e.message}`);
        res.destroy(e);
      })
      .pipe(res);
  });
  await new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, '127.0.0.1', resolve);
  });
  const { port: actual } = server.address();
  return {
    url: `http://127.0.0.1:${actual}`,
    close: () => new Promise((resolve) => server.close(resolve)),
  };
}
