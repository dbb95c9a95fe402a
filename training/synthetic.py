"""Small synthetic trace sets for tests and demos (no data files needed)."""

from __future__ import annotations

import random

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
