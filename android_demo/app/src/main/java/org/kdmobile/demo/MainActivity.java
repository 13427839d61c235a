package org.kdmobile.demo;

import android.app.Activity;
import android.content.Intent;
import android.net.Uri;
import android.os.Bundle;
import android.text.Html;
import android.webkit.ValueCallback;
import android.webkit.WebChromeClient;
import android.webkit.WebSettings;
import android.webkit.WebView;

import java.io.IOException;
import java.security.PublicKey;
import java.util.ArrayList;
import java.util.HashSet;
import java.util.List;
import java.util.Map;
import java.util.Set;

import org.json.JSONArray;
import org.json.JSONException;
import org.kdmobile.core.BundleException;
import org.kdmobile.core.BundleManifest;
import org.kdmobile.core.BundleSignature;
import org.kdmobile.core.Bytes;
import org.kdmobile.core.Checksums;

/**
 * One WebView showing the bundled page. Before the page loads, every bundle in assets/bundles/index.json is
 * checksum-verified here in Java (the shared core); a refused bundle is named on screen and its files are not served.
 * When the APK carries public keys in assets/trust/ (NAME.pub from `kdmobile keygen`), every bundle must also be
 * signed by one of them (bundle.sig, `kdmobile export --sign`).
 * Photos come from the system picker (or camera, where the picker offers one) through onShowFileChooser.
 */
public class MainActivity extends Activity {
    private static final int PICK_IMAGE = 1;
    private ValueCallback<Uri[]> pendingChoice;
    private WebView web;

    @Override
    protected void onCreate(Bundle state) {
        super.onCreate(state);
        Set<String> refused = new HashSet<String>();
        List<String> problems = verifyBundles(refused);
        web = new WebView(this);
        WebSettings s = web.getSettings();
        s.setJavaScriptEnabled(true);
        s.setAllowFileAccess(false);
        s.setAllowContentAccess(false);
        s.setMediaPlaybackRequiresUserGesture(true);
        web.setWebViewClient(new AssetServer(getAssets(), refused));
        web.setWebChromeClient(new WebChromeClient() {
            @Override
            public boolean onShowFileChooser(WebView view, ValueCallback<Uri[]> callback, FileChooserParams params) {
                if (pendingChoice != null) {
                    pendingChoice.onReceiveValue(null);
                }
                pendingChoice = callback;
                Intent pick = params.createIntent();
                pick.addCategory(Intent.CATEGORY_OPENABLE);
                startActivityForResult(Intent.createChooser(pick, "Choose a photo"), PICK_IMAGE);
                return true;
            }
        });
        setContentView(web);
        if (problems.isEmpty()) {
            web.loadUrl(AssetServer.ORIGIN + "index.html");
        } else {
            StringBuilder html = new StringBuilder("<h3>Bundle refused</h3><ul>");
            for (String p : problems) {
                html.append("<li>").append(Html.escapeHtml(p)).append("</li>");
            }
            html.append("</ul><p>Re-copy the bundle with kdmobile export ... --android-assets and rebuild.</p>");
            web.loadDataWithBaseURL(AssetServer.ORIGIN, html.toString(), "text/html", "utf-8", null);
        }
    }

    /** The public keys in assets/trust/*.pub, by key id; null when there are none (no signature required). */
    private Map<String, PublicKey> trustedKeys() throws IOException, BundleException {
        String[] names = getAssets().list("trust");
        List<String> pems = new ArrayList<String>();
        for (String n : names == null ? new String[0] : names) {
            if (n.endsWith(".pub")) {
                pems.add(new String(Bytes.readAll(getAssets().open("trust/" + n)), Bytes.UTF8));
            }
        }
        return pems.isEmpty() ? null : BundleSignature.trust(pems.toArray(new String[0]));
    }

    /** Checksums (and, with trust keys, signatures) of every bundle the page may load; one message per refusal. */
    private List<String> verifyBundles(Set<String> refused) {
        List<String> problems = new ArrayList<String>();
        Map<String, PublicKey> trusted;
        try {
            trusted = trustedKeys();
        } catch (IOException | BundleException e) {
            problems.add("assets/trust: " + e.getMessage());
            return problems;
        }
        JSONArray index;
        try {
            index = new JSONArray(new String(Bytes.readAll(getAssets().open("bundles/index.json")), Bytes.UTF8));
        } catch (IOException e) {
            problems.add("no bundles/index.json in the APK's assets");
            return problems;
        } catch (JSONException e) {
            problems.add("bundles/index.json: " + e.getMessage());
            return problems;
        }
        for (int i = 0; i < index.length(); i++) {
            String name = index.optJSONObject(i) == null ? null : index.optJSONObject(i).optString("name", null);
            if (name == null) {
                continue;
            }
            AssetSource src = new AssetSource(getAssets(), "bundles/" + name);
            try {
                Checksums.verify(BundleManifest.read(src, trusted), src);
            } catch (BundleException e) {
                refused.add(name);
                problems.add(name + ": " + e.getMessage());
            }
        }
        return problems;
    }

    @Override
    protected void onActivityResult(int requestCode, int resultCode, Intent data) {
        if (requestCode == PICK_IMAGE && pendingChoice != null) {
            pendingChoice.onReceiveValue(WebChromeClient.FileChooserParams.parseResult(resultCode, data));
            pendingChoice = null;
            return;
        }
        super.onActivityResult(requestCode, resultCode, data);
    }

    @Override
    public void onBackPressed() {
        if (web != null && web.canGoBack()) {
            web.goBack();
        } else {
            super.onBackPressed();
        }
    }
}
