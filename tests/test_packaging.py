"""A wheel of the checkout, installed away from it, finds its constitutions and default prompts."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# Runs in the installed copy; prints what the tests below check.
PROBE = """
import json
import selfimprove
from selfimprove.checks import passes, run_checks
from selfimprove.constitution import load_constitution, search_dirs
from selfimprove.sources import load_prompts

concise = load_constitution("concise")
filler = "Great question! The capital of France is Paris. I hope this helps!"
print(json.dumps({
    "package": selfimprove.__file__,
    "shipped": str(search_dirs()[-1]),
    "concise_source": str(concise.source),
    "prompts": len(load_prompts("general")),
    "filler_passes": passes(run_checks(concise, filler)),
    "short_passes": passes(run_checks(concise, "Paris.")),
}))
"""


def _copy_checkout(to: Path) -> None:
    """Copy what git would commit (tracked and new, not ignored files): building in a copy
    leaves no build/ or *.egg-info in the checkout."""
    try:
        listed = subprocess.run(
            ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
            cwd=ROOT, capture_output=True, check=True,
        ).stdout.decode()
    except (OSError, subprocess.CalledProcessError) as exc:
        pytest.skip(f"needs a git checkout to copy ({exc})")
    for name in filter(None, listed.split("\0")):
        source = ROOT / name
        if source.is_file():  # a tracked file deleted in the working tree is not copied
            (to / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, to / name)


def _pip(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "pip", "-q", *args], check=True)


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The checkout built as a wheel (offline) and installed into a directory of its own."""
    tmp = tmp_path_factory.mktemp("wheel")
    src, dist, site = tmp / "src", tmp / "dist", tmp / "site"
    before = sorted(p.name for p in ROOT.iterdir())
    _copy_checkout(src)
    _pip("wheel", "--no-deps", "--no-build-isolation", "--no-index", "-w", str(dist), str(src))
    (wheel,) = dist.glob("selfimprove-*.whl")
    _pip("install", "--no-deps", "--no-index", "--target", str(site), str(wheel))
    assert sorted(p.name for p in ROOT.iterdir()) == before, "the build wrote into the checkout"
    return site


def _run(site: Path, cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "SELFIMPROVE_CONSTITUTIONS"}
    env["PYTHONPATH"] = str(site)
    return subprocess.run(
        [sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=120
    )


@pytest.fixture
def elsewhere(tmp_path: Path) -> Path:
    """A working directory outside the checkout, so nothing is found through it."""
    assert not tmp_path.resolve().is_relative_to(ROOT)
    return tmp_path


def test_installed_wheel_finds_its_data(site: Path, elsewhere: Path) -> None:
    result = _run(site, elsewhere, "-c", PROBE)
    assert result.returncode == 0, result.stderr
    facts = json.loads(result.stdout)
    package = site / "selfimprove"
    assert Path(facts["package"]).resolve() == (package / "__init__.py").resolve()
    assert Path(facts["shipped"]).resolve() == (package / "constitutions").resolve()
    concise = package / "constitutions" / "concise.yaml"
    assert Path(facts["concise_source"]).resolve() == concise.resolve()
    assert facts["prompts"] >= 100
    assert (facts["filler_passes"], facts["short_passes"]) == (False, True)


def test_installed_cli_lists_and_validates(site: Path, elsewhere: Path) -> None:
    listed = _run(site, elsewhere, "-m", "selfimprove", "constitution", "list")
    assert listed.returncode == 0, listed.stderr
    for name in ("concise", "hhh", "customer-support", "base"):
        assert name in listed.stdout
    # customer-support extends base: the parent is found in the installed package too
    checked = _run(site, elsewhere, "-m", "selfimprove", "constitution", "validate",
                   "customer-support")
    assert checked.returncode == 0, checked.stderr
    assert checked.stdout.startswith("ok: customer-support (customer-support v")


def test_wheel_ships_schema_and_declares_dependencies(site: Path) -> None:
    schema = site / "selfimprove" / "constitutions" / "schema.json"
    assert json.loads(schema.read_text()) == json.loads(
        (ROOT / "constitutions" / "schema.json").read_text()
    )
    (metadata,) = site.glob("selfimprove-*.dist-info/METADATA")
    names = re.findall(r"^Requires-Dist: ([A-Za-z0-9_.-]+)", metadata.read_text(), re.M)
    requires = {name.lower() for name in names}
    assert {"pyarrow", "filelock", "pyyaml", "pydantic"} <= requires


def test_packaged_prompts_by_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from selfimprove.errors import ConfigError
    from selfimprove.sources import load_prompts, packaged_prompts

    monkeypatch.chdir(tmp_path)
    packaged = packaged_prompts("general")
    assert packaged is not None and packaged.name == "general.jsonl"
    assert load_prompts("general") == load_prompts(packaged)
    assert packaged_prompts("no-such-set") is None
    with pytest.raises(ConfigError, match=r"prompt file not found.*known: general"):
        load_prompts("no-such-set")
    # a file that exists wins over the packaged set of the same name
    (tmp_path / "general").write_text("Local prompt?\n", encoding="utf-8")
    assert [p for _, p in load_prompts("general")] == ["Local prompt?"]
