"""How a model's forward passes are batched: limits a config sets, read without torch (the
config, the command line and the math worker import this, not the model code)."""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

# What one more forward call costs, in padded tokens' worth of compute. On a CPU a padded
# token costs as much as a real one and a call costs little (measured for SmolLM2-135M: about
# 1 ms a token, 10-20 ms a call), so padding is what to avoid. On a GPU a call's fixed cost
# dominates: SmolLM2-135M's shape in bf16 on an H200 took 18-31 ms a call (kernel launches for
# 30 blocks) and about 1 us a token, a call worth 16k-35k tokens (benchmarks/gpu_check.py), so
# batches fill up to the token limit.
CALL_OVERHEAD_TOKENS = {"cpu": 32, "cuda": 16384}
# How long the batcher may wait for the callers its last batch served to come back, as a share
# of that batch's forward time. On a GPU a call costs about the same with 4 rows or 32, and
# without waiting the batcher alternated between two halves of its clients (measured on an
# H200: with C clients every call carried C/2 items). On a CPU a call's cost grows with its
# tokens, so waiting only adds latency.
LINGER = {"cpu": 0.0, "cuda": 0.5}


@dataclass(frozen=True)
class Batching:
    """Micro-batch limits: a batch holds at most `max_batch_size` rows and
    `max_batch_tokens` tokens including padding. Within them, sequences are split into
    the batches that cost least: padded tokens plus `call_overhead_tokens` per forward
    call (None: the device's default from CALL_OVERHEAD_TOKENS, resolved at load time).
    `linger`: see LINGER (None: the device's default). `prefix_cache_mb`: how much memory the
    prompts' keys and values kept for later requests may take (0: prompts are shared within a
    batch only; see prefix.py). `share_prefixes` False runs every sequence whole."""

    max_batch_size: int = 32
    max_batch_tokens: int = 16384
    call_overhead_tokens: int | None = None
    linger: float | None = None
    prefix_cache_mb: float = 512
    share_prefixes: bool = True

    def on(self, device: torch.device) -> "Batching":
        """These limits with the call overhead and the linger filled in for `device`."""
        kind = device.type if device.type in CALL_OVERHEAD_TOKENS else "cuda"
        return replace(self, call_overhead_tokens=CALL_OVERHEAD_TOKENS[kind] if self.call_overhead_tokens is None
                       else self.call_overhead_tokens, linger=LINGER[kind] if self.linger is None else self.linger)
