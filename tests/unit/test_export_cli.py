"""`taxonstream export` refuses unclear requests before it talks to any server."""

from __future__ import annotations

import pytest

from taxonstream.cli.main import main as taxonstream


@pytest.mark.parametrize(
    "argv,message",
    [
        (["export", "--out", "o"], "say what to export"),
        (["export", "job1", "--text", "moth", "--out", "o"], "not both"),
        (["export", "job1", "--split", "70/20", "--out", "o"], "--split"),
        (["export", "job1", "--chunk-size", "0", "--out", "o"], "--chunk-size"),
        (["export", "--filter", "colour=red", "--out", "o"], "cannot filter on"),
        (["export", "--image", "/nonexistent.jpg", "--out", "o"], "no such file"),
        (["export", "job1", "--model", "a/b/c", "--out", "o"], "--model"),
    ],
)
def test_unclear_requests_exit_2_with_a_reason(argv, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert taxonstream(argv) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_model_names_the_index_version_of_every_request():
    from taxonstream.cli.export_cmd import _query
    from taxonstream.cli.main import parser

    args = parser().parse_args(["export", "job1", "--model", "bioclip2_image", "--out", "o"])
    assert _query(args).version() == {"model": "bioclip2_image", "model_version": "1"}
    args = parser().parse_args(["export", "job1", "--out", "o"])
    assert _query(args).version() == {}
