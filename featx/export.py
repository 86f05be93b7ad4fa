"""Saved heads -> one ONNX file, from uint8 RGB chips to each head's answers, with its card beside it.

    export_onnx(["heads/gender", "heads/age"], "out/model.onnx")   # out/model.onnx, model.json, MODEL_CARD.md
    model = OnnxModel("out/model.onnx")         # checked against its card; what `featx predict --model` runs

The graph (featx.export_graph.Pipeline) is featx's own prediction path: the release's preprocessing,
the base up to each head's tap, the tap's pooling (features at full precision: a float16 store's
rounding is storage, not model), the head's standardisation and the head, averaged over the photo and
its mirror image for heads trained with mirrored features. torch.onnx's exporter (torch.export based) writes it; onnx.checker
checks the file; onnxruntime runs it on a test batch and must agree with the torch module before
anything is written. Needs the extra featx[export].
"""

from __future__ import annotations

import datetime as _dt
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import FeatxError
from .paths import read_json_card

FORMAT = "featx-onnx"
VERSION = 1
OPSET = 20
INPUT = "image"
CARD_MD = "MODEL_CARD.md"
AGREE = 1e-5  # onnxruntime vs the torch module at export: largest difference in a probability
AGREE_VALUE = 1e-4  # ... in a regressed value, in its own units (years of age: the bound is 1e-3)
EXTRA = "pip install 'featx[export]'"


def need(module: str):
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise FeatxError(f"ONNX export and `predict --model` need {module}: {EXTRA}") from None


@dataclass
class Source:
    """One saved head, with what it needs from the base."""

    dir: Path
    head: object
    card: dict
    name: str  # the graph output's name

    @property
    def prov(self) -> dict:
        return self.card.get("provenance", {})


@dataclass
class ExportOptions:
    weights: str | Path | None = None  # the base's weights file, when not the cached release
    opset: int = OPSET
    progress: object = field(default=lambda msg: None)  # one-line messages


def output_name(head_dir: Path, taken: set[str]) -> str:
    base = re.sub(r"[^A-Za-z0-9_.-]+", "_", head_dir.resolve().name) or "head"
    name, k = base, 2
    while name in taken or name == INPUT:
        name, k = f"{base}_{k}", k + 1
    taken.add(name)
    return name


def load_sources(head_dirs) -> list[Source]:
    """Each head, checked for export: provenance, a float (not int8) store, one base for all."""
    from .heads import load_head

    if not head_dirs:
        raise FeatxError("give at least one --head")
    sources, taken = [], set()
    for d in head_dirs:
        head, card = load_head(d)
        src = Source(Path(d), head, card, output_name(Path(d), taken))
        check_exportable(src)
        sources.append(src)
    first = sources[0]
    for s in sources[1:]:
        for key in ("release", "weights_sha256", "preprocess", "faces"):
            if s.prov.get(key) != first.prov.get(key):
                raise FeatxError(f"heads {first.dir} and {s.dir} stand on different bases ({key} differs); "
                                 "one ONNX file holds heads of one base")
    return sources


def check_exportable(s: Source) -> None:
    prov = s.prov
    if not prov.get("release") or not prov.get("tap"):
        raise FeatxError(f"head card {s.dir} does not record the release and tap it was trained on")
    if prov.get("precision") == "int8" or str(prov["release"]).endswith("+int8"):
        raise FeatxError(f"{s.dir} was trained on int8 features ({prov['release']}): featx's int8 base is a "
                         "PT2E-quantised torch model with oneDNN kernels, which has no ONNX form here; "
                         "train the head on a store extracted with --precision fp32 or bf16")
    from .export_graph import HEAD_MODULES

    if s.head.kind not in HEAD_MODULES:
        raise FeatxError(f"{s.dir}: head kind {s.head.kind!r} has no ONNX form; "
                         f"exportable kinds: {', '.join(HEAD_MODULES)}")


def load_base(sources: list[Source], weights):
    """(release, model, weights sha256, backbone) for the heads' base, checked against their cards."""
    from .predict import base_for

    backbone, (release, model, sha) = base_for(sources[0].dir, sources[0].prov, weights, heads=True)
    return release, model, sha, backbone


def build_pipeline(sources: list[Source], release, model):
    from .export_graph import HeadPart, Pipeline, head_module
    from .training import mirrored

    parts = [HeadPart(list(release.parse_tap(s.prov["tap"])), mirrored(s.card), head_module(s.head)) for s in sources]
    return Pipeline(model, release.preprocess, parts).eval()


def export_onnx(head_dirs, out: str | Path, opts: ExportOptions | None = None) -> dict:
    """Write `out` (.onnx), its card `<stem>.json` and MODEL_CARD.md; returns the card."""
    from .paths import check_out_file

    opts = opts or ExportOptions()
    out = check_out_file(out)
    if out.suffix != ".onnx":
        raise FeatxError(f"--out {out}: name the file *.onnx")
    check_card_place(out)
    for module in ("onnx", "onnxruntime", "onnxscript"):  # missing: one line now, not a traceback later
        need(module)
    sources = load_sources(head_dirs)
    release, model, sha, _ = load_base(sources, opts.weights)
    pipe = build_pipeline(sources, release, model)
    out.parent.mkdir(parents=True, exist_ok=True)
    size = release.preprocess.size
    tmp = out.with_name(f".{out.name}.tmp")
    try:
        opts.progress(f"export: tracing {release.name} + {len(sources)} head(s) at {size}x{size}")
        write_graph(pipe, [s.name for s in sources], size, tmp, opts.opset)
        card = model_card(sources, release, sha, out, opts)
        add_metadata(tmp, card)
        check_file(pipe, tmp, size, [s.name for s in sources])
        tmp.replace(out)
    finally:
        tmp.unlink(missing_ok=True)
    return write_card(out, card)


def check_card_place(out: Path) -> None:
    """MODEL_CARD.md is per folder: refuse to overwrite one that describes another file."""
    md = out.parent / CARD_MD
    if md.is_file():
        first = md.read_text(errors="replace").splitlines()[:1]
        if first and f"`{out.name}`" not in first[0]:
            raise FeatxError(f"{md} describes another model ({first[0].lstrip('# ')}); export into its own folder")


def write_graph(pipe, names: list[str], size: int, path: Path, opset: int) -> None:
    import warnings

    import torch

    example = torch.randint(0, 256, (2, size, size, 3), dtype=torch.uint8)
    batch = torch.export.Dim("batch", min=1, max=4096)
    try:
        with warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad():
            warnings.simplefilter("ignore")
            torch.onnx.export(pipe, (example,), str(path), input_names=[INPUT], output_names=names,
                              dynamic_shapes=({0: batch},), opset_version=opset, dynamo=True,
                              external_data=False, verbose=False)
    except FeatxError:
        raise
    except Exception as e:  # the exporter raises many types; keep the first line
        raise FeatxError(f"torch.onnx.export failed: {str(e).strip().splitlines()[0][:300]}") from None


def add_metadata(path: Path, card: dict) -> None:
    """The card (without the file's own sha256) and each output's classes as ONNX metadata."""
    import onnx

    m = onnx.load(str(path))
    props = {"featx_card": json.dumps({k: v for k, v in card.items() if k != "onnx_sha256"}, sort_keys=True)}
    for o in card["outputs"]:
        props[f"{o['name']}.classes"] = json.dumps(o.get("classes"))
    for k, v in props.items():
        e = m.metadata_props.add()
        e.key, e.value = k, v
    m.producer_name, m.doc_string = "featx", f"featx export of {card['release']['name']}: see model card"
    onnx.save(m, str(path))


def check_file(pipe, path: Path, size: int, names: list[str]) -> None:
    """onnx.checker, then onnxruntime against the torch module on 3 random chips."""
    import onnx
    import onnxruntime as ort
    import torch

    try:
        onnx.checker.check_model(str(path), full_check=True)
    except Exception as e:
        raise FeatxError(f"the exported file fails onnx.checker: {str(e).splitlines()[0][:300]}") from None
    x = torch.randint(0, 256, (3, size, size, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want = [t.numpy() for t in pipe(x)]
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = sess.run(names, {INPUT: x.numpy()})
    for n, a, b in zip(names, want, got):
        diff = float(np.max(np.abs(a - b))) if a.size else 0.0
        if not diff <= (AGREE if a.ndim == 2 else AGREE_VALUE):
            raise FeatxError(f"onnxruntime and torch disagree on output {n} of the exported file by {diff:.2e}")


# ---------- the card ----------

def file_sha256(path: Path) -> str:
    from .weights import sha256_file

    return sha256_file(path)


def output_record(s: Source) -> dict:
    from .heads.card import card_digest
    from .training import mirrored

    prov = s.prov
    task = {"name": s.name, "head_dir": str(s.dir), "head": s.head.kind, "task": "classification",
            "classes": list(s.card.get("classes", [])), "positive": s.card.get("positive"),
            "shape": ["batch", len(s.card.get("classes", []))]}
    if is_regression(s.head):
        task = {"name": s.name, "head_dir": str(s.dir), "head": s.head.kind, "task": "regression",
                "target": s.card.get("target") or "target", "classes": None, "shape": ["batch"],
                "range": [float(v) for v in s.head.target_range_], "transform": s.head.transform_}
    rec = {**task, "tap": prov.get("tap"),
           "store_dtype": prov.get("dtype") or "float32", "store_precision": prov.get("precision"),
           "head_card_sha256": s.card.get("card_sha256") or card_digest(s.card),
           "mirror_average": mirrored(s.card),
           "evaluation": evaluations(s)}
    return rec


def is_regression(head) -> bool:
    return getattr(head, "task", None) == "regress"


def evaluations(s: Source) -> list[dict]:
    """The head's evaluation figures: every metrics.json of `featx evaluate` in its folder (with their
    bootstrap intervals and split), else the val metrics of its card (no interval)."""
    found = sorted({*s.dir.glob("metrics.json"), *s.dir.glob("*/metrics.json")})
    out = []
    for path in found:
        try:
            m = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        ctx, iv = m.get("context", {}), (m.get("intervals") or {})
        overall = iv.get("overall", {})
        figures = {k: {"value": m.get(k), "interval": overall.get(k)} for k in overall if m.get(k) is not None}
        out.append({"file": str(path.relative_to(s.dir)), "split": ctx.get("split"), "store": ctx.get("store"),
                    "n": m.get("n"), "figures": figures,
                    "interval": {k: iv.get(k) for k in ("method", "level", "n_boot") if k in iv}})
    if not out and s.card.get("val_metrics"):
        vm = s.card["val_metrics"]
        figures = {k: {"value": vm[k], "interval": None} for k in ("accuracy", "balanced_accuracy", "roc_auc", "mae",
                                                                    "rmse", "r2") if vm.get(k) is not None}
        on = s.card.get("selection", {}).get("on") or "val split"
        out.append({"file": "head.json", "split": "val", "n": vm.get("n"), "figures": figures, "interval": None,
                    "note": f"{on}, which also chose the hyperparameters (no interval; run `featx evaluate`)"})
    return out


def model_card(sources: list[Source], release, sha: str, out: Path, opts: ExportOptions) -> dict:
    import onnxruntime
    import torch

    from . import __version__

    p = release.preprocess
    return {
        "format": FORMAT, "version": VERSION, "onnx_file": out.name,
        "release": {"name": release.name, "weights_sha256": sha, "license": release.license,
                    "source": release.source, "description": release.description,
                    "fine_tuned": ({k: release.lineage.get(k) for k in ("base", "base_weights_sha256", "trained")}
                                   if release.lineage else None)},
        "input": {"name": INPUT, "dtype": "uint8", "layout": "NHWC", "shape": ["batch", p.size, p.size, 3],
                  "channels": "RGB", "chip": chip_text(p), "preprocess": p.to_dict(),
                  "face_chip": release.chip.to_dict() if release.chip else None,
                  "faces": (sources[0].prov.get("faces") or {}).get("mode"),
                  "in_graph": f"{p.channels} order, values {'0-255' if p.scale == 255 else '0-1'}, " + (
                      "per-image standardisation" if p.norm == "per-image" else f"minus mean {list(p.mean)}, "
                      f"divided by std {list(p.std)}")},
        "outputs": [output_record(s) for s in sources],
        "export": {"opset": opts.opset, "exporter": "torch.onnx.export(dynamo=True)", "torch": torch.__version__,
                   "onnxruntime_checked": onnxruntime.__version__, "featx": __version__,
                   "math": "base float32; head float64 (MLP float32), outputs float32",
                   "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")},
    }


def chip_text(p) -> str:
    crop = f"keep the central {p.crop:g} of the photo, then " if p.crop < 1.0 else ""
    return (f"{crop}resize the shorter side to {p.resize} ({p.interpolation}, PIL), centre-crop {p.size}x{p.size}; "
            "RGB uint8")


def write_card(out: Path, card: dict) -> dict:
    from .paths import atomic_write

    card = {**card, "onnx_sha256": file_sha256(out)}
    atomic_write(out.with_suffix(".json"), lambda t: t.write_text(json.dumps(card, indent=1) + "\n"))
    atomic_write(out.parent / CARD_MD, lambda t: t.write_text(card_markdown(card)))
    return card


def card_markdown(card: dict) -> str:
    r, i = card["release"], card["input"]
    lines = [f"# `{card['onnx_file']}`: {', '.join(o['name'] for o in card['outputs'])} on {r['name']}", "",
             f"- ONNX sha256 `{card['onnx_sha256']}`; opset {card['export']['opset']}; "
             f"made by featx {card['export']['featx']} (torch {card['export']['torch']}), "
             f"checked with onnxruntime {card['export']['onnxruntime_checked']}",
             f"- Base: {r['name']} ({r['description']}); weights sha256 `{r['weights_sha256']}`; licence: {r['license']}"
             + (f"; fine-tuned from {r['fine_tuned']['base']} (stages {', '.join(r['fine_tuned']['trained'] or [])})"
                if r.get("fine_tuned") else ""),
             f"- Input `{i['name']}`: uint8 {i['layout']} {i['shape']}, RGB. Chip: {i['chip']}. "
             f"The graph does the rest: {i['in_graph']}.",
             ""]
    for o in card["outputs"]:
        what = (f"Probabilities [batch, {len(o['classes'])}] over classes {o['classes']} (in this order)."
                if o["task"] == "classification" else
                f"The predicted {o['target']} [batch], in its own units (clipped to the training range {o['range']}).")
        mirror = " The mean over the photo and its mirror image (the head was trained with both)." if o.get(
            "mirror_average") else ""
        lines += [f"## Output `{o['name']}` ({o['head']} head on tap `{o['tap']}`)", "", what + mirror, ""]
        for ev in o["evaluation"]:
            figs = "; ".join(f"{k} {v['value']:.3f}" + (f" [{v['interval'][0]:.3f}, {v['interval'][1]:.3f}]"
                                                         if v.get("interval") else "")
                             for k, v in ev["figures"].items())
            iv = ev.get("interval") or {}
            how = (f"; {iv.get('level', 0.95):.0%} {iv.get('method', 'bootstrap')} intervals" if iv else
                   f"; {ev.get('note', 'no interval')}")
            lines.append(f"- {ev['split']} split of {ev.get('store') or 'the training store'} (n={ev.get('n')}): "
                         f"{figs}{how}")
        if not o["evaluation"]:
            lines.append("- no evaluation recorded (run `featx evaluate` on the head, then export again)")
        lines.append("")
    return "\n".join(lines)


# ---------- running an exported file ----------

def read_model_card(path: str | Path) -> dict:
    """The card beside an exported file, checked: our format, and the file's sha256."""
    path = Path(path)
    if not path.is_file():
        raise FeatxError(f"no ONNX file at {path}")
    card_path = path.with_suffix(".json")
    if not card_path.is_file():
        raise FeatxError(f"{path} has no card {card_path.name} beside it; `featx export` writes both, keep them together")
    card = read_json_card(card_path, FORMAT, VERSION, "ONNX card")
    have, want = file_sha256(path), str(card.get("onnx_sha256"))
    if have != want:
        raise FeatxError(f"{path} does not match its card {card_path.name} (sha256 {have[:12]}, card says "
                         f"{want[:12]}); the file or the card was changed")
    return card


def providers(ort, device: str) -> list[str]:
    have = ort.get_available_providers()
    if device == "cuda" and "CUDAExecutionProvider" not in have:
        raise FeatxError(f"--device cuda: this onnxruntime has no CUDA provider (has {', '.join(have)})")
    if device in ("auto", "cuda") and "CUDAExecutionProvider" in have:
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    if device not in ("auto", "cpu", "cuda"):
        raise FeatxError(f"unknown --device {device!r}; use auto, cpu or cuda")
    return ["CPUExecutionProvider"]


class OnnxModel:
    """An exported file under onnxruntime, checked against its card; pixels() and label() as HeadModel."""

    def __init__(self, path: str | Path, device: str = "auto", output: str | None = None):
        from .releases import Chip, Preprocess

        self.card = read_model_card(path)
        ort = need("onnxruntime")
        try:
            self.session = ort.InferenceSession(str(path), providers=providers(ort, device))
        except Exception as e:  # onnxruntime's own error types
            raise FeatxError(f"onnxruntime cannot load {path}: {str(e).splitlines()[0][:200]}") from None
        names = [o["name"] for o in self.card["outputs"]]
        if [o.name for o in self.session.get_outputs()] != names:
            raise FeatxError(f"{path}'s outputs do not match its card")
        if output is not None and output not in names:
            raise FeatxError(f"{Path(path).name} has no output {output!r}; outputs: {', '.join(names)}")
        outs = self.card["outputs"]
        self.outs = [outs[names.index(output)]] if output else outs  # one: predict --head's lines; more: "heads"
        self.preprocess = Preprocess.from_dict(self.card["input"]["preprocess"])
        chip = self.card["input"].get("face_chip")
        self.chip = Chip.from_dict(chip) if chip else None  # for --detect-faces, as HeadModel
        self.faces = self.card["input"].get("faces")

    def run(self, chips: np.ndarray) -> dict[str, np.ndarray]:
        """uint8 [B, S, S, 3] -> {output name: answers}."""
        names = [o["name"] for o in self.card["outputs"]]
        return dict(zip(names, self.session.run(names, {INPUT: np.ascontiguousarray(chips, np.uint8)})))

    def pixels(self, img) -> np.ndarray:
        return np.array(self.preprocess.resize_crop(img), dtype=np.uint8)

    def label(self, batch: list) -> None:
        """Fill in each Prediction of [(Prediction, image), ...]: as `predict --head` for one output;
        {"heads": {name: answer}} for several."""
        if not batch:
            return
        got = self.run(np.stack([self.pixels(img) for _, img in batch]))
        for i, (pred, _) in enumerate(batch):
            pred.answered = True
            answers = {o["name"]: answer(o, got[o["name"]][i]) for o in self.outs}
            if len(self.outs) > 1:
                pred.heads = answers
                continue
            one = answers[self.outs[0]["name"]]
            pred.value = one.get("value")
            pred.label, pred.probability = one.get("label"), one.get("probability")
            pred.probabilities = one.get("probabilities", {})


def answer(out: dict, y: np.ndarray) -> dict:
    """One output's answer for one photo: {label, probability, probabilities} or {value}."""
    if out["task"] == "regression":
        return {"value": float(y)}
    k = int(y.argmax())
    return {"label": out["classes"][k], "probability": float(y[k]),
            "probabilities": {c: float(v) for c, v in zip(out["classes"], y)}}


def iter_model_predictions(model_path: str | Path, inputs, *, output: str | None = None, detect_faces: bool = False,
                           batch_size: int = 16, device: str = "auto", progress: bool = False):
    """featx.predict.iter_predictions for an exported file: the same photo handling and Predictions."""
    from .predict import predict_with

    model = OnnxModel(model_path, device, output)  # checked now, before any photo is read
    yield from predict_with(lambda: model, inputs, detect_faces=detect_faces, batch_size=batch_size,
                            progress=progress)


__all__ = ["export_onnx", "ExportOptions", "OnnxModel", "iter_model_predictions", "read_model_card", "load_sources",
           "build_pipeline", "load_base", "FORMAT", "OPSET"]
