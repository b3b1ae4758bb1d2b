"""Regenerate the checked-in gRPC code from ``protos/``.

    python -m watchdog_d.proto.gen [OUT_DIR]

The generated import line is rewritten to a package-relative one so the code
works inside ``watchdog_d.proto``.
"""
from __future__ import annotations

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def generate(out_dir: Path) -> list[Path]:
    from grpc_tools import protoc  # dev-only dependency

    out_dir.mkdir(parents=True, exist_ok=True)
    args = ["protoc", f"-I{ROOT / 'protos'}", f"--python_out={out_dir}",
            f"--grpc_python_out={out_dir}", str(ROOT / "protos" / "watchdog.proto")]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    grpc_file = out_dir / "watchdog_pb2_grpc.py"
    text = grpc_file.read_text()
    text = re.sub(r"^import watchdog_pb2 as", "from . import watchdog_pb2 as", text, flags=re.M)
    grpc_file.write_text(text)
    return [out_dir / "watchdog_pb2.py", grpc_file]


if __name__ == "__main__":
    generate(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).parent)
