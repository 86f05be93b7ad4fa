"""Under CI=true a skip fails the run unless tests/skip_allowlist.txt names its reason.

A skip hides a gap: a fetch that failed, photos that are missing, an extra that was not installed. CI
may only have the skips the allowlist names (one regular expression a line, searched in the reason).
tests/conftest.py installs this for the suite; `pytest -p skip_gate` installs it anywhere else
(tests/test_skip_gate.py runs it on a tiny test file).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

ALLOWLIST = Path(__file__).with_name("skip_allowlist.txt")


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


def allowed(path: Path = ALLOWLIST) -> list[re.Pattern]:
    """The allowlist's patterns: every line that is not blank and not a `#` comment."""
    lines = (ln.strip() for ln in path.read_text().splitlines())
    return [re.compile(ln) for ln in lines if ln and not ln.startswith("#")]


def skip_reason(report) -> str:
    lr = report.longrepr
    text = lr[2] if isinstance(lr, tuple) and len(lr) == 3 else str(lr)
    return text.removeprefix("Skipped: ")


class SkipGate:
    def __init__(self, patterns: list[re.Pattern]):
        self.patterns, self.unlisted = patterns, []

    def check(self, report) -> None:
        reason = skip_reason(report)
        if not any(p.search(reason) for p in self.patterns):
            self.unlisted.append((report.nodeid, reason))

    def pytest_runtest_logreport(self, report) -> None:
        if report.skipped and not hasattr(report, "wasxfail"):
            self.check(report)

    def pytest_collectreport(self, report) -> None:  # a module that skips itself
        if report.skipped:
            self.check(report)

    def pytest_sessionfinish(self, session) -> None:
        if self.unlisted and session.exitstatus in (pytest.ExitCode.OK, pytest.ExitCode.NO_TESTS_COLLECTED):
            session.exitstatus = pytest.ExitCode.TESTS_FAILED

    def pytest_terminal_summary(self, terminalreporter) -> None:
        if not self.unlisted:
            return
        terminalreporter.section(f"skips not in {ALLOWLIST.name} (CI=true: each one fails the run)", red=True)
        for nodeid, reason in self.unlisted:
            terminalreporter.line(f"{nodeid}: {reason}")


def install(config) -> None:
    if in_ci() and not config.pluginmanager.has_plugin("featx-skip-gate"):
        config.pluginmanager.register(SkipGate(allowed()), "featx-skip-gate")


def pytest_configure(config) -> None:  # as a plugin: pytest -p skip_gate
    install(config)
