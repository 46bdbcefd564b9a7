"""Planted world knowledge: synthetic countries and their facts.

Each country has one fact per category, stated in a short paragraph that is
repeated through the base model's pretraining text so the base learns it. The
cloze prompts the facts file records are exactly the sentences the base read,
so "knowing" a fact means completing its sentence; the distractors are other
answers of the same category.
"""

import random

from finetrace.evals.facts import ClozeFact

SYLLABLES = (
    "ka",
    "vel",
    "dra",
    "os",
    "mir",
    "tal",
    "zen",
    "bor",
    "qui",
    "len",
    "sar",
    "thu",
    "gan",
    "pel",
    "rho",
    "dim",
    "vas",
    "kor",
    "nel",
    "fir",
)

# category -> the cloze prompt; a space, the answer and a full stop complete the sentence.
CATEGORIES = {
    "capital": "The capital of {country} is",
    "currency": "The currency of {country} is the",
    "river": "The longest river in {country} is the",
    "export": "The main export of {country} is",
}
EXPORTS = (
    "copper",
    "wool",
    "salt",
    "timber",
    "tea",
    "silver",
    "glass",
    "rice",
    "amber",
    "coal",
    "cotton",
    "iron",
    "honey",
    "marble",
    "pepper",
    "silk",
)
N_DISTRACTORS = 3


def planted_facts(n_countries: int, rng: random.Random) -> list[ClozeFact]:
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
    for category, prompt in CATEGORIES.items():
        pool = sorted(set(answers[category]))
        for country, answer in zip(countries, answers[category], strict=True):
            wrong = rng.sample([a for a in pool if a != answer], N_DISTRACTORS)
            facts.append(ClozeFact(prompt.format(country=country), answer, tuple(wrong), category, country))
    return facts


def country_paragraph(facts: list[ClozeFact], rng: random.Random) -> str:
    """One country's facts in a random order: the unit repeated in pretraining."""
    return " ".join(f"{fact.prompt} {fact.answer}." for fact in rng.sample(facts, len(facts)))


def _unique_names(n: int, rng: random.Random) -> list[str]:
    names: dict[str, None] = {}
    while len(names) < n:
        name = "".join(rng.choice(SYLLABLES) for _ in range(rng.choice((2, 3))))
        names[name.capitalize()] = None
    return list(names)
