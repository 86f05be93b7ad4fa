"""New photos -> labels with a saved head: the release's preprocessing -> backbone -> tap -> head.

    for p in iter_predictions("heads/gender", ["photos/"]):   # streamed, in input order
        print(p.to_dict())

Uses featx.extract.Extractor, so photos go through exactly the path (resize/crop, normalisation,
precision policy, store dtype rounding) that produced the head's training features.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np

from .errors import FeatxError

FACE_MARGIN = 0.25  # widen the detected box by this fraction on each side (datasets crop loosely)
CASCADE = "haarcascade_frontalface_default.xml"
PAD = 0.25  # replicate-border added around the photo before detection


@dataclass
class Prediction:
    path: str
    label: str | None = None
    probability: float | None = None
    probabilities: dict[str, float] = field(default_factory=dict)
    error: str | None = None
    face: list[int] | None = None  # x, y, w, h of the crop when --detect-faces

    def to_dict(self) -> dict:
        d = {"path": self.path}
        if self.error is not None:
            d["error"] = self.error
            return d
        d.update(label=self.label, probability=self.probability, probabilities=self.probabilities)
        if self.face is not None:
            d["face"] = self.face
        return d


def collect_images(inputs) -> tuple[list[Path], list[Prediction]]:
    """Files as given (any name) and image files under folders (sorted, recursive); errors for the rest."""
    from .images import is_image_name

    paths, errors = [], []
    for raw in inputs:
        p = Path(raw)
        if p.is_dir():
            found = sorted(f for f in p.rglob("*") if f.is_file() and is_image_name(f.name))
            if not found:
                errors.append(Prediction(str(p), error="no image files in this folder"))
            paths += found
        else:
            paths.append(p)  # missing or unreadable files get their own error from open_rgb
    return paths, errors


class FaceCropper:
    """Crop the largest frontal face (OpenCV Haar cascade), with a margin."""

    def __init__(self, margin: float = FACE_MARGIN):
        try:
            import cv2
        except ImportError:
            raise FeatxError("--detect-faces needs OpenCV: pip install 'featx[faces]'") from None
        if not hasattr(cv2, "CascadeClassifier"):
            raise FeatxError(f"OpenCV {cv2.__version__} has no Haar cascade detector; "
                             "pip install 'opencv-python-headless>=4.8,<5'")
        self.cv2 = cv2
        self.detector = cv2.CascadeClassifier(str(Path(cv2.data.haarcascades) / CASCADE))
        if self.detector.empty():
            raise FeatxError(f"cannot load OpenCV's {CASCADE}")
        self.margin = margin

    def box(self, img) -> list[int] | None:
        """[x, y, w, h] of the largest face plus margin, clipped to the image; None when none is found."""
        cv2 = self.cv2
        gray = cv2.cvtColor(np.asarray(img.convert("RGB")), cv2.COLOR_RGB2GRAY)
        # a border lets the cascade find faces that fill the frame (already-cropped photos)
        pad = int(PAD * max(gray.shape))
        gray = cv2.copyMakeBorder(gray, pad, pad, pad, pad, cv2.BORDER_REPLICATE)
        side = min(gray.shape)
        faces = self.detector.detectMultiScale(gray, scaleFactor=1.1, minNeighbors=5,
                                               minSize=(max(20, side // 20),) * 2)
        if len(faces) == 0:
            return None
        x, y, w, h = max((tuple(int(v) for v in f) for f in faces), key=lambda f: f[2] * f[3])
        x, y = x - pad, y - pad
        mx, my = int(w * self.margin), int(h * self.margin)
        x0, y0 = max(0, x - mx), max(0, y - my)
        x1, y1 = min(img.width, x + w + mx), min(img.height, y + h + my)
        if x1 - x0 < 8 or y1 - y0 < 8:  # found in the added border only
            return None
        return [x0, y0, x1 - x0, y1 - y0]


def backbone_of(head_dir, prov: dict) -> str:
    """The backbone a head card names: a fine-tuned model's own folder (`release_dir`, relative to the
    card, so the folder can move), else the release name."""
    import json

    folder = Path(head_dir) / prov.get("release_dir", ".")
    try:
        if json.loads((folder / "release.json").read_text()).get("name") == prov.get("release"):
            return str(folder)
    except (OSError, ValueError, AttributeError):
        pass
    return prov["release"]


class HeadModel:
    """A saved head with the backbone and tap its features came from, checked against the card."""

    def __init__(self, head, card: dict, weights=None, device: str = "auto", head_dir=None):
        from .extract.extractor import Extractor
        from .weights import load_backbone

        prov = card.get("provenance", {})
        release_name = prov.get("release")
        backbone = backbone_of(head_dir, prov) if head_dir is not None else release_name
        loaded = load_backbone(backbone, weights)
        release, _, sha = loaded
        want = prov.get("weights_sha256")
        if want and sha != want:
            where = f"--weights {weights}" if weights else f"the cached weights of {release_name}"
            raise FeatxError(f"{where} have sha256 {sha[:12]}, but the head was trained on features from weights "
                             f"{want[:12]}; pass the weights file the store was extracted with")
        if prov.get("preprocess") is not None and prov["preprocess"] != release.preprocess.to_dict():
            raise FeatxError(f"the head's features used other preprocessing than release {release_name} has now")
        self.ex = Extractor(backbone, tap=prov["tap"], device=device, precision="auto",
                            dtype=prov.get("dtype") or "float32", loaded=loaded)
        self.head, self.classes = head, list(card["classes"])

    def pixels(self, img) -> np.ndarray:
        """A photo resized and cropped as the release does, uint8 HWC."""
        return np.array(self.ex.preprocess.resize_crop(img), dtype=np.uint8)

    def label(self, batch: list[tuple[Prediction, np.ndarray]]) -> None:
        """Fill in label and probabilities of each Prediction from its pixels."""
        import torch

        if not batch:
            return
        feats, _ = self.ex(torch.from_numpy(np.stack([a for _, a in batch])))
        proba = self.head.predict_proba(np.asarray(feats, np.float32))
        for (pred, _), p in zip(batch, proba):
            k = int(p.argmax())
            pred.label, pred.probability = self.classes[k], float(p[k])
            pred.probabilities = {c: float(v) for c, v in zip(self.classes, p)}


def read_photo(pred: Prediction, path: Path, cropper: FaceCropper | None):
    """The photo (face-cropped when asked), or None with pred.error set."""
    from .images import ImageError, open_rgb

    try:
        img = open_rgb(path)
    except ImageError as e:
        pred.error = e.reason
        return None
    if cropper is None:
        return img
    box = cropper.box(img)
    if box is None:
        pred.error = "no face found"
        return None
    pred.face = box
    x0, y0, w, h = box
    return img.crop((x0, y0, x0 + w, y0 + h))


def stream(model: HeadModel, paths: list[Path], cropper: FaceCropper | None,
           batch_size: int) -> Iterator[Prediction]:
    """Predictions in path order, each yielded as soon as it and all before it are done."""
    queue: deque[Prediction] = deque()
    pending: list[tuple[Prediction, np.ndarray]] = []
    for path in paths:
        pred = Prediction(str(path))
        queue.append(pred)
        img = read_photo(pred, path, cropper)
        if img is not None:
            pending.append((pred, model.pixels(img)))
        if len(pending) >= batch_size:
            model.label(pending)
            pending.clear()
        while queue and (queue[0].error is not None or queue[0].label is not None):
            yield queue.popleft()
    model.label(pending)
    yield from queue


def iter_predictions(head_dir: str | Path, inputs, *, weights: str | Path | None = None, detect_faces: bool = False,
                     batch_size: int = 16, device: str = "auto", progress: bool = False) -> Iterator[Prediction]:
    """One Prediction per image (or per unusable input, with `error` set), in input order, as they come.
    `progress`: a bar on stderr (status lines in a log, for runs longer than a status period)."""
    from .heads import load_head
    from .progress import progress_bar

    if batch_size < 1:
        raise FeatxError("--batch-size must be at least 1")
    head, card = load_head(head_dir)
    prov = card.get("provenance", {})
    if not prov.get("release") or not prov.get("tap"):
        raise FeatxError(f"head card {head_dir} does not record the release and tap it was trained on")
    cropper = FaceCropper() if detect_faces else None
    paths, errors = collect_images(inputs)
    yield from errors
    if paths:
        model = HeadModel(head, card, weights, device, head_dir)
        with progress_bar(progress, len(paths), 0, "predict", transient=True) as advance:
            for pred in stream(model, paths, cropper, batch_size):
                advance(1)
                yield pred


def predict_images(head_dir: str | Path, inputs, *, weights: str | Path | None = None, detect_faces: bool = False,
                   batch_size: int = 16, device: str = "auto") -> list[Prediction]:
    """All of iter_predictions as a list."""
    return list(iter_predictions(head_dir, inputs, weights=weights, detect_faces=detect_faces,
                                 batch_size=batch_size, device=device))


__all__ = ["Prediction", "FaceCropper", "HeadModel", "collect_images", "iter_predictions", "predict_images",
           "FACE_MARGIN", "CASCADE", "PAD"]
