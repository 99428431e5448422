import pytest

from supervise.rpc.embedded_store import topic_matches


@pytest.mark.parametrize(
    ("pattern", "key", "matches"),
    [
        ("compute", "compute", True),
        ("compute", "compute.host1", False),
        ("compute.*", "compute.host1", True),
        ("compute.*", "compute", False),
        ("compute.*", "compute.host1.x", False),
        ("*.host1", "compute.host1", True),
        ("compute.#", "compute", True),
        ("compute.#", "compute.host1.x", True),
        ("#", "anything.at.all", True),
        ("#.x", "x", True),
        ("#.x", "a.b.x", True),
        ("#.x", "a.b.y", False),
        ("a.#.b", "a.b", True),
        ("a.#.b", "a.x.y.b", True),
        ("a.#.b", "a.x.y", False),
        ("a.*.#", "a", False),
        ("a.*.#", "a.b.c.d", True),
    ],
)
def test_topic_patterns_match_as_in_amqp(pattern, key, matches):
    assert topic_matches(pattern, key) is matches
