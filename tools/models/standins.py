"""python -m tools.models.standins {repository,discrimination,bench}: the stand-in models, for their developers

repository      write (or, with --if-changed, ensure) Triton's model repository with the stand-in models
discrimination  the nearest-neighbour check of the stand-in encoder on synthetic images
bench           onnxruntime images/s of the stand-in encoder on this CPU
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

from taxonstream.models.triton_config import Target


def _repository(args: argparse.Namespace) -> int:
    from taxonstream.models.repository import describe_repository, ensure_repository, write_repository

    write = ensure_repository if args.if_changed else write_repository
    out_dir = write(args.out, args.target)
    print("\n".join(describe_repository(out_dir)))
    return 0


def _discrimination(args: argparse.Namespace) -> int:
    from taxonstream.models.clip_standin import build_clip_standin
    from taxonstream.models.discrimination import nearest_neighbour_check, torch_embed_fn

    report = nearest_neighbour_check(torch_embed_fn(build_clip_standin()), count=args.count, seed=args.seed)
    print(json.dumps(asdict(report), indent=2))
    return 0 if report.top1_accuracy == 1.0 else 1


def _bench(args: argparse.Namespace) -> int:
    import torch

    from taxonstream.models.clip_standin import build_clip_standin
    from taxonstream.models.contract import CLIP_IMAGE
    from taxonstream.models.onnx_export import export_onnx
    from taxonstream.models.ort_benchmark import images_per_second

    with tempfile.TemporaryDirectory() as scratch:
        onnx_path = export_onnx(
            build_clip_standin(),
            [torch.zeros(1, *CLIP_IMAGE.inputs[0].dims)],
            Path(scratch) / "model.onnx",
            [CLIP_IMAGE.inputs[0].name],
            [CLIP_IMAGE.outputs[0].name],
        )
        for threads in args.threads:
            for batch in args.batch:
                rate = images_per_second(onnx_path, batch, threads, args.seconds)
                print(f"{CLIP_IMAGE.model_id} onnxruntime CPU threads={threads} batch={batch:3d}: {rate:8.1f} images/s")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tools.models.standins",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", required=True)

    repository = commands.add_parser("repository", help="write Triton's model repository")
    repository.add_argument("--out", required=True, type=Path, help="repository directory")
    repository.add_argument(
        "--target",
        choices=[t.value for t in Target],
        default=Target.LOCAL.value,
        help="local: Python backend + onnxruntime on CPU; cluster: onnxruntime_onnx on GPU",
    )
    repository.add_argument(
        "--if-changed",
        action="store_true",
        help="do nothing when the repository is already current (as ensure_repository)",
    )
    repository.set_defaults(run=_repository)

    discrimination = commands.add_parser("discrimination", help="nearest-neighbour check of the encoder")
    discrimination.add_argument("--count", type=int, default=300)
    discrimination.add_argument("--seed", type=int, default=0)
    discrimination.set_defaults(run=_discrimination)

    bench = commands.add_parser("bench", help="onnxruntime images/s of the encoder")
    bench.add_argument("--batch", type=int, nargs="+", default=[1, 16])
    bench.add_argument("--threads", type=int, nargs="+", default=[1])
    bench.add_argument("--seconds", type=float, default=3.0)
    bench.set_defaults(run=_bench)

    args = parser.parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
