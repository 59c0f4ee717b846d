"""``weightspace embed`` flags the models its encoder's probe branch could not run: a
``graph_only`` column in ``.parquet`` output and a warning naming them, never a silent row."""

from __future__ import annotations

import warnings
from pathlib import Path

import pandas as pd
import pytest
import torch

from cli_runner import run_cli
from weightspace.ingest import save_checkpoint
from weightspace.nn.encoder import Encoder, EncoderConfig
from weightspace.nn.probes import domain_key
from weightspace.spec import mlp_spec


@pytest.fixture
def probe_encoder(tmp_path: Path) -> Path:
    spec = mlp_spec([6, 8, 8, 3], "relu")
    config = EncoderConfig(
        hidden=16, edge_hidden=8, num_layers=1, embedding_dim=8, branches=("graph", "probe"),
        canonicalize=False, probes=4, probe_domains=(domain_key(spec),), probe_classes=3,
        probe_latent=4, probe_hidden=8, probe_dim=6,
    )  # fmt: skip
    torch.manual_seed(0)
    directory = tmp_path / "encoder"
    Encoder(config).eval().save(directory)
    return directory


def test_embed_flags_models_embedded_by_the_graph_branch_only(
    tmp_path: Path, probe_encoder: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = mlp_spec([6, 8, 8, 3], "relu")
    generator = torch.Generator().manual_seed(0)
    files = []
    for i, scale in enumerate([1.0, 1e20, 1.0]):  # 1e20 per layer overflows float32 on probes
        state = {n: torch.randn(s, generator=generator) * scale
                 for n, s in spec.param_shapes().items()}  # fmt: skip
        path = tmp_path / "ckpts" / f"m{i}.safetensors"
        path.parent.mkdir(exist_ok=True)
        save_checkpoint(path, spec, state)
        files.append(path)
    out = tmp_path / "z.parquet"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        code, _, err = run_cli(capsys, "embed", *files, "--out", out, "--encoder", probe_encoder)
    assert code == 0, err
    table = pd.read_parquet(out)
    assert table["graph_only"].tolist() == [False, True, False]
    err = " ".join(err.split())
    assert "graph branch only" in err and "m1.safetensors" in err
    assert "m0.safetensors" not in err.split("graph branch only")[1]
