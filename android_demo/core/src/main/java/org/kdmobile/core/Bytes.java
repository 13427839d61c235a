package org.kdmobile.core;

import java.io.ByteArrayOutputStream;
import java.io.IOException;
import java.io.InputStream;
import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.nio.charset.Charset;

/** Small stream and byte helpers shared by the bundle reader (Java 8, no android.*). */
public final class Bytes {
    public static final Charset UTF8 = Charset.forName("UTF-8");

    private Bytes() {
    }

    private static final String B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

    /** Strict standard base64 (with padding) to bytes; IllegalArgumentException for anything else. */
    public static byte[] base64(String text) {
        int n = text.length();
        if (n % 4 != 0) {
            throw new IllegalArgumentException("base64 length " + n + " is not a multiple of 4");
        }
        int pad = n == 0 ? 0 : (text.endsWith("==") ? 2 : text.endsWith("=") ? 1 : 0);
        byte[] out = new byte[n / 4 * 3 - pad];
        int o = 0;
        for (int i = 0; i < n; i += 4) {
            int v = 0;
            for (int j = 0; j < 4; j++) {
                char c = text.charAt(i + j);
                int d = c == '=' && i + j >= n - pad ? 0 : B64.indexOf(c);
                if (d < 0) {
                    throw new IllegalArgumentException("not base64: " + c);
                }
                v = (v << 6) | d;
            }
            for (int j = 2; j >= 0 && o < out.length; j--) {
                out[o++] = (byte) (v >> (8 * j));
            }
        }
        return out;
    }

    /** Every byte of a stream, which is closed afterwards. */
    public static byte[] readAll(InputStream in) throws IOException {
        return readUpTo(in, Integer.MAX_VALUE, "stream");
    }

    /** Every byte of a bundle file, refused (IOException) once it exceeds maxBytes, so a huge file is not read whole. */
    public static byte[] readLimited(FileSource source, String path, int maxBytes) throws IOException {
        return readUpTo(source.open(path), maxBytes, path);
    }

    /** Read `in` to its end (closing it), refusing it once it holds more than maxBytes. */
    private static byte[] readUpTo(InputStream in, int maxBytes, String what) throws IOException {
        try {
            ByteArrayOutputStream out = new ByteArrayOutputStream();
            byte[] buf = new byte[1 << 16];
            int n;
            while ((n = in.read(buf)) > 0) {
                out.write(buf, 0, n);
                if (out.size() > maxBytes) {
                    throw new IOException(what + " is over the " + maxBytes + "-byte limit (refused)");
                }
            }
            return out.toByteArray();
        } finally {
            in.close();
        }
    }

    /** Lower-case hex sha256 of bytes in memory. */
    public static String sha256(byte[] raw) {
        try {
            return hex(java.security.MessageDigest.getInstance("SHA-256").digest(raw));
        } catch (java.security.NoSuchAlgorithmException e) {
            throw new IllegalStateException("SHA-256 is not available", e);
        }
    }

    /** A file of the bundle as UTF-8 text. */
    public static String readText(FileSource source, String path) throws IOException {
        return new String(readAll(source.open(path)), UTF8);
    }

    /** Little-endian float32 values, as class_vectors.f32 stores them. */
    public static float[] littleEndianFloats(byte[] raw) {
        float[] out = new float[raw.length / 4];
        ByteBuffer.wrap(raw).order(ByteOrder.LITTLE_ENDIAN).asFloatBuffer().get(out);
        return out;
    }

    /** Lower-case hex of a digest. */
    public static String hex(byte[] digest) {
        StringBuilder sb = new StringBuilder(digest.length * 2);
        for (byte b : digest) {
            sb.append(Character.forDigit((b >> 4) & 0xF, 16)).append(Character.forDigit(b & 0xF, 16));
        }
        return sb.toString();
    }
}
