"""`taxonstream eval retrieval|classify`: score embeddings against their labels; CSV tables and PNG plots.

  taxonstream eval retrieval --labels labels.csv --embeddings vectors.npy --out eval/
  taxonstream eval classify  --labels labels.parquet --method knn --out eval/

Row i of the labels file describes row i of the embeddings (or the labels file holds the vectors in an
`embedding` column). Ranks are columns (category, kingdom … species) or derived from Darwin Core columns.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from taxonstream.cli import flags
from taxonstream.fetching.inputs import InputError


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--labels", required=True, metavar="FILE", help="labels, one row per image (CSV/TSV/Parquet/JSONL)")
    p.add_argument(
        "--embeddings",
        metavar="NPY",
        help="the vectors (.npy, row i ↔ labels row i); default: the labels file's embedding column",
    )
    p.add_argument(
        "--ranks",
        help="comma-separated ranks to report (default: every rank with labels among "
        "category, kingdom, phylum, class, order, family, genus, species)",
    )
    p.add_argument("--out", default="eval", metavar="DIR", help="folder for the CSV and PNG files (default ./eval)")
    p.add_argument("--no-normalise", action="store_true", help="compare raw inner products, not cosine similarity")


def _needs_eval_extra() -> None:
    try:
        import matplotlib  # noqa: F401
        import sklearn  # noqa: F401
    except ImportError as error:
        raise InputError(
            f"{error.name} is missing: install the eval extra (pip install 'taxonstream[eval]')"
        ) from error


def _load(args: argparse.Namespace):
    from taxonstream.evaluation.data import DataError, load

    _needs_eval_extra()

    try:
        return load(
            Path(args.labels),
            Path(args.embeddings) if args.embeddings else None,
            [r.strip() for r in args.ranks.split(",") if r.strip()] if args.ranks else None,
            normalise=not args.no_normalise,
        )
    except DataError as error:
        raise InputError(str(error)) from error


def cmd_retrieval(args: argparse.Namespace) -> int:
    from taxonstream.evaluation import report, retrieval

    data = _load(args)
    try:
        ks = sorted({int(k) for k in args.k.split(",")})
    except ValueError as error:
        raise InputError(f"--k {args.k!r}: give whole numbers like 1,5,10") from error
    result = retrieval.evaluate(data, ks, engine=args.engine)
    print(f"{len(data)} images, leave-one-out, {args.engine} search")
    print(f"{'rank':<10} {'queries':>8} {'classes':>8}  " + "  ".join(f"{'R@' + str(k):>6}" for k in ks))
    for rank in data.labels:
        rows = [r for r in result.summary if r["rank"] == rank]
        recalls = "  ".join(f"{r['recall']:6.3f}" for r in rows)
        print(f"{rank:<10} {rows[0]['queries']:>8} {rows[0]['classes']:>8}  {recalls}")
    for path in report.retrieval(result, Path(args.out)):
        print("wrote", path, file=sys.stderr)
    return 0


def cmd_classify(args: argparse.Namespace) -> int:
    from taxonstream.evaluation import classify, report

    data = _load(args)
    try:
        results, split = classify.evaluate(data, method=args.method, seed=args.seed)
    except ValueError as error:
        raise InputError(str(error)) from error
    parts = {s: int((split == s).sum()) for s in classify.SPLITS}
    print(f"{len(data)} images; split by {classify.split_rank(data)}: {parts}; {args.method}")
    print(f"{'rank':<10} {'classes':>8} {'test':>7} {'top-1':>7} {'top-5':>7} {'macro-F1':>9}  param")
    for r in results:
        print(f"{r.rank:<10} {r.classes:>8} {r.test:>7} {r.top1:7.3f} {r.top5:7.3f} {r.macro_f1:9.3f}  {r.param:g}")
    for path in report.classification(results, split, data.ids, Path(args.out)):
        print("wrote", path, file=sys.stderr)
    return 0


def add_commands(commands: argparse._SubParsersAction) -> None:
    """Add `eval` and its subcommands to the top-level parser."""
    top = flags.add_described(
        commands, "eval", help="score embeddings: retrieval recall@k, classification", description=__doc__
    )
    sub = top.add_subparsers(dest="eval_command", required=True, metavar="EVALUATION")

    p = sub.add_parser("retrieval", help="leave-one-out recall@k overall and per class at each rank")
    _common(p)
    p.add_argument("--k", default="1,5,10", help="cut-offs (default 1,5,10)")
    p.add_argument(
        "--engine",
        choices=["exact", "index"],
        default="exact",
        help="exact brute force (default) or the product's FAISS index as it would be at this size",
    )
    p.set_defaults(run=cmd_retrieval)

    p = sub.add_parser("classify", help="top-1, top-5, macro-F1 on a stratified 70/10/20 split")
    _common(p)
    p.add_argument(
        "--method",
        choices=["knn", "linear"],
        default="knn",
        help="k-nearest neighbours (default) or a logistic-regression linear probe",
    )
    p.add_argument("--seed", type=int, default=0, help="the split's seed (default 0)")
    p.set_defaults(run=cmd_classify)
