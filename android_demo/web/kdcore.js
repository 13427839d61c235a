// kdcore.js: the bundle contract in the browser, dependency-free (no DOM, no runtime): manifest checks, the
// bundle.sha256 seal and WebCrypto checksums (in kdmobile.bundle.load_bundle's order), preprocessing bit-exact
// with kdmobile.runtime.predictors (Pillow bilinear resize, no centre crop), cosine top-k and forecast
// (de)normalisation. Shared by the web demo, the Android WebView and the tests.

import { verifySignature } from './kdsign.js';

export const SCHEMA_VERSION = 3; // 2: sealed by bundle.sha256; 3: head + task (kdmobile/contracts/manifest.py)
export const MANIFEST = 'manifest.json';
export const SEAL = 'bundle.sha256';
const MAX_SEAL_BYTES = 4 << 20; // kdmobile.bundle._read_seal
const MAX_JSON_BYTES = 1 << 20; // kdmobile.untrusted.MAX_JSON_BYTES
const MAX_JSON_DEPTH = 32; // kdmobile.untrusted.MAX_JSON_DEPTH
const PRECISION_BITS = 22; // Pillow's 8-bit resampling: 32 - 8 - 2
/** kdmobile.contracts.manifest's limits, as manifest.schema.json states them (a test compares the two). */
export const LIMITS = Object.freeze({
  MAX_DIM: 16384, MAX_INPUT_ELEMENTS: 2 ** 26, MAX_CLASSES: 100000, MAX_EMBED_DIM: 65536,
  MAX_CLASS_VECTOR_ELEMENTS: 2 ** 28,
});

/** A bundle problem (bad manifest, changed or missing file): shown to the user, reported by the tests. */
export class BundleError extends Error {}

/** Check the manifest fields the page needs; throws BundleError naming the problem. */
export function checkManifest(m) {
  const need = (cond, what) => { if (!cond) throw new BundleError(`manifest.json: ${what}`); };
  need(m && typeof m === 'object', 'not a JSON object');
  need(m.schema_version === SCHEMA_VERSION, `schema_version ${m.schema_version}; this page reads ${SCHEMA_VERSION}`);
  need(m.target === 'onnx', `target ${m.target}: this page runs ONNX bundles (ONNX Runtime Web)`);
  need(typeof m.model_file === 'string' && m.files && m.files[m.model_file], 'model_file is not listed in files');
  for (const [rel, digest] of Object.entries(m.files)) {
    need(!rel.startsWith('/') && !rel.split('/').includes('..'), `files entry ${rel} escapes the bundle`);
    need(typeof digest === 'string' && digest.length === 64, `files entry ${rel} should map to a sha256 hex digest`);
  }
  const inp = m.input || {};
  const L = LIMITS;
  need(dimsOk(inp.shape, [L.MAX_DIM, L.MAX_DIM, L.MAX_DIM, L.MAX_DIM], L.MAX_INPUT_ELEMENTS),
    `input.shape must be 4 integers in 1..${L.MAX_DIM} with at most ${L.MAX_INPUT_ELEMENTS} values`);
  const vr = inp.value_range;
  need(Array.isArray(vr) && vr.length === 2 && vr.every(finite) && vr[0] < vr[1],
    'input.value_range must be two finite numbers, low < high');
  need(Array.isArray(inp.mean) && inp.mean.length > 0 && inp.mean.every(finite),
    'input.mean must be finite numbers');
  need(Array.isArray(inp.std) && inp.std.length === inp.mean.length && inp.std.every(positive),
    'input.std must be finite numbers > 0, one per mean');
  if (m.head === 'retrieval') {
    need(m.task === 'classes' || m.task === 'captions', `retrieval task ${m.task} (expected classes or captions)`);
    const cv = m.retrieval.class_vectors;
    need(positive(m.retrieval.logit_scale),
      'retrieval.logit_scale must be a finite number > 0');
    need(dimsOk(cv.shape, [L.MAX_CLASSES, L.MAX_EMBED_DIM], L.MAX_CLASS_VECTOR_ELEMENTS),
      `retrieval.class_vectors.shape must be [1..${L.MAX_CLASSES}, 1..${L.MAX_EMBED_DIM}] within the limits`);
    need(inp.layout === 'NCHW' && inp.mean.length === inp.shape[1] && inp.std.length === inp.shape[1],
      'a retrieval input must be NCHW with one mean/std per channel');
    need((inp.resize || 'bilinear') === 'bilinear', `input.resize ${inp.resize} is not supported (bilinear)`);
    need(cv.dtype === 'float32' && cv.byte_order === 'little', 'class vectors must be little-endian float32');
    need(m.files[cv.file] && m.files[m.retrieval.labels_file], 'class vectors and labels must be listed in files');
  } else {
    const fc = m.forecast;
    need(m.head === 'forecast' && m.task === 'forecast' && fc, `unknown head ${m.head} (task ${m.task})`);
    need(dimsOk([fc.frames_in], [L.MAX_DIM], L.MAX_DIM) && dimsOk([fc.frames_out], [L.MAX_DIM], L.MAX_DIM),
      `forecast.frames_in and frames_out must be integers in 1..${L.MAX_DIM}`);
    need(finite(fc.mean) && positive(fc.std), 'forecast.mean must be finite and std a finite number > 0');
  }
  return m;
}

const FLOAT32_MAX = 3.4028234663852886e38; // kdmobile.contracts.manifest: numbers float32 holds
const FLOAT32_MIN_NORMAL = 1.1754943508222875e-38; // a smaller std or scale is 0 once cast
const finite = (v) => typeof v === 'number' && Number.isFinite(v) && Math.abs(v) <= FLOAT32_MAX;
const positive = (v) => finite(v) && v >= FLOAT32_MIN_NORMAL;

/** Whether `shape` holds limits.length integers, each in 1..its limit, with at most maxElements values in all. */
function dimsOk(shape, limits, maxElements) {
  if (!Array.isArray(shape) || shape.length !== limits.length) return false;
  if (!shape.every((d, i) => Number.isInteger(d) && d >= 1 && d <= limits[i])) return false;
  return shape.reduce((a, b) => a * b, 1) <= maxElements;
}

/** A retrieval bundle's class vectors and labels, checked against the manifest's shape (BundleError otherwise). */
export function retrievalHead(manifest, files) {
  const r = manifest.retrieval;
  const [k, d] = r.class_vectors.shape;
  const raw = files[r.class_vectors.file];
  if (raw.byteLength !== 4 * k * d) {
    throw new BundleError(`${r.class_vectors.file} holds ${raw.byteLength} bytes, expected ${4 * k * d}`);
  }
  const labels = parseJson(files[r.labels_file], r.labels_file);
  if (!Array.isArray(labels) || labels.length !== k || !labels.every((s) => typeof s === 'string')) {
    throw new BundleError(`${r.labels_file} should list ${k} class names`);
  }
  return { classVectors: littleEndianFloats(raw), labels };
}

/** Lower-case hex sha256 of an ArrayBuffer (WebCrypto; needs a secure context: https or 127.0.0.1). */
export async function sha256Hex(buffer) {
  const d = new Uint8Array(await crypto.subtle.digest('SHA-256', buffer));
  return Array.from(d, (b) => b.toString(16).padStart(2, '0')).join('');
}

/** Nesting depth of JSON text, scanned without parsing (so a hostile manifest cannot exhaust the stack). */
export function jsonDepth(text) {
  let depth = 0;
  let deepest = 0;
  let inString = false;
  for (let i = 0; i < text.length; i++) {
    const c = text[i];
    if (inString) {
      if (c === '\\') i++;
      else if (c === '"') inString = false;
    } else if (c === '"') {
      inString = true;
    } else if (c === '{' || c === '[') {
      depth++;
      deepest = Math.max(deepest, depth);
    } else if (c === '}' || c === ']') {
      depth--;
    }
  }
  return deepest;
}

/** Parse JSON bytes as kdmobile.untrusted.parse_json does: strict UTF-8, depth limit; BundleError naming `where`. */
export function parseJson(buffer, where) {
  let text;
  try {
    text = new TextDecoder('utf-8', { fatal: true, ignoreBOM: true }).decode(buffer); // a BOM stays: refused
  } catch (e) {
    throw new BundleError(`${where}: not valid JSON (not UTF-8)`);
  }
  if (jsonDepth(text) > MAX_JSON_DEPTH) {
    throw new BundleError(`${where}: JSON nested too deeply (limit ${MAX_JSON_DEPTH})`);
  }
  try {
    return JSON.parse(text);
  } catch (e) {
    throw new BundleError(`${where}: not valid JSON (${e.message})`);
  }
}

/** bundle.sha256 text as a Map {relative path: hex digest}; BundleError when malformed or missing manifest.json. */
export function parseSeal(text) {
  const seal = new Map();
  const lines = text.split(/\r\n|[\n\r\v\f\x1c\x1d\x1e\x85\u2028\u2029]/); // Python's str.splitlines
  if (lines.length && lines[lines.length - 1] === '') lines.pop(); // splitlines() drops the final newline
  for (const line of lines) {
    const at = line.indexOf('  ');
    const digest = at < 0 ? '' : line.slice(0, at);
    const rel = line.slice(at + 2);
    if (at < 0 || !/^[0-9a-f]{64}$/.test(digest) || seal.has(rel)) {
      throw new BundleError(`${SEAL} is malformed (expected 'SHA256  PATH' lines)`);
    }
    seal.set(rel, digest);
  }
  if (!seal.has(MANIFEST)) throw new BundleError(`${SEAL} does not cover ${MANIFEST}`);
  return seal;
}

/** One bundle file's bytes, refused (named) when missing or over `maxBytes`. */
async function fetchBytes(fetchFn, base, rel, maxBytes = Infinity) {
  const r = await fetchFn(`${base}${rel}`, { cache: 'no-store' });
  if (!r.ok) throw new BundleError(`bundle file ${rel} is missing or unreadable (HTTP ${r.status})`);
  const declared = Number(r.headers && r.headers.get ? r.headers.get('Content-Length') : NaN);
  if (declared > maxBytes) {
    throw new BundleError(`${rel}: ${declared} bytes, over the ${maxBytes}-byte limit (refused unread)`);
  }
  const buf = await r.arrayBuffer();
  if (buf.byteLength > maxBytes) {
    throw new BundleError(`${rel}: ${buf.byteLength} bytes, over the ${maxBytes}-byte limit`);
  }
  return buf;
}

/** For an unsealed bundle: the schema-version refusal when its manifest states another version (else nothing). */
async function oldSchema(fetchFn, base) {
  let found;
  try {
    found = parseJson(await fetchBytes(fetchFn, base, MANIFEST, MAX_JSON_BYTES), MANIFEST).schema_version;
  } catch (e) {
    return;
  }
  if (found !== SCHEMA_VERSION) {
    throw new BundleError(`${MANIFEST}: schema_version ${found}; this page reads ${SCHEMA_VERSION} ` +
      '(re-export the bundle with this kdmobile version)');
  }
}

/**
 * Fetch a sealed bundle and verify it before use, in kdmobile.bundle.load_bundle's order: bundle.sha256; the
 * manifest's digest against the seal (before parsing it); size/depth limits; the manifest's fields; the seal and
 * the manifest list the same files with the same digests; every file's bytes. Returns {manifest, files}.
 * With `trusted` keys (kdsign.js trustKeys), bundle.sig must be a signature of the seal by one of them, checked
 * right after the seal is read.
 */
export async function loadBundle(baseUrl, fetchFn = fetch, trusted = null) {
  const base = baseUrl.endsWith('/') ? baseUrl : `${baseUrl}/`;
  const sealRes = await fetchFn(`${base}${SEAL}`, { cache: 'no-store' });
  if (!sealRes.ok) {
    await oldSchema(fetchFn, base);
    throw new BundleError(`bundle ${base}: ${SEAL} missing (HTTP ${sealRes.status}; the bundle is not sealed; ` +
      're-export it with this kdmobile version)');
  }
  const sealBuf = await sealRes.arrayBuffer();
  if (sealBuf.byteLength > MAX_SEAL_BYTES) {
    throw new BundleError(`${SEAL}: ${sealBuf.byteLength} bytes, over the ${MAX_SEAL_BYTES}-byte limit`);
  }
  const seal = parseSeal(new TextDecoder('utf-8').decode(sealBuf));
  if (trusted) await verifySignature(fetchFn, base, sealBuf, trusted);
  const raw = await fetchBytes(fetchFn, base, MANIFEST, MAX_JSON_BYTES);
  if (await sha256Hex(raw) !== seal.get(MANIFEST)) {
    throw new BundleError(`${MANIFEST} changed after export (its digest does not match ${SEAL})`);
  }
  const manifest = checkManifest(parseJson(raw, MANIFEST));
  const listed = new Set([...Object.keys(manifest.files), MANIFEST]);
  if (seal.size !== listed.size || ![...listed].every((rel) => seal.has(rel))) {
    throw new BundleError(`${SEAL} and ${MANIFEST} list different files`);
  }
  const files = {};
  for (const [rel, want] of Object.entries(manifest.files)) {
    if (seal.get(rel) !== want) {
      throw new BundleError(`checksum mismatch for ${rel}: ${MANIFEST} and ${SEAL} give different digests`);
    }
    const buf = await fetchBytes(fetchFn, base, rel);
    const got = await sha256Hex(buf);
    if (got !== want) {
      throw new BundleError(`checksum mismatch for ${rel}: the manifest says ${want.slice(0, 12)}..., ` +
        `the file has ${got.slice(0, 12)}...`);
    }
    files[rel] = buf;
  }
  return { manifest, files };
}

function bilinear(x) {
  const a = Math.abs(x);
  return a < 1.0 ? 1.0 - a : 0.0;
}

/** Pillow's precompute_coeffs + normalize_coeffs_8bpc (bilinear, full source box). */
export function coeffs(inSize, outSize) {
  const scale = inSize / outSize;
  const filterscale = Math.max(scale, 1.0);
  const support = 1.0 * filterscale;
  const ksize = Math.ceil(support) * 2 + 1;
  const bounds = new Int32Array(outSize * 2);
  const weights = new Int32Array(outSize * ksize);
  const k = new Float64Array(ksize);
  for (let xx = 0; xx < outSize; xx++) {
    const center = (xx + 0.5) * scale;
    const ss = 1.0 / filterscale;
    let ww = 0.0;
    const xmin = Math.max(Math.trunc(center - support + 0.5), 0);
    const xmax = Math.min(Math.trunc(center + support + 0.5), inSize) - xmin;
    for (let x = 0; x < xmax; x++) {
      k[x] = bilinear((x + xmin - center + 0.5) * ss);
      ww += k[x];
    }
    for (let x = 0; x < ksize; x++) {
      const v = x < xmax ? (ww !== 0.0 ? k[x] / ww : k[x]) : 0.0;
      weights[xx * ksize + x] = v < 0 ? Math.trunc(-0.5 + v * (1 << PRECISION_BITS))
        : Math.trunc(0.5 + v * (1 << PRECISION_BITS));
    }
    bounds[xx * 2] = xmin;
    bounds[xx * 2 + 1] = xmax;
  }
  return { ksize, bounds, weights };
}

function clip8(ss) {
  const v = Math.floor(ss / (1 << PRECISION_BITS));
  return v < 0 ? 0 : (v > 255 ? 255 : v);
}

/** Resize one 8-bit plane exactly as Pillow's Image.resize(..., BILINEAR): horizontal pass, then vertical. */
export function resizePlane(src, w, h, outW, outH) {
  let cur = src;
  let curW = w;
  if (outW !== w) {
    const c = coeffs(w, outW);
    const tmp = new Uint8Array(outW * h);
    for (let y = 0; y < h; y++) {
      for (let xx = 0; xx < outW; xx++) {
        const xmin = c.bounds[xx * 2];
        const xmax = c.bounds[xx * 2 + 1];
        let ss = 1 << (PRECISION_BITS - 1);
        for (let x = 0; x < xmax; x++) ss += cur[y * curW + x + xmin] * c.weights[xx * c.ksize + x];
        tmp[y * outW + xx] = clip8(ss);
      }
    }
    cur = tmp;
    curW = outW;
  }
  if (outH !== h) {
    const c = coeffs(h, outH);
    const tmp = new Uint8Array(curW * outH);
    for (let yy = 0; yy < outH; yy++) {
      const ymin = c.bounds[yy * 2];
      const ymax = c.bounds[yy * 2 + 1];
      for (let xx = 0; xx < curW; xx++) {
        let ss = 1 << (PRECISION_BITS - 1);
        for (let y = 0; y < ymax; y++) ss += cur[(y + ymin) * curW + xx] * c.weights[yy * c.ksize + y];
        tmp[yy * curW + xx] = clip8(ss);
      }
    }
    cur = tmp;
  }
  return cur === src ? Uint8Array.from(src) : cur;
}

/** RGBA bytes (canvas ImageData order) to planes: R, G, B, or Pillow's L for 1-channel models. */
export function planes(rgba, channels) {
  const n = rgba.length / 4;
  if (channels === 3) {
    const out = [new Uint8Array(n), new Uint8Array(n), new Uint8Array(n)];
    for (let i = 0; i < n; i++) for (let c = 0; c < 3; c++) out[c][i] = rgba[i * 4 + c];
    return out;
  }
  if (channels === 1) {
    const l = new Uint8Array(n);
    for (let i = 0; i < n; i++) {
      l[i] = (rgba[i * 4] * 19595 + rgba[i * 4 + 1] * 38470 + rgba[i * 4 + 2] * 7471 + 0x8000) >>> 16;
    }
    return [l];
  }
  throw new BundleError(`images must have 1 or 3 channels, not ${channels}`);
}

/** The model input (1, C, H, W) float32 NCHW: resize, scale value_range to [0, 1], (x - mean) / std in float32. */
export function imageTensor(manifest, rgba, w, h) {
  const [, channels, outH, outW] = manifest.input.shape;
  const f = Math.fround;
  const lo = f(manifest.input.value_range[0]);
  const span = f(f(manifest.input.value_range[1]) - lo);
  const out = new Float32Array(channels * outH * outW);
  planes(rgba, channels).forEach((plane, c) => {
    const p = resizePlane(plane, w, h, outW, outH);
    const mean = f(manifest.input.mean[c]);
    const std = f(manifest.input.std[c]);
    const base = c * outH * outW;
    for (let i = 0; i < p.length; i++) out[base + i] = f(f(f(p[i] - lo) / span) - mean) / std;
  });
  return out;
}

/** Little-endian float32 values of class_vectors.f32. */
export function littleEndianFloats(buffer) {
  const view = new DataView(buffer);
  const out = new Float32Array(buffer.byteLength / 4);
  for (let i = 0; i < out.length; i++) out[i] = view.getFloat32(i * 4, true);
  return out;
}

/** Per class (index, label, probability), best first: softmax(logit_scale x embedding . class vector). */
export function topK(embedding, classVectors, labels, logitScale, k) {
  const n = labels.length;
  const dim = classVectors.length / n;
  const z = new Float64Array(n);
  for (let c = 0; c < n; c++) {
    let s = 0.0;
    for (let d = 0; d < dim; d++) s += embedding[d] * classVectors[c * dim + d];
    z[c] = logitScale * s;
  }
  const max = Math.max(...z);
  const e = Array.from(z, (v) => Math.exp(v - max));
  const sum = e.reduce((a, b) => a + b, 0);
  const order = e.map((v, i) => i).sort((a, b) => e[b] - e[a] || a - b); // stable: ties keep the lower index
  return order.slice(0, Math.min(k, n)).map((i) => ({ index: i, label: labels[i], probability: e[i] / sum }));
}

/** (x - mean) / std in float32, as ForecastPredictor feeds the model. */
export function normaliseFrames(x, mean, std) {
  const f = Math.fround;
  const m = f(mean);
  const s = f(std);
  return Float32Array.from(x, (v) => f(f(v) - m) / s);
}

/** y * std + mean in float32: the model's normalised forecast back in physical units. */
export function denormaliseFrames(y, mean, std) {
  const f = Math.fround;
  const m = f(mean);
  const s = f(std);
  return Float32Array.from(y, (v) => f(f(v) * s) + m);
}

/** Mean and p90 (nearest rank) of latencies in milliseconds. */
export function latencyStats(ms) {
  const sorted = [...ms].sort((a, b) => a - b);
  const mean = ms.reduce((a, b) => a + b, 0) / ms.length;
  return { runs: ms.length, mean_ms: mean, p90_ms: sorted[Math.ceil(0.9 * sorted.length) - 1] };
}
