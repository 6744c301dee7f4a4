"""StopMatcher against a brute-force oracle, on the packaged corpus and on generated streams.

Written to kill mutmut's mutants of corert/stops.py (scripts/mutation.sh): what is emitted, when, and what
is held back must match the definition exactly, not only the concatenated result.
"""
from __future__ import annotations

from hypothesis import given, settings, strategies as st

from corert.tools.corpus import corpus_texts
from corert.stops import StopMatcher


def held_back(buf: str, stops: tuple[str, ...]) -> int:
    """The oracle: length of the longest suffix of ``buf`` that is a proper prefix of some stop string."""
    return max((k for s in stops for k in range(1, len(s)) if k <= len(buf) and buf.endswith(s[:k])), default=0)


def run_oracle(chunks: list[str], stops: tuple[str, ...]) -> list[tuple[str, bool]]:
    stops = tuple(s for s in stops if s)
    out, buf = [], ""
    for chunk in chunks:
        buf += chunk
        hits = [buf.find(s) for s in stops if s in buf]
        if hits:
            out.append((buf[:min(hits)], True))
            buf = ""
            continue
        keep = held_back(buf, stops)
        out.append((buf[:len(buf) - keep], False))
        buf = buf[len(buf) - keep:]
    return out


def run_matcher(chunks: list[str], stops: tuple[str, ...]) -> list[tuple[str, bool]]:
    m = StopMatcher(stops)
    return [m.push(c) for c in chunks]


def test_no_stops_passes_text_through_at_once():
    m = StopMatcher(["", ""])
    assert m.stops == ()
    assert m.push("Hello") == ("Hello", False)
    assert m.push("") == ("", False)
    assert m.flush() == ""


def test_stop_split_over_chunks_is_held_then_cut():
    m = StopMatcher(["</s>"])
    assert m.push("Hi there<") == ("Hi there", False)
    assert m.push("/") == ("", False)
    assert m.push("s> and more") == ("", True)
    assert m.flush() == ""


def test_false_start_is_released_with_the_next_chunk():
    m = StopMatcher(["STOP"])
    assert m.push("go ST") == ("go ", False)
    assert m.push("ART") == ("START", False)
    assert m.flush() == ""


def test_flush_returns_the_held_tail_once():
    m = StopMatcher(["\n\nUser:"])
    assert m.push("answer\n\nUs") == ("answer", False)
    assert m.flush() == "\n\nUs"
    assert m.flush() == ""
    assert m.push("x") == ("x", False)


def test_earliest_of_several_stops_wins():
    m = StopMatcher(["world", "lo w"])
    assert m.push("hello world") == ("hel", True)
    m = StopMatcher(["b", "abc"])
    assert m.push("xxab") == ("xxa", True)


def test_longest_hold_over_stops_and_lengths():
    # "ab" is a prefix of "abc" (hold 2) and "b" a prefix of "bd" (hold 1): the longer hold wins, whichever
    # stop comes first.
    for stops in (("abc", "bd"), ("bd", "abc")):
        m = StopMatcher(stops)
        assert m.push("xab") == ("x", False)
    # a buffer shorter than the stop string is held whole when it is a prefix of it
    m = StopMatcher(["abcdef"])
    assert m.push("abc") == ("", False)
    assert m.push("d") == ("", False)
    assert m.flush() == "abcd"


def test_single_character_stop_is_never_held():
    m = StopMatcher(["."])
    assert m.push("one two") == ("one two", False)
    assert m.push(" three. four") == (" three", True)


def test_after_a_hit_the_matcher_starts_clean():
    m = StopMatcher(["##"])
    assert m.push("a#") == ("a", False)
    assert m.push("#b") == ("", True)
    assert m.push("c#") == ("c", False)
    assert m.flush() == "#"


def test_corpus_streamed_in_chunks_matches_oracle():
    text = "\n".join(corpus_texts())[:20000]
    words = text.split(" ")
    stops = (words[40] + " " + words[41], "\n\n", "ing ", "the end of it all")
    for size in (1, 3, 7, 64):
        chunks = [text[i:i + size] for i in range(0, len(text), size)]
        assert run_matcher(chunks, stops) == run_oracle(chunks, stops)


@settings(max_examples=300, deadline=None)
@given(chunks=st.lists(st.text(alphabet="ab#\n", max_size=6), max_size=12),
       stops=st.lists(st.text(alphabet="ab#\n", max_size=4), max_size=3))
def test_generated_streams_match_oracle(chunks, stops):
    stops = tuple(stops)
    got = run_matcher(chunks, stops)
    assert got == run_oracle(chunks, stops)
