"""A composite reward: named parts (any configured models, judges, execution or rule kinds)
combined by a weighted sum, with gates.

    value_p  = transform_p(reward of part p)          (identity, or sigmoid for unbounded rewards)
    reward   = floor                                   when a part in `requires` is under its minimum
             = sum over parts p of  weight_p * value_p * [every part in p.requires is at its minimum]

So `requires: {format: 1}` gives `floor` (0) to a response without the required format, and a
part with `requires: {tests: 1}` counts only among responses that pass every test (a reward
model as a tie-breaker). The parts score each request concurrently. A part that fails an item
(a judge's backend error or unreadable answer, a part's exception) fails that item: its reward
is None with the reason in `errors`, never a silent 0; a part that does not count for an item
(its gate is shut) cannot fail it. Each part's value is in `details` and, for trainers, in
/get_reward's `extra_logs` as `part/NAME` (a failed part logs its own neutral value there, and
`error` says the item failed; the item's reward is then the composite's neutral value).
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Literal, Sequence

from pydantic import BaseModel, ConfigDict, Field, model_validator

from .base import InputError, Item, LoadContext, ModelLoadError, Scorer, Scores, sigmoid
from .sandbox import Busy

TRANSFORMS: dict[str, Callable[[float], float]] = {"identity": lambda x: x, "sigmoid": sigmoid}


class Part(BaseModel):
    model_config = ConfigDict(extra="forbid")
    model: str = Field(description="a configured model or judge")
    weight: float = 1.0
    transform: Literal["identity", "sigmoid"] = Field("identity", description="sigmoid maps an unbounded reward "
                                                                              "model's reward into (0, 1)")
    requires: dict[str, float] = Field({}, description="this part counts only when these parts' values are at "
                                                       "least the given minimum")


class CompositeSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")
    parts: dict[str, Part] = Field(min_length=1)
    requires: dict[str, float] = Field({}, description="the reward is `floor` unless these parts' values are at "
                                                       "least the given minimum")
    floor: float = 0.0

    @model_validator(mode="after")
    def _requirements_name_parts(self):
        for where, requires in [("requires", self.requires)] + [(f"parts.{n}.requires", p.requires)
                                                                for n, p in self.parts.items()]:
            unknown = sorted(set(requires) - set(self.parts))
            if unknown:
                raise ValueError(f"{where}: {unknown} are not parts ({sorted(self.parts)})")
        return self


class Composite(Scorer):
    kind = "composite"
    Settings = CompositeSettings

    def __init__(self, name: str, settings: CompositeSettings, parts: dict[str, Scorer]):
        super().__init__(name, {"kind": self.kind, **settings.model_dump()})
        self.settings, self.parts = settings, parts
        self.pool = ThreadPoolExecutor(max_workers=len(parts), thread_name_prefix=f"composite-{name}")
        # What a trainer is given for an item that failed: the parts' neutral values, combined
        self.neutral_reward = self._combine({n: self._value(n, s.neutral_reward) for n, s in parts.items()})[0]

    @classmethod
    def load(cls, context: LoadContext) -> "Composite":
        name, lookup = context.name or cls.kind, context.lookup
        parsed = cls.settings_from(context)
        if lookup is None:
            raise ModelLoadError(f"{name}: a composite is built from configured models, in the service or the CLI")
        parts = {}
        for part, spec in parsed.parts.items():
            try:
                parts[part] = lookup(spec.model)
            except InputError as e:  # an unknown name
                raise ModelLoadError(f"{name}: settings.parts.{part}.model: {e}") from None
        return cls(name, parsed, parts)

    def _value(self, part: str, reward: float) -> float:
        return TRANSFORMS[self.settings.parts[part].transform](reward)

    def _combine(self, values: dict[str, float | None]) -> tuple[float, list[str], str | None]:
        """(reward, the parts that counted, the failed part that fails the item or None)."""
        def met(requires: dict[str, float]) -> bool | str:
            for part, minimum in requires.items():
                if values[part] is None:
                    return part
                if values[part] < minimum:
                    return False
            return True

        gate = met(self.settings.requires)
        if isinstance(gate, str):
            return 0.0, [], gate
        if not gate:
            return self.settings.floor, [], None
        total, counted = 0.0, []
        for part, spec in self.settings.parts.items():
            opened = met(spec.requires)
            if isinstance(opened, str) or (opened and values[part] is None):
                return 0.0, [], opened if isinstance(opened, str) else part
            if opened:
                total += spec.weight * values[part]
                counted.append(part)
        return total, counted, None

    def _score_part(self, part: str, items: Sequence[Item]) -> Scores | Exception:
        try:
            return self.parts[part].score(items)
        except (InputError, Busy):  # the request's fault, or overload: the whole request's answer
            raise
        except Exception as e:  # noqa: BLE001  the part failed every item: each item says why
            return e

    def score(self, items: Sequence[Item]) -> Scores:
        names = list(self.parts)
        results = dict(zip(names, self.pool.map(lambda part: self._score_part(part, items), names)))
        rewards, errors, details = [], [], []
        logs: dict[str, list[float]] = {f"part/{n}": [] for n in names}
        for i in range(len(items)):
            values, why = {}, {}
            for part, result in results.items():
                if isinstance(result, Exception):
                    values[part], why[part] = None, f"{type(result).__name__}: {result}"
                    continue
                reward = result.rewards[i]
                values[part] = None if reward is None else self._value(part, reward)
                if reward is None:
                    why[part] = (result.errors or [None] * len(items))[i] or "unscored: the judge's answer could " \
                                                                             "not be read"
            reward, counted, failed = self._combine(values)
            for part in names:
                logs[f"part/{part}"].append(self._value(part, self.parts[part].neutral_reward)
                                            if values[part] is None else values[part])
            rewards.append(None if failed else reward)
            errors.append(f"part {failed} ({self.settings.parts[failed].model}): {why[failed]}" if failed else None)
            details.append({"reward": rewards[-1], "parts": values, "counted": counted,
                            "part_details": {part: result.details[i] for part, result in results.items()
                                             if not isinstance(result, Exception) and result.details}})
        return Scores(rewards, [any(not isinstance(r, Exception) and r.truncated[i] for r in results.values())
                                for i in range(len(items))], errors=errors, details=details, logs=logs)

    def stats(self) -> dict[str, Any]:
        return {"parts": {part: scorer.name for part, scorer in self.parts.items()}}
