package org.kdmobile.core;

import static org.junit.Assert.assertEquals;
import static org.junit.Assert.assertTrue;
import static org.junit.Assert.fail;

import java.awt.image.BufferedImage;
import java.io.File;
import java.io.IOException;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.List;

import javax.imageio.ImageIO;

import org.json.JSONArray;
import org.json.JSONObject;
import org.junit.BeforeClass;
import org.junit.Rule;
import org.junit.Test;
import org.junit.rules.TemporaryFolder;

/** Cross-language golden checks: the Java core reproduces the Python runtime's tensors and top-k (pytest fixtures). */
public class GoldenTest {
    private static File dir;
    private static JSONObject golden;
    private static File bundle;

    /** Bundle copies the tests edit; JUnit deletes them after each test (they used to pile up in /tmp). */
    @Rule
    public final TemporaryFolder tmp = new TemporaryFolder();

    @BeforeClass
    public static void load() throws Exception {
        String where = System.getProperty("kdmobile.golden");
        if (where == null) {
            throw new IllegalStateException("run with -Dkdmobile.golden=<fixture dir> (written by the pytest suite)");
        }
        dir = new File(where);
        golden = new JSONObject(new String(Files.readAllBytes(new File(dir, "golden.json").toPath()), Bytes.UTF8));
        bundle = new File(dir, golden.getString("bundle"));
    }

    private static int[] argb(BufferedImage im) {
        return im.getRGB(0, 0, im.getWidth(), im.getHeight(), null, 0, im.getWidth());
    }

    @Test
    public void manifestParsesAndChecksumsPass() throws Exception {
        BundleManifest m = BundleManifest.read(new DirectorySource(bundle));
        assertEquals("retrieval", m.head);
        assertEquals(4, m.inputShape.length);
        Checksums.verify(m, new DirectorySource(bundle));
    }

    @Test
    public void tensorsMatchPythonPreprocessing() throws Exception {
        BundleManifest m = BundleManifest.read(new DirectorySource(bundle));
        JSONArray cases = golden.getJSONArray("tensors");
        assertTrue("golden.json lists no tensors", cases.length() >= 3);
        for (int i = 0; i < cases.length(); i++) {
            JSONObject c = cases.getJSONObject(i);
            BufferedImage im = ImageIO.read(new File(dir, c.getString("png")));
            float[] got = Preprocess.tensor(m, argb(im), im.getWidth(), im.getHeight());
            float[] want = Bytes.littleEndianFloats(Files.readAllBytes(new File(dir, c.getString("tensor")).toPath()));
            assertEquals(c.getString("png") + ": tensor length", want.length, got.length);
            double worst = 0.0;
            for (int j = 0; j < want.length; j++) {
                worst = Math.max(worst, Math.abs((double) want[j] - got[j]));
            }
            assertTrue(c.getString("png") + " (" + im.getWidth() + "x" + im.getHeight() + "): max |java - python| = "
                    + worst, worst <= 1e-5);
        }
    }

    @Test
    public void topKMatchesPython() throws Exception {
        DirectorySource src = new DirectorySource(bundle);
        BundleManifest m = BundleManifest.read(src);
        Retrieval r = Retrieval.load(m, src);
        JSONArray cases = golden.getJSONArray("embeddings");
        assertTrue(cases.length() > 0);
        for (int i = 0; i < cases.length(); i++) {
            JSONObject c = cases.getJSONObject(i);
            JSONArray e = c.getJSONArray("embedding");
            float[] emb = new float[e.length()];
            for (int j = 0; j < emb.length; j++) {
                emb[j] = (float) e.getDouble(j);
            }
            JSONArray want = c.getJSONArray("top_k");
            List<Retrieval.Prediction> got = r.topK(emb, want.length());
            for (int j = 0; j < want.length(); j++) {
                JSONObject w = want.getJSONObject(j);
                assertEquals("case " + i + " rank " + j + " probability", w.getDouble("probability"),
                        got.get(j).probability, 1e-6);
                assertEquals("case " + i + " rank " + j + " label", w.getString("label"), got.get(j).label);
            }
        }
    }

    private static void flipByte(Path p) throws IOException {
        byte[] raw = Files.readAllBytes(p);
        raw[raw.length / 2] ^= (byte) 0xFF;
        Files.write(p, raw);
    }

    @Test
    public void tamperedBundleIsRefusedNamingTheFile() throws Exception {
        String[] victims = {"model.onnx", "class_vectors.f32", "labels.json"};
        for (String victim : victims) {
            Path copy = copyBundle();
            BundleManifest m = BundleManifest.read(new DirectorySource(copy.toFile()));
            Checksums.verify(m, new DirectorySource(copy.toFile()));
            flipByte(copy.resolve(victim));
            try {
                Checksums.verify(m, new DirectorySource(copy.toFile()));
                fail("a changed " + victim + " was accepted");
            } catch (BundleException expected) {
                assertTrue(expected.getMessage(), expected.getMessage().contains("checksum mismatch for " + victim));
            }
            Files.delete(copy.resolve(victim));
            try {
                Checksums.verify(m, new DirectorySource(copy.toFile()));
                fail("a missing " + victim + " was accepted");
            } catch (BundleException expected) {
                assertTrue(expected.getMessage(), expected.getMessage().contains(victim));
            }
        }
    }

    private Path copyBundle() throws IOException {
        Path copy = tmp.newFolder().toPath();
        for (File f : bundle.listFiles()) {
            Files.copy(f.toPath(), copy.resolve(f.getName()));
        }
        return copy;
    }

    private static String refusal(Path copy) {
        try {
            DirectorySource src = new DirectorySource(copy.toFile());
            Checksums.verify(BundleManifest.read(src), src);
        } catch (BundleException e) {
            return e.getMessage();
        }
        fail("bundle " + copy + " was accepted");
        return null;
    }

    @Test
    public void editedManifestIsRefusedBeforeParsing() throws Exception {
        Path copy = copyBundle();
        Path manifest = copy.resolve("manifest.json");
        String text = new String(Files.readAllBytes(manifest), Bytes.UTF8);
        String edited = text.replaceFirst("\"logit_scale\": [0-9.eE+-]+", "\"logit_scale\": 100.0");
        assertTrue("no logit_scale to edit", !edited.equals(text));
        Files.write(manifest, edited.getBytes(Bytes.UTF8));
        String msg = refusal(copy);
        assertTrue(msg, msg.contains("manifest.json changed after export"));
        Files.write(manifest, "{\"schema_version\": 2,".getBytes(Bytes.UTF8)); // not even JSON: never parsed
        msg = refusal(copy);
        assertTrue(msg, msg.contains("manifest.json changed after export"));
    }

    @Test
    public void unsealedOrPaddedBundleIsRefused() throws Exception {
        Path copy = copyBundle();
        Files.write(copy.resolve("extra.txt"), new byte[] {1, 2, 3});
        String msg = refusal(copy);
        assertTrue(msg, msg.contains("extra.txt is not listed"));
        Files.delete(copy.resolve("extra.txt"));
        Files.createSymbolicLink(copy.resolve("link.onnx"), copy.resolve("model.onnx"));
        msg = refusal(copy);
        assertTrue(msg, msg.contains("link.onnx is a symbolic link"));
        Files.delete(copy.resolve("link.onnx"));
        Path seal = copy.resolve("bundle.sha256");
        String lines = new String(Files.readAllBytes(seal), Bytes.UTF8);
        Files.write(seal, lines.replaceFirst("(?m)^[0-9a-f]{64}  labels\\.json$",
                new String(new char[64]).replace('\0', '0') + "  labels.json").getBytes(Bytes.UTF8));
        msg = refusal(copy);
        assertTrue(msg, msg.contains("checksum mismatch for labels.json"));
        Files.write(seal, "not a seal\n".getBytes(Bytes.UTF8));
        msg = refusal(copy);
        assertTrue(msg, msg.contains("bundle.sha256 is malformed"));
        Files.delete(seal);
        msg = refusal(copy);
        assertTrue(msg, msg.contains("bundle.sha256 missing"));
    }

    @Test
    public void resizeKeepsConstantImagesConstant() {
        int[] plane = new int[37 * 23];
        java.util.Arrays.fill(plane, 201);
        for (int[] size : new int[][] {{32, 32}, {80, 9}, {5, 61}}) {
            int[] out = Preprocess.resizePlane(plane, 37, 23, size[0], size[1]);
            assertEquals(size[0] * size[1], out.length);
            for (int v : out) {
                assertEquals(201, v);
            }
        }
    }
}
