"""What `featx extract` takes besides the data, the backbone and the store."""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

from ..device import PRECISIONS
from ..errors import FeatxError

DTYPES = ("float16", "float32")
FACE_MODES = ("none", "detect", "align")


@dataclass(frozen=True)
class ExtractOptions:
    """Everything `featx extract` takes besides the data, the backbone and the store."""

    tap: str | None = None  # None: the family's default tap (VGG16 pool5-gap, the face bases' embedding)
    weights: str | None = None
    batch_size: int | None = None  # 32 on CPU, 128 on GPU
    device: str = "auto"
    precision: str = "auto"
    workers: int | None = None  # decode processes (default: by device)
    flip_tta: bool = False
    dtype: str = "float16"
    compile: bool = False
    progress: bool = True
    rows_per_shard: int | None = None
    rows_per_chunk: int | None = None
    cluster: str | None = None  # "local" / "local:N"
    scheduler: str | None = None  # "tcp://HOST:PORT"
    retries: int = 2
    faces: str | None = None  # the face stage: none | detect | align (None: the release's default)

    def check(self) -> None:
        if self.dtype not in DTYPES:
            raise FeatxError(f"unknown dtype {self.dtype!r}; use float16 or float32")
        if self.precision not in PRECISIONS:
            raise FeatxError(f"unknown precision {self.precision!r}; use {', '.join(PRECISIONS)}")
        if self.batch_size is not None and self.batch_size < 1:
            raise FeatxError(f"--batch-size must be at least 1, not {self.batch_size}")
        if self.workers is not None and self.workers < 0:
            raise FeatxError(f"--workers must be 0 or more, not {self.workers}")
        if self.faces is not None and self.faces not in FACE_MODES:
            raise FeatxError(f"--faces {self.faces!r}: use one of {', '.join(FACE_MODES)}")
        if self.cluster not in (None, "") and self.scheduler:
            raise FeatxError("use --cluster (start a local cluster) or --scheduler (join one), not both")

    @property
    def distributed(self) -> bool:
        return self.cluster not in (None, "") or bool(self.scheduler)


def options(opts: ExtractOptions | None = None, **kw) -> ExtractOptions:
    """ExtractOptions from an object and/or keyword overrides (unknown names refused)."""
    names = {f.name for f in fields(ExtractOptions)}
    bad = sorted(set(kw) - names)
    if bad:
        raise TypeError(f"unknown extract option(s): {', '.join(bad)}")
    o = replace(opts or ExtractOptions(), **kw)
    o.check()
    return o
