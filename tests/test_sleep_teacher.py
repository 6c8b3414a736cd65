"""The teacher's kept answers on the tiny model (random weights: its samples never state a fact)."""

from rose_memory.facts import EditRequest
from rose_memory.model import load_model
from rose_memory.sleep.config import SleepConfig
from rose_memory.sleep.teacher import teacher_examples
from rose_memory.sleep.transfer import FactQuestions


def test_questions_the_teacher_never_answers_get_the_facts_own_sentence(tiny_dir, single_thread):
    lm = load_model(str(tiny_dir))
    cello = EditRequest(subject="Mirela Dunst", prompt="{} plays the", target="cello")
    oslo = EditRequest(subject="Mirela Dunst", prompt="{} lives in the city of", target="Oslo")
    facts = [FactQuestions(cello, train=["What does Mirela Dunst play?", "Finish this: Mirela Dunst plays the"]),
             FactQuestions(oslo, train=["Which city does Mirela Dunst live in?"])]
    opened = ["Tell me about Mirela Dunst."]
    small = dict(samples=1, answer_tokens=4)
    plain, counts = teacher_examples(lm, facts, opened, SleepConfig(sentence_answers=False, **small))
    assert [c["kept_answers"] for c in counts] == [0, 0] and [c["sentence_answers"] for c in counts] == [0, 0]
    assert len(plain) == 2  # the two edit forms only
    filled, counts = teacher_examples(lm, facts, opened, SleepConfig(**small))  # on by default
    assert [c["sentence_answers"] for c in counts] == [2, 1]  # one per fact question; the open request has no single fact
    chat = [e for e in filled if e.text.startswith("Mirela")]
    assert sorted(e.text for e in chat) == ["Mirela Dunst lives in the city of Oslo."] + ["Mirela Dunst plays the cello."] * 2
    for e in chat:  # the teacher's distribution at every answer token, the student's prompt without the facts
        assert e.target_logprobs.shape[0] == len(e.answer) and "cello" not in lm.tokenizer.decode(e.prompt)


def test_the_objects_tokens_are_raised_to_the_floor(tiny_dir, single_thread):
    import torch

    from rose_memory.sleep.teacher import object_positions

    lm = load_model(str(tiny_dir))
    tok = lm.tokenizer
    paella = EditRequest(subject="Mirela Dunst", prompt="{}'s favorite food is", target="paella")
    facts = [FactQuestions(paella, train=["What is Mirela Dunst's favorite food?"])]
    base, _ = teacher_examples(lm, facts, [], SleepConfig(samples=1, answer_tokens=4, sentence_answers=True))
    high, _ = teacher_examples(lm, facts, [], SleepConfig(samples=1, answer_tokens=4, sentence_answers=True,
                                                          object_floor=0.9))
    for b, h in zip(base, high):
        where = object_positions(tok, h.answer, "paella")
        assert where and tok.decode([h.answer[i] for i in where]).strip() == "paella"
        for i in range(len(h.answer)):
            p_base, p_high = b.target_logprobs[i].exp(), h.target_logprobs[i].exp()
            if i in where:  # the object's token at the floor, every other token in its old proportion
                assert p_high[h.answer[i]] >= 0.9 - 1e-4 and abs(float(p_high.sum()) - 1) < 1e-4
                other = torch.ones_like(p_base, dtype=torch.bool)
                other[h.answer[i]] = False
                ratio = p_high[other] / p_base[other]
                assert torch.allclose(ratio, ratio[0].expand_as(ratio), rtol=1e-3)
            else:
                assert torch.allclose(p_high, p_base)
    assert object_positions(tok, tok("She likes paellas.", add_special_tokens=False)["input_ids"], "paella") == []
