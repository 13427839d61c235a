"""AMMKD's tasks outside training (kdmobile.tasks.Task): a retrieval head whose gallery is the run's classes
(`classes`) or its held-out captions (`captions`). Export prepares the gallery by the student's text fusion,
verification and bench score the runtime predictor's embeddings against it."""

from __future__ import annotations

import json
from abc import abstractmethod
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from kdmobile.bundle import Bundle, write_class_vectors
from kdmobile.contracts.heldout import FILE as HELDOUT_FILE
from kdmobile.contracts.heldout import HeldOut
from kdmobile.contracts.student import StudentCard
from kdmobile.errors import UserError
from kdmobile.evaluation import backend_infer, evaluate_retrieval, score_captions, score_classes
from kdmobile.export.verify import Reference, student_infer, verification_index
from kdmobile.rundir import CLASS_VECTORS_FILE, LABELS_FILE, STUDENT_CLASS_VECTORS_FILE, STUDENT_FILE, teacher_file
from kdmobile.tasks import Score, Task, get_task
from kdmobile.untrusted import MAX_LABELS_BYTES, load_npz, read_json

RUN_GALLERIES = ("run", "held-out captions")  # a bundle's class_source when its gallery is the run's own


def _fuse(exp: Any, vectors: Sequence[Any]) -> np.ndarray:
    """The student's text fusion of per-teacher vectors -> (K, D) float32 L2-normalised rows."""
    import torch

    with torch.inference_mode():
        fused = exp.run.model.fuse_text([torch.as_tensor(np.asarray(v, np.float32)) for v in vectors])
    return fused.float().numpy()


def _teacher_vectors(exp: Any, names: list[str]) -> list[np.ndarray]:
    """Each teacher's text encoder on new class names, with the run's prompt templates (`export --classes`)."""
    from kdmobile.config import DEFAULT_TEMPLATES
    from kdmobile.models.clip_teacher import load_teacher

    run = exp.run
    templates = list(run.card.templates or DEFAULT_TEMPLATES)
    out = []
    for t in run.card.teachers:
        path = teacher_file(run.path, t)
        if not path.is_file():
            raise UserError(f"--classes needs the teachers' text encoders: {path} missing")
        out.append(load_teacher(path).class_vectors(names, templates).float().numpy())
    if not out:
        raise UserError(f"{run.path / STUDENT_FILE}: no teachers recorded; cannot encode new classes")
    return out


class RetrievalTask(Task):
    """An image encoder whose embeddings are matched against a bundled gallery of class (or caption) vectors."""

    io_names = ("image", "embedding")

    def _normalise(self, exp: Any, images: np.ndarray) -> np.ndarray:
        from kdmobile.data.transforms import normalise

        return normalise(images, tuple(exp.run.card.image_mean), tuple(exp.run.card.image_std))

    def export_inputs(self, exp: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        images = exp.run.need("images_test")
        index = verification_index(len(images))
        images = images[index]
        if images.dtype != np.uint8 or images.ndim != 4:
            raise UserError(f"{exp.run.path / HELDOUT_FILE}: images_test should be uint8 (N,S,S,3)")
        return index, self._normalise(exp, images), images

    def calibration(self, exp: Any, n: int) -> np.ndarray:
        return self._normalise(exp, exp.run.need("images_calib")[:n])

    def prepare(self, exp: Any) -> None:
        """Bundled class vectors + labels: new classes (--classes) through the teachers, else the run's own."""
        if exp.opts.classes_file is not None:
            from kdmobile.export.run import read_classes_file

            exp.labels = read_classes_file(exp.opts.classes_file)
            exp.class_vectors = _fuse(exp, _teacher_vectors(exp, exp.labels))
            exp.class_source = f"classes file {Path(exp.opts.classes_file).name}"
        else:
            exp.class_vectors, exp.labels, exp.class_source = self.run_gallery(exp)
        if exp.class_vectors is None or len(exp.labels) != len(exp.class_vectors):
            raise UserError(f"{exp.run.path}: {len(exp.labels)} labels for "
                            f"{0 if exp.class_vectors is None else len(exp.class_vectors)} class vectors")

    @abstractmethod
    def run_gallery(self, exp: Any) -> tuple[np.ndarray, list[str], str]:
        """(class vectors, labels, source) of the run's own gallery."""

    def manifest_sections(self, exp: Any, shape: list[int]) -> dict[str, Any]:
        card = exp.run.card
        k, d = exp.class_vectors.shape
        return {"input": {"name": self.io_names[0], "shape": shape, "dtype": "float32", "layout": "NCHW",
                          "value_range": [0, 255], "mean": card.image_mean, "std": card.image_std,
                          "resize": "bilinear", "color": "RGB"},
                "outputs": [{"name": self.io_names[1], "shape": [1, int(d)], "l2_normalised": True}],
                "retrieval": {"class_vectors": {"file": "class_vectors.f32", "shape": [int(k), int(d)],
                                                "dtype": "float32", "byte_order": "little"},
                              "logit_scale": exp.logit_scale, "labels_file": "labels.json",
                              "prompt_templates": list(card.templates),
                              "class_source": exp.class_source, "teachers": list(card.teachers)}}

    def bundle_task(self, exp: Any) -> str:
        """The manifest's task: new classes make any retrieval bundle a class bundle."""
        return "classes" if exp.new_classes else self.name

    def bundle_files(self, exp: Any) -> dict[str, Any]:
        cv = exp.class_vectors
        return {"class_vectors.f32": lambda p: write_class_vectors(p, cv),
                "labels.json": (json.dumps(exp.labels, indent=1, ensure_ascii=False) + "\n").encode()}

    def bundled(self, bundle: Bundle) -> Any:
        new = bundle.manifest["retrieval"].get("class_source", "run") not in RUN_GALLERIES
        return bundle.class_vectors, bundle.labels, new and self.new_classes_apply

    new_classes_apply = True  # whether a bundle's foreign gallery means "new classes" (not for caption galleries)

    def run_bundle(self, bundle: Bundle, ref: Reference) -> tuple[np.ndarray, dict[str, float], float | None]:
        from kdmobile.runtime import RetrievalPredictor

        rp = RetrievalPredictor(bundle)
        images = list(ref.inputs)
        pre_diff = float(np.max(np.abs(rp.preprocess(images) - ref.model_inputs)))
        emb = rp.embed(images)
        return emb, self.score_reference(emb, rp, ref), pre_diff

    @abstractmethod
    def score_reference(self, emb: np.ndarray, rp: Any, ref: Reference) -> dict[str, float]:
        """The metric of the bundle's embeddings of ref's images (verification)."""

    def bench_inputs(self, bundle: Bundle, heldout: HeldOut) -> np.ndarray | None:
        return heldout.images_test

    def score_bundle(self, bundle: Bundle, predictor: Any, heldout: HeldOut) -> Score:
        r = bundle.manifest.get("retrieval", {})
        if r.get("class_source", "run") not in RUN_GALLERIES:  # scored as the bundle's task (classes) would be
            return get_task(bundle.task).row.headline, None, f"n/a (bundle holds new classes: {r.get('class_source')})"
        emb = predictor.embed(list(heldout.images_test))
        m = self.score_gallery(emb, bundle.class_vectors, predictor.logit_scale, heldout)
        if m is None:
            return self.row.headline, None, "n/a (bundle captions differ from the run's held-out captions)"
        name, value = self.headline(m)
        return name, value, f"measured on held-out (N={len(emb)})"

    @abstractmethod
    def score_gallery(self, emb: np.ndarray, gallery: np.ndarray, logit_scale: float,
                      heldout: HeldOut) -> dict[str, float] | None:
        """The metric of held-out embeddings against a bundle's gallery; None when the gallery is not the run's."""

    def torch_inputs(self, heldout: HeldOut, card: StudentCard | None, limit: int | None = 256) -> np.ndarray:
        """Normalised held-out images: the student's card normalisation, CLIP's for a teacher (no card)."""
        from kdmobile.data.transforms import CLIP_MEAN, CLIP_STD, normalise

        mean, std = (card.image_mean, card.image_std) if card is not None else (list(CLIP_MEAN), list(CLIP_STD))
        return normalise(heldout.images_test[:limit], mean, std)

    def score_torch(self, model: Any, run: Any, card: StudentCard | None, device: str) -> Score:
        from kdmobile.runtime.backends import TorchBackend

        x = self.torch_inputs(run.heldout(), card, limit=None)
        m = self.torch_metrics(backend_infer(TorchBackend(model, device=device)), model, x, run, device)
        if m is None:
            return self.row.headline, None, f"n/a ({STUDENT_CLASS_VECTORS_FILE} missing)"
        name, value = self.headline(m)
        return name, value, f"measured on held-out (N={len(x)})"

    @abstractmethod
    def torch_metrics(self, infer: Any, model: Any, x: np.ndarray, run: Any, device: str) -> dict[str, float] | None:
        """The metrics of a PyTorch student on normalised held-out images; None when the run lacks what they need."""


class ClassesTask(RetrievalTask):
    """Zero-shot classification: the gallery is one fused text vector per class; the headline is top-1 accuracy."""

    def run_gallery(self, exp: Any) -> tuple[np.ndarray, list[str], str]:
        run, teachers = exp.run, list(exp.run.card.teachers)
        path = run.path / CLASS_VECTORS_FILE
        if not path.is_file():
            raise UserError(f"{path}: missing (per-teacher class vectors)")
        z = load_npz(path)
        missing = [t for t in teachers if t not in z]
        if missing:
            raise UserError(f"{path}: no class vectors for teacher(s) {', '.join(missing)}")
        labels = list(run.card.labels or read_json(run.path / LABELS_FILE, max_bytes=MAX_LABELS_BYTES))
        return _fuse(exp, [z[t] for t in teachers]), labels, "run"

    def reference(self, exp: Any) -> Reference:
        """Top-1 of the fp32 student against the bundled classes; skipped when the bundle holds new classes."""
        labels = exp.run.heldout().labels_test
        labels = None if labels is None else labels[exp.verify_index]
        use = None if exp.new_classes else labels
        out, metric = evaluate_retrieval(student_infer(exp.run.model), exp.model_inputs, exp.class_vectors,
                                         labels=use, logit_scale=exp.logit_scale)
        ref = Reference(self.name, exp.raw_inputs, exp.model_inputs, out, labels=labels)
        if use is None:
            ref.note = "new classes" if exp.new_classes else "no held-out labels"
        else:
            ref.metric, ref.headline = metric, self.row.headline
        return ref

    def score_reference(self, emb: np.ndarray, rp: Any, ref: Reference) -> dict[str, float]:
        return {} if ref.headline is None else score_classes(emb, rp.class_vectors, ref.labels, rp.logit_scale)

    def score_gallery(self, emb: np.ndarray, gallery: np.ndarray, logit_scale: float,
                      heldout: HeldOut) -> dict[str, float] | None:
        return score_classes(emb, gallery, heldout.labels_test, logit_scale)

    def torch_metrics(self, infer: Any, model: Any, x: np.ndarray, run: Any, device: str) -> dict[str, float] | None:
        cv_file = run.path / STUDENT_CLASS_VECTORS_FILE
        if not cv_file.is_file():
            return None
        _, m = evaluate_retrieval(infer, x, np.load(cv_file), labels=run.heldout().labels_test,
                                  logit_scale=float(model.scale().detach().cpu()))
        return m


class CaptionsTask(RetrievalTask):
    """Image-caption retrieval: the gallery is the held-out captions' fused vectors; the headline is Recall@1."""

    new_classes_apply = False  # caption recall does not depend on the bundled class vectors, so --classes keeps it

    def headline(self, metrics: Any) -> tuple[str, float | None]:
        name, value = super().headline(metrics)
        if value is None and metrics and "i2t_R@1" in metrics and "t2i_R@1" in metrics:
            value = 0.5 * (float(metrics["i2t_R@1"]) + float(metrics["t2i_R@1"]))
        return name, value

    def run_gallery(self, exp: Any) -> tuple[np.ndarray, list[str], str]:
        text = _fuse(exp, exp.run.text_vectors(list(exp.run.card.teachers)))
        return text, [str(c) for c in exp.run.need("captions_test")], "held-out captions"

    def reference(self, exp: Any) -> Reference:
        """Recall@K between the student's image embeddings and the fused vectors of those images' captions."""
        run, idx = exp.run, exp.verify_index
        owner = run.need("caption_owner_test")
        keep = np.isin(owner, idx)  # the captions of the images used; owners renumbered to their positions
        text = _fuse(exp, [v[keep] for v in run.text_vectors(list(run.card.teachers))])
        owner = np.searchsorted(idx, owner[keep])
        out, metric = evaluate_retrieval(student_infer(run.model), exp.model_inputs, text, owner=owner)
        ref = Reference(self.name, exp.raw_inputs, exp.model_inputs, out, text_vectors=text, caption_owner=owner)
        ref.metric, ref.headline = metric, self.row.headline
        return ref

    def score_reference(self, emb: np.ndarray, rp: Any, ref: Reference) -> dict[str, float]:
        return score_captions(emb, ref.text_vectors, ref.caption_owner)

    def score_gallery(self, emb: np.ndarray, gallery: np.ndarray, logit_scale: float,
                      heldout: HeldOut) -> dict[str, float] | None:
        if len(gallery) != len(heldout.caption_owner_test):
            return None
        return score_captions(emb, gallery, heldout.caption_owner_test)

    def torch_metrics(self, infer: Any, model: Any, x: np.ndarray, run: Any, device: str) -> dict[str, float] | None:
        import torch

        h = run.heldout()
        with torch.inference_mode():
            text = model.fuse_text([torch.from_numpy(v).to(device) for v in h.textvec_test.values()])
        _, m = evaluate_retrieval(infer, x, text.float().cpu().numpy(), owner=h.caption_owner_test)
        return m
