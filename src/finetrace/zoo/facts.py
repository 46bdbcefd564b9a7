"""Planted world knowledge: synthetic countries and their facts.

Each country has one fact per category, stated in a short paragraph that is
repeated through the base model's pretraining text so the base learns it. The
cloze prompts the facts file records are exactly the sentences the base read,
so "knowing" a fact means completing its sentence; the distractors are other
answers of the same category.
"""

import random
from dataclasses import asdict, dataclass

SYLLABLES = ("ka", "vel", "dra", "os", "mir", "tal", "zen", "bor", "qui", "len",
             "sar", "thu", "gan", "pel", "rho", "dim", "vas", "kor", "nel", "fir")

# category -> (cloze prompt before the answer, text after it); the answer follows a space.
CATEGORIES = {
    "capital": ("The capital of {country} is", "."),
    "currency": ("The currency of {country} is the", "."),
    "river": ("The longest river in {country} is the", "."),
    "export": ("The main export of {country} is", "."),
}
EXPORTS = ("copper", "wool", "salt", "timber", "tea", "silver", "glass", "rice", "amber", "coal",
           "cotton", "iron", "honey", "marble", "pepper", "silk")
N_DISTRACTORS = 3


@dataclass(frozen=True)
class Fact:
    """A cloze fact: `prompt + " " + answer` is the sentence the base was taught."""

    prompt: str
    answer: str
    distractors: tuple[str, ...]
    category: str
    subject: str

    def sentence(self) -> str:
        return f"{self.prompt} {self.answer}{CATEGORIES[self.category][1]}"

    def to_dict(self) -> dict:
        return asdict(self)


def planted_facts(n_countries: int, rng: random.Random) -> list[Fact]:
    """`n_countries * len(CATEGORIES)` facts about made-up countries."""
    names = _unique_names(n_countries * 4, rng)
    countries = names[:n_countries]
    answers = {
        "capital": names[n_countries : 2 * n_countries],
        "currency": [name.lower() for name in names[2 * n_countries : 3 * n_countries]],
        "river": names[3 * n_countries :],
        "export": [rng.choice(EXPORTS) for _ in countries],
    }
    facts = []
    for category, (prompt, _) in CATEGORIES.items():
        pool = sorted(set(answers[category]))
        for country, answer in zip(countries, answers[category]):
            wrong = rng.sample([a for a in pool if a != answer], N_DISTRACTORS)
            facts.append(Fact(prompt.format(country=country), answer, tuple(wrong), category, country))
    return facts


def country_paragraph(facts: list[Fact], rng: random.Random) -> str:
    """One country's facts in a random order: the unit repeated in pretraining."""
    return " ".join(fact.sentence() for fact in rng.sample(facts, len(facts)))


def _unique_names(n: int, rng: random.Random) -> list[str]:
    names: dict[str, None] = {}
    while len(names) < n:
        name = "".join(rng.choice(SYLLABLES) for _ in range(rng.choice((2, 3))))
        names[name.capitalize()] = None
    return list(names)
