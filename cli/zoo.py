"""``equiaudit zoo ...``: list the models, train them, retrain the shipped checkpoints, rerun the studies.

Tables and JSON on stdout; progress, messages and warnings on stderr; errors are one line with exit code 2.
"""

from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from equiaudit.errors import EquiauditError

from .console import err, out
from .console import fail as _fail

app = typer.Typer(
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    help="The model zoo: models with known symmetries, their checkpoints and the reference studies.",
)

DEFAULT_TRAIN_OUT = Path("checkpoints")


def _metric(card: dict[str, Any] | None) -> tuple[str, float | None]:
    """``(name, value)`` of a card's main metric: accuracy or IoU on the test split of its training data."""
    if not card:
        return "", None
    test = card.get("metrics", {}).get(card.get("data", {}).get("dataset"), {})
    for key in ("accuracy", "iou"):
        if isinstance(test.get(key), (int, float)):
            return key, float(test[key])
    return "", None


def _cards() -> dict[str, dict[str, Any]]:
    from equiaudit.zoo.checkpoints import available, load_card

    cards = {}
    for name in available():
        try:
            cards[name] = load_card(name)
        except EquiauditError as exc:
            err.print(f"warning: {exc}")
    return cards


def _groups(info: Any) -> str:
    return ", ".join(g + ("" if g in info.exact_groups else "~") for g in info.groups) or "-"


@app.command("list")
def list_(
    pattern: Annotated[str, typer.Argument(help="Shell-style name pattern, e.g. 'gcnn*'.")] = "*",
    json_out: Annotated[bool, typer.Option("--json", help="Print one JSON document on stdout.")] = False,
) -> None:
    """List the zoo's models: parameters, symmetry groups, shipped checkpoint and its test metric."""
    from equiaudit.zoo.registry import list_models, model_info

    names = list_models(pattern)
    if not names:
        raise _fail(f"no zoo model matches {pattern!r}; known: {', '.join(list_models())}")
    cards = _cards()
    rows = []
    for name in names:
        info, card = model_info(name), cards.get(name)
        metric, value = _metric(card)
        rows.append(
            {
                "name": name,
                "family": info.family,
                "task": info.task,
                "groups": list(info.groups),
                "exact_groups": list(info.exact_groups),
                "input_shape": list(info.input_shape),
                "cpu_trainable": info.cpu_trainable,
                "shipped": card is not None,
                "parameters": card["model"]["parameters"] if card else None,
                "dataset": card["data"]["dataset"] if card else info.default_dataset,
                "metric": metric or None,
                "value": value,
            }
        )
    if json_out:
        sys.stdout.write(json.dumps({"tool": "equiaudit", "zoo": rows}, indent=2) + "\n")
        return
    table = Table(title="equiaudit zoo", title_justify="left")
    for col, justify in (
        ("name", "left"),
        ("task", "left"),
        ("parameters", "right"),
        ("groups", "left"),
        ("input", "left"),
        ("shipped", "center"),
        ("trained on", "left"),
        ("test", "right"),
    ):
        table.add_column(col, justify=justify, no_wrap=col in ("name", "parameters", "test"))
    for row, name in zip(rows, names, strict=True):
        test = (
            "-"
            if row["value"] is None
            else (f"{100 * row['value']:.1f}% acc" if row["metric"] == "accuracy" else f"{row['value']:.3f} IoU")
        )
        table.add_row(
            name,
            row["task"],
            "-" if row["parameters"] is None else f"{row['parameters']:,}",
            _groups(model_info(name)),
            "x".join(map(str, row["input_shape"])),
            "yes" if row["shipped"] else "no",
            row["dataset"] if row["shipped"] else "-",
            test,
        )
    out.print(table)
    err.print(
        "groups: invariant/equivariant by construction; ~ approximately (interpolation), else exactly on the "
        "grid. Scan a shipped model: equiaudit scan zoo:NAME"
    )


@app.command()
def info(
    name: Annotated[str, typer.Argument(help="A zoo model name (see: equiaudit zoo list).")],
    json_out: Annotated[bool, typer.Option("--json", help="Print one JSON document on stdout.")] = False,
) -> None:
    """Describe a zoo model and its shipped checkpoint's model card."""
    from equiaudit.zoo.checkpoints import has_checkpoint, load_card
    from equiaudit.zoo.registry import create, model_info

    try:
        meta = model_info(name)
        card = load_card(name) if has_checkpoint(name) else None
    except EquiauditError as exc:
        raise _fail(str(exc)) from None
    doc = {"model": meta.to_dict(), "card": card}
    if card is None:
        if not json_out:
            err.print("building the model to count its parameters...")
        doc["model"]["parameters"] = sum(p.numel() for p in create(name).parameters())
    else:
        doc["model"]["parameters"] = card["model"]["parameters"]
    if json_out:
        sys.stdout.write(json.dumps(doc, indent=2, default=str) + "\n")
        return
    table = Table(title=f"zoo:{name}", title_justify="left", show_header=False)
    table.add_column("field")
    table.add_column("value", overflow="fold")
    rows = [
        ("description", meta.description),
        ("family / task", f"{meta.family} / {meta.task}"),
        ("parameters", f"{doc['model']['parameters']:,}"),
        ("groups", _groups(meta)),
        ("input", "x".join(map(str, meta.input_shape))),
        ("reference", meta.reference),
        ("cpu trainable", "yes" if meta.cpu_trainable else "no"),
    ]
    if card is None:
        rows.append(("checkpoint", f"none shipped; train one with: equiaudit zoo train {name}"))
    else:
        rows += _card_rows(name, card)
    for field, value in rows:
        table.add_row(field, value)
    out.print(table)


def _card_rows(name: str, card: dict[str, Any]) -> list[tuple[str, str]]:
    """The ``(field, value)`` rows of ``zoo info`` that describe a shipped checkpoint's model card."""
    training, data = card["training"], card["data"]
    rows = [
        (
            "checkpoint",
            f"{card['file']} ({card['size_bytes'] / 1e6:.2f} MB, sha256 {card['sha256'][:16]}...)",
        ),
        (
            "trained on",
            f"{data['dataset']} ({data['train_images']} images"
            + (f", input {data['options']['input_size']}px" if data["options"].get("input_size") else "")
            + ")",
        ),
        (
            "training",
            f"{training['epochs']} epochs, batch {training['batch_size']}, lr {training['lr']:g}, "
            f"seed {training['seed']}, rotation augmentation {training['augment_rotation']:g} deg, "
            f"{training['seconds']:.0f} s"
            + (f" ({training['cpu_seconds']:.0f} s CPU)" if "cpu_seconds" in training else "")
            + f" on {training['device']}",
        ),
        ("scan it", _scan_hint(f"zoo:{name}", card)),
    ]
    for spec, metrics in card["metrics"].items():
        value = metrics.get("accuracy", metrics.get("iou"))
        rows.append(
            (
                f"test: {spec}",
                f"{100 * value:.1f}% accuracy" if "accuracy" in metrics else f"{value:.3f} IoU",
            )
        )
    for audit in card.get("audits", []):
        rows.append((f"audit: {audit['group']}", f"{_audit_text(audit)} ({audit['images']} images of {audit['data']})"))
    rows.append(("git commit", str(card.get("git_commit"))))
    return rows


def _audit_text(audit: dict[str, Any]) -> str:
    """One card audit in words: its failure, or its main summary numbers (classifier or segmenter)."""
    s = audit.get("summary", {})
    if "error" in audit:
        return f"failed: {audit['error']}"
    if "agreement_mean" in s:
        return f"agreement {100 * s['agreement_mean']:.1f}%, invariance error {s['invariance_error_mean']:.3g}"
    return (
        f"IoU consistency {s.get('iou_consistency_mean', float('nan')):.3f}, equivariance error "
        f"{s.get('equivariance_error_mean', float('nan')):.3g}"
    )


def _scan_hint(model: str, card: dict[str, Any]) -> str:
    """The scan command for ``model`` (``zoo:NAME`` or ``FILE --arch zoo:NAME``) on the card's test data."""
    size = card["data"]["options"].get("input_size")
    group = (card["model"]["groups"] or ["so2"])[0]
    return f"equiaudit scan {model} --data {card['data']['dataset']} --group {group}" + (
        f" --input-size {size}" if size else ""
    )


def _card_table(cards: list[dict[str, Any]], paths: list[Path]) -> Table:
    table = Table(title="trained", title_justify="left")
    for col in ("model", "data", "epochs", "seconds", "final loss", "test", "audit", "file"):
        table.add_column(
            col,
            justify="left" if col in ("model", "data", "audit", "file") else "right",
            no_wrap=col == "model",
            overflow="fold",
        )
    for card, path in zip(cards, paths, strict=True):
        metric, value = _metric(card)
        test = "-" if value is None else (f"{100 * value:.1f}%" if metric == "accuracy" else f"{value:.3f} IoU")
        audits = []
        for a in card.get("audits", []):
            s = a.get("summary", {})
            key = "invariance_error_mean" if "invariance_error_mean" in s else "equivariance_error_mean"
            audits.append(f"{a['group']}: {'failed' if 'error' in a else format(s.get(key, float('nan')), '.3g')}")
        table.add_row(
            card["name"],
            card["data"]["dataset"],
            str(card["training"]["epochs"]),
            f"{card['training']['seconds']:.0f}",
            f"{card['training']['losses'][-1]:.4f}",
            test,
            "; ".join(audits) or "-",
            str(path),
        )
    return table


@app.command()
def train(
    name: Annotated[str, typer.Argument(help="A zoo model name (see: equiaudit zoo list).")],
    dataset: Annotated[
        str | None,
        typer.Option(
            help="Training data (its train split; tested on its test split): "
            "digits, rot-digits, scale-digits, shapes-seg, mnist, ... "
            "Default: the model's recipe."
        ),
    ] = None,
    epochs: Annotated[int | None, typer.Option(min=1, help="Passes over the training data.")] = None,
    lr: Annotated[float | None, typer.Option(min=0.0, help="Peak AdamW learning rate (cosine schedule).")] = None,
    batch_size: Annotated[int | None, typer.Option(min=1, help="Images per step.")] = None,
    seed: Annotated[
        int | None, typer.Option(min=0, help="Seed of the initialisation, shuffling and augmentation.")
    ] = None,
    augment_rotation: Annotated[
        bool,
        typer.Option(
            "--augment-rotation",
            help="Rotate every training image by a random angle (kornia RandomRotation, 0-360 degrees).",
        ),
    ] = False,
    input_size: Annotated[int | None, typer.Option(min=1, help="Resize images to SIZE x SIZE.")] = None,
    tiny: Annotated[bool, typer.Option("--tiny", help="Train the tiny variant (for quick checks).")] = False,
    limit: Annotated[int | None, typer.Option(min=2, help="Use at most N training images and N test images.")] = None,
    out_dir: Annotated[
        Path, typer.Option("--out", "-o", help="Folder for NAME.pt and its card NAME.json.")
    ] = DEFAULT_TRAIN_OUT,
    audit_card: Annotated[
        bool, typer.Option("--audit/--no-audit", help="Audit the trained model for its card.")
    ] = True,
    device: Annotated[str, typer.Option(help="auto (CUDA when present), cpu, cuda, cuda:1...")] = "auto",
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress or messages on stderr.")] = False,
) -> None:
    """Train a zoo model and save its state dict with a model card (JSON)."""
    from equiaudit.zoo.checkpoints import save_checkpoint
    from equiaudit.zoo.recipes import fit, make_recipe
    from equiaudit.zoo.training import progress_bars

    show = not quiet
    try:
        recipe = make_recipe(
            name,
            dataset=dataset,
            epochs=epochs,
            lr=lr,
            batch_size=batch_size,
            seed=seed,
            augment_rotation=180.0 if augment_rotation else None,
            input_size=input_size,
        )
        with progress_bars(err if show else None) as factory:
            model, card = fit(
                recipe,
                tiny=tiny,
                limit=limit,
                device=device,
                audit_card=audit_card,
                progress=factory(name) if factory else None,
                status=(lambda m: err.print(m)) if show else None,
            )
        path = save_checkpoint(name, model, card, out_dir)
    except EquiauditError as exc:
        raise _fail(str(exc)) from None
    card = json.loads(path.with_suffix(".json").read_text(encoding="utf-8"))
    out.print(_card_table([card], [path]))
    if show:
        err.print(f"model card: {path.with_suffix('.json')}")
        err.print(f"scan it: {_scan_hint(f'{path} --arch zoo:{name}' + (':tiny' if tiny else ''), card)}")


@app.command("train-shipped")
def train_shipped(
    names: Annotated[list[str] | None, typer.Argument(help="Checkpoints to retrain (default: all shipped).")] = None,
    out_dir: Annotated[
        Path | None,
        typer.Option(
            "--out",
            "-o",
            help="Folder to write to (default: the package's checkpoints, replacing the shipped files).",
        ),
    ] = None,
    device: Annotated[str, typer.Option(help="auto (CUDA when present), cpu, cuda, cuda:1...")] = "auto",
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress or messages on stderr.")] = False,
) -> None:
    """Retrain the shipped checkpoints with their recipes (reproducible: fixed seeds and data)."""
    from equiaudit.zoo.recipes import train_shipped as run
    from equiaudit.zoo.training import progress_bars

    show = not quiet
    try:
        with progress_bars(err if show else None) as factory:
            paths = run(
                names or None,
                directory=out_dir,
                device=device,
                progress=factory,
                status=(lambda m: err.print(m)) if show else None,
            )
    except EquiauditError as exc:
        raise _fail(str(exc)) from None
    cards = [json.loads(p.with_suffix(".json").read_text(encoding="utf-8")) for p in paths]
    out.print(_card_table(cards, paths))


@app.command()
def study(
    name: Annotated[str | None, typer.Argument(help="A study name, or 'all'; leave out to list them.")] = None,
    quick: Annotated[
        bool,
        typer.Option(
            help="Tiny models, one epoch, a few images: checks the pipeline in seconds (the numbers mean nothing)."
        ),
    ] = False,
    out_dir: Annotated[
        Path, typer.Option("--out", "-o", help="Folder for the results (one sub-folder per study).")
    ] = Path("runs/studies"),
    device: Annotated[str, typer.Option(help="auto (CUDA when present), cpu, cuda, cuda:1...")] = "auto",
    markdown: Annotated[bool, typer.Option(help="Print the tables as Markdown instead.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress or messages on stderr.")] = False,
    seeds: Annotated[
        int | None, typer.Option(min=1, help="Train each model with seeds 0..N-1 (default 3; 2 with --quick).")
    ] = None,
    data: Annotated[
        str | None,
        typer.Option(help="Run the study on this data instead of its offline default (flowers:PATH, rot-mnist...)."),
    ] = None,
    weights: Annotated[
        Path | None, typer.Option(help="Pretrained weights (a state dict) for the study's baseline model.")
    ] = None,
    download: Annotated[bool, typer.Option("--download", help="Let the study's data loader download.")] = False,
    jobs: Annotated[
        int,
        typer.Option(
            min=1,
            help="Train the study's models that have no checkpoint in N processes first (each on --device; CUDA: "
            "spread over the visible GPUs; the CPUs shared out), then run the study on them. Full mode only.",
        ),
    ] = 1,
) -> None:
    """Rerun a reference study end to end: train or load its models, audit them, print and save tables."""
    from equiaudit.zoo.studies import list_studies, run_study, study_options, study_title

    if name is None:
        table = Table(title="reference studies (equiaudit zoo study NAME)", title_justify="left")
        table.add_column("name")
        table.add_column("what it compares")
        for n in list_studies():
            table.add_row(n, study_title(n))
        out.print(table)
        return
    options = {"seeds": seeds, "data": data, "weights": weights, "download": download}
    names = list_studies() if name == "all" else [name]
    if name == "all":
        if data is not None or weights is not None or download:
            raise _fail("--data, --weights and --download are given to one study, not to 'all'")
        options = {"seeds": seeds}
    for n in names:
        given = {k: v for k, v in options.items() if name != "all" or k in study_options(n)}
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                result = run_study(
                    n, quick=quick, out_dir=out_dir, device=device, log=None if quiet else err, options=given, jobs=jobs
                )
        except EquiauditError as exc:
            raise _fail(str(exc)) from None
        for w in caught:
            err.print(f"warning: {w.message}")
        if markdown:
            sys.stdout.write(result.to_markdown() + "\n")
        else:
            result.print(out)
        if not quiet:
            err.print(f"results: {result.files['results']}")
