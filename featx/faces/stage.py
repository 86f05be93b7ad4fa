"""The face stage, between the reader and the backbone: photo -> faces -> the release's chip.

    stage = FaceStage("align", release.chip)
    faces = stage.faces(rgb)          # every face, largest first: box, score, chip (uint8 size x size x 3)

Modes: `none` (the photo as it is), `detect` (dlib's CNN detector, a box chip: the release's own for box
releases, a box with DETECT_MARGIN for dlib5 releases), `align` (detector, 5 landmarks, the release's
chip: dlib's aligned chip for dlib5 releases; for box releases the box turned upright by the eye line).
Models load on first use, so a stage can be handed to decode workers before it has run.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np
from PIL import Image

from ..errors import FeatxError
from ..releases import Chip
from .chip import box_chip_details, cut, extract_chip

MODES = ("none", "detect", "align")
MIN_FACE = 80  # photo pixels: the detector's own window, so no upsampling
SMALL_FACE = 40  # photos where none is found are searched again from here (dlib's upsample-1 geometry)
COARSE = 0.5  # extraction (largest face kept): faces from this share of the photo's shorter side first
DETECT_MARGIN = 0.5  # a dlib5 release under `detect`: its box grown to about the aligned chip's extent
NO_FACE = "no face"
TOO_SMALL = "too small for the face detector"


@dataclass(frozen=True)
class Found:
    box: tuple[int, int, int, int]  # left, top, right, bottom (inclusive), in the photo's pixels
    score: float
    chip: np.ndarray  # uint8 [size, size, 3]

    @property
    def area(self) -> int:
        l, t, r, b = self.box
        return (r - l + 1) * (b - t + 1)


def check_mode(mode: str) -> str:
    if mode not in MODES:
        raise FeatxError(f"--faces {mode!r}: use one of {', '.join(MODES)}")
    return mode


class FaceStage:
    """Detector and landmark models (loaded on first use) and the chip a release wants."""

    def __init__(self, mode: str, chip: Chip | None, min_face: float = MIN_FACE, device: str = "cpu",
                 small_face: float = SMALL_FACE, coarse: float | None = COARSE):
        self.mode = check_mode(mode)
        if mode != "none" and chip is None:
            raise FeatxError(f"--faces {mode}: this release states no face chip; use --faces none")
        self.chip, self.min_face, self.small_face, self.device = chip, float(min_face), float(small_face), device
        self.coarse = coarse  # None: every face from min_face (predict, --check-faces)
        self._detector = self._landmarks = None

    def __getstate__(self) -> dict:  # decode workers load their own models
        return {**self.__dict__, "_detector": None, "_landmarks": None}

    @property
    def active(self) -> bool:
        return self.mode != "none"

    @property
    def detector(self):
        if self._detector is None:
            from .detect import FaceDetector

            self._detector = FaceDetector.from_cache(self.device)
        return self._detector

    @property
    def landmarks(self):
        if self._landmarks is None:
            from .landmarks import ShapePredictor
            from .models import LANDMARKS5, model_path

            self._landmarks = ShapePredictor.from_file(model_path(LANDMARKS5))
        return self._landmarks

    def identity(self) -> dict | None:
        """What the stage adds to a store's identity (None for `none`, so older stores still match)."""
        if not self.active:
            return None
        from .models import DETECTOR, LANDMARKS5

        d = {"mode": self.mode, "chip": self.chip.to_dict(), "min_face": self.min_face, "small_face": self.small_face,
             "coarse": self.coarse, "detector_sha256": DETECTOR.sha256}
        if self.mode == "align":
            d["landmarks_sha256"] = LANDMARKS5.sha256
        return d

    def faces_many(self, images: list[np.ndarray]) -> list[list[Found]]:
        """Every face of every image (uint8 H x W x 3), largest first; detection batched."""
        dets = self.detect(images)
        boxes = [np.array([f.box for f in d], np.float64).reshape(-1, 4) for d in dets]
        shapes = self.landmarks.many(images, boxes) if self.mode == "align" else [None] * len(images)
        out = []
        for img, d, pts in zip(images, dets, shapes):
            found = [Found(f.box, f.score, self.cut(img, f.box, None if pts is None else pts[k]))
                     for k, f in enumerate(d)]
            out.append(sorted(found, key=lambda f: -f.area))
        return out

    def detect(self, images: list[np.ndarray]) -> list[list]:
        """Faces, searched from large to small, stopping at the first search that finds one (`starts`).
        Each search skips the pyramid levels of the one before, so a photo where nothing is found costs
        about one full search and a face crop one cheap one. Faces counted are those of the search that
        found the largest."""
        starts = [self.starts(min(a.shape[:2])) for a in images]
        dets: list[list] = [[] for _ in images]
        for k in range(max(map(len, starts), default=0)):
            todo: dict[tuple[float, float], list[int]] = {}
            for i, s in enumerate(starts):
                if not dets[i] and k < len(s):
                    todo.setdefault((s[k], s[k - 1] * 1.2 if k else math.inf), []).append(i)
            for (start, upto), idx in todo.items():
                found = self.detector([images[i] for i in idx], min_face=start,
                                      max_face=None if math.isinf(upto) else upto)
                for i, d in zip(idx, found):
                    dets[i] = d
        return dets

    def starts(self, side: int) -> list[float]:
        """The searches a photo of this shorter side gets, largest faces first: from `coarse` x its side
        (when that is above min_face), from min_face (the detector's window: no upsampling), and from
        small_face (one upsampling; photos at least that large)."""
        out = [self.coarse * side] if self.coarse and self.coarse * side > self.min_face else []
        out.append(self.min_face)
        if self.small_face < self.min_face and side >= self.small_face:
            out.append(self.small_face)
        return out

    def faces(self, image: np.ndarray) -> list[Found]:
        return self.faces_many([image])[0]

    def __call__(self, photos: list[Image.Image]) -> list[tuple[Image.Image | None, str]]:
        """The reader's face step, batched: each photo's largest face as the release's chip and a note
        when there were several, or (None, reason) when there is none."""
        if not self.active:
            return [(img, "") for img in photos]
        rgb = [np.asarray(img.convert("RGB"), dtype=np.uint8) for img in photos]
        out = []
        for a, found in zip(rgb, self.faces_many(rgb)):
            if not found:
                out.append((None, self.reason_none(a)))
            else:
                out.append((Image.fromarray(found[0].chip), several_note(len(found)) if len(found) > 1 else ""))
        return out

    def cut(self, image: np.ndarray, box, shape5) -> np.ndarray:
        c = self.chip
        if c.kind == "dlib5":
            if shape5 is not None:
                return cut(image, c, shape5=shape5)
            return cut(image, replace(c, kind="box", padding=0.0, margin=DETECT_MARGIN), box=box)
        if shape5 is None:
            return cut(image, c, box=box)
        d = box_chip_details(box, c.size, c.margin)
        return extract_chip(image, replace(d, angle=eye_angle(shape5)))

    def reason_none(self, image: np.ndarray) -> str:
        """Why a photo gave no face: too small to search, or searched and nothing found."""
        from .detect import DetectOptions

        h, w = image.shape[:2]
        return TOO_SMALL if self.detector.too_small(h, w, DetectOptions(min_face=self.small_face)) else NO_FACE


def eye_angle(shape5) -> float:
    """The angle (radians) of the line from the image-left eye to the image-right eye (dlib's 5 points:
    0, 1 the image-right eye's corners, 2, 3 the image-left eye's, 4 the nose)."""
    p = np.asarray(shape5, np.float64)
    (rx, ry), (lx, ly) = p[0:2].mean(0), p[2:4].mean(0)
    return math.atan2(ry - ly, rx - lx)


def several_note(n: int) -> str:
    """The reason text kept for a usable photo with more than one face."""
    return f"{n} faces (largest kept)"


def survey(paths, batch: int = 16, progress: bool = False) -> dict[str, list[str]]:
    """Photos by face count before any extraction: {"none": [...], "one": [...], "several": [...],
    "unreadable": [...]} (paths as given)."""
    from ..images import ImageError, open_rgb
    from ..progress import progress_bar

    stage = FaceStage("detect", Chip("box", 2), coarse=None)  # every face counts here
    out: dict[str, list[str]] = {"none": [], "one": [], "several": [], "unreadable": []}
    with progress_bar(progress, len(paths), 0, "faces", transient=True) as advance:
        for a in range(0, len(paths), batch):
            chunk, imgs = [], []
            for p in paths[a:a + batch]:
                try:
                    imgs.append(np.asarray(open_rgb(p), dtype=np.uint8))
                    chunk.append(str(p))
                except ImageError:
                    out["unreadable"].append(str(p))
            for p, found in zip(chunk, stage.detect(imgs) if imgs else []):
                out[("none", "one")[len(found)] if len(found) < 2 else "several"].append(p)
            advance(len(paths[a:a + batch]))
    return out
