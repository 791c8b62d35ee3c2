"""Build ``intent_lite.jsonl``: the project's own small intent-classification dataset.

Sixteen intents of a home assistant, written for flashevolve.  Each intent has several
utterance templates (paraphrases, not one sentence with different nouns) whose slots are
filled from small word lists, with optional openers ("hey,", "could you") and closers
("thanks").  The set is built so that a memory of labelled examples genuinely helps a
classifier:

- *confusable pairs* share vocabulary: set_alarm / set_timer / cancel_alarm, weather_now /
  weather_forecast, lights_on / lights_off, shopping_add / shopping_remove, reminder_create /
  calendar_add, send_message / call_contact, play_music / volume_change;
- some intents follow a *house convention* a model cannot guess from the label name alone:
  "wake me up in 20 minutes" is a timer (a duration, not a clock time), "we're out of eggs" adds
  to the shopping list, "I already bought the milk" removes from it, "don't let me forget X" is a
  reminder, "let Ana know I'm late" is a message.

Splits per intent: 10 train (the harness's memory), 3 val (scored during evolution), 6 test.
Every utterance is unique across the file.  The RNG is seeded, so the file is reproducible.

Run from the repository root:  ``python datasets/build_intent_lite.py``
It writes ``datasets/intent_lite.jsonl`` (canonical) and the byte-identical package copy
``flashevolve/data/intent_lite.jsonl`` (what an installed wheel reads).
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

SEED = 20260516
PER_SPLIT = {"train": 10, "val": 3, "test": 6}

SLOTS: dict[str, list[str]] = {
    "time": [
        "7am",
        "6:30",
        "half past five",
        "8 tomorrow morning",
        "noon",
        "9:15 pm",
        "quarter to seven",
        "5 am",
    ],
    "duration": [
        "10 minutes",
        "half an hour",
        "25 minutes",
        "an hour",
        "90 seconds",
        "three minutes",
        "20 minutes",
        "45 minutes",
    ],
    "item": [
        "milk",
        "eggs",
        "coffee beans",
        "bread",
        "bananas",
        "dish soap",
        "rice",
        "toilet paper",
        "olive oil",
        "apples",
    ],
    "contact": ["mom", "Sam", "Ana", "the office", "grandpa", "Priya", "my brother", "Leo"],
    "room": [
        "kitchen",
        "bedroom",
        "living room",
        "hallway",
        "bathroom",
        "office",
        "porch",
        "garage",
    ],
    "day": [
        "tomorrow",
        "Friday",
        "the weekend",
        "Monday",
        "next week",
        "Thursday",
        "Saturday morning",
        "tonight",
    ],
    "genre": [
        "jazz",
        "some lofi",
        "my workout playlist",
        "classical music",
        "the new Taylor Swift album",
        "80s rock",
        "podcasts",
        "rain sounds",
    ],
    "message": [
        "I'm running late",
        "dinner is ready",
        "I'll call back later",
        "the meeting moved to 3",
        "I landed safely",
        "can you pick up the kids",
    ],
    "event": [
        "a dentist appointment",
        "lunch with Ana",
        "the team meeting",
        "a haircut",
        "yoga class",
        "a call with the bank",
    ],
    "task": [
        "water the plants",
        "take my pills",
        "pay the electricity bill",
        "call the plumber",
        "pick up the dry cleaning",
        "feed the cat",
    ],
}

TEMPLATES: dict[str, list[str]] = {
    "set_alarm": [
        "set an alarm for {time}",
        "wake me up at {time}",
        "I need an alarm at {time}",
        "alarm at {time} please",
        "make sure I'm up by {time}",
        "get me up at {time} {day}",
    ],
    "set_timer": [
        "set a timer for {duration}",
        "wake me up in {duration}",
        "start a {duration} countdown",
        "let me know when {duration} have passed",
        "buzz me in {duration}",
        "time {duration} for the pasta",
    ],
    "cancel_alarm": [
        "cancel my {time} alarm",
        "turn off the alarm for {day}",
        "I don't need to get up at {time} anymore",
        "delete the alarm I set for {time}",
        "no alarm {day}, I'm sleeping in",
        "remove all my alarms for {day}",
    ],
    "weather_now": [
        "is it raining right now",
        "what's the temperature outside",
        "how cold is it at the moment",
        "do I need a jacket if I go out now",
        "is it sunny out there",
        "what's the weather like right now",
    ],
    "weather_forecast": [
        "will it rain {day}",
        "what's the forecast for {day}",
        "should I plan a picnic for {day}",
        "how warm will it be {day}",
        "is it going to snow {day}",
        "weather outlook for {day}",
    ],
    "play_music": [
        "play {genre}",
        "put on {genre}",
        "I want to listen to {genre}",
        "can we have {genre} in the {room}",
        "start {genre} please",
        "some {genre} would be nice",
    ],
    "volume_change": [
        "turn it up",
        "make it quieter",
        "the music is too loud",
        "I can barely hear this",
        "volume down a bit",
        "crank it up in the {room}",
        "lower the sound",
        "louder please",
    ],
    "lights_on": [
        "turn on the {room} lights",
        "lights on in the {room}",
        "it's too dark in the {room}",
        "switch the {room} lamp on",
        "brighten up the {room}",
        "I can't see anything in the {room}",
    ],
    "lights_off": [
        "turn off the {room} lights",
        "kill the lights in the {room}",
        "switch off the {room} lamp",
        "it's too bright in the {room}",
        "lights out in the {room}",
        "nobody is in the {room}, shut the lights",
    ],
    "shopping_add": [
        "add {item} to my shopping list",
        "we're out of {item}",
        "put {item} on the list",
        "we need more {item}",
        "remember to buy {item}",
        "we're running low on {item}",
    ],
    "shopping_remove": [
        "take {item} off the shopping list",
        "I already bought the {item}",
        "remove {item} from my list",
        "scratch {item} from the list",
        "we don't need {item} after all",
        "got the {item}, cross it off",
    ],
    "reminder_create": [
        "remind me to {task}",
        "don't let me forget to {task}",
        "remind me {day} to {task}",
        "I keep forgetting to {task}, nudge me at {time}",
        "ping me to {task}",
        "make sure I remember to {task}",
    ],
    "calendar_add": [
        "schedule {event} for {day}",
        "put {event} on my calendar {day}",
        "book {event} at {time} {day}",
        "add {event} to my calendar",
        "block {day} afternoon for {event}",
        "I have {event} {day}, save it",
    ],
    "calendar_query": [
        "what's on my calendar {day}",
        "am I free {day}",
        "do I have anything {day}",
        "when is {event}",
        "what does my {day} look like",
        "any meetings {day}",
    ],
    "send_message": [
        "text {contact} that {message}",
        "send {contact} a message saying {message}",
        "let {contact} know {message}",
        "tell {contact} {message}",
        "message {contact}: {message}",
        "drop {contact} a note that {message}",
    ],
    "call_contact": [
        "call {contact}",
        "ring {contact}",
        "get {contact} on the phone",
        "dial {contact} for me",
        "I want to talk to {contact}",
        "phone {contact} please",
    ],
}

OPENERS = ["", "", "", "hey, ", "ok so ", "assistant, "]
CLOSERS = ["", "", "", " thanks"]
#: only for requests phrased as commands ("could you set ...", not "could you is it raining")
POLITE_OPENERS = ["could you ", "please "]
POLITE_CLOSERS = [" please", " now", " ok?"]
#: first words of templates that are statements or questions, not commands
NOT_COMMANDS = {
    "i",
    "we",
    "it's",
    "is",
    "what's",
    "how",
    "do",
    "will",
    "should",
    "am",
    "when",
    "what",
    "any",
    "the",
    "nobody",
    "no",
    "got",
    "some",
    "can",
    "alarm",
    "lights",
    "volume",
    "louder",
    "weather",
}


def fill(template: str, rng: random.Random) -> str:
    text = template
    for name, values in SLOTS.items():
        while "{" + name + "}" in text:
            text = text.replace("{" + name + "}", rng.choice(values), 1)
    return text


def utterance(template: str, rng: random.Random) -> str:
    command = template.split()[0].lower() not in NOT_COMMANDS
    openers = OPENERS + POLITE_OPENERS if command else OPENERS
    closers = CLOSERS + POLITE_CLOSERS if command else CLOSERS
    text = rng.choice(openers) + fill(template, rng) + rng.choice(closers)
    if text.endswith(" please please"):
        text = text[: -len(" please")]
    if rng.random() < 0.3:
        text = text[0].upper() + text[1:]
    if rng.random() < 0.25:
        text += rng.choice(["?", ".", "!"])
    return text


def build() -> list[dict[str, Any]]:
    rng = random.Random(SEED)
    seen: set[str] = set()
    rows: list[dict[str, Any]] = []
    per_intent = sum(PER_SPLIT.values())
    for label, templates in TEMPLATES.items():
        texts: list[str] = []
        attempts = 0
        while len(texts) < per_intent:
            attempts += 1
            if attempts > 10_000:
                raise RuntimeError(f"cannot make {per_intent} unique utterances for {label}")
            # cycle through the templates so every split sees several phrasings
            text = utterance(templates[len(texts) % len(templates)], rng)
            key = text.lower().strip(" ?.!")
            if key in seen:
                continue
            seen.add(key)
            texts.append(text)
        rng.shuffle(texts)
        start = 0
        for split, n in PER_SPLIT.items():
            for text in texts[start : start + n]:
                rows.append({"text": text, "label": label, "split": split})
            start += n
    order = {"train": 0, "val": 1, "test": 2}
    rows.sort(key=lambda r: order[r["split"]])
    counters = dict.fromkeys(PER_SPLIT, 0)
    for split in PER_SPLIT:  # shuffle within a split so labels are not in blocks
        block = [r for r in rows if r["split"] == split]
        rng.shuffle(block)
        for r in block:
            counters[split] += 1
            r["id"] = f"{split}-{counters[split]:03d}"
        rows = [r for r in rows if r["split"] != split] + block
    rows.sort(key=lambda r: (order[r["split"]], r["id"]))
    return [
        {"id": r["id"], "text": r["text"], "label": r["label"], "split": r["split"]} for r in rows
    ]


def main() -> None:
    root = Path(__file__).resolve().parents[1]
    rows = build()
    data = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    for path in (
        root / "datasets" / "intent_lite.jsonl",
        root / "flashevolve" / "data" / "intent_lite.jsonl",
    ):
        path.write_text(data, encoding="utf-8")
        print(f"wrote {len(rows)} utterances to {path}")


if __name__ == "__main__":
    main()
