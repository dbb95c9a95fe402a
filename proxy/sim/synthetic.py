"""Labelled data sets the project makes itself, for the demo and tests: nothing to download.

- `make_intents`: a small banking-intent set with some ambiguous phrasings;
- `separable` / `random_labels`: keyword topics with clean or random labels, the
  easiest and the hardest case for the gate.

Intent utterances are composed from templates and fillers with a
seeded generator, so every machine gets the same set. A few templates are shared
between neighbouring intents, so the set is not trivially separable and the
surrogate has real reasons to defer.
"""

from __future__ import annotations

import random

INTENTS: dict[str, list[str]] = {
    "card_arrival": [
        "when will my {card} arrive",
        "my {card} has not arrived {when}",
        "how long does delivery of the {card} take",
        "is my {card} on its way",
        "i ordered a {card} {when} and it is still not here",
        "track the delivery of my {card}",
    ],
    "card_lost": [
        "i lost my {card} {when}",
        "my {card} was stolen {where}",
        "someone took my {card} {where}",
        "i can't find my {card} anywhere",
        "please freeze my {card}, it is missing",
        "report a missing {card}",
    ],
    "transfer_failed": [
        "my transfer to {who} failed",
        "the payment to {who} did not go through",
        "why was my transfer {when} declined",
        "money i sent to {who} came back",
        "transfer to {who} shows as failed",
        "i tried to send money to {who} but it bounced",
    ],
    "exchange_rate": [
        "what is the exchange rate for {currency}",
        "how much is one {currency} in {currency2}",
        "convert {currency} to {currency2}",
        "what rate do you use for {currency}",
        "is the {currency} rate better {when}",
        "exchange {currency} into {currency2} for me",
    ],
    "balance": [
        "what is my balance",
        "how much money is in my {account}",
        "show the balance of my {account}",
        "check my {account} balance {when}",
        "do i have enough in my {account}",
        "tell me what is left in my {account}",
    ],
    "refund": [
        "i want a refund for {thing}",
        "how do i get my money back for {thing}",
        "the refund for {thing} has not arrived",
        "return {thing} and refund me",
        "refund the charge for {thing}",
        "still waiting for the refund of {thing}",
    ],
    "pin_change": [
        "how do i change my pin",
        "i forgot the pin of my {card}",
        "reset the pin on my {card}",
        "my {card} pin is blocked",
        "can i pick a new pin {when}",
        "unlock my pin after too many tries",
    ],
    "top_up": [
        "how do i top up my {account}",
        "add money to my {account} with my {card}",
        "my top up {when} did not work",
        "top up {currency} to my {account}",
        "why is my top up pending",
        "can i top up by bank transfer",
    ],
}

# Phrasings that sit between two intents: a teacher could fairly say either, so each
# gets one of its two labels at random. The surrogate should learn to defer on them.
AMBIGUOUS: list[tuple[str, tuple[str, str]]] = [
    ("i have not got my {card} and i think it was lost in the post", ("card_arrival", "card_lost")),
    ("my money to {who} came back and i want a refund", ("transfer_failed", "refund")),
    ("how much is in my {account} after the top up {when}", ("balance", "top_up")),
    ("my {card} does not work since i changed the pin", ("pin_change", "card_lost")),
]
AMBIGUOUS_SHARE = 0.08

FILLERS: dict[str, list[str]] = {
    "card": ["card", "debit card", "new card", "credit card", "virtual card", "replacement card"],
    "when": ["yesterday", "last week", "today", "two days ago", "this morning", "last month"],
    "where": ["on the train", "at the station", "in a shop", "abroad", "at work", "in a taxi"],
    "who": ["my landlord", "my friend", "a shop", "my mum", "another bank", "my colleague"],
    "currency": ["euro", "dollar", "pound", "yen", "franc", "krona"],
    "currency2": ["euros", "dollars", "pounds", "yen", "francs", "rupees"],
    "account": ["account", "savings account", "current account", "wallet", "joint account"],
    "thing": ["my order", "a cancelled flight", "the hotel", "a double charge", "the shoes"],
}
PREFIXES = ["", "", "", "hi, ", "hello, ", "please ", "quick question: ", "excuse me, "]
SUFFIXES = ["", "", "", "?", " please", " thanks", ", it is urgent", "!"]


def _fill(template: str, rng: random.Random) -> str:
    text = template
    for slot, words in FILLERS.items():
        while "{" + slot + "}" in text:
            text = text.replace("{" + slot + "}", rng.choice(words), 1)
    return rng.choice(PREFIXES) + text + rng.choice(SUFFIXES)


def make_intents(n: int = 2400, seed: int = 0) -> list[tuple[str, str]]:
    """``n`` distinct (utterance, intent) pairs, near balanced over the intents, shuffled."""
    rng = random.Random(seed)
    labels = sorted(INTENTS)
    seen: set[str] = set()
    rows: list[tuple[str, str]] = []
    attempts = 0
    while len(rows) < n and attempts < n * 50:
        attempts += 1
        if rng.random() < AMBIGUOUS_SHARE:
            template, pair = rng.choice(AMBIGUOUS)
            label = rng.choice(pair)
        else:
            label = labels[len(rows) % len(labels)]
            template = rng.choice(INTENTS[label])
        text = _fill(template, rng)
        if text not in seen:
            seen.add(text)
            rows.append((text, label))
    rng.shuffle(rows)
    return rows


# -- keyword topics ----------------------------------------------------------------
TOPICS: dict[str, list[str]] = {
    "card_arrival": ["card", "arrive", "delivery", "post", "mail", "shipped", "waiting"],
    "exchange_rate": ["rate", "euro", "dollar", "pound", "exchange", "currency", "convert"],
    "lost_card": ["lost", "stolen", "wallet", "missing", "thief", "gone", "misplaced"],
    "top_up": ["top", "up", "topup", "add", "money", "deposit", "balance"],
}
FILLER = ["i", "my", "the", "please", "help", "what", "how", "is", "can", "you", "about", "a"]


def separable(n_per_class: int = 120, seed: int = 0) -> list[tuple[str, str]]:
    """Each input mixes its class's keywords with shared filler words."""
    rng = random.Random(seed)
    out = []
    for label, words in TOPICS.items():
        for _ in range(n_per_class):
            toks = rng.sample(words, 3) + rng.sample(FILLER, 4)
            rng.shuffle(toks)
            out.append((" ".join(toks) + f" {rng.randint(0, 10**6)}", label))
    rng.shuffle(out)
    return out


def random_labels(n: int = 480, seed: int = 0) -> list[tuple[str, str]]:
    """The same kind of inputs with labels drawn at random: nothing to learn."""
    rng = random.Random(seed)
    labels = list(TOPICS)
    return [(text, rng.choice(labels)) for text, _ in separable(n // len(labels) + 1, seed)][:n]


# -- an agent's tool steps -------------------------------------------------------------------
CITIES = [
    "Paris", "New York", "Tokyo", "Rio de Janeiro", "Cape Town", "Oslo", "São Paulo", "Lima",
    "Berlin", "Nairobi", "Seoul", "Mexico City", "Hanoi", "Lisbon", "Denver", "Perth",
    "Kyiv", "Dublin", "Manila", "Quebec City",
]  # fmt: skip
SONGS = [
    "Yesterday", "Blue Monday", "Hey Jude", "Clair de Lune", "Heroes", "Africa", "Hurt",
    "Jolene", "Wonderwall", "Imagine", "Respect", "Vogue", "Creep", "Halo", "Dreams",
]  # fmt: skip
ARTISTS = [
    "The Beatles", "New Order", "Debussy", "David Bowie", "Toto", "Nina Simone", "Adele",
    "Johnny Cash", "Dolly Parton", "Oasis", "Madonna", "Radiohead", "Beyonce", "Queen", "Blur",
]  # fmt: skip
TIMES = ["6 am", "7:30", "noon", "half past eight", "10 pm", "5:45", "9 am", "midnight",
         "quarter to seven", "8:15", "11 am", "6:30 pm"]  # fmt: skip
GREETINGS = ["hello there", "hi, how are you", "good morning", "thanks a lot", "who are you"]
REPLY = "I can tell you the weather, play music and set alarms."

TOOL_SCHEMAS: list[dict[str, object]] = [
    {"type": "function", "function": {"name": "get_weather", "description": "Weather in a city",
     "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                    "required": ["city"]}}},
    {"type": "function", "function": {"name": "play_music", "description": "Play a song",
     "parameters": {"type": "object", "properties": {"track": {"type": "string"},
                                                     "artist": {"type": "string"}}}}},
    {"type": "function", "function": {"name": "set_alarm", "description": "Set an alarm",
     "parameters": {"type": "object", "properties": {"time": {"type": "string"}},
                    "required": ["time"]}}},
]  # fmt: skip


def _weather(rng: random.Random) -> tuple[str, str, dict[str, object]]:
    city = rng.choice(CITIES)
    form = rng.choice(["what's the weather in {}", "will it rain in {}", "forecast for {}"])
    return form.format(city) + rng.choice(["", "?", " today"]), "get_weather", {"city": city}


def _music(rng: random.Random) -> tuple[str, str, dict[str, object]]:
    song, artist = rng.choice(SONGS), rng.choice(ARTISTS)
    form = rng.choice(["play {} by {}", "put on {} by {}"])
    return form.format(song, artist), "play_music", {"track": song, "artist": artist}


def _alarm(rng: random.Random) -> tuple[str, str, dict[str, object]]:
    time = rng.choice(TIMES)
    form = rng.choice(["wake me up at {}", "set an alarm for {}", "alarm at {}"])
    return form.format(time) + rng.choice(["", " please", " tomorrow"]), "set_alarm", {"time": time}


def make_tool_steps(n: int = 1200, seed: int = 0) -> dict[str, dict[str, object]]:
    """`n` distinct user texts and what a teacher does for each: one tool call with its
    arguments copied from the text, or (a tenth: small talk) one fixed reply."""
    rng = random.Random(seed)
    out: dict[str, dict[str, object]] = {}
    attempts = 0
    while len(out) < n and attempts < n * 50:
        attempts += 1
        if rng.random() < 0.1:
            text = f"{rng.choice(GREETINGS)}{rng.choice(['', '!', ' friend'])} {rng.randint(0, 99)}"
            out.setdefault(text, {"content": REPLY})
            continue
        text, name, args = rng.choice([_weather, _music, _alarm])(rng)
        text = rng.choice(["", "hey, ", "please ", "could you "]) + text
        out.setdefault(text, {"tool_calls": [{"name": name, "arguments": args}]})
    return out
