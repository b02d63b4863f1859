"""Generate the Python code for protos/ into services/taxonstream/v1 (importable as taxonstream.v1).

`python tools/gen_protos.py` rewrites services/taxonstream/v1; `--check` exits 1 when the committed code differs
from what the .proto files generate (the test suite runs that).
"""

from __future__ import annotations

import argparse
import filecmp
import shutil
import sys
import tempfile
from pathlib import Path

from grpc_tools import protoc

REPO = Path(__file__).resolve().parent.parent
PROTO_ROOT = REPO / "protos"
TARGET = REPO / "services" / "taxonstream" / "v1"


def generate(out_root: Path) -> Path:
    protos = sorted(str(p.relative_to(PROTO_ROOT)) for p in (PROTO_ROOT / "taxonstream" / "v1").glob("*.proto"))
    args = [
        "protoc",
        f"-I{PROTO_ROOT}",
        f"-I{Path(protoc.__file__).parent / '_proto'}",
        f"--python_out={out_root}",
        f"--pyi_out={out_root}",
        f"--grpc_python_out={out_root}",
        *protos,
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    generated = out_root / "taxonstream" / "v1"
    (generated / "__init__.py").write_text(
        '"""Generated from protos/taxonstream/v1 by tools/gen_protos.py; do not edit."""\n'
    )
    return generated


def differences(generated: Path, target: Path) -> list[str]:
    names = {p.name for p in generated.iterdir()} | ({p.name for p in target.iterdir()} if target.exists() else set())
    names = {n for n in names if not n.startswith("__pycache__")}
    return sorted(
        n
        for n in names
        if not (generated / n).exists()
        or not (target / n).exists()
        or not filecmp.cmp(generated / n, target / n, shallow=False)
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="only compare; exit 1 on drift")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        generated = generate(Path(tmp))
        if args.check:
            drift = differences(generated, TARGET)
            if drift:
                print("generated code is stale for: " + ", ".join(drift) + " (run `make protos`)", file=sys.stderr)
                return 1
            return 0
        shutil.rmtree(TARGET, ignore_errors=True)
        shutil.copytree(generated, TARGET)
    return 0


if __name__ == "__main__":
    sys.exit(main())
