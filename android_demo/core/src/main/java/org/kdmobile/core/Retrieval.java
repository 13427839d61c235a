package org.kdmobile.core;

import java.io.IOException;
import java.util.ArrayList;
import java.util.List;

import org.json.JSONArray;
import org.json.JSONException;

/** The retrieval head of a bundle: class vectors, labels and logit scale; embedding to top-k probabilities. */
public final class Retrieval {
    /** One ranked class. */
    public static final class Prediction {
        public final int index;
        public final String label;
        public final double probability;

        Prediction(int index, String label, double probability) {
            this.index = index;
            this.label = label;
            this.probability = probability;
        }
    }

    public final float[] classVectors;
    public final String[] labels;
    public final double logitScale;
    public final int numClasses;
    public final int dim;

    public Retrieval(float[] classVectors, String[] labels, double logitScale, int numClasses, int dim) {
        if (classVectors.length != numClasses * dim || labels.length != numClasses) {
            throw new IllegalArgumentException("class vectors, labels and shape disagree");
        }
        this.classVectors = classVectors;
        this.labels = labels;
        this.logitScale = logitScale;
        this.numClasses = numClasses;
        this.dim = dim;
    }

    /** Load class_vectors.f32 (little-endian float32, row-major K x D) and labels.json of a verified bundle. */
    public static Retrieval load(BundleManifest m, FileSource source) throws BundleException {
        try {
            byte[] raw = Bytes.readAll(source.open(m.classVectorsFile));
            if (raw.length != 4 * m.numClasses * m.embedDim) {
                throw new BundleException(m.classVectorsFile + " holds " + raw.length + " bytes, expected "
                        + 4 * m.numClasses * m.embedDim);
            }
            JSONArray a = new JSONArray(Bytes.readText(source, m.labelsFile));
            String[] labels = new String[a.length()];
            for (int i = 0; i < labels.length; i++) {
                Object label = a.get(i); // getString would turn a number or an object into text
                if (!(label instanceof String)) {
                    throw new BundleException(m.labelsFile + ": label " + i + " is not a string");
                }
                labels[i] = (String) label;
            }
            if (labels.length != m.numClasses) {
                throw new BundleException(m.labelsFile + " has " + labels.length + " labels, expected " + m.numClasses);
            }
            return new Retrieval(Bytes.littleEndianFloats(raw), labels, m.logitScale, m.numClasses, m.embedDim);
        } catch (IOException e) {
            throw new BundleException("cannot read the retrieval files: " + e.getMessage());
        } catch (JSONException e) {
            throw new BundleException(m.labelsFile + ": " + e.getMessage());
        }
    }

    /** Logits: logit_scale times the dot product of the (L2-normalised) embedding with each class vector. */
    public double[] scores(float[] embedding) {
        if (embedding.length != dim) {
            throw new IllegalArgumentException("embedding has " + embedding.length + " values, expected " + dim);
        }
        double[] out = new double[numClasses];
        for (int k = 0; k < numClasses; k++) {
            double s = 0.0;
            for (int d = 0; d < dim; d++) {
                s += (double) embedding[d] * classVectors[k * dim + d];
            }
            out[k] = logitScale * s;
        }
        return out;
    }

    /** Softmax of the logits in double precision. */
    public static double[] softmax(double[] z) {
        double max = Double.NEGATIVE_INFINITY;
        for (double v : z) {
            max = Math.max(max, v);
        }
        double sum = 0.0;
        double[] out = new double[z.length];
        for (int i = 0; i < z.length; i++) {
            out[i] = Math.exp(z[i] - max);
            sum += out[i];
        }
        for (int i = 0; i < z.length; i++) {
            out[i] /= sum;
        }
        return out;
    }

    /** The k most probable classes, best first; ties keep the lower class index first (a stable sort). */
    public List<Prediction> topK(float[] embedding, int k) {
        double[] p = softmax(scores(embedding));
        int n = Math.min(k, p.length);
        boolean[] taken = new boolean[p.length];
        List<Prediction> out = new ArrayList<Prediction>(n);
        for (int r = 0; r < n; r++) {
            int best = -1;
            for (int i = 0; i < p.length; i++) {
                if (!taken[i] && (best < 0 || p[i] > p[best])) {
                    best = i;
                }
            }
            taken[best] = true;
            out.add(new Prediction(best, labels[best], p[best]));
        }
        return out;
    }
}
