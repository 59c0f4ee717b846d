"""``weightspace predict``: test accuracy from weights alone, with an interval and a warning
when a model lies outside what the encoder was trained on."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from weightspace.cli.app import app
from weightspace.cli.default_encoder import DEFAULT_HELP, encoder_or_default
from weightspace.cli.options import (
    Activation,
    AllowNonfinite,
    ModelFactory,
    SpecFile,
    architecture_kwargs,
)
from weightspace.cli.skipping import SkipErrors, SkipLog

_HELP = (
    "Predict checkpoints' test accuracy from their weights alone, with a split-conformal "
    "interval (calibrated on the encoder's validation runs) and the nearest zoo models.\n\n"
    "A model outside what the encoder was trained on (an input shape, output count, "
    "architecture family or task no zoo model has, or farther from the zoo than 95 % of zoo "
    "models are from other runs) is still answered, with a warning saying why; --json reports "
    "it as out_of_distribution and ood_reasons."
)


@app.command(help=_HELP)
def predict(
    inputs: Annotated[
        list[Path],
        typer.Argument(
            help="Checkpoints (.safetensors, .pt, .pth), folders of them, or zoo directories."
        ),
    ],
    encoder: Annotated[
        str | None,
        typer.Option(
            "--encoder",
            help=f"Encoder directory (weightspace train) or pretrained:NAME. {DEFAULT_HELP}",
            show_default=False,
        ),
    ] = None,
    head: Annotated[
        str,
        typer.Option(
            "--head",
            help="encoder: the encoder's accuracy head; gbt: gradient-boosted trees on the "
            "embedding, tuned by run-grouped CV on the encoder's training runs (bench's "
            "weightspace-gbt; needs the encoder's zoo once, then cached).",
        ),
    ] = "encoder",
    activation: Activation = None,
    spec: SpecFile = None,
    model: ModelFactory = None,
    allow_nonfinite: AllowNonfinite = False,
    skip_errors: SkipErrors = False,
    k: Annotated[int, typer.Option("-k", "--neighbours", help="Nearest zoo models to list.")] = 5,
    coverage: Annotated[
        float, typer.Option("--coverage", help="Conformal interval coverage.")
    ] = 0.9,
    device: Annotated[str, typer.Option("--device", help="cpu | cuda")] = "cpu",
    as_json: Annotated[
        bool,
        typer.Option(
            "--json",
            help="Print JSON: one object for a single checkpoint file, else a list of them.",
        ),
    ] = False,
) -> None:
    """See ``_HELP``."""
    from weightspace.input_domains import cli_warning, with_input_domains
    from weightspace.predict import Predictor
    from weightspace.predict_reference import checkpoint_task
    from weightspace.sources import iter_inputs, load_model_file
    from weightspace.twins import each_read, report_input_twins

    encoder = str(encoder_or_default(encoder, "predict"))
    predictor = Predictor(encoder, head=head, k=k, coverage=coverage, device=device)
    kwargs = architecture_kwargs(activation, spec, model, allow_nonfinite, "embedding")
    skips = SkipLog(skip_errors)

    def load(path: Path, spec_json: str | None = None) -> Any:
        return load_model_file(path, spec_json, **kwargs)

    load = with_input_domains(load, predictor.encoder, say=cli_warning)

    loaded = list(skips.models(inputs, lambda paths: iter_inputs(paths, loader=skips.loader(load))))

    def one(item: Any) -> Any:
        task = item.metrics.get("task") if item.metrics else checkpoint_task(item.path)
        pair = (item.network_spec(), dict(item.tensors))
        [result] = predictor.predict([pair], [item.path], [task])
        return result

    results = skips.each(loaded, one, lambda item: item.path)
    report_input_twins(inputs, each_read("predicted"))
    skips.finish(done=len(results))
    single = len(inputs) == 1 and len(results) == 1 and Path(inputs[0]).is_file()
    if as_json:
        payload = results[0].to_dict() if single else [r.to_dict() for r in results]
        typer.echo(json.dumps(payload, indent=2))
        return
    _print(results, coverage, show_neighbours=len(results) == 1)


def _print(results: list[Any], coverage: float, *, show_neighbours: bool) -> None:
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    console = Console()
    for result in results:
        interval = (
            f" ({coverage:.0%} interval {result.interval[0]:.3f}–{result.interval[1]:.3f}, "
            f"calibrated on {result.calibration_size} validation checkpoints)"
            if result.interval
            else " (no calibration data: the encoder's zoo is not reachable)"
        )
        console.print(
            f"{escape(result.file)}: predicted test accuracy [bold]{result.test_accuracy:.3f}[/]"
            f"{interval}",
            highlight=False,
        )
        if result.out_of_distribution:
            console.print(
                "[yellow]warning:[/] out of distribution for this encoder, so the prediction "
                "and its interval may be far off:",
                highlight=False,
            )
            for reason in result.ood_reasons:
                console.print(f"  - {escape(reason)}", highlight=False)
        elif result.out_of_distribution is None:
            console.print(
                "[yellow]note:[/] the encoder's zoo is not reachable: whether this model is "
                "in distribution was not checked",
                highlight=False,
            )
        if show_neighbours and result.neighbours:
            table = Table(title="nearest zoo models", title_justify="left")
            for column in result.neighbours[0]:
                table.add_column(column)
            for row in result.neighbours:
                table.add_row(
                    *(f"{v:.3f}" if isinstance(v, float) else str(v) for v in row.values())
                )
            console.print(table)
