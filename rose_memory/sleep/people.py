"""Other people for the sleep's unrelated prompts: made-up names and everyday questions about a person.

The student must keep answering questions about everyone else as it did. Names the model has
never seen (like the people a memory is told about) are made from syllables, so the prompts
the student is held to look like the ones it must not change; the questions cover the
attributes people are commonly asked about, not the relations of any particular write.
"""

from __future__ import annotations

import random

from ..editing.contexts import OTHER_NAMES

_ONSETS = ("b", "br", "c", "d", "dr", "f", "g", "gr", "h", "j", "k", "l", "m", "n", "p", "r", "s", "st",
           "t", "th", "v", "w", "z")
_VOWELS = ("a", "e", "i", "o", "u", "a", "e", "i", "ia", "ou", "ay")
_CODAS = ("", "", "", "n", "r", "l", "s", "tt", "nd", "rt", "m", "y", "x")

# Everyday questions about a person (none is about one write's relation in particular).
PERSON_QUESTIONS = ("Where does {} live?", "What does {} do for a living?", "What is {} known for?",
                    "Who is {}?", "What are {}'s hobbies?", "Which language does {} speak?", "What does {} like?",
                    "Tell me about {}.", "Does {} have a pet?", "What is {}'s favorite thing?",
                    "What is {}'s job?", "Where was {} born?", "How old is {}?", "What sport does {} play?",
                    "What music does {} listen to?", "What is {}'s favorite movie?", "Which school did {} go to?",
                    "What car does {} drive?", "What does {} eat for breakfast?", "Who is {}'s best friend?",
                    "What is {}'s favorite book?", "Which team does {} support?", "What is {}'s nickname?",
                    "What instrument can {} play?", "What is {}'s favorite drink?", "Where does {} work?",
                    "What color are {}'s eyes?", "Which country is {} from?", "What does {} do on weekends?",
                    "Tell me something about {}'s family.")


def _word(rng: random.Random) -> str:
    syllables = rng.choice((2, 2, 3))
    w = "".join(rng.choice(_ONSETS) + rng.choice(_VOWELS) for _ in range(syllables)) + rng.choice(_CODAS)
    return w.capitalize()


def made_up_names(n: int, seed: int, avoid: str = "") -> list[str]:
    """`n` distinct two-word names from syllables, the same for the same seed; none equal to `avoid`."""
    rng = random.Random(f"names:{seed}")
    out: list[str] = []
    while len(out) < n:
        name = f"{_word(rng)} {_word(rng)}"
        if name != avoid and name not in out:
            out.append(name)
    return out


def recombined_names(n: int, seed: int, avoid: str = "") -> list[str]:
    """`n` distinct names that look like real ones: a first name and a surname of two different
    people of `contexts.OTHER_NAMES`, never one of those people themselves nor `avoid`."""
    firsts = sorted({p.split()[0] for p in OTHER_NAMES})
    lasts = sorted({p.split()[-1] for p in OTHER_NAMES})
    rng = random.Random(f"recombined:{seed}")
    taken = set(OTHER_NAMES) | {avoid}
    out: list[str] = []
    while len(out) < n:
        name = f"{rng.choice(firsts)} {rng.choice(lasts)}"
        if name not in taken and name not in out:
            out.append(name)
    return out


def person_questions(name: str, k: int, offset: int) -> list[str]:
    """`k` of the everyday questions about `name`, starting at `offset` (cycled)."""
    return [PERSON_QUESTIONS[(offset + j) % len(PERSON_QUESTIONS)].format(name) for j in range(k)]
