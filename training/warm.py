"""WARM: weight-averaged reward models.

`train_warm` fine-tunes M Bradley-Terry members from one init (same base, same head and
adapter initialisation) that differ in data order and, optionally, learning rate; each is
a plaudit folder in DIR/members/, together served as an ensemble (mean and spread).
`merge` averages members' weights into one ordinary BT checkpoint: LoRA merged into the
weights first (so the average moves the backbone's last blocks, not just a linear head,
which would equal averaging predictions), in fp32, reading one member at a time so that
peak memory is one accumulator plus one member whatever M is. Every tensor's name and
shape is checked, and members must share their init (a fingerprint of the base weights).
A greedy soup keeps a member only if held-out accuracy does not drop. When the members
are LoRA adapters of one base, the same average is also written as one exact adapter of
rank M x r in out/adapter/ (a few MB instead of a full checkpoint).
"""
from __future__ import annotations

import hashlib
import json
import logging
import shutil
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from plaudit.rewardmodels import InputError, Item, ModelLoadError, load_scorer
from plaudit.rewardmodels.bt import load_classifier
from plaudit.rewardmodels.loading import METADATA_FILE, read_metadata, resolve_path, write_metadata
from plaudit.rewardmodels.lora import ADAPTER_CONFIG, ADAPTER_WEIGHTS, lora_config

from .bt import BTConfig, train_bt
from .data import PreferencePair
from .evaluate import eval_pairs
from .loop import CHECKPOINTS, last_checkpoint, normalization

log = logging.getLogger(__name__)
MEMBERS = "members"


@dataclass
class WarmConfig(BTConfig):
    lr_spread: float = field(default=1.0, metadata={
        "help": "member learning rates spread geometrically over [lr / F, lr * F] (1: all the same)"})


def member_lrs(config: WarmConfig, members: int) -> list[float]:
    if members == 1 or config.lr_spread == 1.0:
        return [config.learning_rate] * members
    return [config.learning_rate * config.lr_spread ** (2 * m / (members - 1) - 1) for m in range(members)]


def train_warm(pairs: list[PreferencePair], out: str | Path, config: WarmConfig, members: int,
               on_log: Callable[[dict], None] = lambda row: log.info("%s", row), data: str = "") -> dict:
    """Train the members into out/members/ (an ensemble folder), then merge them into out. Run
    again, members already complete (the same configuration) are kept, and one that was
    interrupted goes on from its last checkpoint."""
    if members < 2:
        raise InputError("members", f"WARM averages at least 2 members, got {members}")
    out = Path(out)
    names = [f"member-{m}" for m in range(members)]
    summaries = []
    for m, (name, lr) in enumerate(zip(names, member_lrs(config, members))):
        # one init, its own data order
        member = replace(config, learning_rate=lr, data_seed=config.seed * 1000 + m + 1, resume=None)
        folder = out / MEMBERS / name
        done = read_metadata(folder).get("training") if (folder / METADATA_FILE).exists() else None
        if done and {**done["config"], "resume": None} == asdict(member):  # a rerun: this member is complete
            on_log({"member": m, "skipped": "complete"})
            summaries.append(done)
            continue
        if last_checkpoint(folder / CHECKPOINTS) is not None:  # interrupted: go on from its last checkpoint
            member = replace(member, resume="last")
        summaries.append(train_bt(pairs, folder, member, on_log=lambda row, m=m: on_log({"member": m, **row}),
                                  data=data))
    write_metadata(out / MEMBERS, {"kind": "ensemble", "members": names, "warm": {"data": data}})
    report = merge([out / MEMBERS / n for n in names], out, calibration=pairs[:64])
    return {**report, "training": [{"learning_rate": s["config"]["learning_rate"],
                                    "data_seed": s["config"]["data_seed"], "final_epoch": s["final_epoch"],
                                    "seconds": s["seconds"]} for s in summaries]}


def fingerprint(directory: Path) -> str:
    """Identity of a backbone's weights: sha256 of its safetensors files, streamed."""
    digest = hashlib.sha256()
    files = sorted(directory.glob("*.safetensors"))
    if not files:
        raise ModelLoadError(f"{directory}: no safetensors weights to fingerprint")
    for file in files:
        with open(file, "rb") as f:
            while chunk := f.read(1 << 23):
                digest.update(chunk)
    return digest.hexdigest()[:16]


class Member:
    """One ingredient of a merge: a plaudit adapter folder (merged into its base when read)
    or a full BT checkpoint (read tensor by tensor)."""

    def __init__(self, directory: str | Path):
        self.directory = resolve_path(directory)
        self.metadata = read_metadata(self.directory)
        if self.metadata.get("kind", "bt") != "bt":
            raise ModelLoadError(f"{self.directory}: WARM merges BT reward models, this one is kind "
                                 f"{self.metadata['kind']!r}")

    def init(self) -> str:
        """What the member was fine-tuned from, comparable across members."""
        if "adapter" in self.metadata:
            return f"base {self.metadata['base']!r} ({fingerprint(resolve_path(self.metadata['base']))})"
        if "init" in self.metadata:
            return self.metadata["init"]
        config = json.loads((self.directory / "config.json").read_text())
        keys = ("model_type", "hidden_size", "num_hidden_layers", "vocab_size", "intermediate_size")
        return "architecture " + ", ".join(f"{k}={config.get(k)}" for k in keys)

    def tensors(self) -> Iterator[tuple[str, torch.Tensor]]:
        """(name, fp32 tensor) one at a time; an adapter folder is materialised once, merged."""
        if "adapter" in self.metadata:
            model, _ = load_classifier(self.directory, self.metadata, torch.float32)
            for name, tensor in model.state_dict().items():
                yield name, tensor.float()
            return
        files = sorted(self.directory.glob("*.safetensors"))
        if not files:
            raise ModelLoadError(f"{self.directory}: no safetensors weights (WARM merges safetensors checkpoints)")
        for file in files:
            with safe_open(str(file), "pt") as f:
                for name in f.keys():
                    yield name, f.get_tensor(name).float()

    def write_skeleton(self, out: Path) -> None:
        """Config and tokenizer for the merged checkpoint, taken from this member."""
        from transformers import AutoConfig, AutoTokenizer

        source = resolve_path(self.metadata["base"]) if "adapter" in self.metadata else self.directory
        config = AutoConfig.from_pretrained(source, num_labels=1)
        config.architectures = [config.architectures[0].replace("ForCausalLM", "ForSequenceClassification")]
        config.save_pretrained(out)
        AutoTokenizer.from_pretrained(source).save_pretrained(out)


def check_inits(members: Sequence[Member]) -> str:
    inits = [m.init() for m in members]
    for m, init in zip(members, inits):
        if init != inits[0]:
            raise ModelLoadError(f"{m.directory} was fine-tuned from a different backbone than "
                                 f"{members[0].directory} ({init} vs {inits[0]}); weight averaging only works "
                                 "between fine-tunes of one init")
    return inits[0]


def average(members: Sequence[Member]) -> dict[str, torch.Tensor]:
    """The fp32 mean of the members' weights, one member in memory at a time."""
    total: dict[str, torch.Tensor] = {}
    for i, member in enumerate(members):
        seen = set()
        for name, tensor in member.tensors():
            if i == 0:
                total[name] = tensor.clone()
            elif name not in total:
                raise ModelLoadError(f"{member.directory}: tensor {name!r} is not in {members[0].directory}")
            elif total[name].shape != tensor.shape:
                raise ModelLoadError(f"{member.directory}: tensor {name!r} has shape {tuple(tensor.shape)}, "
                                     f"{members[0].directory} has {tuple(total[name].shape)}")
            else:
                total[name] += tensor
            seen.add(name)
            del tensor
        if missing := sorted(set(total) - seen):
            raise ModelLoadError(f"{member.directory}: lacks {len(missing)} tensors of {members[0].directory}, "
                                 f"e.g. {missing[0]!r}")
    for tensor in total.values():
        tensor /= len(members)
    return total


def _write(state: dict[str, torch.Tensor], members: Sequence[Member], out: Path, metadata: dict[str, Any]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    members[0].write_skeleton(out)
    save_file({k: v.contiguous() for k, v in state.items()}, str(out / "model.safetensors"))
    write_metadata(out, metadata)


def _accuracy(state: dict[str, torch.Tensor], members: Sequence[Member], out: Path,
              pairs: list[PreferencePair]) -> float:
    _write(state, members, out, {"kind": "bt"})
    return eval_pairs(load_scorer(out), pairs)["accuracy"]


ADAPTER = "adapter"  # out/adapter/: the merge as one exact LoRA adapter, when the members are adapters


def concatenated_adapter(members: Sequence[Member], out: Path) -> dict[str, Any] | None:
    """The members' average as one PEFT adapter over their base, exactly: the mean of their
    weight deltas, (1/M) sum_i s_i B_i A_i, is one LoRA of rank M x r with A = [A_1; ...; A_M]
    and B = [s_1 B_1, ..., s_M B_M] / M (scale folded in, alpha = rank); heads averaged. None
    when a member is not a LoRA adapter or the members adapt different modules."""
    configs = [json.loads((m.directory / ADAPTER_CONFIG).read_text()) if "adapter" in m.metadata and
               (m.directory / ADAPTER_CONFIG).exists() else None for m in members]
    if any(c is None for c in configs) or len({tuple(sorted(c["target_modules"])) for c in configs}) != 1:
        return None
    states = [load_file(str(m.directory / ADAPTER_WEIGHTS)) for m in members]
    merged: dict[str, torch.Tensor] = {}
    for key in states[0]:
        if ".lora_A." in key:
            merged[key] = torch.cat([state[key].float() for state in states], dim=0)
        elif ".lora_B." in key:
            merged[key] = torch.cat([state[key].float() * (c["lora_alpha"] / c["r"]) / len(members)
                                     for state, c in zip(states, configs)], dim=1)
        else:  # a head (modules_to_save): averaged like the full merge averages it
            merged[key] = sum(state[key].float() for state in states) / len(members)
    rank = sum(c["r"] for c in configs)
    out.mkdir(parents=True, exist_ok=True)
    lora_config(configs[0]["target_modules"], rank, rank, configs[0]["modules_to_save"] or (),
                members[0].metadata["base"]).save_pretrained(str(out))
    save_file({k: v.contiguous() for k, v in merged.items()}, str(out / ADAPTER_WEIGHTS))
    adapter = {**members[0].metadata["adapter"], "rank": rank, "alpha": float(rank)}
    return {"base": members[0].metadata["base"], "max_length": members[0].metadata.get("max_length"),
            "adapter": adapter}


def merge(directories: Sequence[str | Path], out: str | Path, soup: list[PreferencePair] | None = None,
          calibration: list[PreferencePair] | None = None) -> dict:
    """Average the members into `out`, a plain BT checkpoint. With `soup` pairs, a greedy soup:
    members in order of their own held-out accuracy, each kept only if the average of those
    kept so far does not lose accuracy. Rewards are normalised on `calibration` (else on
    `soup`) pairs when given, else with the members' mean normalisation."""
    out = Path(out)
    if len(directories) < 2:
        raise InputError("members", f"a merge needs at least 2 members, got {len(directories)}")
    members = [Member(d) for d in directories]
    init = check_inits(members)
    report: dict[str, Any] = {"members": [str(m.directory) for m in members], "init": init}
    chosen = members
    if soup:
        trial = out.with_name(out.name + ".soup-trial")
        own = [eval_pairs(load_scorer(m.directory), soup)["accuracy"] for m in members]
        ranked = sorted(range(len(members)), key=lambda i: -own[i])
        chosen, best = [members[ranked[0]]], own[ranked[0]]
        for i in ranked[1:]:
            accuracy = _accuracy(average(chosen + [members[i]]), members, trial, soup)
            if accuracy >= best:
                chosen, best = chosen + [members[i]], accuracy
        shutil.rmtree(trial, ignore_errors=True)
        report["soup"] = {"member_accuracy": own, "kept": [str(m.directory) for m in chosen], "accuracy": best}
    state = average(chosen)
    _write(state, members, out, {"kind": "bt", "warm": report})
    calibration = calibration or soup
    if calibration:
        items = [Item(prompt=p.prompt, response=r) for p in calibration for r in (p.chosen, p.rejected)]
        rewards = load_scorer(out).score(items).rewards  # raw: the metadata has no normalisation yet
        norm = normalization(rewards, f"raw rewards of {len(calibration)} pairs after merging")
    else:
        norms = [m.metadata.get("normalization", {"mean": 0.0, "std": 1.0}) for m in members]
        norm = {"mean": sum(n["mean"] for n in norms) / len(norms), "std": sum(n["std"] for n in norms) / len(norms),
                "stored": True, "source": "mean of the members' normalisations (no pairs given)"}
    write_metadata(out, {"kind": "bt", "normalization": norm, "init": init, "warm": report})
    adapter = concatenated_adapter(chosen, out / ADAPTER)
    if adapter is not None:
        write_metadata(out / ADAPTER, {"kind": "bt", **adapter, "normalization": norm, "init": init, "warm": report})
        report["adapter"] = str(out / ADAPTER)
    return report
