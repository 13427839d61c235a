package org.kdmobile.core;

import java.io.File;
import java.io.FileInputStream;
import java.io.IOException;
import java.io.InputStream;
import java.util.ArrayDeque;
import java.util.Deque;
import java.util.Set;
import java.util.TreeSet;

/** A bundle laid out in a directory on disk (JVM tests, or a bundle copied to app storage). */
public final class DirectorySource implements FileSource {
    /** More files than this is not a bundle (kdmobile.bundle.MAX_FILES). */
    public static final int MAX_FILES = 10000;

    private final File root;

    public DirectorySource(File root) {
        this.root = root;
    }

    @Override
    public InputStream open(String relativePath) throws IOException {
        return new FileInputStream(new File(root, relativePath));
    }

    /** Walks the directory without following links (java.io only: the app compiles against API 23). */
    @Override
    public Set<String> list() throws IOException {
        Set<String> found = new TreeSet<String>();
        Deque<String> dirs = new ArrayDeque<String>();
        dirs.push("");
        File top = root.getCanonicalFile();
        while (!dirs.isEmpty()) {
            String rel = dirs.pop();
            File dir = rel.isEmpty() ? top : new File(top, rel);
            String[] names = dir.list();
            if (names == null) {
                throw new IOException((rel.isEmpty() ? "the bundle directory" : rel) + " is not a readable directory");
            }
            for (String name : names) {
                String child = rel.isEmpty() ? name : rel + "/" + name;
                File f = new File(dir, name);
                if (!f.getCanonicalFile().equals(new File(dir.getCanonicalFile(), name))) {
                    throw new IOException(child + " is a symbolic link (a bundle holds only its own files)");
                }
                if (f.isDirectory()) {
                    dirs.push(child);
                } else if (f.isFile()) {
                    found.add(child);
                } else {
                    throw new IOException(child + " is not a regular file");
                }
            }
            if (found.size() > MAX_FILES) {
                throw new IOException("more than " + MAX_FILES + " files; not a bundle");
            }
        }
        return found;
    }
}
