"""The predict / probe / models commands parse as documented and refuse contradictory options early."""

from __future__ import annotations

import subprocess
import sys

import pytest

from taxonstream.cli.main import parser
from taxonstream.fetching.inputs import InputError


def test_predict_options_parse() -> None:
    args = parser().parse_args(["predict", "a.jpg", "b.jpg", "--rank", "genus", "-k", "3"])
    assert (args.images, args.rank, args.k, args.labels) == (["a.jpg", "b.jpg"], "genus", 3, None)
    args = parser().parse_args(["predict", "a.jpg", "--labels", "moth", "bee", "--templates", "single"])
    assert (args.labels, args.templates, args.rank) == (["moth", "bee"], "single", None)
    with pytest.raises(SystemExit):
        parser().parse_args(["predict", "a.jpg", "--rank", "tribe"])


def test_predict_refuses_rank_and_labels_together(tmp_path) -> None:
    image = tmp_path / "a.jpg"
    image.write_bytes(b"x")
    args = parser().parse_args(["predict", str(image), "--rank", "genus", "--labels", "moth"])
    with pytest.raises(InputError, match="not both"):
        args.run(args)


def test_models_and_probe_commands_parse() -> None:
    args = parser().parse_args(
        ["models", "install", "bioclip", "--checkpoint", "c.bin", "--target", "cluster", "--upload"]
    )
    assert (args.kind, args.checkpoint, args.target, args.upload, args.bucket) == (
        "bioclip",
        "c.bin",
        "cluster",
        True,
        "models",
    )
    args = parser().parse_args(["probe", "apply", "probe.json", "x.jpg"])
    assert (args.action, args.file, args.images) == ("apply", "probe.json", ["x.jpg"])


def test_the_cli_does_not_import_torch_to_start() -> None:
    code = (
        "import sys; from taxonstream.cli.main import parser; parser(); "
        "sys.exit(1 if {'torch', 'transformers'} & set(sys.modules) else 0)"
    )
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0
