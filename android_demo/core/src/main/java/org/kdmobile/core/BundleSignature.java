package org.kdmobile.core;

import java.io.IOException;
import java.math.BigInteger;
import java.security.GeneralSecurityException;
import java.security.KeyFactory;
import java.security.MessageDigest;
import java.security.PublicKey;
import java.security.Signature;
import java.security.interfaces.ECPublicKey;
import java.security.spec.X509EncodedKeySpec;
import java.util.Collections;
import java.util.LinkedHashMap;
import java.util.Map;

import org.json.JSONException;
import org.json.JSONObject;

/**
 * bundle.sig as kdmobile.signing writes it: an ECDSA P-256 / SHA-256 signature of bundle.sha256's bytes, raw r||s,
 * base64 in a small JSON file. Verified with java.security only (no java.util.Base64: the app compiles against the
 * API-23 android.jar), before the manifest is read.
 */
public final class BundleSignature {
    public static final String FILE = "bundle.sig";
    public static final String ALGORITHM = "ECDSA-P256-SHA256";
    /** kdmobile.signing.MAX_SIGNATURE_BYTES and MAX_KEY_BYTES. */
    public static final int MAX_BYTES = 4096;
    public static final int MAX_KEY_BYTES = 16 * 1024;
    /** The group order of NIST P-256 (secp256r1): other 256-bit curves (secp256k1, brainpool) are refused. */
    private static final BigInteger P256_ORDER = new BigInteger(
            "FFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551", 16);

    private BundleSignature() {
    }

    /** A key's short name: the first 16 hex digits of sha256 of its DER SubjectPublicKeyInfo (kdmobile.signing.key_id). */
    public static String keyId(PublicKey key) {
        try {
            return Bytes.hex(MessageDigest.getInstance("SHA-256").digest(key.getEncoded())).substring(0, 16);
        } catch (GeneralSecurityException e) {
            throw new IllegalStateException("SHA-256 is not available", e);
        }
    }

    /** Trusted keys by id, from PEM public keys (kdmobile keygen's NAME.pub); a malformed or non-P-256 key is refused. */
    public static Map<String, PublicKey> trust(String... pems) throws BundleException {
        Map<String, PublicKey> keys = new LinkedHashMap<String, PublicKey>();
        for (String pem : pems) {
            PublicKey key = publicKey(pem);
            keys.put(keyId(key), key);
        }
        return Collections.unmodifiableMap(keys);
    }

    private static PublicKey publicKey(String pem) throws BundleException {
        if (pem.length() > MAX_KEY_BYTES) {
            throw new BundleException("trust key: over the " + MAX_KEY_BYTES + "-byte limit");
        }
        String body = pem.replace("-----BEGIN PUBLIC KEY-----", "").replace("-----END PUBLIC KEY-----", "")
                .replaceAll("\\s", "");
        try {
            PublicKey key = KeyFactory.getInstance("EC").generatePublic(
                    new X509EncodedKeySpec(Bytes.base64(body)));
            if (!(key instanceof ECPublicKey) || !P256_ORDER.equals(((ECPublicKey) key).getParams().getOrder())) {
                throw new BundleException("trust key: not an ECDSA P-256 public key");
            }
            return key;
        } catch (IllegalArgumentException | GeneralSecurityException e) {
            throw new BundleException("trust key: not a PEM public key (" + e.getMessage() + ")");
        }
    }

    /**
     * Refuse (BundleException) unless the source's bundle.sig is a valid signature of `seal` (bundle.sha256's bytes)
     * by one of the `trusted` keys; returns the signer's key id. Messages match kdmobile.signing.verify_signature.
     */
    public static String verify(FileSource source, byte[] seal, Map<String, PublicKey> trusted)
            throws BundleException {
        if (!Checksums.present(source).contains(FILE)) {
            throw new BundleException("not signed (" + FILE + " missing) but a trust key was given");
        }
        JSONObject doc;
        try {
            String text = new String(Bytes.readLimited(source, FILE, MAX_BYTES), Bytes.UTF8);
            if (BundleManifest.jsonDepth(text) > BundleManifest.MAX_JSON_DEPTH) { // org.json recurses
                throw new BundleException(FILE + ": JSON nested too deeply (limit " + BundleManifest.MAX_JSON_DEPTH + ")");
            }
            doc = new JSONObject(text);
        } catch (IOException | JSONException e) {
            throw new BundleException(FILE + " is malformed (" + e.getMessage() + ")");
        }
        if (!ALGORITHM.equals(doc.optString("algorithm"))) {
            throw new BundleException(FILE + " is not an " + ALGORITHM + " signature");
        }
        byte[] raw;
        try {
            raw = Bytes.base64(doc.optString("signature"));
        } catch (IllegalArgumentException e) {
            raw = new byte[0];
        }
        if (raw.length != 64) {
            throw new BundleException(FILE + " is malformed (expected a base64 64-byte r||s signature)");
        }
        String kid = doc.optString("key_id");
        if (!kid.matches("[0-9a-f]{16}")) {
            throw new BundleException(FILE + " is malformed (key_id must be 16 hex digits)");
        }
        PublicKey key = trusted.get(kid);
        if (key == null) {
            throw new BundleException("signed by key " + kid + ", which is not a trusted key (trusted: "
                    + trusted.keySet().toString().replaceAll("^\\[|\\]$", "") + ")");
        }
        try {
            Signature v = Signature.getInstance("SHA256withECDSA");
            v.initVerify(key);
            v.update(seal);
            if (v.verify(der(raw))) {
                return kid;
            }
        } catch (GeneralSecurityException e) {
            // a signature the provider cannot even parse is as wrong as one that does not verify
        }
        throw new BundleException("signature by key " + kid + " does not match " + Seal.FILE
                + " (the bundle was changed or re-sealed after signing)");
    }

    /** Raw r||s (WebCrypto's and kdmobile's form) as the DER SEQUENCE java.security expects. */
    static byte[] der(byte[] raw) {
        byte[] r = new BigInteger(1, java.util.Arrays.copyOfRange(raw, 0, 32)).toByteArray();
        byte[] s = new BigInteger(1, java.util.Arrays.copyOfRange(raw, 32, 64)).toByteArray();
        byte[] out = new byte[6 + r.length + s.length];
        out[0] = 0x30;
        out[1] = (byte) (4 + r.length + s.length); // at most 4 + 33 + 33 = 70: short-form length
        out[2] = 0x02;
        out[3] = (byte) r.length;
        System.arraycopy(r, 0, out, 4, r.length);
        out[4 + r.length] = 0x02;
        out[5 + r.length] = (byte) s.length;
        System.arraycopy(s, 0, out, 6 + r.length, s.length);
        return out;
    }
}
