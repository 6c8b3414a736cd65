"""Contexts a subject is seen in: plain, after generic text, and inside the chat template.

Each context is a prefix string written before the subject. Generic prefixes are sampled
from the model itself (as MEMIT does), so no corpus is downloaded.
"""

from __future__ import annotations

import torch

from ..model import LoadedModel

# Generic user-turn openers: the words a user question often puts before a name. They are
# not tied to any relation; the chat-template prefixes put the subject where questions put it.
USER_OPENERS = ("", "Tell me about ", "What do you know about ", "Where does ", "What is ", "Which ",
                "What does ", "How does ", "Who is ", "Tell me ", "In which ", "Can you tell me about ")
# Open requests about a subject; the assistant's reply restates a fact in the edit's own words.
# RoSE uses the first `EditConfig.open_requests` of them (2 by default); none names a relation.
OPEN_REQUESTS = ("Tell me about {}.", "What do you know about {}?", "Can you tell me something about {}?",
                 "Give me a fact about {}.", "What can you say about {}?", "I have a question about {}.")
# Questions about a subject whose reply starts by naming it; only the restated name is scored,
# so that the value leaves the name intact whatever is asked (no relation words, no object).
NAME_QUESTIONS = ("Who is {}?", "Can you describe {}?", "What does {} like?", "Where is {} from?",
                  "What is {} known for?", "Give me a fact about {}.")

# Other people, made up here (no name of any benchmark file), whose keys RoSE's solve holds at
# zero change (`EditConfig.keep_names`), so that writing one person's facts leaves the answers
# about other people as they were (the benchmark's locality is mostly other subjects' questions).
OTHER_NAMES = ("Marta Kowalczyk", "Jonas Eberhardt", "Amara Nwosu", "Tobias Lindgren", "Sofia Marchetti",
               "Kenji Watanabe", "Elena Petrova", "Malik Haddad", "Ines Carvalho", "Oliver Brennan",
               "Priscilla Moreau", "Dmitri Volkov", "Hana Suzuki", "Rafael Ortega", "Greta Halvorsen",
               "Samuel Achebe",
               "Lucia Fernandez", "Aleksander Nowak", "Chidi Eze", "Freya Johansson", "Mateo Rossi",
               "Yuki Tanaka", "Nadia Haddad", "Henrik Larsen", "Beatriz Santos", "Connor Gallagher",
               "Amelie Laurent", "Viktor Sokolov", "Mei Chen", "Diego Morales", "Astrid Nilsson",
               "Kwame Mensah", "Clara Becker", "Arjun Mehta", "Leila Farahani", "Sebastian Novak",
               "Zara Hussain", "Emil Schneider", "Lina Haddou", "Patrick Doyle", "Julia Wagner",
               "Omar Farouk", "Isabel Ruiz", "Nikolai Ivanov", "Aiko Yamamoto", "Gabriel Silva",
               "Sigrid Berg", "Tariq Rahman", "Camille Dubois", "Hugo Martin", "Ayesha Siddiqui",
               "Lars Andersen", "Natalia Kowalski", "Felix Hoffmann", "Rosa Jimenez", "Kofi Boateng",
               "Helena Costa", "Ravi Kumar", "Elif Yilmaz", "Anton Petersen", "Maya Goldberg",
               "Bruno Ferreira", "Sana Qureshi", "Walter Fischer")

_generic_cache: dict[tuple, list[str]] = {}


def generic_prefixes(lm: LoadedModel, n: int, n_tokens: int, seed: int = 0) -> list[str]:
    """MEMIT's context templates: short texts the model samples itself, each followed by '. '."""
    key = (lm.cache_id, n, n_tokens, seed)
    if key not in _generic_cache:
        tok, model = lm.tokenizer, lm.model
        starts = ["The", "Therefore", "Because", "I", "You"]
        starts = [starts[i % len(starts)] for i in range(n)]
        torch.manual_seed(seed)
        old_side = tok.padding_side
        tok.padding_side = "left"
        enc = tok(starts, return_tensors="pt", padding=True).to(lm.device)
        tok.padding_side = old_side
        with torch.no_grad():
            out = model.generate(**enc, do_sample=True, top_k=5, max_new_tokens=n_tokens,
                                 pad_token_id=tok.pad_token_id)
        texts = tok.batch_decode(out[:, enc.input_ids.shape[1]:], skip_special_tokens=True)
        _generic_cache[key] = [
            (s + " " + t).replace("{", " ").replace("}", " ").replace("\n", " ").strip() + ". "
            for s, t in zip(starts, texts)
        ]
    return _generic_cache[key]


def chat_prefix(lm: LoadedModel, user_text_before_subject: str) -> str:
    """The chat-template text up to where the subject appears in a user message."""
    marker = "\x00SUBJ\x00"
    text = chat_text(lm, marker)
    return text[: text.index(marker)].replace(marker, "") + user_text_before_subject


def chat_text(lm: LoadedModel, user: str, assistant: str | None = None) -> str:
    """A user message (and optionally the start of the assistant reply) through the chat template."""
    tok = lm.tokenizer
    messages = [{"role": "user", "content": user}]
    if getattr(tok, "chat_template", None):
        text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    else:  # base models: a plain Q/A frame
        text = f"Question: {user}\nAnswer:"
    return text if assistant is None else text + assistant
