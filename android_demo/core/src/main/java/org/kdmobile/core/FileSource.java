package org.kdmobile.core;

import java.io.IOException;
import java.io.InputStream;

/** Opens a bundle file by its manifest-relative path: app assets on Android, a directory on the JVM. */
public interface FileSource {
    /** The file's bytes as a stream; the caller closes it. */
    InputStream open(String relativePath) throws IOException;
}
