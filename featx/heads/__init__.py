"""Heads over cached features: scikit-learn style estimators that choose their hyperparameters on
validation rows, saved as safetensors arrays + a JSON card (never a pickle).

    head = make_head("logreg", seed=0)          # or linear-svm, rbf-svm, mlp, sgd: see HEADS
    head.fit(X, y, X_val, y_val)                # hyperparameters chosen on (X_val, y_val); head.C_, head.cv_results_
    save_head(head, "heads/gender", card)       # head.safetensors + head.json, with sha256 digests
    head, card = load_head("heads/gender")

Heads take arrays, as in scikit-learn; `featx.training.train` fits one on a feature store and writes
its card. A new head kind is one module in this package (a Head subclass) added to BUILTIN below;
code elsewhere (a plugin, a test) registers its own class with @register_head.
"""

from __future__ import annotations

from .base import Head
from .card import (ARRAYS_FILE, CARD_FILE, CARD_FORMAT, CARD_VERSION, check_compatible, load_head, read_card,
                   save_head, to_json)
from .registry import HEADS, get_head_class, head_classes, make_head, register_head, unregister_head
from .linear import LinearSVMHead, LogRegHead
from .mlp import MLPHead
from .rbf import RBFSVMHead
from .sgd import SGDHead

BUILTIN = (LogRegHead, LinearSVMHead, RBFSVMHead, MLPHead, SGDHead)  # the built-in kinds, in this order
for _cls in BUILTIN:
    register_head(_cls)

__all__ = ["HEADS", "BUILTIN", "Head", "make_head", "register_head", "unregister_head", "get_head_class",
           "head_classes", "save_head", "load_head", "read_card", "check_compatible", "to_json", "CARD_FILE",
           "ARRAYS_FILE", "CARD_FORMAT", "CARD_VERSION"]
