package org.kdmobile.demo;

import android.content.res.AssetManager;

import java.io.IOException;
import java.io.InputStream;

import org.kdmobile.core.FileSource;

/** A bundle inside the APK's assets (assets/bundles/NAME/), for the shared core's checksum verification. */
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
}
