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
import org.junit.Test;

/** Cross-language golden checks: the Java core reproduces the Python runtime's tensors and top-k (pytest fixtures). */
public class GoldenTest {
    private static File dir;
    private static JSONObject golden;
    private static File bundle;

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
        assertEquals("retrieval", m.task);
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
            Path copy = Files.createTempDirectory("kdmobile-tampered");
            for (File f : bundle.listFiles()) {
                Files.copy(f.toPath(), copy.resolve(f.getName()));
            }
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
