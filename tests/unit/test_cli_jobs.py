"""`taxonstream jobs` as argparse subcommands: list, show (also `jobs JOB`), retry; each form reaches its handler."""

from __future__ import annotations

import pytest

from taxonstream.cli import pipeline_cmds
from taxonstream.cli.main import parser


def parse(argv: list[str]):
    return parser().parse_args(pipeline_cmds.jobs_shorthand(argv))


def test_bare_jobs_and_list_both_list():
    assert parse(["jobs"]).run is pipeline_cmds.cmd_jobs_list
    assert parse(["jobs", "list"]).run is pipeline_cmds.cmd_jobs_list


def test_a_job_id_where_an_action_stands_means_show():
    args = parse(["jobs", "job-7", "--cancel", "--report", "out.csv"])
    assert args.run is pipeline_cmds.cmd_jobs_show
    assert (args.job_id, args.cancel, args.report) == ("job-7", True, "out.csv")
    assert parse(["jobs", "show", "job-7"]).cancel is False


def test_retry_takes_reasons_and_requires_failed(capsys):
    args = parse(["jobs", "retry", "job-7", "--failed", "--reason", "http_429", "--reason", "timeout"])
    assert args.run is pipeline_cmds.cmd_jobs_retry
    assert (args.job_id, args.reason) == ("job-7", ["http_429", "timeout"])
    with pytest.raises(SystemExit) as exit_info:
        parse(["jobs", "retry", "job-7"])
    assert exit_info.value.code == 2
    assert "--failed" in capsys.readouterr().err


def test_retry_needs_a_job():
    with pytest.raises(SystemExit):
        parse(["jobs", "retry", "--failed"])
