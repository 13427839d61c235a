package org.kdmobile.core;

import java.io.File;
import java.io.FileInputStream;
import java.io.IOException;
import java.io.InputStream;

/** A bundle laid out in a directory on disk (JVM tests, or a bundle copied to app storage). */
public final class DirectorySource implements FileSource {
    private final File root;

    public DirectorySource(File root) {
        this.root = root;
    }

    @Override
    public InputStream open(String relativePath) throws IOException {
        return new FileInputStream(new File(root, relativePath));
    }
}
