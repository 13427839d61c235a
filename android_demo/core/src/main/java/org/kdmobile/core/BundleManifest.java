package org.kdmobile.core;

import java.util.Collections;
import java.util.Iterator;
import java.util.LinkedHashMap;
import java.util.Map;

import org.json.JSONArray;
import org.json.JSONException;
import org.json.JSONObject;

/** The fields of a kdmobile manifest.json (schema 1) that a phone-side runner needs, checked on parse. */
public final class BundleManifest {
    public static final int SCHEMA_VERSION = 1;

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

    private BundleManifest(JSONObject m) throws JSONException, BundleException {
        int schema = m.getInt("schema_version");
        if (schema != SCHEMA_VERSION) {
            throw new BundleException("manifest.json has schema_version " + schema + "; this app reads "
                    + SCHEMA_VERSION);
        }
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
            listed.put(k, f.getString(k));
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

    /** Parse and check manifest.json text; malformed or missing fields become a BundleException. */
    public static BundleManifest parse(String json) throws BundleException {
        try {
            return new BundleManifest(new JSONObject(json));
        } catch (JSONException e) {
            throw new BundleException("manifest.json: " + e.getMessage());
        }
    }

    /** Read, parse and check a bundle's manifest.json. */
    public static BundleManifest read(FileSource source) throws BundleException {
        try {
            return parse(Bytes.readText(source, "manifest.json"));
        } catch (java.io.IOException e) {
            throw new BundleException("bundle has no readable manifest.json");
        }
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
