"""Build ``ifeval_lite.jsonl``: the project's own small instruction-following dataset.

The requests below were written for flashevolve.  Each item is a short request plus one to
three verifiable constraints; the prompt text is the request followed by each constraint's
``instruction()`` sentence, so what the prompt asks for and what the checker verifies can never
drift apart.  Requests are short and answers are meant to be short, because the default local
model is a 135M-parameter model on CPU.

Run from the repository root:  ``python datasets/build_ifeval_lite.py``
It writes ``datasets/ifeval_lite.jsonl`` (canonical) and the byte-identical package copy
``flashevolve/data/ifeval_lite.jsonl`` (what an installed wheel reads).
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

from flashevolve.tasks.constraints import parse_constraints

C = dict[str, Any]
LOW: C = {"type": "lowercase"}
UP: C = {"type": "uppercase"}
QUOTED: C = {"type": "quoted"}
TITLE: C = {"type": "title"}
JSON: C = {"type": "json"}
NOCOMMA: C = {"type": "no_commas"}
PS: C = {"type": "postscript", "marker": "P.S."}
PS_LOW: C = {"type": "postscript", "marker": "p.s."}  # for items that are all lowercase


def kw(*words: str) -> C:
    return {"type": "include_keywords", "keywords": list(words)}


def ban(*words: str) -> C:
    return {"type": "forbidden_words", "words": list(words)}


def words(lo: int | None = None, hi: int | None = None) -> C:
    out: C = {"type": "word_count"}
    if lo is not None:
        out["min"] = lo
    if hi is not None:
        out["max"] = hi
    return out


def bullets(n: int) -> C:
    return {"type": "bullet_count", "n": n}


def paras(n: int) -> C:
    return {"type": "paragraph_count", "n": n}


def end(phrase: str) -> C:
    return {"type": "end_with", "phrase": phrase}


def start(phrase: str) -> C:
    return {"type": "start_with", "phrase": phrase}


def sents(n: int) -> C:
    return {"type": "max_sentences", "n": n}


def holes(n: int) -> C:
    return {"type": "placeholders", "min": n}


def freq(word: str, n: int) -> C:
    return {"type": "keyword_frequency", "word": word, "min": n}


REPEAT = "REPEAT"  # replaced by a repeat_request constraint carrying the request text

ITEMS: list[tuple[str, list[C | str]]] = [
    ("Describe the moon to a child.", [LOW, sents(3)]),
    ("Name three fruits that are red.", [bullets(3), LOW]),
    ("What is rain?", [words(hi=30), end("Hope this helps.")]),
    ("Give one tip for sleeping better.", [UP, sents(2)]),
    ("Explain what a battery does.", [NOCOMMA, words(hi=40)]),
    ("Write a short greeting for a new neighbor.", [QUOTED, words(hi=25)]),
    ("Suggest a name for a pet goldfish.", [start("My suggestion is"), sents(2)]),
    ("List two benefits of walking.", [bullets(2), end("Keep moving!")]),
    ("Describe the color blue without naming any object.", [ban("sky", "ocean", "sea")]),
    ("Write a haiku about autumn.", [TITLE, LOW]),
    ("Give a fun fact about octopuses.", [kw("arms"), sents(2)]),
    ("What is the capital of France?", [words(hi=12), end("Is there anything else?")]),
    ("Explain why we brush our teeth.", [paras(2), words(hi=80)]),
    ("Write a one-line slogan for a bakery.", [UP, NOCOMMA]),
    ("Return a JSON object with keys name and age for a fictional person.", [JSON]),
    ("Write a short note asking a friend to lunch.", [holes(2), words(hi=50)]),
    ("Tell me what a rainbow is.", [REPEAT, words(hi=60)]),
    ("Describe a sunny day.", [freq("sun", 2), LOW]),
    ("Give advice to a student before an exam.", [PS, sents(3)]),
    ("Name four planets.", [bullets(4), NOCOMMA]),
    ("Explain what a verb is.", [start("A verb"), words(hi=35)]),
    ("Describe your favorite season.", [LOW, NOCOMMA]),
    ("Write a two-sentence story about a lost key.", [sents(2), end("The End.")]),
    ("What do bees make?", [UP, words(hi=15)]),
    ("Write a thank-you message to a teacher.", [QUOTED, NOCOMMA]),
    ("Give three reasons to drink water.", [bullets(3), kw("health")]),
    ("What is a cloud made of?", [words(hi=25), ban("vapor")]),
    ("Write a title and one sentence about the sea.", [TITLE, sents(2)]),
    ("Return a JSON list of three colors.", [JSON]),
    ("Describe a cat in a few words.", [words(hi=10), LOW]),
    ("Explain how to boil an egg.", [bullets(3), end("Enjoy your egg.")]),
    ("What is friendship?", [paras(2), LOW]),
    ("Write a short invitation to a birthday party.", [holes(3), TITLE]),
    ("Say something kind about mornings.", [UP, QUOTED]),
    ("Give a tip for saving money.", [start("Tip:"), sents(1)]),
    ("Name a famous scientist and one discovery.", [NOCOMMA, words(hi=30)]),
    ("Describe the taste of lemon.", [kw("sour"), LOW]),
    ("What is a library?", [REPEAT, sents(2)]),
    ("Write a short weather report for a rainy day.", [UP, end("STAY DRY.")]),
    ("Explain what recycling means.", [words(20, 50), NOCOMMA]),
    ("List three things you can find in a kitchen.", [bullets(3), UP]),
    ("Describe a tree in winter.", [ban("snow", "cold"), sents(3)]),
    ("Write a polite reply declining a meeting.", [PS, holes(1)]),
    ("Return a JSON object describing a book with title and author.", [JSON]),
    ("What is music?", [freq("sound", 2), words(hi=50)]),
    ("Give two tips for learning a language.", [bullets(2), LOW]),
    ("Describe a river.", [paras(2), NOCOMMA]),
    ("What does a firefighter do?", [start("A firefighter"), end("Thank you.")]),
    ("Write a one-sentence motto for a soccer team.", [sents(1), QUOTED]),
    ("Explain what the internet is.", [words(hi=40), LOW]),
    ("Write a tiny poem about the stars.", [TITLE, UP]),
    ("Name three musical instruments.", [bullets(3), end("That is all.")]),
    ("Why is exercise good for you?", [kw("heart", "energy"), sents(3)]),
    ("Describe a busy city street.", [NOCOMMA, sents(3)]),
    ("Write a short apology for being late.", [LOW, QUOTED]),
    ("What is a volcano?", [REPEAT, words(hi=60)]),
    ("Give a recipe idea for breakfast.", [PS, words(hi=60)]),
    ("Describe the sound of the ocean.", [ban("waves"), words(hi=40)]),
    ("Return a JSON object with keys city and country for Tokyo.", [JSON]),
    ("What is gravity?", [UP, sents(2)]),
    ("List two ways to stay calm.", [bullets(2), NOCOMMA]),
    ("Write a sign for a quiet reading room.", [UP, words(hi=12)]),
    ("Describe a dog playing in a park.", [paras(2), words(hi=90)]),
    ("Explain what a map is used for.", [start("a map"), LOW]),
    ("Write an email subject line for a team meeting.", [words(hi=10), NOCOMMA]),
    ("Give a short review of an imaginary restaurant.", [TITLE, holes(1)]),
    ("What is a habit?", [freq("habit", 3), sents(3)]),
    ("Name five colors.", [bullets(5), LOW]),
    ("Describe a mountain at sunrise.", [words(15, 40), end("What a view.")]),
    ("What is a dream?", [QUOTED, sents(2)]),
    ("Write instructions for watering a plant.", [bullets(3), ban("never")]),
    ("Explain why leaves are green.", [kw("sunlight"), words(hi=45)]),
    ("Tell me about the number zero.", [REPEAT, NOCOMMA]),
    ("Write a short message for a birthday card.", [LOW, PS_LOW]),
    ("Return a JSON object with a key answer whose value is the sum of 2 and 3.", [JSON]),
    ("Describe a snowy village.", [UP, NOCOMMA]),
    ("Give three words that rhyme with cat.", [bullets(3), end("Done.")]),
    ("What is a computer?", [sents(2), start("A computer")]),
    ("Describe a quiet evening at home.", [paras(3), LOW]),
    ("Write a short motivational quote.", [QUOTED, end('."')]),
    ("Explain what a calendar is.", [words(hi=30), ban("date", "dates")]),
    ("Write a short profile for a fictional pen pal.", [holes(2), bullets(3)]),
    ("Why do birds sing?", [LOW, words(hi=40)]),
    ("Write a headline about a new park opening.", [UP, TITLE]),
    ("What is kindness?", [kw("help"), NOCOMMA]),
    ("Name two kinds of weather.", [bullets(2), UP]),
    ("Describe a train journey.", [sents(3), end("The journey ends here.")]),
    ("What makes a good friend?", [REPEAT, bullets(2)]),
    ("Give a short tip for staying focused.", [PS_LOW, LOW]),
    ("Return a JSON object with keys day and weather for today.", [JSON]),
    ("Describe the smell of fresh bread.", [freq("bread", 2), words(hi=35)]),
    ("Explain what a bridge is for.", [start("Bridges"), NOCOMMA]),
    ("Write a short welcome message for a museum.", [QUOTED, UP]),
    ("List three animals that live in the sea.", [bullets(3), ban("fish")]),
    ("What is time?", [sents(2), LOW]),
    ("Describe a garden in spring.", [paras(2), kw("flowers")]),
    ("Write a one-line reminder to drink water.", [UP, end("NOW!")]),
    ("What does a farmer do?", [words(hi=30), PS]),
    ("Give two facts about the sun.", [bullets(2), kw("star")]),
    ("Write a short note to leave on a fridge.", [holes(1), LOW]),
    ("Explain what a museum is.", [NOCOMMA, sents(2)]),
    ("Describe the first day of school.", [TITLE, words(hi=60)]),
    ("What is a shadow?", [REPEAT, sents(3)]),
    ("Write a short caption for a beach photo.", [LOW, words(hi=12)]),
    ("List four days of the week.", [bullets(4), UP]),
    ("Explain why the sky looks dark at night.", [words(hi=40), end("Good night.")]),
    ("Describe a cup of tea.", [QUOTED, NOCOMMA]),
    ("Return a JSON object with keys animal and sound for a cow.", [JSON]),
]


def build() -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for index, (request, raw) in enumerate(ITEMS):
        constraints = [
            {"type": "repeat_request", "text": request} if c == REPEAT else c for c in raw
        ]
        models = parse_constraints(constraints)  # fails loudly on a typo in the table above
        prompt = " ".join([request, *(m.instruction() for m in models)])
        rows.append({"id": f"ifl-{index:03d}", "prompt": prompt, "constraints": constraints})
    # A fixed shuffle; this seed was picked so every constraint type occurs in every split.
    order = list(range(len(rows)))
    random.Random(20261129).shuffle(order)
    for rank, index in enumerate(order):
        rows[index]["split"] = "train" if rank < 30 else "val" if rank < 60 else "test"
    return rows


def main() -> None:
    root = Path(__file__).resolve().parent.parent
    text = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in build())
    for target in (
        root / "datasets" / "ifeval_lite.jsonl",
        root / "flashevolve" / "data" / "ifeval_lite.jsonl",
    ):
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text, encoding="utf-8")
        print(f"wrote {target} ({text.count(chr(10))} items)")


if __name__ == "__main__":
    main()
