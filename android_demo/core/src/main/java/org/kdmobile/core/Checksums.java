package org.kdmobile.core;

import java.io.IOException;
import java.io.InputStream;
import java.security.MessageDigest;
import java.security.NoSuchAlgorithmException;
import java.util.HashSet;
import java.util.Map;
import java.util.Set;
import java.util.TreeSet;

/** The seal and sha256 of every file a manifest lists, checked before any of them is used (as kdmobile.bundle). */
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

    /** The bundle's files as its source lists them; a symbolic link or special file refuses the bundle. */
    public static Set<String> present(FileSource source) throws BundleException {
        try {
            return source.list();
        } catch (IOException e) {
            throw new BundleException("bundle: " + e.getMessage());
        }
    }

    /**
     * Check the files of a manifest read by BundleManifest.read, in kdmobile.bundle.load_bundle's order: every
     * listed file present; no file present that is not listed; the seal and the manifest list the same files;
     * each file's digest equals both the manifest's and the seal's. The first problem is named in the exception.
     */
    public static void verify(BundleManifest manifest, FileSource source) throws BundleException {
        Set<String> present = present(source);
        for (String rel : new TreeSet<String>(manifest.files.keySet())) {
            if (!present.contains(rel)) {
                throw new BundleException("listed file " + rel + " missing");
            }
        }
        Set<String> unlisted = new TreeSet<String>(present);
        unlisted.removeAll(manifest.files.keySet());
        unlisted.remove(Seal.MANIFEST);
        unlisted.remove(Seal.FILE);
        unlisted.remove(BundleSignature.FILE);
        if (!unlisted.isEmpty()) {
            throw new BundleException(unlisted.iterator().next() + " is not listed in the manifest (a sealed bundle "
                    + "holds only its own files; remove it or re-export)");
        }
        Set<String> sealed = new HashSet<String>(manifest.files.keySet());
        sealed.add(Seal.MANIFEST);
        if (!sealed.equals(manifest.seal.keySet())) {
            throw new BundleException(Seal.FILE + " and manifest.json list different files");
        }
        for (Map.Entry<String, String> e : manifest.files.entrySet()) {
            String rel = e.getKey();
            String actual;
            try {
                actual = sha256(source, rel);
            } catch (IOException io) {
                throw new BundleException("bundle file " + rel + " is missing or unreadable");
            }
            if (!e.getValue().equals(manifest.seal.get(rel))) {
                throw new BundleException("checksum mismatch for " + rel + ": manifest.json and " + Seal.FILE
                        + " give different digests");
            }
            if (!actual.equals(e.getValue())) {
                throw new BundleException("checksum mismatch for " + rel + ": the manifest says "
                        + e.getValue().substring(0, 12) + "..., the file has " + actual.substring(0, 12) + "...");
            }
        }
    }
}
