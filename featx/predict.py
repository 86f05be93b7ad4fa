"""New photos -> labels with a saved head: the release's preprocessing -> backbone -> tap -> head.

    for p in iter_predictions("heads/gender", ["photos/"]):   # streamed, in input order
        print(p.to_dict())

Uses featx.extract.Extractor, so photos go through exactly the path (resize/crop, normalisation,
precision policy) that produced the head's training features; features stay float32 (a float16 store's
rounding is storage), and heads trained with mirrored features answer with the mean over both images.
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
    face: list[int] | None = None  # the face's box (left, top, right, bottom, inclusive) with a face stage
    faces: int | None = None  # how many faces the photo has (each gets its own Prediction)
    value: float | None = None  # a regression head's answer
    heads: dict[str, dict] | None = None  # several heads: each head's answer, by head name
    answered: bool = False

    def to_dict(self) -> dict:
        d = {"path": self.path}
        if self.error is not None:
            d["error"] = self.error
            return d
        if self.heads is not None:
            d["heads"] = self.heads
        elif self.value is not None:
            d["value"] = self.value
        else:
            d.update(label=self.label, probability=self.probability, probabilities=self.probabilities)
        if self.face is not None:
            d["face"], d["faces"] = self.face, self.faces
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


class StageCropper:
    """featx's face stage (dlib's CNN detector, 5 landmarks, the release's chip): every face, largest first."""

    def __init__(self, mode: str, chip):
        from .faces.stage import FaceStage

        self.stage = FaceStage(mode, chip, coarse=None)  # every face, not just the largest

    def crops(self, img) -> list[tuple[list[int], object]] | str:
        """[(box, chip image), ...] for every face, or the reason there is none."""
        from PIL import Image

        rgb = np.asarray(img.convert("RGB"), dtype=np.uint8)
        found = self.stage.faces(rgb)
        if not found:
            return self.stage.reason_none(rgb)
        return [(list(f.box), Image.fromarray(f.chip)) for f in found]


def make_cropper(faces, model):
    """The face step predict uses: `faces` False/None: the one the heads' store was made with (none for
    most); True: `align`; "none" | "detect" | "align": featx's face stage with the model's release chip;
    "haar": the documented fallback (OpenCV's Haar cascade, the largest face plus a margin)."""
    if faces in (None, False):
        faces = getattr(model, "faces", None) or "none"
    faces = "align" if faces is True else faces
    if faces == "haar":
        return FaceCropper()
    if faces == "none":
        return None
    return StageCropper(faces, getattr(model, "chip", None))


class FaceCropper:
    """The fallback face step: the largest frontal face (OpenCV Haar cascade), with a margin."""

    def __init__(self, margin: float = FACE_MARGIN):
        try:
            import cv2
        except ImportError:
            raise FeatxError("--faces haar needs OpenCV: pip install 'featx[faces]'") from None
        if not hasattr(cv2, "CascadeClassifier"):
            raise FeatxError(f"OpenCV {cv2.__version__} has no Haar cascade detector; "
                             "pip install 'opencv-python-headless>=4.8,<5'")
        self.cv2 = cv2
        self.detector = cv2.CascadeClassifier(str(Path(cv2.data.haarcascades) / CASCADE))
        if self.detector.empty():
            raise FeatxError(f"cannot load OpenCV's {CASCADE}")
        self.margin = margin

    def crops(self, img) -> list[tuple[list[int], object]] | str:
        box = self.box(img)
        if box is None:
            return "no face"
        x0, y0, w, h = box
        return [([x0, y0, x0 + w - 1, y0 + h - 1], img.crop((x0, y0, x0 + w, y0 + h)))]

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


@dataclass
class SavedHead:
    """A loaded head, its card, its folder and its name in the output."""

    name: str
    head: object
    card: dict
    folder: Path

    @property
    def mirror(self) -> bool:
        """Trained with mirrored-image features: answers are the mean over the photo and its mirror."""
        from .training import mirrored

        return mirrored(self.card)

    def outputs(self, X: np.ndarray, X_mirror: np.ndarray | None = None) -> np.ndarray:
        """Probabilities (a regressed target: values) per row; with X_mirror, the mean of both."""
        fn = self.head.predict if self.card.get("task") == "regress" else self.head.predict_proba
        return fn(X) if X_mirror is None else (fn(X) + fn(X_mirror)) / 2

    def answer(self, X: np.ndarray, X_mirror: np.ndarray | None = None) -> list[dict]:
        """Each row's answer: {label, probability, probabilities} or, for a regressed target, {value}."""
        out_ = self.outputs(X, X_mirror)
        if self.card.get("task") == "regress":
            return [{"value": float(v)} for v in out_]
        classes = list(self.card["classes"])
        out = []
        for p in out_:
            k = int(p.argmax())
            out.append({"label": classes[k], "probability": float(p[k]),
                        "probabilities": {c: float(v) for c, v in zip(classes, p)}})
        return out


def checked_base(saved: SavedHead, weights=None):
    """(backbone, loaded base) a head's features came from, its weights and preprocessing checked."""
    return base_for(saved.folder, saved.card.get("provenance", {}), weights)


def base_for(folder, prov: dict, weights=None, heads: bool = False):
    """(backbone, loaded base) that the head(s) in `folder` with provenance `prov` were trained on, the
    weights' sha256 and the release's preprocessing checked against the card."""
    from .weights import load_backbone

    who = ("the heads were", "the heads'") if heads else ("the head was", "the head's")
    release_name = prov.get("release")
    backbone = backbone_of(folder, prov)
    loaded = load_backbone(backbone, weights)
    release, _, sha = loaded
    want = prov.get("weights_sha256")
    if want and sha != want:
        where = f"--weights {weights}" if weights else f"the cached weights of {release_name}"
        raise FeatxError(f"{where} have sha256 {sha[:12]}, but {who[0]} trained on features from weights "
                         f"{want[:12]}; pass the weights file the store was extracted with")
    if prov.get("preprocess") is not None and prov["preprocess"] != release.preprocess.to_dict():
        raise FeatxError(f"{who[1]} features used other preprocessing than release {release_name} has now")
    return backbone, loaded


class Base:
    """One base (backbone, weights, preprocessing) and every head on it: one forward per photo for all of
    them (and one for its mirror image when a head averages both), at the union of their taps; each head
    reads its own columns. Features stay float32: a float16 store's rounding is storage, not model."""

    def __init__(self, backbone: str, loaded, heads: list[SavedHead], device: str = "auto", precision: str = "auto"):
        from .backbones import tap_dim
        from .extract.extractor import Extractor

        parts = list(dict.fromkeys(p for h in heads for p in h.card["provenance"]["tap"].split("+")))
        self.ex = Extractor(backbone, tap="+".join(parts), device=device, precision=precision, dtype="float32",
                            loaded=loaded, flip_tta=any(h.mirror for h in heads))
        dims = [int(np.prod(tap_dim(self.ex.model, p, self.ex.preprocess.size, self.ex.device))) for p in parts]
        start = dict(zip(parts, np.cumsum([0] + dims[:-1])))
        size = dict(zip(parts, dims))
        self.heads = [(h, np.concatenate([np.arange(start[p], start[p] + size[p])
                                          for p in h.card["provenance"]["tap"].split("+")])) for h in heads]

    def answer(self, imgs: list) -> list[dict[str, dict]]:
        """{head name: answer} for each photo."""
        import torch

        pixels = np.stack([np.array(self.ex.preprocess.resize_crop(im), dtype=np.uint8) for im in imgs])
        feats, flips = self.ex(torch.from_numpy(pixels))
        feats = np.asarray(feats, np.float32).reshape(len(imgs), -1)
        flips = None if flips is None else np.asarray(flips, np.float32).reshape(len(imgs), -1)
        out: list[dict[str, dict]] = [{} for _ in imgs]
        for h, cols in self.heads:
            for o, a in zip(out, h.answer(feats[:, cols], flips[:, cols] if h.mirror else None)):
                o[h.name] = a
        return out


class HeadModel:
    """Saved heads with the bases their features came from: heads on the same base share its forward."""

    def __init__(self, heads: list[SavedHead], weights=None, device: str = "auto", precision: str = "auto"):
        groups: dict[tuple, tuple] = {}
        for h in heads:
            backbone, loaded = checked_base(h, weights)
            prov = h.card["provenance"]
            key = (backbone, loaded[2], str(prov.get("preprocess")))
            groups.setdefault(key, (loaded, []))[1].append(h)
        self.bases = [Base(k[0], loaded, hs, device, precision) for k, (loaded, hs) in groups.items()]
        self.single = heads[0].name if len(heads) == 1 else None
        modes = {(h.card["provenance"].get("faces") or {}).get("mode") for h in heads}
        if len(modes) > 1:
            raise FeatxError(f"the heads' stores used different face stages ({', '.join(map(str, modes))}); "
                             "predict with them separately")
        self.faces = modes.pop()  # the face stage the heads were trained behind: predict uses it too
        chips = {b.ex.release.chip for b in self.bases}
        self.chip = chips.pop() if len(chips) == 1 else None  # the chip --detect-faces cuts

    @property
    def ex(self):
        """The (first) base's Extractor."""
        return self.bases[0].ex

    def pixels(self, img) -> np.ndarray:
        """A photo resized and cropped as the (first) base's release does, uint8 HWC."""
        return np.array(self.bases[0].ex.preprocess.resize_crop(img), dtype=np.uint8)

    def label(self, batch: list[tuple[Prediction, object]]) -> None:
        """Fill in each Prediction's answers from its photo."""
        if not batch:
            return
        answers: list[dict] = [{} for _ in batch]
        for base in self.bases:
            for a, b in zip(answers, base.answer([img for _, img in batch])):
                a.update(b)
        for (pred, _), a in zip(batch, answers):
            pred.answered = True
            if self.single is None:
                pred.heads = a
                continue
            one = a[self.single]
            pred.value = one.get("value")
            pred.label, pred.probability = one.get("label"), one.get("probability")
            pred.probabilities = one.get("probabilities", {})


def read_photo(path: Path, cropper) -> list[tuple[Prediction, object]]:
    """(Prediction, image) for the photo, or for each of its faces with a face step; an image of None
    means the Prediction carries an error (unreadable photo, no face)."""
    from .images import ImageError, open_rgb

    try:
        img = open_rgb(path)
    except ImageError as e:
        return [(Prediction(str(path), error=e.reason), None)]
    if cropper is None:
        return [(Prediction(str(path)), img)]
    found = cropper.crops(img)
    if isinstance(found, str):
        return [(Prediction(str(path), error=found), None)]
    return [(Prediction(str(path), face=box, faces=len(found)), crop) for box, crop in found]


def stream(model, paths: list[Path], cropper, batch_size: int) -> Iterator[Prediction]:
    """Predictions in path order (a photo's faces largest first), each yielded as soon as it and all
    before it are done. `model.label(batch)` answers [(Prediction, image), ...]."""
    queue: deque[Prediction] = deque()
    pending: list[tuple[Prediction, object]] = []
    for path in paths:
        for pred, img in read_photo(path, cropper):
            queue.append(pred)
            if img is not None:
                pending.append((pred, img))
        if len(pending) >= batch_size:
            model.label(pending)
            pending.clear()
        while queue and (queue[0].error is not None or queue[0].answered):
            yield queue.popleft()
    model.label(pending)
    yield from queue


def load_heads(head_dirs) -> list[SavedHead]:
    """Saved heads by folder, named by their folder's name (which must differ)."""
    from .heads import load_head

    dirs = [head_dirs] if isinstance(head_dirs, (str, Path)) else list(head_dirs)
    if not dirs:
        raise FeatxError("no --head given")
    out = []
    for d in dirs:
        head, card = load_head(d)
        prov = card.get("provenance", {})
        if not prov.get("release") or not prov.get("tap"):
            raise FeatxError(f"head card {d} does not record the release and tap it was trained on")
        out.append(SavedHead(Path(d).resolve().name, head, card, Path(d)))
    names = [h.name for h in out]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise FeatxError(f"two heads in folders named {twice[0]!r}: answers are keyed by folder name; rename one")
    return out


def iter_predictions(head_dir, inputs, *, weights: str | Path | None = None, detect_faces=False,
                     batch_size: int = 16, device: str = "auto", progress: bool = False,
                     precision: str = "auto") -> Iterator[Prediction]:
    """One Prediction per image (per face with a face stage; per unusable input, with `error` set), in
    input order, as they come. `head_dir`: one head folder, or several (answers in Prediction.heads, by
    folder name; heads on the same base share one forward per photo). `detect_faces`: see make_cropper.
    `progress`: a bar on stderr (status lines in a log)."""
    heads = load_heads(head_dir)
    yield from predict_with(lambda: HeadModel(heads, weights, device, precision), inputs,
                            detect_faces=detect_faces, batch_size=batch_size, progress=progress)


def predict_with(make_model, inputs, *, detect_faces=False, batch_size: int = 16,
                 progress: bool = False) -> Iterator[Prediction]:
    """The photo handling every model shares: collect, decode, face step, batch, stream in order.
    make_model() -> an object with label(batch) (and chip / faces for the face step), built only when
    there are photos."""
    from .progress import progress_bar

    if batch_size < 1:
        raise FeatxError("--batch-size must be at least 1")
    paths, errors = collect_images(inputs)
    yield from errors
    if paths:
        model = make_model()
        cropper = make_cropper(detect_faces, model)
        with progress_bar(progress, len(paths), 0, "predict", transient=True) as advance:
            last = None
            for pred in stream(model, paths, cropper, batch_size):
                if pred.path != last:
                    advance(1)
                last = pred.path
                yield pred


def predict_images(head_dir: str | Path, inputs, *, weights: str | Path | None = None, detect_faces: bool = False,
                   batch_size: int = 16, device: str = "auto") -> list[Prediction]:
    """All of iter_predictions as a list."""
    return list(iter_predictions(head_dir, inputs, weights=weights, detect_faces=detect_faces,
                                 batch_size=batch_size, device=device))


__all__ = ["Prediction", "FaceCropper", "StageCropper", "make_cropper", "HeadModel", "SavedHead", "collect_images",
           "iter_predictions", "predict_with", "predict_images", "load_heads",
           "FACE_MARGIN", "CASCADE", "PAD"]
