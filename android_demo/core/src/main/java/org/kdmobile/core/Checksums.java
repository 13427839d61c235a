package org.kdmobile.core;

import java.io.IOException;
import java.io.InputStream;
import java.security.MessageDigest;
import java.security.NoSuchAlgorithmException;
import java.util.Map;

/** sha256 verification of every file a manifest lists, before any of them is used. */
public final class Checksums {
    private Checksums() {
    }

    /** Streamed sha256 of one bundle file, lower-case hex. */
    public static String sha256(FileSource source, String path) throws IOException {
        MessageDigest md;
        try {
            md = MessageDigest.getInstance("SHA-256");
        } catch (NoSuchAlgorithmException e) {
            throw new IllegalStateException("SHA-256 is not available", e);
        }
        InputStream in = source.open(path);
        try {
            byte[] buf = new byte[1 << 16];
            int n;
            while ((n = in.read(buf)) > 0) {
                md.update(buf, 0, n);
            }
        } finally {
            in.close();
        }
        return Bytes.hex(md.digest());
    }

    /** Check every listed file; the first missing or changed one is named in the exception. */
    public static void verify(BundleManifest manifest, FileSource source) throws BundleException {
        for (Map.Entry<String, String> e : manifest.files.entrySet()) {
            String actual;
            try {
                actual = sha256(source, e.getKey());
            } catch (IOException io) {
                throw new BundleException("bundle file " + e.getKey() + " is missing or unreadable");
            }
            if (!actual.equalsIgnoreCase(e.getValue())) {
                throw new BundleException("checksum mismatch for " + e.getKey() + ": the manifest says "
                        + e.getValue().substring(0, 12) + "..., the file has " + actual.substring(0, 12) + "...");
            }
        }
    }
}
