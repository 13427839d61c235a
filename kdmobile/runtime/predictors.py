"""Task predictors over a bundle: retrieval (embed, classify, rank) and forecast (predict, roll out); no torch."""

from __future__ import annotations

import abc

import os
from typing import Any, Sequence

import numpy as np
from PIL import Image

from kdmobile.bundle import Bundle
from kdmobile.errors import UserError
from kdmobile.runtime.backends import Backend, open_backend
from kdmobile.untrusted import open_image

ImageLike = Any  # np.ndarray uint8 (H, W, 3) / (H, W), or PIL.Image.Image


def load_image(path: str | os.PathLike, mode: str = "RGB") -> np.ndarray:
    """Read an image file as a uint8 (H, W, 3) array (or (H, W) for mode "L"); one-line KDError otherwise.

    Oversized images are refused before decoding; 16-bit greyscale is scaled, not saturated.
    """
    return np.asarray(open_image(path, mode), dtype=np.uint8)


def _compatible(model: Sequence[int | None], declared: Sequence[int]) -> bool:
    """Whether a model's tensor shape (None = dynamic) can take the manifest's; the batch dimension may differ."""
    return len(model) == len(declared) and all(
        i == 0 or m is None or m == d for i, (m, d) in enumerate(zip(model, declared)))


def check_model_io(bundle: Bundle, backend: Backend) -> None:
    """Refuse a bundle whose manifest declares input/output shapes the model file does not have (one line)."""
    declared = list(bundle.input["shape"])
    shapes = backend.input_shapes
    model_in = shapes.get(bundle.input["name"], next(iter(shapes.values()), None)) if shapes else None
    if model_in is not None and model_in != (None,) and not _compatible(model_in, declared):
        raise UserError(f"bundle {bundle.path}: manifest input shape {declared} does not match the model file's "
                      f"{[d if d is not None else '?' for d in model_in]}")
    outs = getattr(backend, "output_shapes", None)
    if outs:
        for spec, model_out in zip(bundle.outputs, outs):
            if model_out is not None and not _compatible(model_out, spec["shape"]):
                raise UserError(f"bundle {bundle.path}: manifest output shape {spec['shape']} does not match the "
                              f"model file's {[d if d is not None else '?' for d in model_out]}")


def _softmax(z: np.ndarray) -> np.ndarray:
    """Row-wise softmax, numerically stable."""
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def _l2n(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm."""
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def rank_gallery(queries: np.ndarray, gallery: np.ndarray, k: int) -> list[list[tuple[int, float]]]:
    """For each query vector, the k most cosine-similar gallery rows as (index, similarity), best first."""
    q = np.atleast_2d(np.asarray(queries, dtype=np.float32))
    g = np.atleast_2d(np.asarray(gallery, dtype=np.float32))
    if q.shape[1] != g.shape[1]:
        raise UserError(f"query vectors have dimension {q.shape[1]}, gallery embeddings {g.shape[1]}")
    sims = _l2n(q) @ _l2n(g).T
    k = min(int(k), g.shape[0])
    order = np.argsort(-sims, axis=1, kind="stable")[:, :k]
    return [[(int(j), float(sims[i, j])) for j in row] for i, row in enumerate(order)]


class _Predictor(abc.ABC):
    """Shared plumbing: head check, backend, input spec and batch-aware execution; each head (a subclass) says how
    its raw inputs become model inputs, what a random input is, how it answers and what a wrong answer looks like."""

    head = ""  # the manifest's head this predictor runs

    def __init__(self, bundle: Bundle, threads: int = 1, backend: Backend | None = None) -> None:
        if bundle.head != self.head:
            raise UserError(f"bundle {bundle.path}: a {bundle.head} bundle, not a {self.head} bundle")
        self.bundle = bundle
        self.backend = backend if backend is not None else open_backend(bundle, threads=threads)
        check_model_io(bundle, self.backend)
        spec = bundle.input
        self.input_name: str = spec["name"]
        self.input_shape: tuple[int, ...] = tuple(spec["shape"])
        names = self.backend.input_names
        model_shape = self.backend.input_shapes.get(self.input_name, next(iter(self.backend.input_shapes.values())))
        self.batched = len(names) == 1 and bool(model_shape) and model_shape[0] is None

    @abc.abstractmethod
    def model_inputs(self, raw: np.ndarray) -> np.ndarray:
        """What the model takes, from the bundle's raw inputs (uint8 images or frames in physical units)."""

    @abc.abstractmethod
    def random_inputs(self, n: int, seed: int = 0) -> np.ndarray:
        """`n` raw inputs of the bundle's declared shape and value range (a smoke test without data)."""

    @abc.abstractmethod
    def outputs(self, raw: np.ndarray) -> np.ndarray:
        """The bundle's answer for raw inputs (embeddings, or forecasts in physical units)."""

    @abc.abstractmethod
    def output_problems(self, y: np.ndarray, n: int) -> list[str]:
        """What is wrong with `outputs` of n inputs (shape, normalisation); [] when nothing is."""

    def _run(self, x: np.ndarray) -> np.ndarray:
        """Run the model on (N, ...) float32 input: one call if the batch is dynamic, else N batch-1 calls."""
        x = np.ascontiguousarray(x, dtype=np.float32)
        if self.batched or x.shape[0] == 1:
            return self.backend.run({self.input_name: x})[0]
        return np.concatenate([self.backend.run({self.input_name: x[i:i + 1]})[0] for i in range(x.shape[0])])


class RetrievalPredictor(_Predictor):
    """Image embedding, class scores and top-k labels from a retrieval bundle (class vectors precomputed)."""

    head = "retrieval"

    def __init__(self, bundle: Bundle, threads: int = 1, backend: Backend | None = None) -> None:
        super().__init__(bundle, threads, backend)
        spec = bundle.input
        _, self.channels, self.height, self.width = self.input_shape
        if self.channels not in (1, 3):
            raise UserError(f"bundle {bundle.path}: image input must have 1 or 3 channels, not {self.channels}")
        self.value_range = tuple(float(v) for v in spec["value_range"])
        self.mean = np.asarray(spec["mean"], dtype=np.float32).reshape(1, -1, 1, 1)
        self.std = np.asarray(spec["std"], dtype=np.float32).reshape(1, -1, 1, 1)
        self.labels = bundle.labels
        self.class_vectors = bundle.class_vectors
        self.logit_scale = float(bundle.manifest["retrieval"]["logit_scale"])

    def _to_pil(self, image: ImageLike) -> Image.Image:
        """A PIL image in the model's colour mode."""
        if isinstance(image, Image.Image):
            im = image
        elif isinstance(image, np.ndarray) and image.dtype == np.uint8 and (
                image.ndim == 2 or (image.ndim == 3 and image.shape[2] in (1, 3, 4))):
            im = Image.fromarray(image[..., 0] if image.ndim == 3 and image.shape[2] == 1 else image)
        else:
            desc = f"array {image.dtype} {image.shape}" if isinstance(image, np.ndarray) else type(image).__name__
            raise UserError(f"images must be uint8 (H, W, 3) arrays or PIL images, got {desc}")
        return im.convert("L" if self.channels == 1 else "RGB")

    def model_inputs(self, raw: np.ndarray) -> np.ndarray:
        """(N, H, W, 3) uint8 images, preprocessed as the phone does."""
        return self.preprocess(list(raw))

    def random_inputs(self, n: int, seed: int = 0) -> np.ndarray:
        return np.random.default_rng(seed).integers(0, 256, size=(n, self.height, self.width, self.channels),
                                                    dtype=np.uint8)

    def outputs(self, raw: np.ndarray) -> np.ndarray:
        return self.embed(list(raw))

    def output_problems(self, y: np.ndarray, n: int) -> list[str]:
        d = self.bundle.class_vectors.shape[1]
        if y.shape != (n, d):
            return [f"embedding shape {y.shape} != ({n}, {d})"]
        return [] if np.allclose(np.linalg.norm(y, axis=1), 1.0, atol=1e-2) else ["embeddings are not L2-normalised"]

    def preprocess(self, images: Sequence[ImageLike]) -> np.ndarray:
        """Resize (Pillow bilinear) to the bundle's H×W, scale the value range to [0, 1], normalise: NCHW float32."""
        if len(images) == 0:
            raise UserError("no images given")
        lo, hi = self.value_range
        batch = []
        for image in images:
            im = self._to_pil(image)
            if im.size != (self.width, self.height):
                im = im.resize((self.width, self.height), Image.BILINEAR)
            a = np.asarray(im, dtype=np.float32)
            batch.append(a[None] if a.ndim == 2 else a.transpose(2, 0, 1))
        x = (np.stack(batch) - lo) / (hi - lo)
        return ((x - self.mean) / self.std).astype(np.float32)

    def embed(self, images: Sequence[ImageLike]) -> np.ndarray:
        """(N, D) image embeddings (L2-normalised by the model)."""
        return self._run(self.preprocess(images))

    def scores(self, images: Sequence[ImageLike]) -> np.ndarray:
        """(N, K) logits: logit_scale · embedding · class_vectorsᵀ."""
        return self.logit_scale * self.embed(images) @ self.class_vectors.T

    def topk(self, images: Sequence[ImageLike], k: int = 5) -> list[list[tuple[str, float]]]:
        """Per image, the k most probable (label, softmax probability), best first."""
        probs = _softmax(self.scores(images).astype(np.float64))
        k = min(int(k), probs.shape[1])
        order = np.argsort(-probs, axis=1, kind="stable")[:, :k]
        return [[(self.labels[j], float(p[j])) for j in row] for p, row in zip(probs, order)]

    def text_to_image(self, caption_vectors: np.ndarray, gallery_embeddings: np.ndarray,
                      k: int = 5) -> list[list[tuple[int, float]]]:
        """Rank gallery images (embedded by `embed`) for precomputed caption vectors: (index, cosine), best first."""
        return rank_gallery(caption_vectors, gallery_embeddings, k)


class ForecastPredictor(_Predictor):
    """Next-frames forecast from a forecast bundle, in raw units, with autoregressive roll-out."""

    head = "forecast"

    def __init__(self, bundle: Bundle, threads: int = 1, backend: Backend | None = None) -> None:
        super().__init__(bundle, threads, backend)
        fc = bundle.manifest["forecast"]
        self.frames_in = int(fc["frames_in"])
        self.frames_out = int(fc["frames_out"])
        self.mean = float(fc["mean"])
        self.std = float(fc["std"])
        self.frame_shape = tuple(self.input_shape[2:])

    def _check(self, frames: np.ndarray) -> tuple[np.ndarray, bool]:
        """(N, T_in, H, W) float32 view of the input and whether it was a single sequence."""
        x = np.asarray(frames, dtype=np.float32)
        single = x.ndim == 3
        if single:
            x = x[None]
        if x.ndim != 4 or x.shape[0] == 0 or x.shape[1] != self.frames_in or tuple(x.shape[2:]) != self.frame_shape:
            h, w = self.frame_shape
            raise UserError(f"forecast input must be (T_in={self.frames_in}, {h}, {w}) or (N, {self.frames_in}, "
                          f"{h}, {w}); got {tuple(np.shape(frames))}")
        if not np.all(np.isfinite(x)):
            raise UserError("forecast input contains NaN or infinite values")
        return x, single

    def model_inputs(self, raw: np.ndarray) -> np.ndarray:
        """Frames in physical units, normalised as the model expects."""
        return ((np.asarray(raw, dtype=np.float32) - self.mean) / self.std).astype(np.float32)

    def random_inputs(self, n: int, seed: int = 0) -> np.ndarray:
        rng = np.random.default_rng(seed)
        return (rng.standard_normal((n, *self.input_shape[1:])) * self.std + self.mean).astype(np.float32)

    def outputs(self, raw: np.ndarray) -> np.ndarray:
        return self.predict(raw)

    def output_problems(self, y: np.ndarray, n: int) -> list[str]:
        want = (n, self.frames_out, *self.frame_shape)
        return [] if y.shape == want else [f"forecast shape {y.shape} != {want}"]

    def _step(self, z: np.ndarray) -> np.ndarray:
        """One model call in normalised units: (N, T_in, H, W) -> (N, T_out, H, W)."""
        return self._run(z)

    def predict(self, frames: np.ndarray) -> np.ndarray:
        """Forecast the next frames_out frames in raw units: (T_in,H,W) -> (T_out,H,W), or batched with N first."""
        x, single = self._check(frames)
        y = self._step((x - self.mean) / self.std) * self.std + self.mean
        return y[0] if single else y

    def rollout(self, frames: np.ndarray, steps: int) -> np.ndarray:
        """Autoregressive forecast of steps × frames_out frames, each step fed the last frames_in known frames."""
        if int(steps) < 1:
            raise UserError(f"rollout steps must be >= 1, got {steps}")
        x, single = self._check(frames)
        from kdmobile.untrusted import check_array_bytes

        n, _, h, w = x.shape  # the whole forecast is kept (and concatenated: twice), so it is sized first
        need = 2 * n * int(steps) * self.frames_out * h * w * 4
        check_array_bytes(f"a {steps}-step forecast of {n} window(s)", need, "allocating")
        history = (x - self.mean) / self.std
        preds = []
        for _ in range(int(steps)):
            y = self._step(history[:, -self.frames_in:])
            preds.append(y)
            history = np.concatenate([history, y], axis=1)[:, -self.frames_in:]
        out = np.concatenate(preds, axis=1) * self.std + self.mean
        return out[0] if single else out


PREDICTORS: dict[str, type[_Predictor]] = {p.head: p for p in (RetrievalPredictor, ForecastPredictor)}


def open_predictor(bundle: Bundle, threads: int = 1, backend: Backend | None = None) -> _Predictor:
    """The predictor for the bundle's head, so callers need not branch on it."""
    cls = PREDICTORS.get(bundle.head)
    if cls is None:
        raise UserError(f"bundle {bundle.path}: no predictor for head {bundle.head!r}")
    return cls(bundle, threads=threads, backend=backend)
