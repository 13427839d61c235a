package org.kdmobile.demo;

import android.content.res.AssetManager;
import android.net.Uri;
import android.webkit.WebResourceRequest;
import android.webkit.WebResourceResponse;
import android.webkit.WebView;
import android.webkit.WebViewClient;

import java.io.ByteArrayInputStream;
import java.io.IOException;
import java.io.InputStream;
import java.util.HashMap;
import java.util.Map;
import java.util.Set;

/**
 * Serves the APK's assets at https://appassets.androidplatform.net/ (the WebViewAssetLoader scheme, without
 * androidx): a secure origin, so ES modules, WebCrypto and streaming wasm work, with the MIME types the browser
 * insists on. Any other host gets a 404: the app has no network permission and makes no requests.
 */
final class AssetServer extends WebViewClient {
    static final String HOST = "appassets.androidplatform.net";
    static final String ORIGIN = "https://" + HOST + "/";
    private static final Map<String, String> MIME = new HashMap<String, String>();

    static {
        MIME.put("html", "text/html");
        MIME.put("js", "text/javascript");
        MIME.put("mjs", "text/javascript");
        MIME.put("css", "text/css");
        MIME.put("json", "application/json");
        MIME.put("wasm", "application/wasm");
        MIME.put("png", "image/png");
        MIME.put("onnx", "application/octet-stream");
        MIME.put("f32", "application/octet-stream");
        MIME.put("sha256", "text/plain");
    }

    private final AssetManager assets;
    private final Set<String> refused;

    /** refused: bundle names whose checksums failed on the Java side; their files are never served. */
    AssetServer(AssetManager assets, Set<String> refused) {
        this.assets = assets;
        this.refused = refused;
    }

    static String mimeType(String path) {
        int dot = path.lastIndexOf('.');
        String type = dot < 0 ? null : MIME.get(path.substring(dot + 1).toLowerCase(java.util.Locale.ROOT));
        return type == null ? "application/octet-stream" : type;
    }

    private static WebResourceResponse notFound() {
        return new WebResourceResponse("text/plain", "utf-8", 404, "Not Found", new HashMap<String, String>(),
                new ByteArrayInputStream(new byte[0]));
    }

    @Override
    public WebResourceResponse shouldInterceptRequest(WebView view, WebResourceRequest request) {
        Uri uri = request.getUrl();
        if (!"https".equals(uri.getScheme()) || !HOST.equals(uri.getHost())) {
            return notFound();
        }
        String path = uri.getPath() == null ? "" : uri.getPath();
        while (path.startsWith("/")) {
            path = path.substring(1);
        }
        if (path.isEmpty()) {
            path = "index.html";
        }
        if (path.contains("..")) {
            return notFound();
        }
        for (String name : refused) {
            if (path.startsWith("bundles/" + name + "/")) {
                return notFound();
            }
        }
        try {
            InputStream in = assets.open(path, AssetManager.ACCESS_STREAMING);
            Map<String, String> headers = new HashMap<String, String>();
            headers.put("Cache-Control", "no-store");
            String type = mimeType(path);
            String encoding = type.startsWith("text/") || type.equals("application/json") ? "utf-8" : null;
            return new WebResourceResponse(type, encoding, 200, "OK", headers, in);
        } catch (IOException e) {
            return notFound();
        }
    }

    /** Never navigate away from the bundled page (the String overload: android.jar here is API 23). */
    @Override
    @SuppressWarnings("deprecation")
    public boolean shouldOverrideUrlLoading(WebView view, String url) {
        return !HOST.equals(Uri.parse(url).getHost());
    }
}
