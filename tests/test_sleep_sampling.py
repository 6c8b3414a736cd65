"""Sampled answers (the teacher's, the model's own questions) on the tiny model."""

from rose_memory.generate import chat_prompt, facts_system, generate
from rose_memory.model import load_model
from rose_memory.sleep.sampling import sample


def test_samples_are_seeded_and_the_greedy_answer_comes_first(tiny_dir, single_thread):
    lm = load_model(str(tiny_dir))
    system = facts_system(["Aurelio Brandt lives in Warsaw.", "Aurelio Brandt works as a baker."])
    prompts = [chat_prompt(lm, q, system=system) for q in ("Where does Aurelio Brandt live?", "What is his job?",
                                                            "Tell me about Aurelio Brandt.")]
    first = sample(lm, prompts, n=3, temperature=0.9, max_new_tokens=12, seed=5, greedy_too=True)
    assert [len(a) for a in first] == [4, 4, 4]
    assert first == sample(lm, prompts, n=3, temperature=0.9, max_new_tokens=12, seed=5, greedy_too=True)
    assert [a[0] for a in first] == [g.strip() for g in generate(lm, prompts, max_new_tokens=12)]
    other = sample(lm, prompts, n=3, temperature=0.9, max_new_tokens=12, seed=6)
    assert [len(a) for a in other] == [3, 3, 3]
    assert [a[1:] for a in first] != other  # another seed, other samples
    assert len({s for a in first for s in a[1:]}) > 3  # sampled, not the same answer each time
