"""Families of generated preference cycles: the data `plaudit experiment cyclic` fits.

GPM's claim is about intransitive preferences in general, so defaults chosen on one set of
cycles must hold on others. A `CycleSet` says how one set is made: the words the answers
are built from, how an answer wraps its word (the bare word, a sentence, a code snippet,
several sentences), how the prompt is worded, how many prompts, the length of each prompt's
cycle, and what share of prompts is ordered transitively instead (a mixture). Every prompt
has answers of its own (no word shared with another prompt while the vocabulary lasts), so
no single ordering, nor one direction in embedding space, fits a set.

A cycle of L answers r0..r(L-1) gives L pairs: r(i+1) beats r(i), and r0 beats r(L-1). A
transitive prompt gives every pair of its L answers, the later one winning.
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Literal

from .data import PreferencePair

WORDS = tuple("""river stone cloud maple fern moss pebble breeze meadow brook willow thunder frost ember dune
    canyon glacier lichen orchid pine reef tide valley aurora cedar delta marsh summit tundra grove lantern anchor
    compass harbor violin candle ladder mirror basket feather garden island jacket kettle lemon magnet needle
    orange pepper quilt rocket saddle tiger umbrella wagon yogurt zebra acorn bamboo cactus dolphin eagle falcon
    gravel honey iris jungle koala lizard mango nectar olive parrot quartz raven salmon tulip unicorn vapor walnut
    beacon cobalt dagger emerald fossil goblet hammock igloo jasmine kayak""".split())  # 90: every prompt its own three
OTHER_WORDS = tuple("""apricot biscuit carrot donut eggplant fig granola hazelnut icing jelly kiwi lentil muffin
    noodle oyster pancake quinoa radish spinach tofu udon vanilla waffle yam zucchini almond barley cherry dumpling
    espresso fennel garlic hummus ginger jalapeno kale lime mustard nutmeg oregano papaya raisin saffron thyme
    turnip vinegar wasabi anvil bolt chisel drill easel funnel gear hinge jack knob lever mallet nozzle piston
    pulley rivet spanner trowel valve winch axle bracket clamp dowel file gauge hook joist latch mortar nail plank
    rasp shim spring strap sprocket tack vise washer wedge wrench ratchet""".split())  # 90, none in WORDS
VOCABULARIES = {"nature": WORDS, "pantry": OTHER_WORDS}

# How an answer carries its word, and how a prompt is worded.
ANSWERS = {
    "word": "{w}",
    "sentence": "I would go with {w}, since it suits the topic best.",
    "code": "def choose():\n    return {w!r}\n",
    "paragraph": ("My choice is {w}. Having weighed the options, {w} suits the topic best. "
                  "Others might argue otherwise, but {w} is the answer I would give. In short: {w}."),
}
PROMPTS = {
    "question": "Question {p}: pick the best word for the topic {topic}.",
    "instruction": "Task #{p}. Name one thing that goes with '{topic}', and say why.",
    "code": "Write a Python function `choose()` that returns the best name for item {p} ({topic}).",
}


@dataclass(frozen=True)
class CycleSet:
    name: str
    vocabulary: Literal["nature", "pantry"] = "nature"
    answer: Literal["word", "sentence", "code", "paragraph"] = "word"
    prompt: Literal["question", "instruction", "code"] = "question"
    prompts: int = 30
    cycle: int = 3  # answers per prompt
    transitive: float = 0.0  # the share of prompts ordered transitively instead of in a cycle
    seed: int = 0

    def pairs(self) -> list[PreferencePair]:
        """The set's pairs, each prompt's in a random order; `transitive` prompts first."""
        rng = random.Random(self.seed)
        vocabulary = VOCABULARIES[self.vocabulary]
        words = rng.sample(vocabulary, len(vocabulary))
        ordered = round(self.transitive * self.prompts)
        pairs = []
        for p in range(self.prompts):
            answers = [ANSWERS[self.answer].format(w=words[(self.cycle * p + i) % len(words)])
                       for i in range(self.cycle)]
            prompt = PROMPTS[self.prompt].format(p=p, topic=rng.choice(vocabulary))
            if p < ordered:
                wins = [(answers[j], answers[i]) for i in range(self.cycle) for j in range(i + 1, self.cycle)]
            else:
                wins = [(answers[i + 1], answers[i]) for i in range(self.cycle - 1)] + [(answers[0], answers[-1])]
            rng.shuffle(wins)
            pairs += [PreferencePair(prompt=prompt, chosen=chosen, rejected=rejected) for chosen, rejected in wins]
        return pairs

    def transitive_pairs(self) -> int:
        """How many of `pairs()` come first from transitive prompts."""
        return round(self.transitive * self.prompts) * self.cycle * (self.cycle - 1) // 2


# The family `plaudit experiment cyclic` runs. "words" is the set GPM's defaults were chosen
# on (30 prompts, bare words, seed 0); the others vary one or two things each.
FAMILY = (
    CycleSet("words"),
    CycleSet("sentences", vocabulary="pantry", answer="sentence", prompt="instruction", seed=1),
    CycleSet("code", answer="code", prompt="code", seed=2),
    CycleSet("paragraphs", vocabulary="pantry", answer="paragraph", seed=3),
    CycleSet("few-prompts", prompts=12, seed=4),
    CycleSet("many-prompts", vocabulary="pantry", prompts=60, seed=5),
    CycleSet("four-cycles", cycle=4, prompts=22, seed=6),
    CycleSet("five-cycles", vocabulary="pantry", answer="sentence", cycle=5, prompts=18, seed=7),
    CycleSet("mixed", transitive=0.5, seed=8),
)
SETS = {s.name: s for s in FAMILY}
