package org.kdmobile.core;

import java.io.IOException;
import java.io.InputStream;
import java.util.Set;

/** Opens a bundle file by its manifest-relative path: app assets on Android, a directory on the JVM. */
public interface FileSource {
    /** The file's bytes as a stream; the caller closes it. */
    InputStream open(String relativePath) throws IOException;

    /**
     * Every regular file of the bundle as a '/'-separated relative path, so files the seal does not list are
     * refused; an IOException naming a symbolic link or special file, which a bundle never holds.
     */
    Set<String> list() throws IOException;
}
