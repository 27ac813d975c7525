"""Task domains of the toy world: each item has a prompt, an answer in the world's "house style" (the detailed
style of the fusion ground truth, the "GPT-4" answers of the papers, which the toy models also learn), a short
answer style, and a checkable answer.

Domains:
- `arith`:   "What is 7 + 12?"                     answer: the sum
- `facts`:   "What is the capital of Zorvania?"    answer: an attribute of an invented country
- `strings`: "Write the word 'kelo' backwards."    answer: the reversed word
Multi-turn dialogues chain items of several domains.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

DOMAINS = ("arith", "facts", "strings")

_SYLLABLES = ["ka", "lo", "mi", "ru", "te", "zan", "vor", "pel", "qui", "do", "sha", "nek", "bri", "ul", "fa", "gio"]
_ATTRIBUTES = {
    "capital": ("What is the capital of {c}?", "The capital of {c} is {v}. The answer is {v}.", "{v}."),
    "river": ("Which river flows through {c}?", "The great river of {c} is the {v}. The answer is {v}.",
              "The {v}."),
    "ruler": ("Who rules {c}?", "{c} is ruled by Queen {v}. The answer is {v}.", "Queen {v}."),
}


@dataclass(frozen=True)
class Item:
    domain: str
    key: str  # stable identity of the item inside its domain
    prompt: str
    gt: str  # the house style: the fusion ground truth's detailed response
    short: str  # the terse style the toy models learn
    answer: str  # what the checker looks for


def _word(rng: random.Random, n_syll: int) -> str:
    return "".join(rng.choice(_SYLLABLES) for _ in range(n_syll))


def arith_items(n_max: int) -> list[Item]:
    items = []
    for a in range(n_max):
        for b in range(n_max):
            s = a + b
            items.append(
                Item(
                    "arith",
                    f"{a}+{b}",
                    f"What is {a} + {b}?",
                    f"We add {a} and {b}: {a} + {b} = {s}. The answer is {s}.",
                    f"{a} + {b} = {s}.",
                    str(s),
                )
            )
    return items


def fact_items(n_countries: int, seed: int) -> list[Item]:
    rng = random.Random(f"facts-{seed}")
    names: set[str] = set()
    countries = []
    while len(countries) < n_countries:
        c = _word(rng, 2).capitalize() + rng.choice(["ia", "land", "ovia", "stan"])
        if c not in names:
            names.add(c)
            countries.append(c)
    items = []
    for c in countries:
        for attr, (q, gt, short) in _ATTRIBUTES.items():
            v = _word(rng, 2).capitalize()
            items.append(Item("facts", f"{c}.{attr}", q.format(c=c), gt.format(c=c, v=v), short.format(v=v), v))
    return items


def string_items(n_words: int, seed: int) -> list[Item]:
    rng = random.Random(f"strings-{seed}")
    words: list[str] = []
    while len(words) < n_words:
        w = _word(rng, 2)
        if w not in words and w != w[::-1]:
            words.append(w)
    items = []
    for w in words:
        r = w[::-1]
        spelled, backwards = "-".join(w), "-".join(r)
        items.append(
            Item(
                "strings",
                w,
                f"Write the word '{w}' backwards.",
                f"'{w}' is spelled {spelled}; from the end, {backwards}. The answer is {r}.",
                f"'{r}'.",
                r,
            )
        )
    return items


def all_items(sizes: dict[str, int], seed: int) -> dict[str, list[Item]]:
    return {
        "arith": arith_items(sizes["arith"]),
        "facts": fact_items(sizes["facts"], seed),
        "strings": string_items(sizes["strings"], seed),
    }


_NUM = re.compile(r"-?\d+")


def check(item: Item, response: str) -> bool:
    """Exact match of the item's answer in a response (the last number for arithmetic)."""
    text = response.strip()
    if item.domain == "arith":
        nums = _NUM.findall(text)
        return bool(nums) and nums[-1] == item.answer
    if item.domain == "strings":
        words = re.findall(r"[a-z]+", text.lower())
        return bool(words) and words[-1] == item.answer
    return re.search(rf"\b{re.escape(item.answer)}\b", text) is not None
