"""Reports on a head: `evaluate` scores a saved head on a store and writes metrics.json, report.md,
PNGs, report.html and predictions.csv; `featx.report.compare` ranks several reports on the same rows.

  evaluate  the evaluation and metrics.json / report.md / PNGs
  html      the self-contained report.html (intervals, calibration, galleries, feature map)
  plots     the PNG figures of the page
  compare   `featx compare`: several reports side by side, paired tests

The metric arithmetic itself is featx.metrics.
"""

from .evaluate import REQUIRED_KEYS, evaluate, summary_table, write_report

__all__ = ["evaluate", "summary_table", "write_report", "REQUIRED_KEYS"]
