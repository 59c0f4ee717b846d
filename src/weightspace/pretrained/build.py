"""Build a bundled encoder: ``python -m weightspace.pretrained.build --zoo DIR --name small``.

``make pretrained`` runs it on the ``small`` preset's zoo. The steps are ordinary commands, so the
bundled weights are reproducible by anyone:

1. ``weightspace train --zoo DIR --epochs E --seed S --out TMP`` (the demo's recipe);
2. what ``weightspace predict`` needs from the zoo is computed once (split-conformal residuals
   on the encoder's validation runs, the zoo's embeddings for neighbours and the
   out-of-distribution check, the tuned tree head of ``--head gbt``), so ``predict`` works
   without the zoo;
3. those files (:data:`BUNDLED_FILES`) and ``provenance.json`` are copied into ``src/weightspace/pretrained/NAME/`` (replacing an older bundle atomically).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from weightspace.pretrained import _root

#: Files a bundle holds (everything else ``train`` writes stays behind).
BUNDLED_FILES = (
    "encoder.safetensors",
    "config.json",
    "calibration.json",  # split-conformal residuals of the encoder's head
    "predict_reference.safetensors",  # the zoo's embeddings and shapes: OOD checks, neighbours
    "gbt_head.json",  # the tuned tree head's settings (`predict --head gbt`)
    "splits.json",  # which runs the encoder was trained, validated and tested on
)


def build(
    zoo: Path,
    name: str,
    *,
    epochs: int,
    seed: int,
    out_root: Path | None = None,
    encoder_dir: Path | None = None,
) -> Path:
    """Train on ``zoo`` (or take ``encoder_dir``, an encoder that ``weightspace train`` already
    fitted on ``zoo``, e.g. the demo's) and write the bundle ``name``; returns its directory."""
    from weightspace import __version__
    from weightspace.nn import Encoder
    from weightspace.predict import Predictor
    from weightspace.train import zoo_fingerprint
    from weightspace.zoo import Zoo

    root = out_root or _root()
    with tempfile.TemporaryDirectory(prefix=f".{name}-", dir=root) as tmp:
        trained = Path(tmp) / "trained"
        command = [
            *("train", "--zoo", str(zoo), "--out", str(trained)),
            *("--epochs", str(epochs), "--seed", str(seed)),
        ]
        if encoder_dir is None:
            print(f"$ weightspace {' '.join(command)}", flush=True)
            subprocess.run([sys.executable, "-m", "weightspace", *command], check=True)
        else:
            _check_trained_on(Path(encoder_dir), zoo, epochs, seed)
            shutil.copytree(encoder_dir, trained)
        encoder = Encoder.load(trained)
        for head in ("encoder", "gbt"):  # fills every cache `predict` reads (see BUNDLED_FILES)
            Predictor(trained, head=head)
        staged = Path(tmp) / name
        staged.mkdir()
        for file in BUNDLED_FILES:
            if (trained / file).is_file():
                shutil.copy2(trained / file, staged / file)
        record = {
            "command": f"python -m weightspace.pretrained.build --zoo ZOO --name {name} "
            f"--epochs {epochs} --seed {seed}",
            "zoo_fingerprint": zoo_fingerprint(Zoo.open(zoo)),
            "zoo_preset": json.loads((zoo / "manifest.json").read_text())
            .get("config", {})
            .get("preset"),
            "weightspace_version": __version__,
            "encoder_fingerprint": encoder.fingerprint,
        }
        (staged / "provenance.json").write_text(json.dumps(record, indent=2) + "\n")
        target = root / name
        if target.exists():
            old = Path(tmp) / "old"
            target.rename(old)
        staged.rename(target)
    return target


def _check_trained_on(encoder_dir: Path, zoo: Path, epochs: int, seed: int) -> None:
    """Refuse an encoder that was not trained by the bundle's recipe on ``zoo``."""
    from weightspace.pretrained import PretrainedError
    from weightspace.train import zoo_fingerprint
    from weightspace.zoo import Zoo

    try:
        config = json.loads((encoder_dir / "train_config.json").read_text())
        fitted = json.loads((encoder_dir / "zoo_fingerprint.json").read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise PretrainedError(
            f"{encoder_dir}: not written by `weightspace train` ({exc})"
        ) from None
    if fitted.get("fingerprint") != zoo_fingerprint(Zoo.open(zoo)):
        raise PretrainedError(f"{encoder_dir} was not trained on {zoo}")
    if config.get("epochs") != epochs or config.get("seed") != seed:
        raise PretrainedError(
            f"{encoder_dir} was trained for {config.get('epochs')} epochs with seed "
            f"{config.get('seed')}, not the bundle's {epochs} and {seed}"
        )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--zoo", type=Path, required=True, help="zoo directory to train on")
    parser.add_argument("--name", default="small", help="bundle name (pretrained:NAME)")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--encoder",
        type=Path,
        default=None,
        help="bundle this encoder (trained on --zoo with --epochs and --seed) instead of training",
    )
    args = parser.parse_args(argv)
    print(build(args.zoo, args.name, epochs=args.epochs, seed=args.seed, encoder_dir=args.encoder))


if __name__ == "__main__":
    main()
