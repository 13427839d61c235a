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

/** The fields of a kdmobile manifest.json (schema 2, sealed) that a phone-side runner needs, checked on parse. */
public final class BundleManifest {
    /** 2: sealed by bundle.sha256, no unlisted files or symbolic links (kdmobile/bundle.py). */
    public static final int SCHEMA_VERSION = 2;
    /** kdmobile.untrusted.MAX_JSON_BYTES and MAX_JSON_DEPTH. */
    public static final int MAX_JSON_BYTES = 1 << 20;
    public static final int MAX_JSON_DEPTH = 32;

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
        task = m.getString("task");
        target = m.getString("target");
        precision = m.getString("precision");
        modelFile = m.getString("model_file");
        JSONObject in = m.getJSONObject("input");
        inputName = in.getString("name");
        inputShape = ints(in.getJSONArray("shape"));
        layout = in.getString("layout");
        valueRange = floats(in.getJSONArray("value_range"));
        mean = floats(in.getJSONArray("mean"));
        std = floats(in.getJSONArray("std"));
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
        if ("retrieval".equals(task)) {
            JSONObject r = m.getJSONObject("retrieval");
            JSONObject cv = r.getJSONObject("class_vectors");
            classVectorsFile = cv.getString("file");
            int[] cvShape = ints(cv.getJSONArray("shape"));
            numClasses = cvShape[0];
            embedDim = cvShape[1];
            if (!"little".equals(cv.getString("byte_order")) || !"float32".equals(cv.getString("dtype"))) {
                throw new BundleException("manifest.json: class vectors must be little-endian float32");
            }
            logitScale = r.getDouble("logit_scale");
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
        } else if ("forecast".equals(task)) {
            JSONObject fc = m.getJSONObject("forecast");
            framesIn = fc.getInt("frames_in");
            framesOut = fc.getInt("frames_out");
            forecastMean = fc.getDouble("mean");
            forecastStd = fc.getDouble("std");
            classVectorsFile = labelsFile = null;
            numClasses = embedDim = 0;
            logitScale = 1.0;
        } else {
            throw new BundleException("manifest.json: unknown task " + task);
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
        Set<String> present = Checksums.present(source);
        if (!present.contains(Seal.MANIFEST)) {
            throw new BundleException("bundle has no manifest.json");
        }
        if (!present.contains(Seal.FILE)) {
            oldSchema(source);
            throw new BundleException(Seal.FILE + " missing (the bundle is not sealed; re-export it with this "
                    + "kdmobile version)");
        }
        Map<String, String> seal = Seal.read(source);
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

    private static int[] ints(JSONArray a) throws JSONException {
        int[] out = new int[a.length()];
        for (int i = 0; i < out.length; i++) {
            out[i] = a.getInt(i);
        }
        return out;
    }

    private static float[] floats(JSONArray a) throws JSONException {
        float[] out = new float[a.length()];
        for (int i = 0; i < out.length; i++) {
            out[i] = (float) a.getDouble(i);
        }
        return out;
    }
}
