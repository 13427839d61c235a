package org.kdmobile.demo;

import android.content.res.AssetManager;

import java.io.IOException;
import java.io.InputStream;
import java.util.ArrayDeque;
import java.util.Deque;
import java.util.Set;
import java.util.TreeSet;

import org.kdmobile.core.FileSource;

/** A bundle inside the APK's assets (assets/bundles/NAME/), for the shared core's seal and checksum checks. */
final class AssetSource implements FileSource {
    private final AssetManager assets;
    private final String prefix;

    AssetSource(AssetManager assets, String prefix) {
        this.assets = assets;
        this.prefix = prefix.endsWith("/") ? prefix : prefix + "/";
    }

    @Override
    public InputStream open(String relativePath) throws IOException {
        return assets.open(prefix + relativePath, AssetManager.ACCESS_STREAMING);
    }

    /** Every asset under the bundle's folder (an asset with no children is a file; an APK holds no links). */
    @Override
    public Set<String> list() throws IOException {
        Set<String> found = new TreeSet<String>();
        Deque<String> dirs = new ArrayDeque<String>();
        dirs.push("");
        while (!dirs.isEmpty()) {
            String rel = dirs.pop();
            String dir = (prefix + rel).substring(0, prefix.length() + rel.length() - 1); // no trailing '/'
            String[] names = assets.list(dir);
            if (names == null) {
                throw new IOException("cannot list assets " + dir);
            }
            for (String name : names) {
                String child = rel + name;
                String[] sub = assets.list(prefix + child);
                if (sub != null && sub.length > 0) {
                    dirs.push(child + "/");
                } else {
                    found.add(child);
                }
            }
            if (found.size() > org.kdmobile.core.DirectorySource.MAX_FILES) {
                throw new IOException("more than " + org.kdmobile.core.DirectorySource.MAX_FILES + " files");
            }
        }
        return found;
    }
}
