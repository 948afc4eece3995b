"""Type-check the README's Python blocks as a user's code: each block is
written to a temporary directory as the module the README names
(``blog_models.py``, ``library_models.py``, ``library_app.py``, ...), next
to ``user_code.py`` (this directory: the annotations a user writes with
nplus1loader's public types), and checked with ``mypy --strict`` and
``pyright`` in strict mode, with no ignores.

Run by ``./run-tests`` from the lint venv (mypy and pyright installed):

    python -m tests.typing.check_readme
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from tests.parity.test_integrations import snippets, write_snippets

HERE = Path(__file__).resolve().parent


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="nplus1-typing-") as tmp:
        directory = Path(tmp)
        names = sorted(snippets())
        paths = write_snippets(directory, *names)
        shutil.copy(HERE / "user_code.py", directory / "user_code.py")
        files = sorted(p.name for p in [*paths, directory / "user_code.py"])
        print(f"type-checking {len(files)} files: {', '.join(files)}")
        (directory / "pyrightconfig.json").write_text(
            json.dumps({"typeCheckingMode": "strict", "pythonVersion": "3.10"}),
            encoding="utf-8",
        )
        failed = 0
        commands = [
            [sys.executable, "-m", "mypy", "--strict", "--no-incremental", *files],
            [sys.executable, "-m", "pyright", "--pythonpath", sys.executable, *files],
        ]
        for command in commands:
            print("$", " ".join(command[2:] if command[1] == "-m" else command), flush=True)
            done = subprocess.run(command, cwd=directory)
            failed |= done.returncode != 0
        return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
