package org.kdmobile.core;

import java.io.IOException;
import java.nio.ByteBuffer;
import java.nio.charset.CharacterCodingException;
import java.nio.charset.CodingErrorAction;
import java.util.Collections;
import java.util.Iterator;
import java.util.LinkedHashMap;
import java.util.Map;
import java.util.Set;

import org.json.JSONArray;
import org.json.JSONException;
import org.json.JSONObject;

/** The fields of a kdmobile manifest.json (schema 3, sealed) that a phone-side runner needs, checked on parse. */
public final class BundleManifest {
    /** 2: sealed by bundle.sha256, no unlisted files or links; 3: head + task (kdmobile/contracts/manifest.py). */
    public static final int SCHEMA_VERSION = 3;
    /** kdmobile.untrusted.MAX_JSON_BYTES and MAX_JSON_DEPTH. */
    public static final int MAX_JSON_BYTES = 1 << 20;
    public static final int MAX_JSON_DEPTH = 32;
    /** Limits of kdmobile.contracts.manifest (shipped in manifest.schema.json; a test compares them). */
    public static final int MAX_DIM = 16384;
    public static final long MAX_INPUT_ELEMENTS = 1L << 26;
    public static final int MAX_CLASSES = 100000;
    public static final int MAX_EMBED_DIM = 65536;
    public static final long MAX_CLASS_VECTOR_ELEMENTS = 1L << 28;

    /** What the bundle outputs: retrieval or forecast. */
    public final String head;
    /** What its outputs are scored as: classes or captions (retrieval), forecast. */
    public final String task;
    public final String target;
    public final String precision;
    public final String modelFile;
    public final String inputName;
    public final int[] inputShape;
    public final String layout;
    public final float[] valueRange;
    public final float[] mean;
    public final float[] std;
    public final String resize;
    /** Relative path to lower-case sha256, in manifest order. */
    public final Map<String, String> files;
    /** bundle.sha256: relative path to lower-case sha256, manifest.json included (checked by Checksums.verify). */
    public final Map<String, String> seal;
    // retrieval
    public final String classVectorsFile;
    public final int numClasses;
    public final int embedDim;
    public final double logitScale;
    public final String labelsFile;
    // forecast
    public final int framesIn;
    public final int framesOut;
    public final double forecastMean;
    public final double forecastStd;

    private BundleManifest(JSONObject m, Map<String, String> seal) throws JSONException, BundleException {
        this.seal = seal;
        checkSchema(m.opt("schema_version"));
        head = m.getString("head");
        task = m.getString("task");
        target = m.getString("target");
        precision = m.getString("precision");
        modelFile = m.getString("model_file");
        JSONObject in = m.getJSONObject("input");
        inputName = in.getString("name");
        inputShape = dims(in.getJSONArray("shape"), new int[] {MAX_DIM, MAX_DIM, MAX_DIM, MAX_DIM},
                MAX_INPUT_ELEMENTS, "input.shape");
        layout = in.getString("layout");
        valueRange = floats(in.getJSONArray("value_range"), "input.value_range");
        mean = floats(in.getJSONArray("mean"), "input.mean");
        std = floats(in.getJSONArray("std"), "input.std");
        if (valueRange.length != 2 || !(valueRange[0] < valueRange[1])) {
            throw new BundleException("manifest.json: input.value_range must be two finite numbers, low < high");
        }
        if (mean.length == 0 || mean.length != std.length) {
            throw new BundleException("manifest.json: input.mean and std must have one entry per channel");
        }
        for (int c = 0; c < std.length; c++) {
            if (!(std[c] >= Float.MIN_NORMAL)) { // smaller is 0 or denormal in float32: a division by nothing
                throw new BundleException("manifest.json: input.std must be finite numbers > 0");
            }
        }
        resize = in.optString("resize", "bilinear");
        JSONObject f = m.getJSONObject("files");
        Map<String, String> listed = new LinkedHashMap<String, String>();
        Iterator<?> keys = f.keys(); // raw Iterator in older org.json (Android's)
        while (keys.hasNext()) {
            String k = (String) keys.next();
            if (k.startsWith("/") || k.equals("..") || k.startsWith("../") || k.contains("/../")) {
                throw new BundleException("manifest.json: files entry " + k + " escapes the bundle");
            }
            String digest = f.getString(k);
            if (digest.length() != 64) {
                throw new BundleException("manifest.json: files entry " + k + " should map to a sha256 hex digest");
            }
            listed.put(k, digest);
        }
        files = Collections.unmodifiableMap(listed);
        if (!files.containsKey(modelFile)) {
            throw new BundleException("manifest.json: model_file " + modelFile + " is not listed in files");
        }
        if (inputShape.length != 4) {
            throw new BundleException("manifest.json: input.shape should have 4 entries");
        }
        if ("retrieval".equals(head)) {
            if (!"classes".equals(task) && !"captions".equals(task)) {
                throw new BundleException("manifest.json: retrieval task " + task + " (expected classes or captions)");
            }
            JSONObject r = m.getJSONObject("retrieval");
            JSONObject cv = r.getJSONObject("class_vectors");
            classVectorsFile = cv.getString("file");
            int[] cvShape = dims(cv.getJSONArray("shape"), new int[] {MAX_CLASSES, MAX_EMBED_DIM},
                    MAX_CLASS_VECTOR_ELEMENTS, "retrieval.class_vectors.shape");
            numClasses = cvShape[0];
            embedDim = cvShape[1];
            if (!"little".equals(cv.getString("byte_order")) || !"float32".equals(cv.getString("dtype"))) {
                throw new BundleException("manifest.json: class vectors must be little-endian float32");
            }
            logitScale = number(r.get("logit_scale"), "retrieval.logit_scale");
            if (!(logitScale >= Float.MIN_NORMAL && logitScale <= Float.MAX_VALUE)) {
                throw new BundleException("manifest.json: retrieval.logit_scale must be a finite number > 0");
            }
            labelsFile = r.getString("labels_file");
            if (!"NCHW".equals(layout) || mean.length != inputShape[1] || std.length != inputShape[1]) {
                throw new BundleException(
                        "manifest.json: a retrieval input must be NCHW with one mean/std per channel");
            }
            if (!"bilinear".equals(resize)) {
                throw new BundleException("manifest.json: input.resize " + resize + " is not supported (bilinear)");
            }
            framesIn = framesOut = 0;
            forecastMean = 0.0;
            forecastStd = 1.0;
        } else if ("forecast".equals(head) && "forecast".equals(task)) {
            JSONObject fc = m.getJSONObject("forecast");
            framesIn = dim(fc.get("frames_in"), MAX_DIM, "forecast.frames_in");
            framesOut = dim(fc.get("frames_out"), MAX_DIM, "forecast.frames_out");
            forecastMean = number(fc.get("mean"), "forecast.mean");
            forecastStd = number(fc.get("std"), "forecast.std");
            if (!(forecastStd >= Float.MIN_NORMAL && forecastStd <= Float.MAX_VALUE && Math.abs(forecastMean)
                    <= Float.MAX_VALUE)) {
                throw new BundleException("manifest.json: forecast.mean must be finite and std a finite number > 0");
            }
            classVectorsFile = labelsFile = null;
            numClasses = embedDim = 0;
            logitScale = 1.0;
        } else {
            throw new BundleException("manifest.json: unknown head " + head + " (task " + task + ")");
        }
    }

    private static void checkSchema(Object found) throws BundleException {
        if (!(found instanceof Integer) || (Integer) found != SCHEMA_VERSION) {
            throw new BundleException("manifest.json has schema_version " + found + "; this app reads "
                    + SCHEMA_VERSION + " (re-export the bundle with this kdmobile version)");
        }
    }

    /**
     * Read and check a bundle's manifest.json in kdmobile.bundle.load_bundle's order: no links or special files;
     * the seal; the manifest's digest against the seal before it is parsed; size and depth limits; the fields.
     * Checksums.verify then checks the files themselves.
     */
    public static BundleManifest read(FileSource source) throws BundleException {
        return read(source, null);
    }

    /**
     * As read(source), and with `trusted` keys (BundleSignature.trust) the bundle must carry a bundle.sig by one of
     * them, checked right after the seal is read and before the manifest is (null: no signature required).
     */
    public static BundleManifest read(FileSource source, Map<String, java.security.PublicKey> trusted)
            throws BundleException {
        Set<String> present = Checksums.present(source);
        if (!present.contains(Seal.MANIFEST)) {
            throw new BundleException("bundle has no manifest.json");
        }
        if (!present.contains(Seal.FILE)) {
            oldSchema(source);
            throw new BundleException(Seal.FILE + " missing (the bundle is not sealed; re-export it with this "
                    + "kdmobile version)");
        }
        byte[] sealBytes;
        try {
            sealBytes = Bytes.readLimited(source, Seal.FILE, Seal.MAX_BYTES);
        } catch (IOException e) {
            throw new BundleException(Seal.FILE + " is unreadable (" + e.getMessage() + ")");
        }
        Map<String, String> seal = Seal.parse(new String(sealBytes, Bytes.UTF8));
        if (trusted != null) {
            BundleSignature.verify(source, sealBytes, trusted);
        }
        byte[] raw = manifestBytes(source);
        if (!Bytes.sha256(raw).equals(seal.get(Seal.MANIFEST))) {
            throw new BundleException("manifest.json changed after export (its digest does not match "
                    + Seal.FILE + ")");
        }
        return parse(raw, seal);
    }

    /** For an unsealed bundle: the schema-version refusal when its manifest states another version. */
    private static void oldSchema(FileSource source) throws BundleException {
        Object found;
        try {
            found = new JSONObject(new String(manifestBytes(source), Bytes.UTF8)).opt("schema_version");
        } catch (BundleException | JSONException e) {
            return;
        }
        checkSchema(found);
    }

    private static byte[] manifestBytes(FileSource source) throws BundleException {
        try {
            return Bytes.readLimited(source, Seal.MANIFEST, MAX_JSON_BYTES);
        } catch (IOException e) {
            throw new BundleException("bundle has no readable manifest.json (" + e.getMessage() + ")");
        }
    }

    /** Decode (strict UTF-8), depth-check and parse manifest bytes whose digest the seal has vouched for. */
    private static BundleManifest parse(byte[] raw, Map<String, String> seal) throws BundleException {
        String json;
        try {
            json = Bytes.UTF8.newDecoder().onMalformedInput(CodingErrorAction.REPORT)
                    .onUnmappableCharacter(CodingErrorAction.REPORT).decode(ByteBuffer.wrap(raw)).toString();
        } catch (CharacterCodingException e) {
            throw new BundleException("manifest.json: not valid JSON (not UTF-8)");
        }
        if (jsonDepth(json) > MAX_JSON_DEPTH) {
            throw new BundleException("manifest.json: JSON nested too deeply (limit " + MAX_JSON_DEPTH + ")");
        }
        try {
            return new BundleManifest(new JSONObject(json), seal);
        } catch (JSONException e) {
            throw new BundleException("manifest.json: " + e.getMessage());
        }
    }

    /** Nesting depth of JSON text, scanned without parsing (org.json recurses, so depth is checked first). */
    static int jsonDepth(String text) {
        int depth = 0;
        int deepest = 0;
        boolean inString = false;
        for (int i = 0; i < text.length(); i++) {
            char c = text.charAt(i);
            if (inString) {
                if (c == '\\') {
                    i++;
                } else if (c == '"') {
                    inString = false;
                }
            } else if (c == '"') {
                inString = true;
            } else if (c == '{' || c == '[') {
                deepest = Math.max(deepest, ++depth);
            } else if (c == '}' || c == ']') {
                depth--;
            }
        }
        return deepest;
    }

    /** A JSON integer in 1..max (a fraction, a string or a huge number is refused, not truncated as getInt would). */
    private static int dim(Object v, int max, String what) throws BundleException {
        if (!(v instanceof Integer) || (Integer) v < 1 || (Integer) v > max) {
            throw new BundleException("manifest.json: " + what + " must be an integer in 1.." + max + ", got " + v);
        }
        return (Integer) v;
    }

    /** A shape of limits.length integers, each in 1..its limit, with at most maxElements values in all. */
    private static int[] dims(JSONArray a, int[] limits, long maxElements, String what) throws JSONException,
            BundleException {
        if (a.length() != limits.length) {
            throw new BundleException("manifest.json: " + what + " should have " + limits.length + " entries");
        }
        int[] out = new int[limits.length];
        long elements = 1;
        for (int i = 0; i < out.length; i++) {
            out[i] = dim(a.get(i), limits[i], what + "[" + i + "]");
            elements *= out[i];
        }
        if (elements > maxElements) {
            throw new BundleException("manifest.json: " + what + " declares " + elements + " values, over the limit of "
                    + maxElements);
        }
        return out;
    }

    /** A finite JSON number (org.json reads NaN and Infinity as numbers; kdmobile refuses them). */
    private static double number(Object v, String what) throws BundleException {
        if (!(v instanceof Number) || Double.isNaN(((Number) v).doubleValue())
                || Double.isInfinite(((Number) v).doubleValue())) {
            throw new BundleException("manifest.json: " + what + " must be a finite number, got " + v);
        }
        return ((Number) v).doubleValue();
    }

    private static float[] floats(JSONArray a, String what) throws JSONException, BundleException {
        float[] out = new float[a.length()];
        for (int i = 0; i < out.length; i++) {
            double v = number(a.get(i), what + "[" + i + "]");
            if (Math.abs(v) > Float.MAX_VALUE) {
                throw new BundleException("manifest.json: " + what + "[" + i + "] must be a finite number, got " + v);
            }
            out[i] = (float) v;
        }
        return out;
    }
}
