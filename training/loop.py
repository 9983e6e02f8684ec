"""What every reward-model trainer shares: LoRA (PEFT) on the last blocks of a frozen backbone
plus a family's head, training through the transformers Trainer over pre-tokenised examples
(preference pairs, or PRM step records) with checkpoints and resume, and saving the adapter
in PEFT's format with the model's metadata. A family supplies only its head, its encoding and
its step (the loss)."""
from __future__ import annotations

import os
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from plaudit.rewardmodels.base import InputError
from plaudit.rewardmodels.loading import choose_device, resolve_path, write_metadata
from plaudit.rewardmodels.lora import adapters_off, add_lora, base_shape, heads_of


@dataclass
class TrainConfig:
    base: str = field(default="default", metadata={"help": "backbone directory, or 'default' (packaged SmolLM2-135M)"})
    num_train_epochs: int = 2
    learning_rate: float = 1e-3
    per_device_train_batch_size: int = field(default=4, metadata={
        "help": "examples (preference pairs, PRM records) per step and process"})
    max_steps: int = field(default=-1, metadata={"help": "stop after N optimizer steps (overrides the epochs)"})
    lora_layers: int = field(default=8, metadata={"help": "adapt the last N transformer blocks"})
    lora_rank: int = 8
    lora_alpha: float = 16.0
    max_length: int = field(default=1024, metadata={"help": "tokens per sequence; the prompt is cut from the left"})
    seed: int = field(default=0, metadata={"help": "initialisation (head, adapters) and, unless data_seed, data order"})
    data_seed: int | None = field(default=None, metadata={"help": "data order only: WARM members share the init"})
    device: str = field(default="auto", metadata={"help": "auto, cpu, cuda, cuda:N"})
    gradient_accumulation_steps: int = field(default=1, metadata={"help": "batches per optimizer step"})
    adapter_learning_rate: float | None = field(default=None, metadata={
        "help": "the LoRA adapters' rate, when it differs from the heads' (learning_rate)"})
    adapter_start: float = field(default=0.0, metadata={
        "help": "steps (below 1: a share of all steps) in which the heads train alone, the backbone run forward "
                "only, before the adapters join"})
    lr_scheduler_type: str = field(default="constant", metadata={"help": "constant, linear, cosine, ... "
                                                                         "(transformers' schedules)"})
    warmup_steps: float = field(default=0.0, metadata={"help": "steps warming the rate up (below 1: a share of "
                                                                  "all steps)"})
    max_grad_norm: float = field(default=1.0, metadata={"help": "gradient clipping (0: none)"})
    save_steps: int = field(default=50, metadata={"help": "a checkpoint in OUT/checkpoints/ every N steps"})
    report_to: str = field(default="none", metadata={"help": "none, tensorboard, ... (transformers' integrations)"})
    eval_data: str | None = field(default=None, metadata={
        "help": "held-out records in the training data's format, evaluated every eval_steps (plaudit train)"})
    eval_steps: int = field(default=50, metadata={"help": "evaluate on eval_data every N steps, and at the end"})
    resume: str | None = field(default=None, metadata={
        "help": "continue from the last checkpoint in OUT/checkpoints/ (or the named one)", "nargs": "?",
        "const": "last"})


def family_default(name: str, value: Any) -> Any:
    """A family's own default for a TrainConfig field, keeping the field's --help."""
    return field(default=value, metadata=TrainConfig.__dataclass_fields__[name].metadata)


@dataclass
class DeeperRecipe(TrainConfig):
    """Adapters on 16 of SmolLM2's 30 blocks, 4 epochs on a cosine schedule with 5% warmup: the
    defaults of BT and PRM, with which `default` and `default-prm` were trained, because the
    base defaults (8 blocks, 2 epochs, a constant rate) underfitted both (the numbers:
    docs/model-families.md)."""
    num_train_epochs: int = family_default("num_train_epochs", 4)
    lora_layers: int = family_default("lora_layers", 16)
    lr_scheduler_type: str = family_default("lr_scheduler_type", "cosine")
    warmup_steps: float = family_default("warmup_steps", 0.05)


# One optimisation step's view of a batch, given the model to run it through (the Trainer's,
# wrapped for data parallelism when there are several processes): (loss, one signed margin per
# decision (> 0 is right: a pair ordered correctly, a step classified correctly), outputs).
Step = Callable[[nn.Module, Sequence[Any], torch.device], tuple[torch.Tensor, torch.Tensor, torch.Tensor]]
CHECKPOINTS = "checkpoints"  # OUT/checkpoints/checkpoint-STEP: what --resume continues from
TRAINABLE = "trainable.safetensors"  # a checkpoint's weights: the adapters and heads only


SHARDING = {"ACCELERATE_USE_FSDP": "FSDP", "ACCELERATE_USE_DEEPSPEED": "DeepSpeed"}  # set by `accelerate launch`


def refuse_sharding() -> None:
    """FSDP and DeepSpeed shard the weights across processes, and a checkpoint, the normalisation
    pass and the saved adapter here read whole weights in the first process: they would be
    wrong, so a sharded launch is refused before the base is loaded. LoRA does not need it:
    the frozen base is replicated (bf16: 16 GB for an 8B), only adapters and heads train."""
    for variable, name in SHARDING.items():
        if os.environ.get(variable, "").lower() in ("1", "true", "yes"):
            raise InputError("launcher", f"{name} is not supported by plaudit train (it shards the weights; "
                                         "checkpoints and the saved adapter need them whole). Launch data-parallel "
                                         "instead: torchrun, or an accelerate config with distributed_type "
                                         "MULTI_GPU")


def prepare(build: Callable[[Path], nn.Module], config: TrainConfig, head_prefixes: tuple[str, ...]
            ) -> tuple[nn.Module, Any, int, Any]:
    """Seed, build the family's model on the base backbone, freeze it and add LoRA to its last
    blocks (PEFT, in place; the adapters and heads train): (model, tokenizer, pad id, the
    PeftModel for `save_adapter`), the model on its device in training mode."""
    from transformers import AutoTokenizer

    refuse_sharding()
    torch.manual_seed(config.seed)
    base = resolve_path(config.base)
    tokenizer = AutoTokenizer.from_pretrained(base)
    model = build(base)
    model.requires_grad_(False)
    adapter = add_lora(model, config.lora_layers, config.lora_rank, config.lora_alpha, heads_of(model, head_prefixes))
    model.to(choose_device(config.device)[0]).train()
    return model, tokenizer, tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0, adapter


class StepModule(nn.Module):
    """A family's model and its step as one module, so that the Trainer (and DDP around it)
    runs every forward pass through `forward`."""

    def __init__(self, model: nn.Module, step: Step):
        super().__init__()
        self.model, self.step = model, step

    def forward(self, examples: Sequence[Any]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.step(self.model, examples, next(self.model.parameters()).device)


class Examples:
    """A batch's examples, handed to the step as they are: on their way to the device the
    Trainer and accelerate rebuild lists by type, and a rebuilt `Tokens` would lose the length
    of its prompt (which lets a pair's responses read their prompt once)."""

    def __init__(self, items: Sequence[Any]):
        self.items = list(items)


class UntrainedStates:
    """What the untrained backbone computes for each example (its adapters bypassed, which while
    every LoRA B is zero changes nothing): through the heads' own steps (before
    `adapter_start`, where `fit` freezes the adapters) those states do not change, so each
    example's are computed once and later epochs of that phase skip the backbone; GPM's
    `--centring shift` reads them at every step. `compute(net, batch, device)` gives tensors
    whose rows are the batch's examples; they are kept on the CPU up to `budget` bytes (past
    it, computed each time). Steps with trainable adapters, and several processes (DDP needs every adapter's
    gradient), always compute. A base with dropout sees one draw per example in that phase."""

    def __init__(self, compute: Callable[..., tuple[torch.Tensor, ...]], budget: int = 1 << 30):
        self.compute, self.budget, self.rows, self.size = compute, budget, {}, 0

    def __call__(self, net: nn.Module, batch: Sequence[Any], device: torch.device) -> tuple[torch.Tensor, ...]:
        if any(p.requires_grad for n, p in net.named_parameters() if "lora_" in n):
            return self.compute(net, batch, device)
        return self.before_training(net, batch, device)

    def before_training(self, net: nn.Module, batch: Sequence[Any], device: torch.device) -> tuple[torch.Tensor, ...]:
        """The rows, computed for the examples not yet kept: also what a pass before the first
        step (GPM's centring) calls, to fill the store while the adapters are still untouched."""
        keys = [tuple(map(tuple, example)) for example in batch]
        missing = {k: e for k, e in zip(keys, batch) if k not in self.rows}
        fresh = {}
        if missing:
            with torch.no_grad(), adapters_off(net):
                computed = self.compute(net, list(missing.values()), device)
            for i, key in enumerate(missing):
                fresh[key] = row = tuple(t[i].detach().cpu() for t in computed)
                size = sum(t.numel() * t.element_size() for t in row)
                if self.size + size <= self.budget:
                    self.rows[key], self.size = row, self.size + size
        rows = [self.rows[k] if k in self.rows else fresh[k] for k in keys]
        return tuple(torch.stack(column).to(device) for column in zip(*rows))


class Tally:
    """Loss, accuracy and margin over the examples of the current epoch, as the rows log them."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.loss, self.correct, self.margin, self.decisions, self.examples = 0.0, 0.0, 0.0, 0, 0

    def add(self, loss: torch.Tensor, margin: torch.Tensor, examples: int) -> None:
        self.loss += loss.item() * examples
        self.correct += (margin > 0).float().sum().item()
        self.margin += margin.sum().item()
        self.decisions += margin.numel()
        self.examples += examples

    def row(self) -> dict[str, float]:
        return {"loss": round(self.loss / max(self.examples, 1), 4),
                "accuracy": round(self.correct / max(self.decisions, 1), 4),
                "margin": round(self.margin / max(self.decisions, 1), 4)}


def last_checkpoint(folder: Path) -> Path | None:
    """The newest complete checkpoint (its trainer state written) in OUT/checkpoints/."""
    done = [c for c in folder.glob("checkpoint-*") if (c / "trainer_state.json").exists() and (c / TRAINABLE).exists()]
    return max(done, key=lambda c: int(c.name.rpartition("-")[2]), default=None)


def fit(examples: Sequence[Any], step: Step, model: nn.Module, config: TrainConfig, out: str | Path,
        on_log: Callable[[dict], None], data: str = "", heldout: Sequence[Any] = ()) -> dict:
    """Train through the transformers Trainer: shuffled batches (seeded), AdamW, checkpoints of
    the adapters, optimizer and RNG states in OUT/checkpoints/ every `save_steps`, resumable
    (`resume`), and data-parallel when launched with torchrun. Returns the summary; rows logged
    every 10 steps and at each epoch's end average loss over examples, accuracy and margin
    over decisions, since the epoch began (with several processes: the first one's share).
    `heldout` examples are evaluated every `eval_steps` and at the end: rows with "eval": true,
    and the last in the summary's "eval"."""
    from transformers import PrinterCallback, Trainer, TrainerCallback, TrainingArguments

    if not examples or config.num_train_epochs < 1:
        raise InputError("data", f"training needs examples and at least one epoch ({len(examples)} examples, "
                                 f"{config.num_train_epochs} epochs)")
    device, _ = choose_device(config.device)
    tally, held, start, history, evaluated = Tally(), Tally(), time.time(), {}, {}

    class PlauditTrainer(Trainer):
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            loss, margin, outputs = model(inputs["examples"].items)
            tally.add(loss.detach(), margin.detach(), len(inputs["examples"].items))
            return (loss, outputs) if return_outputs else loss

        def training_step(self, model, inputs, num_items_in_batch=None):
            """Before `adapter_start` the heads train alone: the adapters get no gradient, so
            AdamW leaves them as they are. In one process they are also frozen for the step, so
            the backbone builds no graph and runs forward only (about a third of a full step's
            work); DDP's reducer waits for every parameter's gradient, so there they are dropped
            after the backward instead."""
            start = config.adapter_start if config.adapter_start >= 1 else config.adapter_start * self.state.max_steps
            adapters = [p for n, p in model.named_parameters() if "lora_" in n] \
                if self.state.global_step < start else []
            frozen = adapters if self.args.world_size == 1 else []
            for parameter in frozen:
                parameter.requires_grad_(False)
            try:
                loss = super().training_step(model, inputs, num_items_in_batch)
            finally:
                for parameter in frozen:
                    parameter.requires_grad_(True)
            for parameter in adapters:
                parameter.grad = None
            return loss

        def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
            with torch.no_grad():
                loss, margin, _ = model(inputs["examples"].items)
            held.add(loss, margin, len(inputs["examples"].items))
            return loss.detach(), None, None

        def evaluate(self, *args, **kwargs):
            nonlocal evaluated
            held.reset()
            metrics = super().evaluate(*args, **kwargs)
            evaluated = held.row()
            if self.state.is_world_process_zero:
                on_log({"eval": True, "step": self.state.global_step, "examples": held.examples, **evaluated})
            return metrics

        def create_optimizer(self, model=None):
            """AdamW without weight decay; the adapters at their own rate when one is set."""
            if self.optimizer is None and config.adapter_learning_rate is not None:
                named = [(n, p) for n, p in self.model.named_parameters() if p.requires_grad]
                groups = [{"params": [p for n, p in named if "lora_" in n], "lr": config.adapter_learning_rate},
                          {"params": [p for n, p in named if "lora_" not in n], "lr": config.learning_rate}]
                self.optimizer = torch.optim.AdamW([g for g in groups if g["params"]], weight_decay=0.0)
            return super().create_optimizer(model)

        def _save(self, output_dir: str | None = None, state_dict=None) -> None:
            folder = Path(output_dir or self.args.output_dir)
            folder.mkdir(parents=True, exist_ok=True)
            save_file({n: p.detach().cpu().contiguous() for n, p in self.model.named_parameters() if p.requires_grad},
                      str(folder / TRAINABLE))

        def _load_from_checkpoint(self, resume_from_checkpoint: str, model=None) -> None:
            target = model or self.model
            state = load_file(str(Path(resume_from_checkpoint) / TRAINABLE))
            trainable = {n for n, p in target.named_parameters() if p.requires_grad}
            if set(state) != trainable:
                raise InputError("resume", f"{resume_from_checkpoint} holds other weights than this run trains "
                                           f"(e.g. {sorted(set(state) ^ trainable)[:2]}): another configuration")
            target.load_state_dict(state, strict=False)

    class Rows(TrainerCallback):
        def on_epoch_begin(self, args, state, control, **kwargs):
            tally.reset()

        def on_step_end(self, args, state, control, **kwargs):
            nonlocal history
            if state.global_step % 10 == 0 or state.global_step % steps_per_epoch == 0 \
                    or state.global_step == state.max_steps:
                history = tally.row()
                if state.is_world_process_zero:
                    on_log({"epoch": int(-(-state.global_step // steps_per_epoch)), "step": state.global_step,
                            "examples": tally.examples, **history, "seconds": round(time.time() - start, 1)})

    batch = config.per_device_train_batch_size
    args = TrainingArguments(
        output_dir=str(Path(out) / CHECKPOINTS), num_train_epochs=config.num_train_epochs, max_steps=config.max_steps,
        learning_rate=config.learning_rate, per_device_train_batch_size=batch, per_device_eval_batch_size=batch,
        gradient_accumulation_steps=config.gradient_accumulation_steps, lr_scheduler_type=config.lr_scheduler_type,
        warmup_steps=config.warmup_steps, max_grad_norm=config.max_grad_norm, weight_decay=0.0, seed=config.seed,
        data_seed=config.data_seed, save_strategy="steps", save_steps=config.save_steps, save_total_limit=2,
        logging_strategy="no", eval_strategy="steps" if heldout else "no", eval_steps=config.eval_steps,
        report_to=config.report_to, remove_unused_columns=False, dataloader_drop_last=False,
        use_cpu=device.type == "cpu", bf16=device.type == "cuda" and torch.cuda.is_bf16_supported(),
        disable_tqdm=True, ddp_find_unused_parameters=False)
    steps_per_epoch = -(-len(examples) // (batch * config.gradient_accumulation_steps * args.world_size))
    trainer = PlauditTrainer(model=StepModule(model, step), args=args, train_dataset=list(examples),
                             eval_dataset=list(heldout) or None,
                             data_collator=lambda batch: {"examples": Examples(batch)}, callbacks=[Rows()])
    trainer.remove_callback(PrinterCallback)  # its Python-dict lines would break the CLI's JSON output
    checkpoint = None
    if config.resume:
        checkpoint = last_checkpoint(Path(args.output_dir)) if config.resume == "last" else Path(config.resume)
        on_log({"resume": str(checkpoint) if checkpoint else None,
                "from_step": int(checkpoint.name.rpartition("-")[2]) if checkpoint else 0})
    result = trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
    summary = {"data": data, "examples": len(examples), "steps": result.global_step,
               "seconds": round(time.time() - start, 1), "final_epoch": history, "config": asdict(config)}
    return {**summary, "eval": evaluated} if heldout else summary


def final_outputs(examples: Sequence[Any], step: Step, model: nn.Module, config: TrainConfig) -> list[float]:
    """The trained model's outputs (a BT model's rewards) on the examples, in eval mode, no
    gradients: what normalisation is measured on once the weights have stopped moving."""
    device, _ = choose_device(config.device)
    model.eval()
    with torch.no_grad():
        size = config.per_device_train_batch_size
        return [float(r) for first in range(0, len(examples), size)
                for r in step(model, examples[first:first + size], device)[2].float().cpu()]


def normalization(rewards: list[float], source: str) -> dict:
    return {"mean": statistics.fmean(rewards), "std": statistics.pstdev(rewards) or 1.0, "stored": True,
            "source": source}


def leave_process_group() -> None:
    """With several processes (torchrun), all wait for each other, then leave the process group:
    one that exits while gloo's threads still run aborts ("terminate called without an active
    exception"), which made a 2-process run fail about one time in five."""
    if torch.distributed.is_initialized():
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()


def main_process() -> bool:
    """True unless this is one of several processes (torchrun) and not the first."""
    return not torch.distributed.is_initialized() or torch.distributed.get_rank() == 0


def save_adapter(adapter: Any, out: str | Path, config: TrainConfig, metadata: dict[str, Any]) -> None:
    """Write the adapters and heads in PEFT's format (a few MB) plus metadata naming the base
    they fit; with several processes, the first writes."""
    if not main_process():
        return
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    adapter.peft_config["default"].base_model_name_or_path = config.base  # not this machine's path
    adapter.save_pretrained(str(out))
    write_metadata(out, {"base": config.base, "max_length": config.max_length,
                         "adapter": {"last_layers": config.lora_layers, "rank": config.lora_rank,
                                     "alpha": config.lora_alpha, "base_shape": base_shape(adapter.get_base_model())},
                         **metadata})
