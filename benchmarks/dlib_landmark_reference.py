"""Expected dlib 5-point landmarks and face chips for the known-answer tests (tests/test_faces_landmarks.py).

The independent reference: dlib's own C++ (no featx) runs the upstream shape_predictor_5_face_landmarks.dat
(CC0, from the face-recognition-models==0.3.0 sdist) and cuts dlib.get_face_chip(img, shape, 150, 0.25).
It was run ONCE to write tests/data/dlib_landmark_reference.{json,npz}, in a scratch venv:

    python3.11 -m venv /work/scratch/facelmk-dlib
    /work/scratch/facelmk-dlib/bin/pip install dlib-bin==20.0.1.post1 numpy pillow   # numpy 2.4.6, pillow 13.0.0
    pip download --no-deps --no-binary :all: face-recognition-models==0.3.0 -d /work/scratch/facelmk-sdist
    tar xzf /work/scratch/facelmk-sdist/face_recognition_models-0.3.0.tar.gz -O \\
        face_recognition_models-0.3.0/face_recognition_models/models/shape_predictor_5_face_landmarks.dat \\
        > /work/scratch/facelmk-sdist/shape_predictor_5_face_landmarks.dat
    /work/scratch/facelmk-dlib/bin/python benchmarks/dlib_landmark_reference.py \\
        --dat /work/scratch/facelmk-sdist/shape_predictor_5_face_landmarks.dat --shared /work/shared/data

Inputs (every frame is built here from integers only, so the test rebuilds it bit for bit; its sha256 is kept):
  synthetic  closed-form integer patterns (no files): chips from given 5 points (rotated, small, large
             enough for dlib's pyramid, partly outside the frame; size 150 / padding 0.25 and size 80 /
             padding 0.5); and dlib's landmarks for given boxes (one partly outside).
  photos     two ../shared/data/utkface photos, each as is, pasted rotated by +18.9 and -25.1 degrees into
             a larger canvas (rotations with rational cos/sin, nearest pixel in integer arithmetic), halved
             (2x2 mean) into a canvas, and tripled (600x600, so the chip comes from dlib's pyramid); one
             also pasted across the frame's left border, the other enlarged 12 times into a 12-megapixel
             frame (four pyramid levels). Boxes: dlib's HOG frontal detector (upsampling 1, the largest
             face), or a given box (GIVEN_BOXES); recorded, so the test feeds featx the same boxes.
             The photos are never committed, nor anything they could be rebuilt from.
Chips are kept as their sha256 and each value mod 4 (2 bits, four to a byte), never whole: from featx's
chip c, the one value within one grey level of c with dlib's residue is dlib's value if any is; the test
rebuilds dlib's chip that way and checks it against the sha256, so a pass means every value of featx's
chip is within one grey level of dlib's (and says how many are not equal).
"""

from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path

import numpy as np

PHOTOS = ("images/100_1_0_20170110183726390.jpg.chip.jpg", "images/10_0_0_20170103233459275.jpg.chip.jpg")
ROTATIONS = {"rot+19": (35, 12, 37), "rot-25": (77, -36, 85)}  # cos, sin, hypotenuse (Pythagorean triples)
# frames whose box is given, not detected: the photo's HOG box moved with it (HOG finds no face across the
# border; on 12 megapixels it would take minutes)
GIVEN_BOXES = {"border": (-97, -16, 110, 190), "x12": (944, 444, 2804, 2304)}


def background(h: int, w: int) -> np.ndarray:
    """A smooth integer colour ramp (no libm, so every platform draws the same)."""
    y, x = np.mgrid[0:h, 0:w]
    return np.stack([x * 255 // max(w - 1, 1), y * 255 // max(h - 1, 1), (x + y) * 255 // max(h + w - 2, 1)],
                    -1).astype(np.uint8)


def texture(h: int, w: int, k: int) -> np.ndarray:
    """A textured integer pattern for the synthetic cases (edges in every direction, colour)."""
    y, x = np.mgrid[0:h, 0:w]
    r = (x * (3 + k) + y * 5) % 256
    g = ((x // (4 + k)) * 37 + (y // 6) * 53) % 256
    b = (x * x + 3 * y * y + 17 * k) // (7 + k) % 256
    return np.stack([r, g, b], -1).astype(np.uint8)


def paste_rotated(canvas: np.ndarray, photo: np.ndarray, centre: tuple[int, int], rot: tuple[int, int, int]):
    """The photo, rotated about its centre by atan2(s, c) (clockwise on screen for s > 0), over the canvas
    with its centre at `centre` (x, y); nearest source pixel, in integers."""
    c, s, n = rot
    out = canvas.copy()
    h, w = out.shape[:2]
    ph, pw = photo.shape[:2]
    y, x = np.mgrid[0:h, 0:w]
    dx, dy = x - centre[0], y - centre[1]
    sx = (2 * (c * dx + s * dy) + n) // (2 * n) + pw // 2
    sy = (2 * (-s * dx + c * dy) + n) // (2 * n) + ph // 2
    inside = (sx >= 0) & (sx < pw) & (sy >= 0) & (sy < ph)
    out[inside] = photo[sy[inside], sx[inside]]
    return out


def paste(canvas: np.ndarray, photo: np.ndarray, left: int, top: int) -> np.ndarray:
    out = canvas.copy()
    h, w = out.shape[:2]
    ph, pw = photo.shape[:2]
    x0, y0, x1, y1 = max(left, 0), max(top, 0), min(left + pw, w), min(top + ph, h)
    out[y0:y1, x0:x1] = photo[y0 - top: y1 - top, x0 - left: x1 - left]
    return out


def frame(photo: np.ndarray, kind: str) -> np.ndarray:
    """One of the raw-like frames made from a 200x200 face photo."""
    if kind == "photo":
        return photo
    if kind in ROTATIONS:
        return paste_rotated(background(360, 400), photo, (210, 170), ROTATIONS[kind])
    if kind == "half":
        small = photo.reshape(100, 2, 100, 2, 3).astype(np.uint16).sum((1, 3)) // 4
        return paste(background(240, 320), small.astype(np.uint8), 150, 60)
    if kind == "triple":
        return np.repeat(np.repeat(photo, 3, 0), 3, 1)
    if kind == "border":
        return paste(background(230, 260), photo, -70, 10)
    if kind == "x12":  # a 12-megapixel frame: the chip comes from dlib's pyramid, four levels down
        return paste(background(3000, 4000), np.repeat(np.repeat(photo, 12, 0), 12, 1), 800, 300)
    raise ValueError(kind)


PHOTO_FRAMES = ("photo", "rot+19", "rot-25", "half", "triple")

# synthetic chips: (name, image (h, w, k), the 5 points (x, y), size, padding)
SYNTH_CHIPS = (
    ("upright", (240, 320, 0), ((200, 100), (170, 101), (100, 100), (130, 101), (150, 150)), 150, 0.25),
    ("rotated", (240, 320, 1), ((190, 140), (165, 125), (107, 91), (132, 107), (125, 153)), 150, 0.25),
    ("pyramid", (700, 500, 2), ((420, 260), (330, 266), (90, 258), (180, 265), (250, 480)), 150, 0.25),
    ("outside", (200, 220, 3), ((60, 20), (35, 25), (-30, 18), (-5, 24), (15, 70)), 150, 0.25),
    ("small-pad", (240, 320, 4), ((150, 80), (138, 86), (104, 95), (116, 92), (135, 120)), 80, 0.5),
)
# synthetic landmarks: (name, image (h, w, k), box left, top, right, bottom)
SYNTH_BOXES = (("inside", (240, 320, 0), (80, 40, 219, 179)), ("outside", (200, 220, 3), (-40, -30, 99, 109)),
               ("large", (700, 500, 2), (50, 120, 449, 519)))


def sha(a: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest()


def mod4(chip: np.ndarray) -> np.ndarray:
    """Each value's two low bits, four to a byte."""
    v = (chip.reshape(-1) & 3).astype(np.uint8)
    v = np.concatenate([v, np.zeros(-len(v) % 4, np.uint8)])
    return v[0::4] | v[1::4] << 2 | v[2::4] << 4 | v[3::4] << 6


def unmod4(packed: np.ndarray, shape) -> np.ndarray:
    v = np.stack([(packed >> s) & 3 for s in (0, 2, 4, 6)], 1).reshape(-1)
    return v[: int(np.prod(shape))].reshape(shape)


def dlib_face(dlib, shape, box) -> dict:
    pts = [[shape.part(i).x, shape.part(i).y] for i in range(shape.num_parts)]
    return {"box": list(box), "points": pts}


def details(dlib, shape, size, padding) -> dict:
    d = dlib.get_face_chip_details(shape, size, padding)
    r = d.rect
    return {"rect": [r.left(), r.top(), r.right(), r.bottom()], "angle": d.angle, "rows": d.rows, "cols": d.cols}


def synthetic(dlib, sp) -> tuple[list, dict]:
    rows, arrays = [], {}
    for name, (h, w, k), pts, size, padding in SYNTH_CHIPS:
        img = texture(h, w, k)
        shape = dlib.full_object_detection(dlib.rectangle(0, 0, w - 1, h - 1), [dlib.point(*p) for p in pts])
        chip = dlib.get_face_chip(img, shape, size, padding)
        arrays[f"mod4/{name}"] = mod4(chip)
        rows.append({"name": name, "kind": "synthetic-chip", "image": [h, w, k], "frame_sha256": sha(img),
                     "points": [list(p) for p in pts], "size": size, "padding": padding,
                     "details": details(dlib, shape, size, padding), "chip_sha256": sha(chip)})
    for name, (h, w, k), box in SYNTH_BOXES:
        img = texture(h, w, k)
        shape = sp(img, dlib.rectangle(*box))
        rows.append({"name": name, "kind": "synthetic-landmarks", "image": [h, w, k], "frame_sha256": sha(img),
                     **dlib_face(dlib, shape, box)})
    return rows, arrays


def largest(faces):
    return max(faces, key=lambda f: f.width() * f.height()) if len(faces) else None


def photo_rows(dlib, sp, shared: Path) -> tuple[list, dict]:
    from PIL import Image

    detect = dlib.get_frontal_face_detector()
    rows, arrays = [], {}
    plan = [(p, k) for p in PHOTOS for k in PHOTO_FRAMES] + [(PHOTOS[0], "border"), (PHOTOS[1], "x12")]
    for photo, kind in plan:
        img = frame(np.asarray(Image.open(shared / "utkface" / photo).convert("RGB")), kind)
        face = None if kind in GIVEN_BOXES else largest(detect(img, 1))
        box, source = ((face.left(), face.top(), face.right(), face.bottom()), "hog") if face else \
            (GIVEN_BOXES[kind], "given")
        shape = sp(img, dlib.rectangle(*box))
        chip = dlib.get_face_chip(img, shape, 150, 0.25)
        name = f"{Path(photo).name}:{kind}"
        arrays[f"mod4/{name}"] = mod4(chip)
        rows.append({"name": name, "kind": "photo", "photo": photo, "frame": kind, "frame_sha256": sha(img),
                     "box_source": source, **dlib_face(dlib, shape, box), "size": 150, "padding": 0.25,
                     "details": details(dlib, shape, 150, 0.25), "chip_sha256": sha(chip)})
        print(f"{name:50s} box {source} {box} points {rows[-1]['points']}")
    return rows, arrays


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dat", required=True, help="shape_predictor_5_face_landmarks.dat")
    ap.add_argument("--shared", default="../shared/data")
    ap.add_argument("--out", default="tests/data/dlib_landmark_reference")
    args = ap.parse_args()
    import dlib

    sp = dlib.shape_predictor(args.dat)
    rows, arrays = synthetic(dlib, sp)
    more, more_arrays = photo_rows(dlib, sp, Path(args.shared))
    meta = {"dlib": dlib.__version__, "dat_sha256": hashlib.sha256(Path(args.dat).read_bytes()).hexdigest(),
            "made_by": "benchmarks/dlib_landmark_reference.py", "rows": rows + more}
    Path(args.out + ".json").write_text(json.dumps(meta, indent=1) + "\n")
    np.savez_compressed(args.out + ".npz", **arrays, **more_arrays)
    print(f"{len(rows) + len(more)} rows -> {args.out}.json / .npz")


if __name__ == "__main__":
    main()
