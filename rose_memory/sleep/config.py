"""Settings of the sleep stage (consolidation by prompt distillation); defaults fit the embedded model."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class SleepConfig(BaseModel):
    """How one subject's facts are distilled into a low-rank delta.

    Every number that the sleep stage uses lives here; `rose-memory consolidate --set k=v`
    and `rose-memory eval --sleep-set k=v` override them.
    """

    model_config = ConfigDict(extra="forbid")  # a misspelt setting is an error, not a silent default

    seed: int = 0
    # transfer set
    model_questions: int = 3         # questions the model writes per fact (sampled, then filtered)
    held_out: float = 0.3            # share of each fact's questions kept back for the gate (at least one)
    # teacher
    samples: int = 2                 # sampled teacher answers per question (plus its greedy answer)
    temperature: float = 0.7
    answer_tokens: int = 20          # longest teacher answer generated
    keep_per_question: int = 2       # distinct kept answers per question
    # a training question none of whose teacher answers states the fact is answered with the fact's
    # own sentence ("X plays the cello."), the teacher's distributions along it the target: a fact the
    # small teacher seldom states in chat is otherwise learnt from its edit form alone
    sentence_answers: bool = True
    # the target at each token that spells the object in a kept answer gives the object at least this
    # share (the teacher's own distribution mixed with it; 0: off): the small teacher often states a fact
    # it gives 0.01-0.3 to, and a student that only matches it learns the fact as a long shot
    object_floor: float = Field(0.9, ge=0.0, lt=1.0)
    # a kept answer to a question about one fact is followed by the end of the turn, whose target share is
    # raised to at least this (0: off, the answer is cut with no lesson on what follows): a student that
    # knows all the subject's facts otherwise runs on from the asked one into the others (confusion).
    # Off by default: with exclusive_answers on the whole dev split, confusion 26 -> 20 of 246 at seed 1
    # but 23 -> 27 at seed 0, where instruction fell 176 -> 163 (docs/sleep.md, "Answers that end the turn")
    stop_floor: float = Field(0.0, ge=0.0, lt=1.0)
    # a kept answer to a question about one fact must not name another of the subject's objects
    exclusive_answers: bool = False
    # student
    rank: int = 1                    # one direction per module: with inputs="trace" every further one moves other people's answers
    # None: blocks at 30-85 % of the depth (9-25 of 30) for "value", and for "out" keyed to the trace; else the middle third
    layers: list[int] | None = None
    # "mlp": every linear layer of each block's MLP; "out": its output projection only; "value": the
    # attention value projection (what carries a subject's information to the positions that ask about it).
    # "out" since 2026-12-02: keyed to the trace, its input is the MLP's gated activation, which the
    # subject's changed activations drive and other prompts barely share (less leak than "value")
    modules: Literal["mlp", "out", "value"] = "out"
    # "free": both factors trained (LoRA); "subject": each layer's input factor is fixed to the
    # directions of the subject's questions that unrelated prompts do not use (only the output
    # factor is trained), so other prompts barely move the delta's output
    # "key": each MLP output projection's input factor is fixed to the subject's keys whitened by
    # the key statistics (C^-1 k, MEMIT's matched filter), so the delta fires where the subject is named
    # "trace": each input factor is fixed to the directions in which the subject's wake edits change
    # the module's input at the subject's tokens, whitened by the unrelated prompts' inputs (a marker
    # only the written subject carries); needs student_wake > 0, and the wake edit stays with the delta
    inputs: Literal["free", "subject", "key", "trace"] = "trace"
    key_others: float = Field(1.0, ge=0.0)  # "key": weight of the other people's name tokens in the statistics the key is whitened by
    null_energy: float = 0.99        # "subject": share of the unrelated inputs' energy whose directions are avoided
    null_names: int = 64             # "subject": other people whose questions estimate those directions (with the unrelated prompts)
    # wake scale the student trains on: 1.0 trains the question pathway to read the fact the
    # wake edit wrote into the subject (the wake edit is then usually kept); 0.0 trains the
    # sleep delta to carry the fact alone (so the wake edit can be removed). With inputs="trace"
    # the delta is gated at this scale and the wake edits stay at it (below 1: batch eval only;
    # the memory keeps a wake edit whole or removes it and refuses such a sleep)
    student_wake: float = 1.0
    lr: float = 5e-2
    # the training steps' matrix products in this precision (torch autocast; the factors, the teacher's
    # targets, the losses and every generated answer stay float32). "bfloat16" since 2026-12-03: a step
    # twice as fast on a CPU with AVX-512 BF16 (recent GPUs have it too); 47 against 49 of 69 questions on
    # the first 6 dev subjects, locality equal; whole split with new sampled draws too: 0.671 against 0.715
    # (seed 0), 0.667 against 0.707 (seed 1), sleeps 0.70-0.74 of the time (docs/sleep.md, "A sleep in
    # bfloat16"). "float32" where a device lacks bfloat16
    train_precision: Literal["float32", "bfloat16"] = "bfloat16"
    steps: int = 48
    batch: int = 8                   # kept answers per step
    negative_batch: int = 8          # unrelated sequences per step (24 until 2026-12-01: twice the step time, no better on the benchmark)
    per_sequence: bool = True        # the answers' KL summed over each answer's tokens (False: mean per token)
    kl_weight: float = 10.0          # weight of the KL to the model before the sleep on unrelated prompts
    # the delta runs this many times stronger on the unrelated prompts in training: what it leaks to other
    # people is a small copy of its output, which flips their near-tied answers; held harmless at a larger
    # copy, the trained output is pushed toward directions other people's answers do not read; at 16 the
    # canary kept more but the delta carried less per unit of scale, a wash on the benchmark (docs/sleep.md)
    negative_gain: float = Field(1.0, ge=0.0)
    other_names: int = 24            # made-up people asked the subject's and everyday questions, held to their old answers
    # how the made-up people (unrelated prompts and canary) are named: "syllables" ("Ciloux Zimum"), or
    # "recombined", a first name and a surname of two different people of our name list ("Mei Gallagher"),
    # closer to the names a memory is told about
    people: Literal["syllables", "recombined"] = "syllables"
    person_questions: int = 3        # everyday questions per other person (people.PERSON_QUESTIONS, cycled)
    generic_negatives: int = 12      # generic chat and text prompts held to their old answers
    # facts the memory holds about other subjects, asked in their edit form (and each such subject an open
    # request), held to the memory's answers and part of the unrelated inputs a trace-keyed delta is whitened
    # by: without them each sleep wore earlier subjects' edits away (sequential dev split, seed 0, 4bd0957:
    # the first subject's edit forms 3/3 after the first sleep round, 0/3 after the fourth, each loss at
    # another subject's sleep); 0: off. At most this many facts (a seeded draw when the memory holds more)
    remembered: int = Field(24, ge=0)
    negative_tokens: int = 8         # answer tokens of each unrelated prompt that the KL covers (what locality compares)
    margin: float = Field(1.0, ge=0.0)             # hinge: each old answer token kept ahead of the others by this many nats (0: off)
    # scale of the sleep delta: the largest of `delta_scales` whose answers about `canary_names`
    # people never trained on keep at least `canary_min` of their first 8 tokens
    canary_names: int = 16
    canary_min: float = Field(0.95, ge=0.0, le=1.0)
    delta_scales: list[float] = Field(default_factory=lambda: [1.0, 0.75, 0.5, 0.35], min_length=1)
    canary_refuse: bool = True       # refuse the sleep when no scale keeps canary_min (the wake edits stay as they were)
    # what the unrelated prompts and the canary are held to: "memory", the answers of the memory as it
    # stands (this subject's wake edits applied); "before_wake", the answers before them, so that the
    # student also undoes what the wake edit moved about other people (the benchmark's locality compares
    # with the model before the write), and the canary then passes a scale that keeps canary_min of those
    # answers or at least as many as the wake edits alone keep
    keep_reference: Literal["memory", "before_wake"] = "memory"
    # gate
    gate_tokens: int = 24            # greedy answer length when a fact is checked
    min_held_out: float = 0.5        # share of a fact's held-back questions that must name the object
    scale_steps: list[float] = Field(default_factory=lambda: [0.5, 0.0])  # RoSE delta scales tried on the way out

    @model_validator(mode="after")
    def _trace_needs_the_wake_edit(self) -> "SleepConfig":
        if self.inputs == "trace" and self.student_wake <= 0:
            raise ValueError("inputs='trace' keys the delta to the wake edit, so student_wake must be > 0 "
                             "(for a delta that carries the facts alone set inputs='free' and modules='mlp')")
        return self
