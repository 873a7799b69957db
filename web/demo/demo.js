// The demo chat: runs the model in this page (lowbit's worker, WebGPU or the WASM-SIMD CPU
// backend) or talks to `lowbit serve` over the WebSocket protocol (SPEC §3).
import { WebGPUStreamingInference, detectCapabilities } from '../js/lowbit.js';

const $ = (id) => document.getElementById(id);
let llm = null;
let socket = null;
let generating = false;

function show(el, on) { el.hidden = !on; }

function say(cls, text) {
  const div = document.createElement('div');
  div.className = `msg ${cls}`;
  div.textContent = text;
  $('chat').append(div);
  $('chat').scrollTop = $('chat').scrollHeight;
  return div;
}

function describeCaps(c) {
  const a = c.adapter;
  const gpu = a ? `${a.name}${a.isFallbackAdapter ? ' (fallback adapter)' : ''}` : 'no WebGPU adapter';
  return `backend ${c.backend} — ${c.backendReason}; profile ${c.profile} (${c.profileReason}); ${gpu}; ` +
    `CPU kernels ${c.simd}, ${c.cpuThreads} thread${c.crossOriginIsolated ? ', cross-origin isolated' : ''}`;
}

function onProgress(p) {
  show($('progress-row'), true);
  const frac = p.total ? p.loaded / p.total : 0;
  $('progress').value = frac;
  const mb = (b) => (b / 1e6).toFixed(1);
  const what = {
    download: `downloading ${mb(p.loaded)} / ${mb(p.total)} MB`,
    cache: `reading from cache ${mb(p.loaded)} / ${mb(p.total)} MB`,
    quantize: `quantizing ${p.loaded} / ${p.total} ${p.detail}`,
    compile: 'compiling kernels',
  }[p.phase] || p.phase;
  $('progress-text').textContent = what;
}

function setBusy(on) {
  generating = on;
  $('send').disabled = on || (!llm && !socket);
  $('stop').disabled = !on;
}

function showStats(s) {
  const f = (v, d = 1) => (v === null || v === undefined ? '–' : Number(v).toFixed(d));
  $('stats').textContent = `TTFT ${f(s.timeToFirstTokenMs, 0)} ms · prefill ${f(s.prefillTokensPerSecond)} tok/s · ` +
    `decode ${f(s.tokensPerSecond)} tok/s · p50 ${f(s.latencyP50Ms)} ms · p95 ${f(s.latencyP95Ms)} ms · ` +
    `${s.generatedTokens} tokens · weights ${(s.memory.weightBytes / 1e6).toFixed(1)} MB · KV ${(s.memory.kvCacheBytes / 1e6).toFixed(1)} MB`;
}

async function loadLocal() {
  if (llm) llm.dispose();
  const file = $('model-file').files[0];
  const model = file || $('model-url').value;
  const config = { quantization: { method: $('precision').value }, runtime: { backend: $('backend').value } };
  $('model-info').textContent = 'loading…';
  llm = new WebGPUStreamingInference({ model, config, onProgress });
  try {
    const info = await llm.ready;
    $('caps').textContent = describeCaps(llm.capabilities);
    const fixes = llm.validation.corrections.map((c) => `${c.key}: ${c.old} → ${c.new} (${c.reason})`).join('; ');
    $('model-info').textContent = `${info.name}: ${info.layers} layers, ${info.weights} on ${info.backend}, ` +
      `${(info.weightBytes / 1e6).toFixed(1)} MB of weights, loaded in ${(info.loadMs / 1000).toFixed(1)} s` +
      `${info.fromCache ? ' from cache' : ''}${fixes ? ` — corrected: ${fixes}` : ''}`;
    show($('progress-row'), false);
  } catch (e) {
    $('model-info').textContent = '';
    say('error', `${e.code}: ${e.message}`);
    llm = null;
  }
  setBusy(false);
}

function connectServer() {
  if (socket) socket.close();
  socket = new WebSocket($('server-url').value);
  socket.onopen = () => setBusy(false);
  socket.onclose = () => { socket = null; setBusy(false); };
  socket.onerror = () => say('error', `cannot reach ${$('server-url').value}`);
  socket.onmessage = (ev) => {
    const m = JSON.parse(ev.data);
    if (m.type === 'init') $('model-info').textContent = `server: ${m.model_info.name} (${m.model_info.quantization})`;
    else if (m.type === 'token') socket.reply.textContent += m.token;
    else if (m.type === 'completion') {
      $('stats').textContent = `${m.usage.completion_tokens} tokens · finish ${m.finish_reason}`;
      setBusy(false);
    } else if (m.type === 'error') { say('error', `${m.error}: ${m.message}`); setBusy(false); }
  };
}

async function send(ev) {
  ev.preventDefault();
  const prompt = $('prompt').value;
  if (!prompt.trim() || generating) return;
  say('user', prompt);
  const reply = say('bot', '');
  setBusy(true);
  const maxTokens = Number($('max-tokens').value);
  const temperature = Number($('temperature').value);
  if (socket) {
    socket.reply = reply;
    socket.send(JSON.stringify({ type: 'config', prompt, max_tokens: maxTokens, temperature, options: { stream: true } }));
    return;
  }
  try {
    await llm.generate({
      prompt, maxTokens, temperature, chat: $('chat-template').checked,
      callback: (token) => {
        reply.textContent += token;
        showStats(llm.getPerformanceStats());
      },
    });
    showStats(llm.getPerformanceStats());
  } catch (e) {
    say('error', `${e.code}: ${e.message}`);
  }
  setBusy(false);
}

$('mode').onchange = () => {
  const server = $('mode').value === 'server';
  document.querySelectorAll('.local-only').forEach((e) => show(e, !server));
  document.querySelectorAll('.server-only').forEach((e) => show(e, server));
};
$('load').onclick = () => ($('mode').value === 'server' ? connectServer() : loadLocal());
$('ask').onsubmit = send;
$('stop').onclick = () => {
  if (socket) socket.send(JSON.stringify({ type: 'control', action: 'stop' }));
  else if (llm) llm.stop();
};
detectCapabilities({}).then((c) => ($('caps').textContent = describeCaps(c)), (e) => ($('caps').textContent = `${e.code}: ${e.message}`));
// The test harness drives the page through these.
window.demo = { loadLocal, send: () => $('ask').requestSubmit() };
