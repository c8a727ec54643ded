"""The per-layer table and the Lie derivative line of ``equiaudit scan --layers ... --lie`` (stdout)."""

from __future__ import annotations

from typing import Any

from rich.table import Table

from .console import out


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.3g}"


def print_layers(result: Any) -> None:
    """One row per layer in execution order (action, worst element and its error and floor, verdict, Lie
    derivative), then the first layer that breaks."""
    section = result.layers
    if not section:
        return
    lie = result.lie or {}
    gens = lie.get("generators", [])
    table = Table(title=f"layers ({section['selection']}, action {section['action']})", title_justify="left")
    for col in ("layer", "module", "shape", "action", "worst element", "error", "floor", "verdict"):
        table.add_column(col, justify="right" if col in ("error", "floor") else "left")
    for gen in gens:
        table.add_column(f"lie {gen}", justify="right")
    for row in section["layers"]:
        verdict = {True: "holds", False: "breaks", None: "-"}[row["holds"]]
        if row["breaks_at"]:
            verdict += f" ({', '.join(row['breaks_at'][:3])}{', ...' if len(row['breaks_at']) > 3 else ''})"
        cells = [row["name"], row["module"], "x".join(map(str, row["shape"])), str(row["action"])]
        cells += [str(row["worst_element"] or "-"), _num(row["error_worst"]), _num(row["floor_worst"]), verdict]
        cells += [_num((row.get("lie") or {}).get(g)) for g in gens]
        table.add_row(*cells)
    out.print(table)
    out.print(f"rule: {section['rule']}", markup=False)
    first = section["first_breaking"]
    if first is None:
        out.print("every layer holds")
    else:
        row = next(r for r in section["layers"] if r["name"] == first)
        out.print(
            f"first layer that breaks: {first} (error {_num(row['error_worst'])} under {row['worst_element']}, "
            f"floor {_num(row['floor_worst'])})",
            markup=False,
        )


def print_lie(result: Any) -> None:
    """The output's Lie derivative beside the grid audit's summary."""
    lie = result.lie
    if not lie:
        return
    parts = [
        f"{gen} {_num(v['mean'])} {lie['units'].get(gen, '')} (max {_num(v['max'])})"
        for gen, v in lie["output"].items()
    ]
    out.print(f"lie derivative of the output (mean over {lie['images']} images): " + ", ".join(parts), markup=False)
