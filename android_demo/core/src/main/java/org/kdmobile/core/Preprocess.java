package org.kdmobile.core;

/**
 * The bundle's image preprocessing, bit-exact with kdmobile.runtime.predictors.RetrievalPredictor.preprocess:
 * convert to the model's colour mode, resize to H x W with Pillow's bilinear filter (antialiased when shrinking,
 * 8-bit fixed point, horizontal pass then vertical), scale value_range to [0, 1], subtract mean, divide by std
 * (float32 arithmetic, NCHW). No centre crop: the Python runtime does none, so neither does this.
 */
public final class Preprocess {
    /** Pillow's PRECISION_BITS for 8-bit resampling: 32 - 8 - 2. */
    static final int PRECISION_BITS = 22;

    private Preprocess() {
    }

    /** Per output index: first source index, count, and fixed-point weights (ksize per output). */
    static final class Coeffs {
        final int ksize;
        final int[] bounds;
        final int[] weights;

        Coeffs(int ksize, int[] bounds, int[] weights) {
            this.ksize = ksize;
            this.bounds = bounds;
            this.weights = weights;
        }
    }

    private static double bilinear(double x) {
        if (x < 0.0) {
            x = -x;
        }
        return x < 1.0 ? 1.0 - x : 0.0;
    }

    /** Pillow's precompute_coeffs + normalize_coeffs_8bpc for the bilinear filter over the full source box. */
    static Coeffs coeffs(int inSize, int outSize) {
        double scale = (double) inSize / outSize;
        double filterscale = Math.max(scale, 1.0);
        double support = 1.0 * filterscale;
        int ksize = (int) Math.ceil(support) * 2 + 1;
        int[] bounds = new int[outSize * 2];
        int[] weights = new int[outSize * ksize];
        double[] k = new double[ksize];
        for (int xx = 0; xx < outSize; xx++) {
            double center = (xx + 0.5) * scale;
            double ww = 0.0;
            double ss = 1.0 / filterscale;
            int xmin = (int) (center - support + 0.5);
            if (xmin < 0) {
                xmin = 0;
            }
            int xmax = (int) (center + support + 0.5);
            if (xmax > inSize) {
                xmax = inSize;
            }
            xmax -= xmin;
            for (int x = 0; x < xmax; x++) {
                double w = bilinear((x + xmin - center + 0.5) * ss);
                k[x] = w;
                ww += w;
            }
            for (int x = 0; x < ksize; x++) {
                double v = x < xmax ? (ww != 0.0 ? k[x] / ww : k[x]) : 0.0;
                weights[xx * ksize + x] = v < 0 ? (int) (-0.5 + v * (1 << PRECISION_BITS))
                        : (int) (0.5 + v * (1 << PRECISION_BITS));
            }
            bounds[xx * 2] = xmin;
            bounds[xx * 2 + 1] = xmax;
        }
        return new Coeffs(ksize, bounds, weights);
    }

    private static int clip8(int ss) {
        int v = ss >> PRECISION_BITS;
        return v < 0 ? 0 : (v > 255 ? 255 : v);
    }

    /** Resize one 8-bit plane (row-major, values 0..255) exactly as Pillow's Image.resize(..., BILINEAR). */
    public static int[] resizePlane(int[] src, int w, int h, int outW, int outH) {
        int[] cur = src;
        int curW = w;
        if (outW != w) {
            Coeffs c = coeffs(w, outW);
            int[] tmp = new int[outW * h];
            for (int y = 0; y < h; y++) {
                for (int xx = 0; xx < outW; xx++) {
                    int xmin = c.bounds[xx * 2];
                    int xmax = c.bounds[xx * 2 + 1];
                    int ss = 1 << (PRECISION_BITS - 1);
                    for (int x = 0; x < xmax; x++) {
                        ss += cur[y * curW + x + xmin] * c.weights[xx * c.ksize + x];
                    }
                    tmp[y * outW + xx] = clip8(ss);
                }
            }
            cur = tmp;
            curW = outW;
        }
        if (outH != h) {
            Coeffs c = coeffs(h, outH);
            int[] tmp = new int[curW * outH];
            for (int yy = 0; yy < outH; yy++) {
                int ymin = c.bounds[yy * 2];
                int ymax = c.bounds[yy * 2 + 1];
                for (int xx = 0; xx < curW; xx++) {
                    int ss = 1 << (PRECISION_BITS - 1);
                    for (int y = 0; y < ymax; y++) {
                        ss += cur[(y + ymin) * curW + xx] * c.weights[yy * c.ksize + y];
                    }
                    tmp[yy * curW + xx] = clip8(ss);
                }
            }
            cur = tmp;
        }
        return cur == src ? src.clone() : cur;
    }

    /** Split packed ARGB pixels (Android's Bitmap.getPixels layout) into planes: R, G, B, or Pillow's L. */
    public static int[][] planes(int[] argb, int channels) {
        int n = argb.length;
        if (channels == 3) {
            int[][] out = new int[3][n];
            for (int i = 0; i < n; i++) {
                out[0][i] = (argb[i] >> 16) & 0xFF;
                out[1][i] = (argb[i] >> 8) & 0xFF;
                out[2][i] = argb[i] & 0xFF;
            }
            return out;
        }
        if (channels == 1) {
            int[][] out = new int[1][n];
            for (int i = 0; i < n; i++) {
                int r = (argb[i] >> 16) & 0xFF;
                int g = (argb[i] >> 8) & 0xFF;
                int b = argb[i] & 0xFF;
                out[0][i] = (r * 19595 + g * 38470 + b * 7471 + 0x8000) >> 16; // Pillow's RGB -> L
            }
            return out;
        }
        throw new IllegalArgumentException("images must have 1 or 3 channels, not " + channels);
    }

    /** The model input (1, C, H, W) as float32 NCHW for packed ARGB pixels of a w x h image. */
    public static float[] tensor(BundleManifest m, int[] argb, int w, int h) {
        if (argb.length != w * h) {
            throw new IllegalArgumentException("pixel count " + argb.length + " != " + w + " x " + h);
        }
        int channels = m.inputShape[1];
        int outH = m.inputShape[2];
        int outW = m.inputShape[3];
        float lo = m.valueRange[0];
        float span = m.valueRange[1] - m.valueRange[0];
        int[][] planes = planes(argb, channels);
        float[] out = new float[channels * outH * outW];
        for (int c = 0; c < channels; c++) {
            int[] p = resizePlane(planes[c], w, h, outW, outH);
            int base = c * outH * outW;
            for (int i = 0; i < p.length; i++) {
                float x = ((float) p[i] - lo) / span;
                out[base + i] = (x - m.mean[c]) / m.std[c];
            }
        }
        return out;
    }
}
