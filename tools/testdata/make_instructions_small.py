"""Writes src/common/data/instructions_small/{train,validation}.jsonl: a small Alpaca-style instruction set.

Templated tasks with checkable answers (unit conversion, arithmetic, reversing words, sorting, sentiment of the
shipped sentiment_small sentences), so a short fine-tune visibly changes held-out loss and generations.
Deterministic: `python tools/testdata/make_instructions_small.py` rewrites the same files.
"""

import csv
import json
import random
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2] / "src" / "common" / "data"
OUT = ROOT / "instructions_small"
WORDS = (
    "apple garden river window planet silver candle forest market pencil rocket summer winter bridge castle "
    "dragon engine falcon guitar harbor island jacket kitten ladder meadow needle orange pirate quartz rabbit "
    "saddle ticket umbrella valley wizard yellow zipper anchor basket cactus donkey eagle feather glacier hammer"
).split()
SEED = 20261122
TRAIN, VALIDATION = 320, 64


def sentiment_rows() -> list[tuple[str, str]]:
    with (ROOT / "sentiment_small" / "train.tsv").open(encoding="utf-8") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    return [(r["sentence"], "positive" if r["label"] == "1" else "negative") for r in rows]


def make_record(rng: random.Random, sentiments: list[tuple[str, str]]) -> dict[str, str]:
    kind = rng.randrange(5)
    if kind == 0:
        c = rng.randrange(-40, 105, 5)
        return {"instruction": f"Convert {c} degrees Celsius to Fahrenheit.", "input": "",
                "output": f"{c} degrees Celsius is {c * 9 // 5 + 32} degrees Fahrenheit."}
    if kind == 1:
        word = rng.choice(WORDS)
        return {"instruction": f"Spell the word \"{word}\" backwards.", "input": "",
                "output": f"\"{word}\" spelled backwards is \"{word[::-1]}\"."}
    if kind == 2:
        a, b = rng.randrange(10, 100), rng.randrange(10, 100)
        return {"instruction": f"What is {a} plus {b}?", "input": "", "output": f"{a} plus {b} is {a + b}."}
    if kind == 3:
        numbers = rng.sample(range(1, 100), rng.randrange(3, 7))
        return {"instruction": "Sort these numbers from smallest to largest.",
                "input": ", ".join(map(str, numbers)), "output": ", ".join(map(str, sorted(numbers)))}
    sentence, label = rng.choice(sentiments)
    return {"instruction": "Is the sentiment of this review positive or negative?", "input": sentence,
            "output": f"The review is {label}."}


def main() -> None:
    rng = random.Random(SEED)
    sentiments = sentiment_rows()
    records = [make_record(rng, sentiments) for _ in range(TRAIN + VALIDATION)]
    OUT.mkdir(parents=True, exist_ok=True)
    for name, part in (("train", records[:TRAIN]), ("validation", records[TRAIN:])):
        with (OUT / f"{name}.jsonl").open("w", encoding="utf-8") as f:
            f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in part)


if __name__ == "__main__":
    main()
