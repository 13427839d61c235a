// app.js: the demo page. Loads a bundle (checksums verified first), runs it with ONNX Runtime Web and shows top-k
// labels or a forecast next to the truth, with a latency readout. ?bundle=URL picks a bundle; ?auto=CASES.json runs
// a fixed set of images (tests), writes the results into #report and POSTs them to ?report=URL when given.
// ?trust=URL[,URL] names public keys (kdmobile keygen's NAME.pub): a bundle must then be signed by one of them.
import * as ort from './ort/ort.wasm.min.mjs';
import {
  BundleError, denormaliseFrames, imageTensor, latencyStats, loadBundle, normaliseFrames, retrievalHead, topK,
} from './kdcore.js';
import { trustKeys } from './kdsign.js';

ort.env.wasm.wasmPaths = new URL('./ort/', window.location.href).href;
ort.env.wasm.numThreads = 1; // no cross-origin isolation in a WebView: single-threaded wasm SIMD
ort.env.wasm.proxy = false;

const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(window.location.search);
const LATENCY_RUNS = Number(params.get('runs') || 20);
let current = null; // {manifest, session, classVectors, labels}

/** fetch + JSON with the URL named when it fails. */
async function getJSON(url) {
  const res = await fetch(url, { cache: 'no-store' });
  if (!res.ok) throw new Error(`${url}: HTTP ${res.status}`);
  return res.json();
}

function status(text, isError = false) {
  $('status').textContent = text;
  $('status').className = isError ? 'error' : '';
}

/** Decode an image (Blob) to RGBA bytes at its natural size: no scaling, no colour conversion. */
async function decode(blob) {
  const bmp = await createImageBitmap(blob, { colorSpaceConversion: 'none', premultiplyAlpha: 'none' });
  const canvas = document.createElement('canvas');
  canvas.width = bmp.width;
  canvas.height = bmp.height;
  const ctx = canvas.getContext('2d', { willReadFrequently: true });
  ctx.drawImage(bmp, 0, 0);
  return { rgba: ctx.getImageData(0, 0, bmp.width, bmp.height).data, width: bmp.width, height: bmp.height, bmp };
}

let trusted = null; // Map of trusted public keys from ?trust=, loaded once

async function trustedKeys() {
  if (trusted === null && params.get('trust')) {
    const pems = [];
    for (const u of params.get('trust').split(',')) {
      const res = await fetch(u, { cache: 'no-store' });
      if (!res.ok) throw new BundleError(`trust key ${u}: HTTP ${res.status}`);
      pems.push(await res.text());
    }
    trusted = await trustKeys(pems);
  }
  return trusted;
}

async function openBundle(url) {
  const { manifest, files } = await loadBundle(url, fetch, await trustedKeys());
  const session = await ort.InferenceSession.create(new Uint8Array(files[manifest.model_file]),
    { executionProviders: ['wasm'] });
  const b = { manifest, session };
  if (manifest.head === 'retrieval') Object.assign(b, retrievalHead(manifest, files));
  return b;
}

async function run(b, data) {
  const feeds = { [b.session.inputNames[0]]: new ort.Tensor('float32', data, b.manifest.input.shape) };
  const out = await b.session.run(feeds);
  return out[b.session.outputNames[0]].data;
}

/** Mean and p90 of LATENCY_RUNS timed model calls on one input (after one warm-up call). */
async function measure(b, data) {
  await run(b, data);
  const ms = [];
  for (let i = 0; i < LATENCY_RUNS; i++) {
    const t0 = performance.now();
    await run(b, data);
    ms.push(performance.now() - t0);
  }
  const s = latencyStats(ms);
  $('latency').textContent = `model latency over ${s.runs} runs: mean ${s.mean_ms.toFixed(2)} ms, ` +
    `p90 ${s.p90_ms.toFixed(2)} ms (${b.manifest.precision}, wasm)`;
  return s;
}

async function classify(b, blob, k = 5) {
  const img = await decode(blob);
  const tensor = imageTensor(b.manifest, img.rgba, img.width, img.height);
  const emb = await run(b, tensor);
  const top = topK(emb, b.classVectors, b.labels, b.manifest.retrieval.logit_scale, k);
  const ctx = $('preview').getContext('2d');
  ctx.clearRect(0, 0, 128, 128);
  ctx.drawImage(img.bmp, 0, 0, 128, 128);
  $('topk').replaceChildren(...top.map((t) => {
    const li = document.createElement('li');
    li.textContent = `${t.label}  ${(100 * t.probability).toFixed(1)}%`;
    return li;
  }));
  return { top, tensor };
}

function drawFrame(canvas, frames, t, h, w, lo, hi) {
  canvas.width = w;
  canvas.height = h;
  const ctx = canvas.getContext('2d');
  const im = ctx.createImageData(w, h);
  for (let i = 0; i < h * w; i++) {
    const v = Math.min(1, Math.max(0, (frames[t * h * w + i] - lo) / (hi - lo || 1)));
    im.data[i * 4] = 255 * v; im.data[i * 4 + 1] = 255 * (1 - Math.abs(2 * v - 1)); im.data[i * 4 + 2] = 255 * (1 - v);
    im.data[i * 4 + 3] = 255;
  }
  ctx.putImageData(im, 0, 0);
}

async function forecast(b, sample) {
  const fc = b.manifest.forecast;
  const y = denormaliseFrames(await run(b, normaliseFrames(sample.x, fc.mean, fc.std)), fc.mean, fc.std);
  const { height: h, width: w } = sample;
  let lo = Infinity; let hi = -Infinity;
  for (const v of sample.truth) { lo = Math.min(lo, v); hi = Math.max(hi, v); }
  let err = 0;
  for (let i = 0; i < y.length; i++) err += (y[i] - sample.truth[i]) ** 2;
  $('error').textContent = `forecast MSE vs truth: ${(err / y.length).toExponential(3)}`;
  const show = () => {
    const t = Number($('frame').value);
    drawFrame($('truth'), sample.truth, t, h, w, lo, hi);
    drawFrame($('pred'), y, t, h, w, lo, hi);
  };
  $('frame').max = String(fc.frames_out - 1);
  $('frame').oninput = show;
  show();
  return y;
}

async function select(url, sampleUrl) {
  status(`verifying ${url} ...`);
  current = null;
  current = await openBundle(url);
  const m = current.manifest;
  $('retrieval').hidden = m.head !== 'retrieval';
  $('forecast').hidden = m.head !== 'forecast';
  status(`${url}: ${m.task}, ${m.target} ${m.precision}; checksums${trusted ? ' and signature' : ''} verified`);
  const shape = m.input.shape;
  const latency = await measure(current, new Float32Array(shape.reduce((a, b) => a * b, 1)));
  let sample = null;
  if (m.head === 'forecast' && sampleUrl) {
    sample = await getJSON(sampleUrl);
    current.forecastOut = await forecast(current, sample);
  }
  return latency;
}

async function autoRun(bundleUrl, casesUrl) {
  const cases = await getJSON(casesUrl);
  const latency = await select(bundleUrl, cases.sample);
  const report = { ok: true, manifest: { head: current.manifest.head, task: current.manifest.task, precision: current.manifest.precision },
    latency, user_agent: navigator.userAgent };
  if (current.manifest.head === 'retrieval') {
    report.results = [];
    for (const url of cases.images || []) {
      const { top, tensor } = await classify(current, await (await fetch(url)).blob(), cases.k || 5);
      report.results.push({ input: url, top_k: top });
      if ((cases.tensors || []).includes(url)) (report.tensors ||= {})[url] = Array.from(tensor);
    }
  } else {
    report.forecast = Array.from(current.forecastOut);
  }
  return report;
}

async function main() {
  const bundleParam = params.get('bundle');
  if (params.get('auto')) {
    let report;
    try {
      report = await autoRun(bundleParam, params.get('auto'));
    } catch (e) {
      report = { ok: false, error: e.message, kind: e instanceof BundleError ? 'bundle' : 'runtime' };
      status(e.message, true);
    }
    $('report').textContent = JSON.stringify(report);
    $('report').hidden = false;
    if (params.get('report')) await fetch(params.get('report'), { method: 'POST', body: JSON.stringify(report) });
    return;
  }
  const index = await getJSON('bundles/index.json');
  const sel = $('bundle');
  sel.replaceChildren(...index.map((e) => new Option(`${e.name} (${e.task}, ${e.precision})`, e.name)));
  const pick = async () => {
    const e = index.find((x) => x.name === sel.value);
    try {
      await select(`bundles/${e.name}/`, e.sample);
    } catch (err) {
      status(err.message, true);
    }
  };
  sel.onchange = pick;
  $('file').onchange = async () => {
    if (!current || !$('file').files.length) return;
    try { await classify(current, $('file').files[0]); } catch (err) { status(err.message, true); }
  };
  if (bundleParam) sel.value = bundleParam;
  if (index.length) await pick(); else status('no bundles in bundles/index.json', true);
}

main().catch((e) => status(e.message, true));
