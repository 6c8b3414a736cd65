"""The rules of what a write carries over and what a forget takes back, on ledger rows alone."""

from rose_memory.holding import carry, holders, rewritten, told


def row(i, facts, status="applied", origin="write", carried=()):
    return {"id": i, "status": status, "origin": origin, "facts": [{"prompt": p, "object": o} for p, o in facts],
            "metrics": {"carried": [{"prompt": p, "object": o, "from": 0} for p, o in carried]} if carried else None}


A, B, C = "{} lives in", "{} works as a", "{} has a pet"


def test_a_joint_write_supersedes_every_row_and_carries_their_facts():
    rows = [row(1, [(A, "Lyon")]), row(2, [(B, "baker")])]
    old, carried = carry(rows, {C}, joint=True, max_facts=16)
    assert [r["id"] for r in old] == [1, 2]
    assert carried == [{"prompt": A, "object": "Lyon", "from": 1}, {"prompt": B, "object": "baker", "from": 2}]


def test_without_joint_only_a_replaced_relation_supersedes():
    rows = [row(1, [(A, "Lyon"), (B, "baker")]), row(2, [(C, "cat")])]
    old, carried = carry(rows, {A}, joint=False, max_facts=16)
    assert [r["id"] for r in old] == [1] and carried == [{"prompt": B, "object": "baker", "from": 1}]
    assert carry(rows, {"{} plays"}, joint=False, max_facts=16) == ([], [])


def test_the_fact_limit_keeps_the_newest_rows_and_leaves_the_rest_live():
    rows = [row(1, [(A, "Lyon"), (B, "baker")]), row(2, [(C, "cat")])]
    old, carried = carry(rows, {"{} plays"}, joint=True, max_facts=2)
    assert [r["id"] for r in old] == [2] and [f["object"] for f in carried] == ["cat"]


def test_a_later_row_wins_a_relation():
    rows = [row(1, [(A, "Lyon")]), row(2, [(A, "Paris"), (B, "baker")], origin="sleep")]
    _, carried = carry(rows, {C}, joint=True, max_facts=16)
    assert {f["object"] for f in carried} == {"Paris", "baker"}


def test_forget_finds_what_a_write_told_where_it_is_held_now():
    first = row(1, [(A, "Lyon")], status="superseded")
    second = row(2, [(B, "baker"), (A, "Lyon")], carried=[(A, "Lyon")])
    assert told(second) == {B: "baker"} and told(first) == {A: "Lyon"}
    assert holders(first, [second]) == [second]
    assert rewritten([first, second], [1, 2], told(first)) == [{"prompt": B, "object": "baker"}]
    assert rewritten([first, second], [2], told(second)) == [{"prompt": A, "object": "Lyon"}]


def test_a_replaced_object_is_not_held_and_a_sleep_holds_only_itself():
    first = row(1, [(A, "Lyon")], status="superseded")
    second = row(2, [(A, "Paris")])
    assert holders(first, [second]) == []
    wake, sleep = row(3, [(B, "baker")]), row(4, [(B, "baker")], origin="sleep")
    assert holders(sleep, [wake, sleep]) == [sleep]
    assert holders(wake, [wake, sleep]) == [wake, sleep]
    assert rewritten([wake, sleep], [4], told(sleep)) == []
