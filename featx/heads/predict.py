"""Moved to featx.predict; this name stays importable for code written before the move."""

from ..predict import *  # noqa: F401,F403
from ..predict import __all__  # noqa: F401
