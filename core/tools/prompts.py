"""Prompt sets for ``corert bench speculative``: grounded (the answer copies much of the prompt) and
open-ended (it does not).  The grounded inputs are real code from the packaged corpus (CPython's
json/decoder.py) and fixed snippets."""
from __future__ import annotations

from corert.tools.corpus import corpus_file

_BUGGY = '''def moving_average(values, window):
    """Return the moving averages of values over the given window."""
    if window <= 0:
        raise ValueError("window must be positive")
    out = []
    total = 0
    for i, v in enumerate(values):
        total += v
        if i >= window:
            total -= values[i - window + 1]
        if i >= window - 1:
            out.append(total / window)
    return out
'''

_TEXT = ("The Licensor provides the Work on an as is basis, without warrenties or conditions of any kind, "
         "either express or implied, including, without limitation, any warranties or conditions of title, "
         "non-infringement, merchantibility, or fitness for a particuler purpose. You are solely responsible "
         "for determining the appropriateness of using or redistributing the Work and assume any risks "
         "associated with your exercise of permisions under this License.")


def _code(start: int, lines: int) -> str:
    src = corpus_file("json_decoder.py.txt").read_text(encoding="utf-8").splitlines()
    return "\n".join(src[start:start + lines])


GROUNDED = [
    "Add a short comment above every function in this Python code and return the whole code:\n```python\n"
    + _code(0, 45) + "\n```",
    "Rename the variable `s` to `text` everywhere in this code and return the whole code:\n```python\n"
    + _code(45, 40) + "\n```",
    "This function has an off-by-one bug. Fix it and return the corrected code:\n```python\n" + _BUGGY + "```",
    "Add type hints to this Python code and return the whole code:\n```python\n" + _code(85, 40) + "\n```",
    "Correct the spelling mistakes in this paragraph and return the corrected paragraph:\n\n" + _TEXT,
    "Rewrite this paragraph as a bulleted list, one bullet per sentence, keeping the wording:\n\n" + _TEXT,
]

#: two more edits of real code, so ``bench batch --speculative`` has eight distinct grounded streams
GROUNDED_MORE = [
    "Remove every comment from this Python code and return the whole code:\n```python\n" + _code(135, 40) + "\n```",
    "Add a docstring to this function and return the whole code:\n```python\n" + _code(215, 36) + "\n```",
]

OPEN_ENDED = [
    "Write a short story about a robot who learns to paint.",
    "Explain how a hash map works and when to use one.",
    "What are the advantages and disadvantages of microservices?",
    "Describe the water cycle to a ten-year-old.",
    "Give five tips for writing readable Python code, with a sentence on each.",
    "Write a friendly email inviting a colleague to a team lunch on Friday.",
]
