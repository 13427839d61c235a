package org.kdmobile.core;

import static org.junit.Assert.assertEquals;
import static org.junit.Assert.assertTrue;
import static org.junit.Assert.fail;

import java.io.File;
import java.nio.file.Files;
import java.nio.file.Paths;
import java.security.PublicKey;
import java.util.Map;

import org.json.JSONArray;
import org.json.JSONObject;
import org.junit.Test;

/**
 * The cases of tests/trust_cases.py (written to trust.json by tests/test_android_trust.py): impossible manifests
 * and untrusted signatures are refused with the words Python uses, a signed bundle loads with its key trusted, and the
 * core's limits are the ones manifest.schema.json states.
 */
public class TrustTest {
    private final JSONObject cases;

    public TrustTest() throws Exception {
        String dir = System.getProperty("kdmobile.golden");
        cases = new JSONObject(text(dir + "/trust.json"));
    }

    private static String text(String path) throws Exception {
        return new String(Files.readAllBytes(Paths.get(path)), Bytes.UTF8);
    }

    /** Everything a phone does before running a bundle: seal (and signature), manifest, files, retrieval head. */
    private static void load(String dir, Map<String, PublicKey> trusted) throws BundleException {
        DirectorySource src = new DirectorySource(new File(dir));
        BundleManifest m = BundleManifest.read(src, trusted);
        Checksums.verify(m, src);
        if ("retrieval".equals(m.head)) {
            Retrieval.load(m, src);
        }
    }

    private void expectRefusals(String key, Map<String, PublicKey> trusted) throws Exception {
        JSONArray refused = cases.getJSONArray(key);
        assertTrue(key + " lists no cases", refused.length() > 0);
        for (int i = 0; i < refused.length(); i++) {
            JSONObject c = refused.getJSONObject(i);
            try {
                load(c.getString("bundle"), trusted);
                fail(c.getString("name") + " was accepted");
            } catch (BundleException e) {
                assertTrue(c.getString("name") + ": " + e.getMessage(), e.getMessage().contains(c.getString("expect")));
            }
        }
    }

    @Test
    public void impossibleManifestsAreRefused() throws Exception {
        expectRefusals("impossible", null);
    }

    @Test
    public void signedBundleLoadsWithItsKeyAndOthersAreRefused() throws Exception {
        Map<String, PublicKey> trusted = BundleSignature.trust(text(cases.getString("trust")));
        load(cases.getString("signed"), trusted);
        load(cases.getString("signed"), null); // a signature is only required when a key is trusted
        expectRefusals("untrusted", trusted);
        Map<String, PublicKey> other = BundleSignature.trust(text(cases.getString("other_pub")));
        try {
            load(cases.getString("signed"), other);
            fail("a bundle signed by another key was accepted");
        } catch (BundleException e) {
            assertTrue(e.getMessage(), e.getMessage().contains("which is not a trusted key"));
        }
    }

    @Test
    public void limitsAreTheSchemas() throws Exception {
        JSONObject defs = new JSONObject(text(cases.getString("schema"))).getJSONObject("$defs");
        JSONObject shape = defs.getJSONObject("InputSpec").getJSONObject("properties").getJSONObject("shape");
        assertEquals(BundleManifest.MAX_DIM, shape.getJSONObject("items").getInt("maximum"));
        assertEquals(BundleManifest.MAX_INPUT_ELEMENTS, shape.getLong("x-kdmobile-max-elements"));
        JSONObject cv = defs.getJSONObject("ClassVectorsSpec").getJSONObject("properties").getJSONObject("shape");
        assertEquals(BundleManifest.MAX_CLASSES, cv.getJSONArray("prefixItems").getJSONObject(0).getInt("maximum"));
        assertEquals(BundleManifest.MAX_EMBED_DIM, cv.getJSONArray("prefixItems").getJSONObject(1).getInt("maximum"));
        assertEquals(BundleManifest.MAX_CLASS_VECTOR_ELEMENTS, cv.getLong("x-kdmobile-max-elements"));
    }
}
