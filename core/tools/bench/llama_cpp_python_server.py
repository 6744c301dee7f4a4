"""``python -m corert.tools.bench.llama_cpp_python_server ARGS``: llama-cpp-python's own server
(``python -m llama_cpp.server ARGS``, run unchanged) in a process where llama.cpp is loaded as corert loads
it.  corert's portable build keeps ggml's CPU backends as modules that ggml looks for only beside the
executable, so plain ``python -m llama_cpp.server`` cannot load a model with it; corert.llama_lib points ggml
at them and applies the extra-buffer verdict (the CPU probe), exactly as for corert's own llama.cpp engine.
"""
from __future__ import annotations

import sys


def main() -> None:
    from corert.llama_lib import llama_cpp, prepare

    llama_cpp()
    if "--model" in sys.argv:
        prepare(sys.argv[sys.argv.index("--model") + 1])
    from llama_cpp.server.__main__ import main as serve

    serve()


if __name__ == "__main__":
    main()
