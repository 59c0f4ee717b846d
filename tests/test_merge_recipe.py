"""`merge --recipe`: mergekit-style recipes (YAML, JSON, TOML), validated before any work."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from cli_runner import run_cli
from models import make_state_dict
from weightspace.ingest import load_checkpoint, save_checkpoint
from weightspace.spec import mlp_spec
from weightspace.synthesis import merge_models
from weightspace.synthesis.recipe import MergeRecipe, RecipeError, load_recipe, parse_recipe

SPEC = mlp_spec([13, 6, 3], "relu")

RECIPE_YAML = """\
merge_method: linear
base_model: models/b.safetensors
models:
  - model: models/a.safetensors
    parameters:
      weight: 1
  - model: models/b.safetensors
    parameters:
      weight: 2
  - model: models/c.safetensors
    parameters:
      weight: 1
parameters:
  normalize: true
seed: 3
"""


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    for i, name in enumerate("abc"):
        state = make_state_dict(SPEC, seed=i + 1)
        save_checkpoint(tmp_path / "models" / f"{name}.safetensors", SPEC, state, {"task": "wine"})
    return tmp_path


def test_yaml_json_and_toml_recipes_read_the_same(folder: Path) -> None:
    (folder / "r.yaml").write_text(RECIPE_YAML)
    models = [
        {"model": f"models/{n}.safetensors", "parameters": {"weight": w}}
        for n, w in zip("abc", (1, 2, 1), strict=True)
    ]
    data = {
        "merge_method": "linear",
        "base_model": "models/b.safetensors",
        "models": models,
        "parameters": {"normalize": True},
        "seed": 3,
    }
    (folder / "r.json").write_text(json.dumps(data))
    toml_models = "\n".join(
        f'[[models]]\nmodel = "{m["model"]}"\nparameters = {{ weight = {m["parameters"]["weight"]} }}'
        for m in models
    )
    (folder / "r.toml").write_text(
        'merge_method = "linear"\nbase_model = "models/b.safetensors"\nseed = 3\n'
        f"[parameters]\nnormalize = true\n{toml_models}\n"
    )
    recipes = [load_recipe(folder / f"r.{suffix}") for suffix in ("yaml", "json", "toml")]
    for recipe in recipes:
        # the base model goes first (rebasin aligns onto it), paths are the recipe's folder's
        assert recipe.models == tuple(folder / "models" / f"{n}.safetensors" for n in "bac")
        assert recipe.weights == (2.0, 1.0, 1.0)
        assert (recipe.method, recipe.normalize, recipe.seed) == ("average", True, 3)


def test_cli_recipe_merges_as_the_api_does(folder: Path, capsys: pytest.CaptureFixture) -> None:
    (folder / "r.yaml").write_text(RECIPE_YAML)
    out = folder / "merged.safetensors"
    code, stdout, err = run_cli(
        capsys, "merge", "--recipe", str(folder / "r.yaml"), "--out", str(out)
    )
    assert code == 0, err
    assert "average merge of 3 models" in stdout and "note:" not in err
    loaded = [load_checkpoint(folder / "models" / f"{n}.safetensors") for n in "bac"]
    expected = merge_models("average", loaded, [2, 1, 1]).state_dict
    _, merged = load_checkpoint(out)
    for key, tensor in expected.items():
        torch.testing.assert_close(merged[key], tensor)


def test_recipe_without_weights_or_method_uses_the_defaults(
    folder: Path, capsys: pytest.CaptureFixture
) -> None:
    (folder / "r.yaml").write_text("models: [models/a.safetensors, models/b.safetensors]\n")
    out = folder / "merged.safetensors"
    code, stdout, err = run_cli(
        capsys, "merge", "--recipe", str(folder / "r.yaml"), "--out", str(out)
    )
    assert code == 0, err
    assert "rebasin merge at alpha=0.5" in stdout and err.count("weight matching") == 1


@pytest.mark.parametrize(
    ("recipe", "message"),
    [
        ("[a, b]", "a recipe is a mapping"),
        ("models: [models/a.safetensors]", "at least two models"),
        ("models: [models/a.safetensors, 3]", "models[1] must be a path"),
        ("models: [{parameters: {weight: 1}}, models/a.safetensors]", "models[0]: no 'model'"),
        (
            "models: [{model: a, parameters: {weight: -1}}, {model: b, parameters: {weight: 1}}]",
            "models[0].parameters.weight must lie in [0, inf]",
        ),
        (
            "models: [{model: a, parameters: {weight: .nan}}, {model: b, parameters: {weight: 1}}]",
            "models[0].parameters.weight must lie in",
        ),
        (
            "models: [{model: a, parameters: {weight: x}}, {model: b, parameters: {weight: 1}}]",
            "models[0].parameters.weight must be a number",
        ),
        ("models: [{model: a, parameters: {weight: 1}}, b]", "models[1] have no weight"),
        ("models: [{model: a, parameters: {density: 0.5}}, b]", "only 'weight' is supported"),
        ("models: [{model: a, extra: 1}, b]", "unknown keys ['extra']"),
        ("models: [a, b]\nfoo: 1", "unknown keys ['foo']; valid: models"),
        ("models: [a, b]\nslices: []", "mergekit options weightspace does not use"),
        ("models: [a, b]\nmerge_method: ties", "unknown merge_method 'ties'; valid: average"),
        ("models: [a, b]\nmerge_method: average\nmethod: rebasin", "not both"),
        ("models: [a, b, c]\nalpha: 0.3", "'alpha' interpolates exactly two models"),
        ("models: [a, b]\nalpha: 2", "alpha must lie in [0, 1]"),
        ("models: [a, b]\nbase_model: z", "base_model 'z' is not one of the models"),
        ("models: [a, b]\nparameters: {normalize: maybe}", "normalize must be true or false"),
        ("models: [a, b]\nparameters: {int8_mask: true}", "only 'normalize' is supported"),
        ("models: [a, b]\nseed: 1.5", "seed must be an integer"),
        (
            "models: [{model: a, parameters: {weight: 0}}, {model: b, parameters: {weight: 0}}]",
            "all zero",
        ),
        ("models: [a, b\n", "not valid YAML"),
        ("models: !!python/object/apply:os.system [echo]", "not valid YAML"),
    ],
)
def test_bad_recipes_are_refused_naming_the_entry(
    tmp_path: Path, capsys: pytest.CaptureFixture, recipe: str, message: str
) -> None:
    path = tmp_path / "recipe.yaml"
    path.write_text(recipe)
    with pytest.raises(RecipeError) as info:
        load_recipe(path)
    assert str(path) in str(info.value) and message in str(info.value)
    out = tmp_path / "m.safetensors"
    code, _, err = run_cli(capsys, "merge", "--recipe", str(path), "--out", str(out))
    assert code == 1 and "Traceback" not in err and message in " ".join(err.split())
    assert not out.exists()


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        ("r.txt", "models: [a, b]", "a recipe must be .yaml"),
        ("r.json", "{models: ", "not valid JSON"),
        ("r.toml", "models = [", "not valid TOML"),
        ("missing.yaml", None, "cannot read the recipe"),
    ],
)
def test_unreadable_recipe_files(tmp_path: Path, name: str, text: str | None, message: str) -> None:
    if text is not None:
        (tmp_path / name).write_text(text)
    with pytest.raises(RecipeError, match=message):
        load_recipe(tmp_path / name)


def test_recipe_and_command_line_never_both_say_one_thing(
    folder: Path, capsys: pytest.CaptureFixture
) -> None:
    (folder / "r.yaml").write_text(RECIPE_YAML)
    a = str(folder / "models" / "a.safetensors")
    out = str(folder / "m.safetensors")
    recipe = ["--recipe", str(folder / "r.yaml")]
    for extra, message in (
        ([a, a], "either as arguments or in --recipe"),
        (["--method", "rebasin"], "--method and the recipe"),
        (["--weights", "1,1,1"], "--weights and the recipe"),
        (["--seed", "1"], "--seed and the recipe"),
    ):
        code, _, err = run_cli(capsys, "merge", *recipe, *extra, "--out", out)
        assert code == 1 and message in " ".join(err.split()), (extra, err)
    assert not Path(out).exists()
    # what the recipe leaves open, the command line may say
    (folder / "open.yaml").write_text("models: [models/a.safetensors, models/c.safetensors]\n")
    code, stdout, err = run_cli(
        capsys, "merge", "--recipe", str(folder / "open.yaml"), "--method", "average",
        "--alpha", "0.25", "--out", out,
    )  # fmt: skip
    assert code == 0 and "average merge at alpha=0.25" in stdout, err


def test_parse_recipe_takes_plain_data() -> None:
    recipe = parse_recipe({"models": ["/x/a.pt", "/x/b.pt"], "alpha": 0.2}, source="/r/x.yaml")
    assert recipe == MergeRecipe(
        source=Path("/r/x.yaml"), models=(Path("/x/a.pt"), Path("/x/b.pt")), alpha=0.2
    )
    flipped = parse_recipe(
        {"models": ["a.pt", "b.pt"], "alpha": 0.2, "base_model": "./b.pt"}, source="/r/x.yaml"
    )
    assert flipped.models == (Path("/r/b.pt"), Path("/r/a.pt")) and flipped.alpha == 0.8
