"""Chat: `corert chat` with one message, and its stdin conversation driven like a terminal (a pty: prompts,
blank lines, an error the loop recovers from, a last line without newline, EOF); `Runtime.chat` streaming
and message validation.  Replies are greedy and compared with `Runtime.chat` on the same model and context."""
from __future__ import annotations

import os
import select
import subprocess
import time

import pytest

from cli_support import CORERT, assert_bad_input, cli_json, run_cli
from corert import Runtime
from corert.errors import InputError, ModelError

CTX = 256
N = "12"
GREEDY = {"temperature": 0.0, "max_tokens": int(N)}
FRUIT, COLOR, ANIMAL = "Name a fruit.", "Name a color.", "Name an animal."
#: ~600 tokens: more than the context holds, so the request fails and the conversation must go on
TOO_LONG = "Please summarise this: " + "the cat sat on the mat and looked at the moon " * 50


@pytest.fixture(scope="module")
def rt(smollm2):
    """The reference: the same model, engine, plugins and context as the CLI runs below."""
    r = Runtime(engine="llama.cpp", model=smollm2, n_ctx=CTX)
    yield r
    r.close()


def _reply(rt, *turns: str, system: str | None = None) -> str:
    """The greedy reply to the last user turn of a conversation of (user, assistant, user, …) turns."""
    msgs = [{"role": "system", "content": system}] if system else []
    for i, text in enumerate(turns):
        msgs.append({"role": "user" if i % 2 == 0 else "assistant", "content": text})
    return rt.chat(msgs, **GREEDY).text


# -- one message -----------------------------------------------------------------------------------------
def test_chat_one_message_text_and_json(rt, smollm2):
    want = _reply(rt, FRUIT)
    assert want.strip()
    proc = run_cli("chat", "--engine", "llama.cpp", "-m", smollm2, "--ctx", str(CTX), "-t", "0", "-n", N, FRUIT)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == want + "\n"
    d = cli_json("chat", "--engine", "llama.cpp", "-m", smollm2, "--ctx", str(CTX), "-t", "0", "-n", N, "--json",
                 "--system", "You answer in one word.", FRUIT)
    assert d["object"] == "chat.completion"
    assert d["choices"][0]["message"] == {"role": "assistant", "content": d["text"]}
    assert d["text"] == _reply(rt, FRUIT, system="You answer in one word.")
    assert d["usage"]["completion_tokens"] == len(d["token_ids"]) <= int(N)


def test_chat_without_a_chat_template_is_bad_input(gemma):
    assert_bad_input(run_cli("chat", "-m", gemma, "-n", "4", "hello"), "no chat template")


# -- the conversation on a terminal ----------------------------------------------------------------------
class Terminal:
    """`corert chat` with a pty as its terminal (stdin, stdout and stderr, as a shell would start it)."""

    def __init__(self, *args: str):
        self.master, slave = os.openpty()
        self.proc = subprocess.Popen([CORERT, "chat", "--engine", "llama.cpp", *args],
                                     stdin=slave, stdout=slave, stderr=slave,
                                     start_new_session=True)
        os.close(slave)
        self.out = ""

    def read_until(self, predicate, timeout: float = 120.0) -> str:
        """Read what the program writes until ``predicate(transcript)`` holds (bounded in time)."""
        deadline = time.monotonic() + timeout
        while not predicate(self.out):
            left = deadline - time.monotonic()
            assert left > 0, f"timed out; transcript so far: {self.out!r}"
            ready, _, _ = select.select([self.master], [], [], min(left, 1.0))
            if ready:
                try:
                    data = os.read(self.master, 4096)
                except OSError:  # EIO: the program exited and closed the terminal
                    data = b""
                if not data:
                    assert predicate(self.out), f"the program closed the terminal; transcript: {self.out!r}"
                    break
                self.out += data.decode("utf-8", errors="replace").replace("\r\n", "\n")
        return self.out

    def prompts(self) -> int:
        return self.out.count("> ")

    def send(self, text: str) -> None:
        os.write(self.master, text.encode())

    def close(self) -> int:
        try:
            return self.proc.wait(timeout=60)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
            os.close(self.master)


def test_chat_conversation_on_a_terminal(rt, smollm2):
    first = _reply(rt, FRUIT)
    second = _reply(rt, FRUIT, first, COLOR)  # the failed turn is not part of the history
    third = _reply(rt, FRUIT, first, COLOR, second, ANIMAL)
    term = Terminal("-m", smollm2, "--ctx", str(CTX), "-t", "0", "-n", N)
    try:
        term.read_until(lambda t: t.count("> ") == 1)  # interactive: a prompt on stderr
        term.send("\n")
        term.read_until(lambda t: t.count("> ") == 2)  # a blank line: no request, a new prompt
        term.send("   \n")
        term.read_until(lambda t: t.count("> ") == 3)
        mark = len(term.out)
        term.send(FRUIT + "\n")
        term.read_until(lambda t: t.count("> ") == 4)
        assert term.out[mark:] == f"{FRUIT}\n{first}\n> "  # the echoed line, the reply, the next prompt

        mark = len(term.out)
        term.send(TOO_LONG + "\n")  # longer than the context: an error line, and the conversation goes on
        term.read_until(lambda t: t.count("> ") == 5)
        lines = term.out[mark:].splitlines()
        assert lines[-2].startswith("corert: error: the prompt has ") and f"the context holds {CTX}" in lines[-2]

        mark = len(term.out)
        term.send(COLOR + "\n")
        term.read_until(lambda t: t.count("> ") == 6)
        assert term.out[mark:] == f"{COLOR}\n{second}\n> "

        mark = len(term.out)
        # a last line without newline: the first Ctrl-D hands the typed text to the program, the second
        # ends its read (as `cat` needs two); the line is served as it is
        term.send(ANIMAL + "\x04\x04")
        term.read_until(lambda t: t.count("> ") == 7)
        assert term.out[mark:] == f"{ANIMAL}{third}\n> "
        term.send("\x04")  # Ctrl-D on an empty line: end of input
        assert term.close() == 0
    finally:
        if term.proc.poll() is None:
            term.proc.kill()
    assert "Traceback" not in term.out


def test_chat_conversation_from_a_pipe(rt, smollm2):
    """Not a terminal: no prompts, one reply line per non-blank input line, exit 0 at EOF."""
    first = _reply(rt, FRUIT)
    second = _reply(rt, FRUIT, first, COLOR)
    proc = run_cli("chat", "--engine", "llama.cpp", "-m", smollm2, "--ctx", str(CTX), "-t", "0", "-n", N,
                   input=f"\n{FRUIT}\n\n  \n{COLOR}")  # blank lines, and no newline before EOF
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == f"{first}\n{second}\n"
    assert "> " not in proc.stderr


# -- Runtime.chat ----------------------------------------------------------------------------------------
def test_runtime_chat_stream_equals_the_completion(rt):
    msgs = [{"role": "user", "content": FRUIT}]
    whole = rt.chat(msgs, **GREEDY)
    chunks = list(rt.chat(msgs, stream=True, **GREEDY))
    assert len(chunks) >= 2 and all(c.completion is None for c in chunks[:-1])
    last = chunks[-1]
    assert last.text == "" and last.finish_reason == whole.finish_reason and last.completion is not None
    assert "".join(c.text for c in chunks) == whole.text == last.completion.text
    assert last.completion.token_ids == whole.token_ids
    assert [t for c in chunks for t in c.token_ids] == list(whole.token_ids)
    d = last.completion.to_dict()
    assert d["object"] == "chat.completion" and d["choices"][0]["message"]["content"] == whole.text


def test_runtime_chat_stream_with_stop_strings(rt):
    whole = rt.chat([{"role": "user", "content": FRUIT}], **GREEDY).text
    stop = whole.strip().split()[1]  # the second word of the reply
    cut = whole.find(stop)
    chunks = list(rt.chat([{"role": "user", "content": FRUIT}], stream=True, stop=["zzzz-never", stop],
                          **GREEDY))
    text = "".join(c.text for c in chunks)
    assert text == whole[:cut] and stop not in text
    assert chunks[-1].finish_reason == "stop" and chunks[-1].completion.text == text


@pytest.mark.parametrize("messages, message", [
    ([], "non-empty list"),
    ("hello", "non-empty list"),
    ([{"role": "user"}], "message 0 must be a dict with 'role' and 'content'"),
    (["hello"], "message 0 must be a dict"),
    ([{"role": "user", "content": "a"}, {"role": "robot", "content": "b"}], "message 1 has unknown role 'robot'"),
    ([{"role": "user", "content": 3}], "message 0 content must be a string"),
])
def test_runtime_chat_validates_messages(rt, messages, message):
    for stream in (False, True):  # streaming or not, bad messages fail at the call, before any work
        with pytest.raises(InputError, match=message.replace("(", r"\(")):
            rt.chat(messages, stream=stream, **GREEDY)
    assert rt.chat([{"role": "user", "content": FRUIT}], **GREEDY).text  # the runtime is unharmed


def test_runtime_chat_on_a_model_without_template_is_a_model_error(rt, gemma):
    with pytest.raises(ModelError, match="no chat template"):
        rt.chat([{"role": "user", "content": "hi"}], model=gemma, **GREEDY)
