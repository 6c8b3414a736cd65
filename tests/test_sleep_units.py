"""The sleep stage's pieces that need no model: the relation grammar, answer cutting, settings."""

import pytest

from rose_memory.facts import EditRequest
from rose_memory.sleep.config import SleepConfig
from rose_memory.sleep.teacher import sentence_with
from rose_memory.sleep.transfer import relation_questions


def _req(prompt: str) -> EditRequest:
    return EditRequest(subject="Mirela Dunst", prompt=prompt, target="X")


def test_possessive_relations_become_questions():
    qs = relation_questions(_req("{}'s favorite drink is"))
    assert "What is Mirela Dunst's favorite drink?" in qs
    assert all("Mirela Dunst" in q for q in qs)


def test_verb_relations_become_questions_in_the_base_form():
    assert "Which city does Mirela Dunst live in?" in relation_questions(_req("{} lives in the city of"))
    assert "What pet does Mirela Dunst have?" in relation_questions(_req("{} has a pet"))
    assert "What does Mirela Dunst play?" in relation_questions(_req("{} plays the"))
    assert "What does Mirela Dunst teach?" in relation_questions(_req("{} teaches"))
    assert "What does Mirela Dunst watch?" in relation_questions(_req("{} watches"))


def test_what_the_grammar_cannot_read_gives_no_question():
    assert relation_questions(_req("{} was born in")) == []
    assert relation_questions(_req("In 1990, {} moved to")) == []


def test_answers_are_cut_after_the_sentence_that_names_the_object():
    text = "Mirela lives in Oslo. She likes tea. Oslo is cold."
    assert sentence_with(text, "Oslo") == "Mirela lives in Oslo."
    assert sentence_with("She lives in Oslo", "Oslo") == "She lives in Oslo"
    assert sentence_with("Oslonian food", "Oslo") is None      # a whole word only


def test_settings_are_checked():
    with pytest.raises(ValueError):
        SleepConfig(stepz=3)
    with pytest.raises(ValueError):
        SleepConfig(modules="attention")
    with pytest.raises(ValueError, match="student_wake"):
        SleepConfig(student_wake=0.0)  # the default keyed delta reads the wake edit
    assert SleepConfig(student_wake=0.0, inputs="free", modules="mlp").student_wake == 0.0
    assert SleepConfig().scale_steps[-1] == 0.0


@pytest.mark.parametrize("bad", ["delta_scales=[]", "canary_min=2", "margin=-1"])
def test_canary_and_hinge_settings_out_of_range_are_refused(bad):
    from rose_memory.errors import RoseMemoryError
    from rose_memory.eval.cli import parse_sleep_settings

    with pytest.raises(RoseMemoryError, match=bad.split("=")[0]):
        parse_sleep_settings([bad])


def test_recombined_people_look_real_but_are_nobody_on_the_list():
    from rose_memory.editing.contexts import OTHER_NAMES
    from rose_memory.sleep.people import recombined_names

    names = recombined_names(40, 0, avoid="Mei Gallagher")
    assert names == recombined_names(40, 0, avoid="Mei Gallagher")       # the same for the same seed
    assert names != recombined_names(40, 1)
    assert len(set(names)) == 40 and "Mei Gallagher" not in names
    assert not set(names) & set(OTHER_NAMES)                             # nobody the write holds by name
    firsts = {p.split()[0] for p in OTHER_NAMES}
    lasts = {p.split()[-1] for p in OTHER_NAMES}
    assert all(len(n.split()) == 2 and n.split()[0] in firsts and n.split()[1] in lasts for n in names)
    with pytest.raises(ValueError):
        SleepConfig(people="real")
