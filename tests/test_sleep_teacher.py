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


def test_an_answer_to_one_fact_ends_the_turn_when_asked(tiny_dir, single_thread):
    from rose_memory.sleep.teacher import stop_id

    lm = load_model(str(tiny_dir))
    cello = EditRequest(subject="Mirela Dunst", prompt="{} plays the", target="cello")
    facts = [FactQuestions(cello, train=["What does Mirela Dunst play?"])]
    small = dict(samples=1, answer_tokens=4)
    off, _ = teacher_examples(lm, facts, ["Tell me about Mirela Dunst."], SleepConfig(**small))
    on, _ = teacher_examples(lm, facts, ["Tell me about Mirela Dunst."], SleepConfig(stop_floor=0.6, **small))
    end = stop_id(lm)
    assert [e.text for e in off] == [e.text for e in on]
    for a, b in zip(off, on):
        chat_one = b.text.startswith("Mirela")  # the question's answer; the edit form " cello." does not end a turn
        assert (b.answer == a.answer + [end]) if chat_one else (b.answer == a.answer)
        if chat_one:
            assert float(b.target_logprobs[-1].exp()[end]) >= 0.6 - 1e-4
            assert b.target_logprobs.shape[0] == len(b.answer)


def test_an_answer_that_names_another_fact_is_told_apart():
    from rose_memory.sleep.teacher import names_other

    cream = EditRequest(subject="Mirela Dunst", prompt="{}'s favorite dessert is", target="ice cream")
    other = EditRequest(subject="Mirela Dunst", prompt="{}'s favorite topping is", target="cream")
    oslo = EditRequest(subject="Mirela Dunst", prompt="{} lives in the city of", target="Oslo")
    facts = [cream, other, oslo]
    assert not names_other("Mirela Dunst loves ice cream.", cream, facts)  # 'cream' only inside its own object
    assert names_other("Mirela Dunst loves ice cream in Oslo.", cream, facts)
    assert names_other("She puts cream on everything.", cream, facts)
    assert not names_other("Mirela Dunst lives in Oslofjord.", cream, facts)  # whole words only


def test_log_probabilities_with_a_shared_prompt_beginning_are_those_of_each_row_alone(tiny_dir, single_thread, monkeypatch):
    """Rows whose prompts share the chat template's system turn run it once (a key/value cache);
    what each answer token gets is what a forward over that row alone gives."""
    import torch

    from rose_memory.generate import chat_prompt
    from rose_memory.sleep.teacher import _logprobs, body_and_pad

    lm = load_model(str(tiny_dir))
    tok = lm.tokenizer
    prompts = [tok(chat_prompt(lm, q), add_special_tokens=False)["input_ids"]
               for q in ("Where does Aurelio Brandt live?", "What is Mira Tovan's job?", "Name three fruits.")]
    prompts += [tok("The capital of Germany is")["input_ids"]]
    answers = [tok(a, add_special_tokens=False)["input_ids"] for a in (" In Warsaw.", " She bakes bread.", " Apples", " Berlin")]
    from rose_memory.sleep import teacher

    made = []
    real_encode = teacher.encode_prefix
    monkeypatch.setattr(teacher, "encode_prefix", lambda *a: made.append(1) or real_encode(*a))
    got = _logprobs(lm, prompts[:3], answers[:3]) + _logprobs(lm, prompts[3:], answers[3:])
    assert made  # the chat rows shared their system turn
    got += _logprobs(lm, prompts, answers, chunk=4)[3:]  # a batch with nothing shared runs whole
    prompts.append(prompts[3])
    answers.append(answers[3])
    body, _ = body_and_pad(lm)
    head = lm.model.get_output_embeddings()
    with torch.no_grad():
        for p, a, lp in zip(prompts, answers, got):
            h = body(input_ids=torch.tensor([p + a])).last_hidden_state[0]
            want = torch.log_softmax(head(h[len(p) - 1: len(p) + len(a) - 1]).float(), -1)
            assert lp.shape == want.shape
            assert torch.allclose(lp, want, atol=1e-4)


def test_generation_gives_the_log_probabilities_a_forward_over_its_answer_gives(tiny_dir, single_thread):
    """The unrelated prompts' references come from the generation (`generate_scored`): the same
    answers as `generate_ids`, and at each answer token what a teacher-forced forward gives, for
    rows left-padded beside longer ones and rows that share the chat template's beginning."""
    import torch

    from rose_memory.generate import chat_prompt, generate_ids, generate_scored
    from rose_memory.sleep.teacher import _logprobs

    lm = load_model(str(tiny_dir))
    tok = lm.tokenizer
    prompts = [tok(chat_prompt(lm, q), add_special_tokens=False)["input_ids"]
               for q in ("Where does Aurelio Brandt live?", "What is Mira Tovan's job and where does she work?", "Hi")]
    prompts += [tok(t)["input_ids"] for t in ("The capital of Germany is", "Water boils at")]
    answers, logps = generate_scored(lm, prompts, max_new_tokens=6)
    assert answers == generate_ids(lm, prompts, max_new_tokens=6)
    kept = [i for i, a in enumerate(answers) if a]
    assert len(kept) >= 3
    want = _logprobs(lm, [prompts[i] for i in kept], [answers[i] for i in kept])
    for i, w in zip(kept, want):
        assert logps[i].shape == w.shape == (len(answers[i]), w.shape[1])
        assert torch.allclose(logps[i], w, atol=1e-4)
        assert [int(t) for t in logps[i].argmax(-1)] == answers[i]  # greedy: each token the top one
