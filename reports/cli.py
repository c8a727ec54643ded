"""``equiaudit report`` and ``equiaudit compare``: HTML reports from saved results.

Registered on the core's typer app by :func:`register`. Errors are one line on stderr with exit code 2.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from equiaudit.cli import err, fail
from equiaudit.errors import EquiauditError

from . import DEFAULT_DIR


def _load(path: Path) -> Any:
    from equiaudit.result import load

    return load(path)


def report(
    result: Annotated[
        Path,
        typer.Argument(
            help="A results JSON written by `equiaudit scan --out` (its "
            "<stem>.samples.npz beside it adds the image galleries)."
        ),
    ],
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="Where to write the HTML (default: reports/<stem>.html).")
    ] = None,
    title: Annotated[str | None, typer.Option(help="Page title (default: model · group).")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Print nothing on success.")] = False,
) -> None:
    """Write the HTML report of a saved audit result."""
    from . import write_report

    path = out if out is not None else DEFAULT_DIR / f"{result.stem}.html"
    try:
        res = _load(result)
        beside = path.with_suffix(".json")
        # Reports made in place (reports/x.json -> reports/x.html) leave the input file alone.
        same = beside.exists() and beside.resolve() == result.resolve()
        written = write_report(res, path, title=title, write_json=not same)
    except EquiauditError as exc:
        raise fail(str(exc)) from None
    if not quiet:
        err.print(f"report: {written}")


def _reload_models_and_data(results: list[Any], trust: bool) -> tuple[list[Any], Any]:
    """The two models and the labelled data of two saved audits, reloaded from what their metadata records."""
    from equiaudit.data import load_data
    from equiaudit.loading import load_model

    models = []
    for r in results:
        model = r.meta.get("model") or {}
        source = str(model.get("source") or "")
        if not source or source.startswith("<"):
            raise EquiauditError(
                f"the model {source or '?'} was audited from memory and cannot be reloaded; "
                "use equiaudit.reports.correctness_matrix from Python"
            )
        models.append(load_model(source, arch=model.get("arch"), trust=trust))
    specs = {(r.meta.get("data") or {}).get("spec") for r in results}
    if len(specs) != 1:
        raise EquiauditError(
            f"the audits used different data ({', '.join(map(str, specs))}); the correctness "
            "matrix needs the same images for both models"
        )
    data = results[0].meta.get("data") or {}
    if data.get("spec") in (None, "tensors"):
        raise EquiauditError(
            "the audit's data was given in memory and cannot be reloaded; use "
            "equiaudit.reports.correctness_matrix from Python"
        )
    options: dict[str, Any] = {"split": data.get("split") or "test", "limit": data.get("count")}
    shape = data.get("input_shape")
    if shape:
        options.update(channels=shape[0], input_size=tuple(shape[1:]))
    norm = data.get("normalisation")
    if norm:
        options.update(mean=norm["mean"], std=norm["std"])
    if data.get("seed") is not None:
        options["seed"] = data["seed"]
    return models, load_data(data["spec"], **options)


def compare(
    results: Annotated[list[Path], typer.Argument(help="Two or more results JSON files.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Where to write the HTML.")] = DEFAULT_DIR / "compare.html",
    names: Annotated[
        str | None, typer.Option(help="Comma-separated model names, one per result (default: the model file names).")
    ] = None,
    title: Annotated[str | None, typer.Option(help="Page title.")] = None,
    correctness: Annotated[
        str | None,
        typer.Option(
            help="Also measure the correctness matrix of the first two "
            "classifiers under these elements (a group spec, e.g. "
            "rot:0,45), reloading both models and the data."
        ),
    ] = None,
    trust: Annotated[
        bool,
        typer.Option(
            help="With --correctness: allow model files that run code when "
            "loaded. Only for files from a source you trust."
        ),
    ] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Print nothing on success.")] = False,
) -> None:
    """Write an HTML report comparing several saved audit results."""
    from . import write_comparison

    label_list = None if names is None else [n.strip() for n in names.split(",")]
    try:
        loaded = [_load(p) for p in results]
        matrices = []
        if len(loaded) < 2:
            raise EquiauditError(f"a comparison needs at least 2 results, got {len(loaded)}")
        if correctness is not None:
            from . import default_names
            from .correctness import correctness_matrix

            models, data = _reload_models_and_data(loaded[:2], trust)
            pair = tuple((label_list or default_names(loaded))[:2])
            matrices = correctness_matrix(models[0], models[1], data, correctness, names=pair)
        written = write_comparison(loaded, out, names=label_list, title=title, matrices=matrices)
    except EquiauditError as exc:
        raise fail(str(exc)) from None
    if not quiet:
        err.print(f"report: {written}")


def register(app: typer.Typer) -> None:
    """Add ``report`` and ``compare`` to the ``equiaudit`` command line."""
    app.command("report")(report)
    app.command("compare")(compare)
