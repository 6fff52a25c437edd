"""The install files agree with each other: requirements.lock, environment.yml, setup.sh, .ci/run."""

from __future__ import annotations

import os
import re
import subprocess
from importlib import metadata
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([A-Za-z0-9.+!_-]+)$")
MUST_PIN = ("torch", "torchvision", "ffcv", "numba", "grad-cam", "typer", "matplotlib")


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def parse_lock(text: str) -> dict[str, str]:
    pins: dict[str, str] = {}
    for n, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        m = PIN.match(line)
        assert m, f"requirements.lock line {n} is not an exact pin name==version: {raw!r}"
        name = canonical(m.group(1))
        assert name not in pins, f"{name} pinned twice in requirements.lock"
        pins[name] = m.group(2)
    return pins


def parse_environment(text: str) -> tuple[str, list[str], list[str]]:
    """(name, conda dependencies, pip: entries) of a simple environment.yml, without PyYAML."""
    name, conda, pip = "", [], []
    section = None  # "dependencies" | "pip"
    pip_indent = None
    for raw in text.splitlines():
        line = raw.split(" #", 1)[0].rstrip() if not raw.lstrip().startswith("#") else ""
        if not line.strip():
            continue
        indent = len(line) - len(line.lstrip())
        stripped = line.strip()
        if indent == 0:
            section = "dependencies" if stripped == "dependencies:" else None
            if stripped.startswith("name:"):
                name = stripped.split(":", 1)[1].strip()
            continue
        if section is None or not stripped.startswith("- "):
            continue
        item = stripped[2:].strip()
        if section == "pip" and indent > pip_indent:
            pip.append(item)
            continue
        section = "dependencies"
        if item == "pip:":
            section, pip_indent = "pip", indent
        else:
            conda.append(item)
    return name, conda, pip


@pytest.fixture(scope="module")
def lock() -> dict[str, str]:
    return parse_lock((ROOT / "requirements.lock").read_text())


@pytest.fixture(scope="module")
def environment() -> tuple[str, list[str], list[str]]:
    return parse_environment((ROOT / "environment.yml").read_text())


def test_parser_handles_the_layout():
    text = ("name: x\nchannels:\n  - conda-forge\ndependencies:\n  - python=3.11\n  - pip\n"
            "  - pip:\n      - a==1.0  # note\n      - b_c==2\n  - opencv\n")
    assert parse_environment(text) == ("x", ["python=3.11", "pip", "opencv"], ["a==1.0", "b_c==2"])
    assert parse_lock("# c\n\nA_b==1.0\n") == {"a-b": "1.0"}


def test_lock_has_a_header_saying_how_it_was_made(lock):
    header = (ROOT / "requirements.lock").read_text().split("\n\n")[0]
    comments = [line for line in header.splitlines() if line.startswith("#")]
    assert comments, "requirements.lock should start with a comment header"
    text = " ".join(comments).lower()
    assert "pip freeze" in text and "linux x86_64" in text and "3.11" in text


def test_environment_pins_equal_the_lock(lock, environment):
    _, _, pip = environment
    env_pins = parse_lock("\n".join(pip))
    assert set(env_pins.items()) == set(lock.items()), (
        f"only in lock: {sorted(set(lock.items()) - set(env_pins.items()))}; "
        f"only in environment.yml: {sorted(set(env_pins.items()) - set(lock.items()))}")


def test_environment_conda_dependencies(environment):
    _, conda, _ = environment
    assert "python=3.11" in conda
    assert "pip" in conda
    for lib in ("pkg-config", "libjpeg-turbo", "opencv"):  # ffcv's build needs them
        assert lib in conda, f"{lib} missing from environment.yml dependencies"


def test_key_packages_are_pinned(lock):
    missing = [name for name in MUST_PIN if name not in lock]
    assert not missing, f"not pinned in requirements.lock: {missing}"


def test_both_opencv_wheels_share_one_version(lock):
    # ffcv needs opencv-python, grad-cam opencv-python-headless; both install the same cv2 module.
    assert lock.get("opencv-python") is not None
    assert lock.get("opencv-python") == lock.get("opencv-python-headless")


def test_lock_is_what_this_interpreter_has_installed(lock):
    wrong = {}
    for name, version in lock.items():
        try:
            have = metadata.version(name)
        except metadata.PackageNotFoundError:
            have = None
        if have != version:
            wrong[name] = (version, have)
    assert not wrong, f"locked vs installed (run make setup): {wrong}"


def test_ci_runs_make_test():
    ci = ROOT / ".ci" / "run"
    assert ci.is_file() and os.access(ci, os.X_OK), ".ci/run must be an executable file"
    text = ci.read_text()
    assert text.startswith("#!") and "bash" in text.splitlines()[0]
    assert "set -euo pipefail" in text
    commands = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    assert "make test" in commands


def test_makefile_targets():
    text = (ROOT / "Makefile").read_text()
    for target in ("setup:", "test: setup", "run: setup", "clean:"):
        assert re.search(rf"^{re.escape(target)}", text, re.M), target
    assert "-m pytest -q -n $(TEST_WORKERS) tests" in text  # the whole suite, on pytest-xdist workers
    assert "scripts/setup.sh" in text


def test_setup_script_is_valid_bash():
    script = ROOT / "scripts" / "setup.sh"
    assert os.access(script, os.X_OK)
    text = script.read_text()
    assert "set -euo pipefail" in text
    assert ".lock-sha256" in text and "requirements.lock" in text
    subprocess.run(["bash", "-n", str(script)], check=True)


def test_setup_installs_chromium_without_failing():
    # tests/test_report.py opens the report in headless Chromium; set-up installs it where it can
    # (root + apt-get) and otherwise says the browser test will be skipped, never failing set-up.
    text = (ROOT / "scripts" / "setup.sh").read_text()
    step = text[text.index("# --- (a2)"):text.index("# --- (b)")]
    assert "command -v chromium" in step and "apt-get install -y chromium" in step
    assert "will be skipped" in step and "die " not in step and "exit" not in step
