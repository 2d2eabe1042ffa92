"""The README's snippets run as written against a real `schooner up`, and its links stay in the repository.

Each ```sh / ```python block is preceded by a marker: ``readme-test: run`` (run here), ``start`` (the
`schooner up` line, which the test runs itself with free ports and a state dir of its own) or ``skip
(why)``. The only changes made to a block before running it are those two: the default ports become
the instance's free ports and ``~/.schooner`` its state dir.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from polling import wait_for

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
_BLOCK = re.compile(r"(?:<!-- readme-test: (\w+)[^>]*-->\n)?```(\w*)\n(.*?)```", re.S)


def blocks() -> list[tuple[str | None, str, str]]:
    """(marker, language, code) of every fenced block."""
    return [(m.group(1), m.group(2), m.group(3)) for m in _BLOCK.finditer(README.read_text())]


def test_every_runnable_block_says_whether_the_test_runs_it():
    for marker, lang, code in blocks():
        if lang in ("sh", "python"):
            assert marker in ("run", "start", "skip"), f"README block without a readme-test marker:\n{code}"


def test_links_stay_inside_the_repository():
    text = README.read_text()
    for target in re.findall(r"\]\(([^)]+)\)", text):
        if target.startswith(("http://127.0.0.1", "#")):
            continue
        assert "://" not in target, f"README links outside the repository: {target}"
        assert (ROOT / target.split("#")[0]).resolve().is_relative_to(ROOT), target
        assert (ROOT / target.split("#")[0]).exists(), f"README links to a missing file: {target}"
    assert "../" not in text, "README names a path outside the repository"


@pytest.fixture
def instance(tmp_path):
    """`schooner up --free-ports` with a state dir of its own; its instance record."""
    state = tmp_path / "state"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("SCHOONER_ADMIN_TOKEN", None)
    up = subprocess.Popen([sys.executable, "-m", "management.cli", "up", "--free-ports", "--state-dir", str(state)],
                          cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    try:
        record = state / "instance.json"
        wait_for(record.exists, 120, "schooner up to come up", alive=up)
        yield json.loads(record.read_text()), state
    finally:
        subprocess.run([sys.executable, "-m", "management.cli", "down", "--state-dir", str(state)], cwd=ROOT,
                       env=env, capture_output=True, timeout=120)
        if up.poll() is None:
            up.terminate()
        up.wait(60)


def _as_instance(code: str, record: dict, state: Path) -> str:
    ports = {"1338": record["management"].rsplit(":", 1)[1], "1337": record["frontend_http"].rsplit(":", 1)[1],
             "4455": record["client"].rsplit(":", 1)[1]}
    for default, port in ports.items():
        code = code.replace(f"127.0.0.1:{default}", f"127.0.0.1:{port}")
    return code.replace("~/.schooner", str(state))


@pytest.mark.slow
def test_the_using_it_snippets_run_as_written(instance):
    record, state = instance
    ran = 0
    for marker, lang, code in blocks():
        if marker != "run":
            continue
        code = _as_instance(code, record, state)
        cmd = ["bash", "-euo", "pipefail", "-c", code] if lang == "sh" else [sys.executable, "-c", code]
        out = subprocess.run(cmd, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True,
                             text=True, timeout=180)
        assert out.returncode == 0, f"README {lang} block failed:\n{code}\n--- stdout\n{out.stdout}\n--- stderr\n{out.stderr}"
        if lang == "sh":
            assert '"output":[1.5]' in out.stdout.replace(" ", ""), out.stdout
        else:
            answered = int(re.search(r"(\d+) answered, (\d+) refused", out.stdout).group(1))
            assert answered > 0, out.stdout
        ran += 1
    assert ran == 2
