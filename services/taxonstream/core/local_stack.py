"""Where the local stack (tools/stack/) keeps its state, for the CLI and the stack alike.

The stack writes its logs, pid files, Triton's model repository and the S3 keys it created under one
folder (`.stack/` in the checkout unless `TAXONSTREAM_STACK_DIR` says otherwise).
"""

from __future__ import annotations

import os
from pathlib import Path

# services/taxonstream/core/local_stack.py -> the checkout's root
REPO = Path(__file__).resolve().parents[3]


def stack_dir() -> Path:
    return Path(os.environ.get("TAXONSTREAM_STACK_DIR", REPO / ".stack")).resolve()


def model_repository() -> Path:
    return Path(os.environ.get("TAXONSTREAM_MODEL_REPOSITORY", stack_dir() / "models")).resolve()


def s3_env() -> dict[str, str]:
    """The S3 endpoint and keys the local gateway was created with (written by tools/stack/s3.sh)."""
    path = stack_dir() / "s3.env"
    if not path.exists():
        return {}
    pairs = (line.split("=", 1) for line in path.read_text().splitlines() if "=" in line and not line.startswith("#"))
    return {k.strip(): v.strip().strip("'\"") for k, v in pairs}
