"""Peak memory of `plaudit warm merge` for M = 2 and M = 5 members of the real backbone.

Members are the default BT model's adapter with its LoRA and head weights perturbed per
member (fine-tunes of one init, as far as merging can tell); each merge runs in its own
process and reports its peak resident memory.
"""
from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from plaudit.rewardmodels.lora import ADAPTER_WEIGHTS
from plaudit.service.config import DEFAULT_MODEL_DIR

MEASURE = """
import resource, sys
from plaudit.training.warm import merge
merge(sys.argv[2:], sys.argv[1])
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def make_members(root: Path, count: int) -> list[Path]:
    state = load_file(str(DEFAULT_MODEL_DIR / ADAPTER_WEIGHTS))
    members = []
    for i in range(count):
        member = root / f"member-{i}"
        shutil.copytree(DEFAULT_MODEL_DIR, member)
        generator = torch.Generator().manual_seed(i)
        save_file({k: v + 0.01 * torch.randn(v.shape, generator=generator) for k, v in state.items()},
                  str(member / ADAPTER_WEIGHTS))
        members.append(member)
    return members


def run(counts=(2, 5)) -> dict:
    with tempfile.TemporaryDirectory(prefix="plaudit-warm-bench-") as tmp:
        members = make_members(Path(tmp), max(counts))
        peaks = {}
        for m in counts:
            result = subprocess.run([sys.executable, "-c", MEASURE, str(Path(tmp) / f"merged-{m}"),
                                     *map(str, members[:m])], capture_output=True, text=True, check=True,
                                    cwd=Path(__file__).resolve().parent.parent)
            peaks[m] = int(result.stdout.split()[-1]) * 1024 / 2**30  # ru_maxrss is in KiB on Linux
    ratio = peaks[max(counts)] / peaks[min(counts)]
    return {"warm_merge_peak_gib": {str(m): round(p, 3) for m, p in peaks.items()},
            "warm_merge_peak_ratio_m5_m2": round(ratio, 3)}
