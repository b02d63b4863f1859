"""argparse pieces the command modules share: a subcommand whose description is laid out by hand, the
index-query `--filter` flag (parsed by clients.index_filters), and the CLIP prompt-template choice."""

from __future__ import annotations

import argparse

# What `--filter` selects, for commands that query the index (search, export): the syntax clients.index_filters reads.
FILTER_HELP = (
    "only images whose FIELD (kingdom … species, provider, licence) is one of the values, or whose "
    "numeric metadata column compares so (F_small>=0.5; > >= < <= =)"
)


def add_described(
    commands: argparse._SubParsersAction,
    name: str,
    help: str,  # noqa: A002 - argparse's word
    description: str | None,
    epilog: str | None = None,
) -> argparse.ArgumentParser:
    """A subcommand whose --help prints `description` (and `epilog`) as written: line breaks and columns kept."""
    return commands.add_parser(
        name, help=help, description=description, epilog=epilog, formatter_class=argparse.RawDescriptionHelpFormatter
    )


def add_filter_flag(parser: argparse.ArgumentParser, help: str, metavar: str = "FIELD=VALUE[,VALUE…]") -> None:  # noqa: A002
    """`--filter`, repeatable, collected in a list (clients.index_filters turns it into indexer Filters)."""
    parser.add_argument("--filter", action="append", default=[], metavar=metavar, help=help)


def add_templates_flag(parser: argparse.ArgumentParser, help: str | None = None) -> None:  # noqa: A002
    """`--templates`: the prompt templates labels are embedded with (classify/templates.py)."""
    parser.add_argument("--templates", choices=["openai", "single"], default="openai", help=help)
