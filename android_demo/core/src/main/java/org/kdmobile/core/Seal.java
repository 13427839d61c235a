package org.kdmobile.core;

import java.util.Collections;
import java.util.LinkedHashMap;
import java.util.Map;
import java.util.regex.Pattern;

/** bundle.sha256, the seal over a bundle: "HEX  PATH" lines (sha256sum format) for manifest.json and every file. */
public final class Seal {
    public static final String FILE = "bundle.sha256";
    public static final String MANIFEST = "manifest.json";
    /** The seal is refused unread above this size (kdmobile.bundle._read_seal). */
    public static final int MAX_BYTES = 4 << 20;
    private static final Pattern HEX64 = Pattern.compile("[0-9a-f]{64}");
    // Python's str.splitlines boundaries, as kdmobile.bundle._read_seal splits the seal
    private static final Pattern LINES = Pattern.compile("\r\n|[\n\r\u000b\f\u001c\u001d\u001e\u0085\u2028\u2029]");

    private Seal() {
    }

    /** Parse the seal's text into {relative path: hex digest}; malformed lines or no manifest.json are refused. */
    public static Map<String, String> parse(String text) throws BundleException {
        Map<String, String> seal = new LinkedHashMap<String, String>();
        String[] lines = text.isEmpty() ? new String[0] : LINES.split(text, -1);
        int n = lines.length;
        if (n > 0 && lines[n - 1].isEmpty()) {
            n--; // the final newline ends the last line; it does not start an empty one
        }
        for (int i = 0; i < n; i++) {
            int at = lines[i].indexOf("  ");
            String digest = at < 0 ? "" : lines[i].substring(0, at);
            String rel = at < 0 ? "" : lines[i].substring(at + 2);
            if (at < 0 || !HEX64.matcher(digest).matches() || seal.containsKey(rel)) {
                throw new BundleException(FILE + " is malformed (expected 'SHA256  PATH' lines)");
            }
            seal.put(rel, digest);
        }
        if (!seal.containsKey(MANIFEST)) {
            throw new BundleException(FILE + " does not cover " + MANIFEST);
        }
        return Collections.unmodifiableMap(seal);
    }
}
