"""`featx labels list|add|type`: the targets of a feature store, new ones joined by path (no extraction)."""

from __future__ import annotations

from typing import Optional

import typer

from . import checks


def _names(value: Optional[str]) -> list[str]:
    return [v.strip() for v in (value or "").split(",") if v.strip()]


def _summary(t: dict) -> str:
    if t["type"] == "numeric":
        if t["min"] is None:
            return "no values"
        return f"{t['min']:g} to {t['max']:g}, mean {t['mean']:.3g} ({t['distinct']} distinct)"
    items = sorted(t["classes"].items(), key=lambda kv: -kv[1])
    shown = ", ".join(f"{c} {n}" for c, n in items[:6])
    return shown + (f", ... ({len(items)} classes)" if len(items) > 6 else "")


def list_(
    store: str = typer.Argument(..., callback=checks.store_source, help="Feature store path or URL."),
    targets: Optional[str] = typer.Option(None, "--set", help="Target set (default: the current one)."),
) -> None:
    """Show the store's target sets and, for one set, each target's type, count and classes or range."""
    from featx.labels import describe

    d = describe(store, targets)
    s = d["set"]
    others = [x["name"] for x in d["sets"] if x["id"] != s["id"]]
    typer.echo(f"store {d['store']}: target set {s['name']!r} ({s['n']} rows, manifest {s['manifest_hash'][:12]})"
               + (f"; other sets: {', '.join(others)}" if others else "")
               + ("; format 1 (read as one target set; `featx extract` or `featx labels add` upgrades it)"
                  if d["format"] < 2 else ""))
    typer.echo("split: " + ", ".join(f"{k} {v}" for k, v in s["split"].items()))
    rows = [("target", "type", "count", "missing", "classes / range")]
    rows += [(t["name"], t["type"], str(t["count"]), str(t["missing"]), _summary(t)) for t in s["targets"]]
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    for r in rows:
        typer.echo("  ".join(c.ljust(w) for c, w in zip(r[:4], widths)) + "  " + r[4])


def add(
    store: str = typer.Argument(..., callback=checks.store_source, help="Feature store path or URL."),
    data: str = typer.Option(..., "--data", help="CSV of path,COLUMN,... (paths relative to the CSV)."),
    targets: Optional[str] = typer.Option(None, "--set", help="Target set to join (default: the current one)."),
    numeric: Optional[str] = typer.Option(None, "--numeric", help="Columns to type as numeric, e.g. age,bmi."),
    categorical: Optional[str] = typer.Option(None, "--categorical", help="Columns to type as categorical."),
) -> None:
    """Join new target columns to a store by path: no extraction; CSV rows the store lacks are an error."""
    from featx.labels import add as run

    r = run(store, data, targets, numeric=_names(numeric), categorical=_names(categorical))
    how = f"{r['by_path']} by path" + (f", {r['by_content']} by content (moved photos)" if r["by_content"] else "")
    if r["added"]:
        cols = ", ".join(f"{c} ({k}" + (f", {r['missing'][c]} missing" if r["missing"][c] else "") + ")"
                         for c, k in r["added"].items())
        typer.echo(f"added {cols} to target set {r['set']!r}: {r['rows']} of its {r['of']} rows given ({how})")
    else:
        typer.echo(f"nothing to add to target set {r['set']!r}: every column is already there")
    if r["identical"]:
        typer.echo(f"already there with the same values: {', '.join(r['identical'])}")


def type_(
    store: str = typer.Argument(..., callback=checks.store_source, help="Feature store path or URL."),
    column: str = typer.Argument(..., help="Target to retype."),
    kind: str = typer.Argument(..., help="categorical or numeric"),
    targets: Optional[str] = typer.Option(None, "--set", help="Target set (default: the current one)."),
) -> None:
    """Declare a target categorical or numeric (the inferred type is in `featx labels list`)."""
    from featx.labels import set_type

    r = set_type(store, column, kind, targets)
    typer.echo(f"{r['target']} in target set {r['set']!r} is now {r['type']} (was {r['was']})")
