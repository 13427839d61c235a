package org.kdmobile.core;

/** A bundle that cannot be used: unreadable, malformed, or a file whose checksum does not match its manifest. */
public class BundleException extends Exception {
    private static final long serialVersionUID = 1L;

    public BundleException(String message) {
        super(message);
    }
}
