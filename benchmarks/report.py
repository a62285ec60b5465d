"""What every benchmark result records, and how it is written.

Each result in ``benchmarks/results/`` names the benchmark, the device it ran on, the
versions and the date (UTC), and, when it measures a claim of ``docs/claims.yml``, that
claim's id in a top-level ``"claims"`` list. The scripts import this module from beside them
(``python benchmarks/<name>.py`` puts this folder on the path).
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import platform
from pathlib import Path

import torch

RESULTS = Path(__file__).resolve().parent / "results"


def device_name(device: torch.device | str = "cpu") -> str:
    """The GPU's name, or the CPU's model and core count."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    model = platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return f"CPU: {model}, {os.cpu_count()} cores"


def header(benchmark: str, device: torch.device | str = "cpu", claims: tuple = ()) -> dict:
    """The first fields of a result: benchmark, claims, device, versions, date."""
    fields = {"benchmark": benchmark}
    if claims:
        fields["claims"] = list(claims)
    device = torch.device(device)
    return fields | {
        "device": device_name(device),
        "torch": torch.__version__,
        "cuda": torch.version.cuda if device.type == "cuda" else None,
        "python": platform.python_version(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


def sources_digest(paths: list[Path]) -> str:
    """The SHA-256 of ``paths``' names and contents: a result that depends on source files
    records it, so that a test can tell when they have changed since it was written."""
    digest = hashlib.sha256()
    for path in paths:
        digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def write_result(path: Path, result: dict) -> None:
    """Write ``result`` as indented JSON, creating the folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n")
