"""A 3-member ensemble under 32 one-item clients, against one of its members alone.

The members are the default BT model's adapter with each member's LoRA B matrices scaled
differently, so they differ exactly where WARM members do: in the adapted blocks and nowhere
below. Served from one `plaudit serve`, the same mixed-length items one per request:
`ensemble_m3_vs_single_32` is the ensemble's items/s over the single model's. Members that
share their S lower blocks of L cost one trunk plus three tails, S + 3 (L - S) block passes
against L: that ratio is `ensemble_ceiling`, and `ensemble_vs_ceiling` how close the
serving comes to it. The default adapter covers the last 16 of SmolLM2's 30 blocks (14
shared: a ceiling of 30 / 62 = 0.48x; it was 8 blocks, 22 shared, 0.65x, when the 0.5
target was set); three whole models side by side would be about 0.33x.
"""
from __future__ import annotations

import json
import shutil
import statistics
from pathlib import Path

from safetensors.torch import load_file, save_file

from plaudit.service.config import DEFAULT_MODEL_DIR

from . import serving
from .workload import default_count, mixed_items

MEMBERS, CLIENTS, ROUNDS = 3, 32, 3


def build_members(folder: Path) -> Path:
    """An ensemble folder of MEMBERS adapters of one base, differing only in their LoRA."""
    for m in range(MEMBERS):
        member = folder / f"member-{m}"
        shutil.copytree(DEFAULT_MODEL_DIR, member)
        weights = load_file(str(member / "adapter_model.safetensors"))
        save_file({k: v * (1 + 0.1 * m) if ".lora_B." in k else v for k, v in weights.items()},
                  str(member / "adapter_model.safetensors"))
    (folder / "plaudit.json").write_text(json.dumps({"kind": "ensemble", "members": [f"member-{m}"
                                                                                     for m in range(MEMBERS)]}))
    return folder


def _calls(stats: dict) -> int:
    """Forward calls of a model, or of all its members where they batch apart."""
    return stats.get("forward_calls", sum(member.get("forward_calls", 0) for member in stats.values()
                                          if isinstance(member, dict)))


def run(tmp: Path, device) -> dict:
    """The two models measured in alternation, ROUNDS times each: a machine that slows down
    during the run (another process, a warm-up) weighs on both alike, where one measurement
    of each, one after the other, gave 0.45 in one run and 0.60 in another. The ratio is of
    the medians; every round's rates are in the detail."""
    config = {"models": {"default": {"path": str(DEFAULT_MODEL_DIR)},
                         "ensemble": {"path": str(build_members(tmp / "ensemble"))}}}
    items = mixed_items(default_count(device))
    rows = {model: {"items_per_s": [], "errors": 0, "forward_calls": 0} for model in ("default", "ensemble")}
    with serving.plaudit(tmp, config) as server:
        for model in rows:
            serving.drive(server.url, items[:4], 4, model=model)  # warm-up
        for _ in range(ROUNDS):
            for model, row in rows.items():
                before = server.forward_stats(model)
                load = serving.drive(server.url, items, CLIENTS, model=model)
                after = server.forward_stats(model)
                row["items_per_s"].append(round(len(items) / load.seconds, 3))
                row["errors"] += load.errors
                row["forward_calls"] += _calls(after) - _calls(before)
        rows["ensemble"]["shared_blocks"] = after.get("shared_blocks", 0)
    ratios = [round(e / d, 3) for e, d in zip(rows["ensemble"]["items_per_s"], rows["default"]["items_per_s"])]
    median = {model: statistics.median(row["items_per_s"]) for model, row in rows.items()}
    blocks, shared = _blocks(), rows["ensemble"]["shared_blocks"]
    ceiling = blocks / (shared + MEMBERS * (blocks - shared))
    ratio = median["ensemble"] / median["default"]
    return {"ensemble": {"items": len(items), "clients": CLIENTS, "rounds": ROUNDS, "round_ratios": ratios,
                         "blocks": blocks, **rows},
            "ensemble_m3_vs_single_32": round(ratio, 3), "ensemble_ceiling": round(ceiling, 3),
            "ensemble_vs_ceiling": round(ratio / ceiling, 3)}


def _blocks() -> int:
    """The backbone's transformer blocks."""
    from transformers import AutoConfig

    from plaudit.rewardmodels.loading import packaged_backbone

    return AutoConfig.from_pretrained(packaged_backbone()).num_hidden_layers


if __name__ == "__main__":
    import tempfile

    from plaudit.rewardmodels.loading import choose_device

    with tempfile.TemporaryDirectory(prefix="plaudit-bench-ensemble-") as folder:
        print(json.dumps(run(Path(folder), choose_device()[0]), indent=2))
