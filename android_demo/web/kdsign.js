// kdsign.js: bundle.sig in the browser (WebCrypto only), as kdmobile.signing writes it: an ECDSA P-256 / SHA-256
// signature of bundle.sha256's bytes, raw r||s, base64 in a small JSON file. Refusal messages match Python's and
// the Java core's (BundleSignature).
import { BundleError, SEAL, parseJson, sha256Hex } from './kdcore.js';

export const SIGNATURE = 'bundle.sig';
export const ALGORITHM = 'ECDSA-P256-SHA256';
const MAX_SIGNATURE_BYTES = 4096; // kdmobile.signing.MAX_SIGNATURE_BYTES
const MAX_KEY_BYTES = 16 * 1024; // kdmobile.signing.MAX_KEY_BYTES
const EC = { name: 'ECDSA', namedCurve: 'P-256' };

/** Strict standard base64 with padding, as Python (validate=True) and the Java core accept it. */
function base64Bytes(text) {
  if (text.length % 4 !== 0 || !/^[A-Za-z0-9+/]*={0,2}$/.test(text)) throw new Error('not strict base64');
  const bin = atob(text);
  return Uint8Array.from(bin, (c) => c.charCodeAt(0));
}

/** Trusted keys by id (first 16 hex digits of sha256 of the DER SubjectPublicKeyInfo) from PEM public keys. */
export async function trustKeys(pems) {
  const keys = new Map();
  for (const pem of pems) {
    if (pem.length > MAX_KEY_BYTES) throw new BundleError(`trust key: over the ${MAX_KEY_BYTES}-byte limit`);
    let der;
    let key;
    try {
      key = await crypto.subtle.importKey('spki',
        base64Bytes(pem.replace(/-----(BEGIN|END) PUBLIC KEY-----/g, '').replace(/\s/g, '')), EC, true, ['verify']);
      der = await crypto.subtle.exportKey('spki', key); // re-encoded, as Python and Java hash it
    } catch (e) {
      throw new BundleError(`trust key: not a PEM ECDSA P-256 public key (${e.message})`);
    }
    keys.set((await sha256Hex(der)).slice(0, 16), key);
  }
  return keys;
}

/** Refuse (BundleError) unless base/bundle.sig signs `sealBuf` (bundle.sha256's bytes) by one of `trusted`. */
export async function verifySignature(fetchFn, base, sealBuf, trusted) {
  const r = await fetchFn(`${base}${SIGNATURE}`, { cache: 'no-store' });
  if (!r.ok) throw new BundleError(`not signed (${SIGNATURE} missing) but a trust key was given`);
  if (Number(r.headers && r.headers.get ? r.headers.get('Content-Length') : NaN) > MAX_SIGNATURE_BYTES) {
    throw new BundleError(`${SIGNATURE}: over the ${MAX_SIGNATURE_BYTES}-byte limit (refused unread)`);
  }
  const buf = await r.arrayBuffer();
  if (buf.byteLength > MAX_SIGNATURE_BYTES) {
    throw new BundleError(`${SIGNATURE}: ${buf.byteLength} bytes, over the ${MAX_SIGNATURE_BYTES}-byte limit`);
  }
  const doc = parseJson(buf, SIGNATURE);
  if (!doc || doc.algorithm !== ALGORITHM) throw new BundleError(`${SIGNATURE} is not an ${ALGORITHM} signature`);
  if (typeof doc.key_id !== 'string' || !/^[0-9a-f]{16}$/.test(doc.key_id)) {
    throw new BundleError(`${SIGNATURE} is malformed (key_id must be 16 hex digits)`);
  }
  let sig;
  try {
    sig = base64Bytes(String(doc.signature || ''));
  } catch (e) {
    sig = new Uint8Array(0);
  }
  if (sig.length !== 64) {
    throw new BundleError(`${SIGNATURE} is malformed (expected a base64 64-byte r||s signature)`);
  }
  const key = trusted.get(doc.key_id);
  if (!key) {
    throw new BundleError(`signed by key ${doc.key_id}, which is not a trusted key ` +
      `(trusted: ${[...trusted.keys()].join(', ')})`);
  }
  if (!await crypto.subtle.verify({ name: 'ECDSA', hash: 'SHA-256' }, key, sig, sealBuf)) {
    throw new BundleError(`signature by key ${doc.key_id} does not match ${SEAL} ` +
      '(the bundle was changed or re-sealed after signing)');
  }
  return doc.key_id;
}
