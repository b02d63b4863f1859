"""taxonstream — biodiversity image URL lists to a deduplicated, embedded, searchable collection.

Typical session on one machine:

  taxonstream stack up                      start Kafka, S3, Triton and the five services locally
  taxonstream ingest media.csv              fetch, verify, crop, embed and index every row
  taxonstream jobs                          what was submitted, and how each job ended
  taxonstream search --image moth.jpg -k 5  the nearest images in the collection
  taxonstream stack down                    stop what `stack up` started (data is kept)
"""

from __future__ import annotations

import argparse
import subprocess
import sys

from taxonstream.cli import integrity_cmds
from taxonstream.core.local_stack import REPO
from taxonstream.fetching.inputs import InputError


def cmd_stack(args: argparse.Namespace) -> int:
    """The local stack is a tool of the checkout (tools/stack/local_stack.py), not of the package."""
    script = REPO / "tools" / "stack" / "local_stack.py"
    if not script.exists():
        raise InputError(f"{script} not found: `taxonstream stack` runs from a checkout of the repository")
    return subprocess.call([sys.executable, str(script), *args.stack_args])


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(
        prog="taxonstream", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    top.add_argument(
        "--token",
        metavar="TOKEN",
        help="bearer token for calls that change state (default: TAXONSTREAM_TOKEN); TLS: TAXONSTREAM_TLS_CA",
    )
    commands = top.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = commands.add_parser(
        "stack", help="start, stop or inspect the local stack (`taxonstream stack --help`)", add_help=False
    )
    p.add_argument("stack_args", nargs=argparse.REMAINDER, metavar="up|down|status [--allow-network CIDR] …")
    p.set_defaults(run=cmd_stack)

    # One way to keep start-up short: command modules are imported here, when the parser is built, and
    # each imports what its handlers need; `checksum` (timed against sum-buddy) skips all of them in main().
    from taxonstream.cli import eval_cmds, export_cmd, fetch_cmd, models_cmds, pipeline_cmds, versions_cmds
    from taxonstream.cli.landcover_cmd import add_commands as add_landcover_commands

    pipeline_cmds.add_commands(commands)
    integrity_cmds.add_commands(commands)
    fetch_cmd.add_parser(commands)
    eval_cmds.add_commands(commands)
    models_cmds.add_commands(commands)
    export_cmd.add_commands(commands)
    versions_cmds.add_commands(commands)
    add_landcover_commands(commands)
    return top


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["checksum"]:  # sum-buddy's command alone: none of the other commands' imports (~0.25 s)
        return integrity_cmds.checksum_main(argv)
    import grpc

    from taxonstream.cli.pipeline_cmds import jobs_shorthand

    # `--token T jobs JOB` is still the shorthand: the global flag comes before the command.
    lead = 2 if argv[:1] == ["--token"] else 1 if argv[:1] and argv[0].startswith("--token=") else 0
    args = parser().parse_args([*argv[:lead], *jobs_shorthand(argv[lead:])])
    if args.token is not None:
        from taxonstream.cli.clients import use_token

        use_token(args.token)
    try:
        return args.run(args)
    except (InputError, TimeoutError) as error:
        print(f"taxonstream: {error}", file=sys.stderr)
        return 2
    except grpc.RpcError as error:
        hint = " (is the stack up? `taxonstream stack status`)" if error.code() == grpc.StatusCode.UNAVAILABLE else ""
        print(f"taxonstream: {error.code().name}: {error.details()}{hint}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
