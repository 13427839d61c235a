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

    /** Every byte of a stream, which is closed afterwards. */
    public static byte[] readAll(InputStream in) throws IOException {
        try {
            ByteArrayOutputStream out = new ByteArrayOutputStream();
            byte[] buf = new byte[1 << 16];
            int n;
            while ((n = in.read(buf)) > 0) {
                out.write(buf, 0, n);
            }
            return out.toByteArray();
        } finally {
            in.close();
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
