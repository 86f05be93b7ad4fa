"""Packages by setuptools' discovery (featx and every subpackage), plus the CLI: `cli/` installs as featx_cli.
Everything else is in pyproject.toml."""

from setuptools import find_packages, setup

setup(packages=find_packages(include=["featx", "featx.*"]) + ["featx_cli"], package_dir={"featx_cli": "cli"})
