"""Start-up stays light: ``import weightspace`` and ``weightspace --help`` load no heavy library.

Timing is measured by ``benchmarks/bench_startup.py``, not asserted here (the test machine may be
loaded); what is asserted is the cause of slow starts: which modules get imported.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

HEAVY = ("torch", "torch_geometric", "torch._dynamo", "fastapi", "matplotlib", "sklearn")
HEAVY += ("pandas", "faiss", "scipy")


def _imported_after(code: str) -> set[str]:
    """The heavy modules present in ``sys.modules`` after running ``code`` in a fresh
    interpreter."""
    probe = f"{code}\nimport json, sys\nprint(json.dumps(sorted(sys.modules)))"
    out = subprocess.run(
        [sys.executable, "-c", probe], check=True, capture_output=True, text=True
    ).stdout
    loaded = set(json.loads(out.strip().splitlines()[-1]))
    return {name for name in HEAVY if name in loaded}


def test_import_weightspace_loads_no_heavy_library() -> None:
    assert _imported_after("import weightspace") == set()


def test_help_loads_no_heavy_library() -> None:
    code = (
        "import contextlib, io\n"
        "from weightspace.cli import main\n"
        "with contextlib.suppress(SystemExit), contextlib.redirect_stdout(io.StringIO()):\n"
        "    main(['--help'])"
    )
    assert _imported_after(code) == set()


def test_heavy_library_check_can_fail() -> None:
    """The probe itself sees a heavy import when there is one (negative control)."""
    assert "torch" in _imported_after("import weightspace\nweightspace.NeuralGraph")


def test_public_names_are_listed_and_resolve() -> None:
    import weightspace

    for name in ("Encoder", "ModelIndex", "from_module", "load_checkpoint", "save_checkpoint"):
        assert name in weightspace.__all__
        assert name in dir(weightspace)
    for name in weightspace.__all__:
        assert getattr(weightspace, name) is not None, name
    with pytest.raises(AttributeError):
        weightspace.no_such_name  # noqa: B018


@pytest.mark.parametrize("args", [["--help"], ["--version"], ["inspect", "--help"]])
def test_cli_entry_points_exit_zero(args: list[str]) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "weightspace", *args], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip()


def test_version_is_the_installed_distribution_version() -> None:
    from importlib.metadata import version

    result = subprocess.run(
        [sys.executable, "-m", "weightspace", "--version"], capture_output=True, text=True
    )
    assert result.stdout.split() == ["weightspace", version("weightspace")]
    out = subprocess.run(
        [
            sys.executable,
            "-c",
            "import weightspace, json; print(json.dumps(weightspace.__version__))",
        ],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    assert json.loads(out) == version("weightspace")


def test_command_owner_table_matches_what_the_modules_register() -> None:
    """``weightspace NAME`` builds only NAME's module, so the table must name every command's
    module correctly; a command missing from it still works (all modules are registered), only
    slower."""
    code = (
        "import importlib, json\n"
        "from typer.main import get_command_name\n"
        "from weightspace.cli import _COMMAND_MODULES\n"
        "from weightspace.cli.app import app\n"
        "owners = {}\n"
        "for module in _COMMAND_MODULES:\n"
        "    importlib.import_module(f'weightspace.cli.{module}')\n"
        "    names = [c.name or get_command_name(c.callback.__name__)"
        " for c in app.registered_commands] + [g.name for g in app.registered_groups]\n"
        "    for name in names:\n"
        "        owners.setdefault(name, module)\n"
        "print(json.dumps(owners))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], check=True, capture_output=True, text=True
    ).stdout
    from weightspace.cli import _COMMAND_OWNERS

    registered = json.loads(out.strip().splitlines()[-1])
    missing = sorted(set(registered) - set(_COMMAND_OWNERS))
    assert not missing, f"add {missing} to weightspace.cli._COMMAND_OWNERS"
    for owner in sorted(set(_COMMAND_OWNERS.values())):
        # the owner module imported alone registers every command the table gives it
        owner_code = (
            "import importlib, json\nfrom typer.main import get_command_name\n"
            "from weightspace.cli.app import app\n"
            f"importlib.import_module('weightspace.cli.{owner}')\n"
            "print(json.dumps([c.name or get_command_name(c.callback.__name__) for c in "
            "app.registered_commands] + [g.name for g in app.registered_groups]))"
        )
        names = subprocess.run(
            [sys.executable, "-c", owner_code], check=True, capture_output=True, text=True
        ).stdout
        expected = {name for name, module in _COMMAND_OWNERS.items() if module == owner}
        assert expected <= set(json.loads(names.strip().splitlines()[-1])), owner


def test_a_command_builds_only_its_own_module() -> None:
    code = (
        "import contextlib, io\n"
        "from weightspace.cli import main\n"
        "with contextlib.suppress(SystemExit), contextlib.redirect_stdout(io.StringIO()):\n"
        "    main(['--max-params', '1000', 'inspect', '--help'])\n"
        "import json, sys\n"
        "print(json.dumps(sorted(m for m in sys.modules if m.startswith('weightspace.cli.'))))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], check=True, capture_output=True, text=True
    ).stdout
    loaded = json.loads(out.strip().splitlines()[-1])
    assert "weightspace.cli.inspect" in loaded
    assert "weightspace.cli.index" not in loaded and "weightspace.cli.synth" not in loaded
