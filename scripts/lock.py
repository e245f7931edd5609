"""The lock files of the whole stack: `requirements/cpu.lock` and `requirements/gpu.lock`, every package pinned
with its sha256 hashes, compiled from pyproject.toml's dependencies. `scripts/setup.sh cpu|gpu` installs from
them (`pip install --require-hashes`); CI fails when pyproject.toml changed without them.

    python scripts/lock.py compile [cpu|gpu ...]   # regenerate (uv pip compile --generate-hashes; needs the registry)
    python scripts/lock.py check [cpu|gpu ...]     # exit 1 when a lock was not compiled from today's pyproject.toml
    python scripts/lock.py extraneous cpu|gpu      # installed packages the lock does not list (set-up removes them)

`requirements/pip.lock` pins the installer (PIP below), which set-up installs first. Each lock's first line
records the sha256 of what it was compiled from (`inputs_digest`): the project's
dependencies, the extras of that flavor, the Python version and the pins below. `check` needs the standard
library only, so set-up runs it before anything is installed.

- cpu: the extras `cpu` and `dev`, with torch pinned to the CPU build; that wheel lies in this machine's pip
  find-links folder (`pip config list`), so its hash is that file's.
- gpu: the extras `gpu` and `dev`; torch is the CUDA build from the registry (with its nvidia-* libraries).
"""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LOCK_DIR = ROOT / "requirements"
PYTHON = "3.11"
UV = "uv==0.13.9"  # the compiler, installed into .lock-tools/ (not a project dependency)
FLAVORS = {
    "cpu": {"extras": ["cpu", "dev"], "overrides": ["torch==2.13.0+cpu"], "local_wheels": True},
    "gpu": {"extras": ["gpu", "dev"], "overrides": [], "local_wheels": False},
}
PIP = "pip==26.3"  # requirements/pip.lock: the installer itself, installed first (the venv's own pip is older, slower)
DIGEST_LINE = re.compile(r"^# inputs-sha256: ([0-9a-f]{64})$")


def lock_path(flavor: str) -> Path:
    return LOCK_DIR / f"{flavor}.lock"


def inputs_digest(flavor: str, pyproject: Path = ROOT / "pyproject.toml") -> str:
    """sha256 of what `flavor`'s lock is compiled from: the dependencies and extras in pyproject.toml, the
    Python version and the flavor's pins."""
    if flavor == "pip":
        return hashlib.sha256(json.dumps({"pip": PIP, "python": PYTHON}).encode("utf-8")).hexdigest()
    project = tomllib.loads(pyproject.read_text("utf-8"))["project"]
    spec = FLAVORS[flavor]
    doc = {
        "requires-python": project.get("requires-python"),
        "python": PYTHON,
        "dependencies": project.get("dependencies", []),
        "extras": {e: project.get("optional-dependencies", {}).get(e, []) for e in spec["extras"]},
        "overrides": spec["overrides"],
    }
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode("utf-8")).hexdigest()


def recorded_digest(flavor: str) -> str | None:
    path = lock_path(flavor)
    if not path.is_file():
        return None
    first = path.read_text("utf-8").split("\n", 1)[0]
    match = DIGEST_LINE.match(first)
    return match.group(1) if match else None


def pins(flavor: str) -> dict[str, str]:
    """The lock's packages (normalised names) and their pinned versions."""
    out = {}
    for line in lock_path(flavor).read_text("utf-8").splitlines():
        match = re.match(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;\\]+)", line)
        if match:
            out[normalise(match.group(1))] = match.group(2)
    return out


def normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def extraneous(flavor: str, project: str = "care-alliance") -> list[str]:
    """Packages installed in this interpreter's environment that `flavor`'s lock does not list (the other
    flavor's onnxruntime, say); the project itself and pip are kept."""
    import sysconfig
    from importlib.metadata import distributions

    locked = pins(flavor)
    # Only what is installed into the environment: setuptools puts its own vendored copies on sys.path once
    # it is imported, and those were never installed.
    site = sorted({sysconfig.get_path("purelib"), sysconfig.get_path("platlib")})
    names = {normalise(d.metadata["Name"]) for d in distributions(path=site) if d.metadata["Name"]}
    return sorted(names - locked.keys() - {normalise(project), "pip"})


def check(flavors: list[str]) -> int:
    bad = 0
    for flavor in flavors:
        recorded = recorded_digest(flavor)
        if recorded != inputs_digest(flavor):
            what = "is missing" if recorded is None and not lock_path(flavor).is_file() else \
                "was compiled from other dependencies than pyproject.toml has now"
            print(f"error: {lock_path(flavor).relative_to(ROOT)} {what}: run `python scripts/lock.py compile "
                  f"{flavor}` and commit it", file=sys.stderr)
            bad = 1
    return bad


def _uv() -> Path:
    tools = ROOT / ".lock-tools"
    uv = tools / "bin" / "uv"
    if not uv.is_file():
        subprocess.run([sys.executable, "-m", "venv", str(tools)], check=True)
        subprocess.run([str(tools / "bin" / "python"), "-m", "pip", "install", "--quiet", UV], check=True)
    return uv


def _find_links() -> list[str]:
    """pip's configured find-links folders (where this machine keeps wheels such as the CPU build of torch)."""
    out = subprocess.run([sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True).stdout
    links: list[str] = []
    for line in out.splitlines():
        key, _, value = line.partition("=")
        if key.endswith("find-links"):
            links += [v for v in value.strip().strip("'\"").split() if v not in links]
    return links


def compile_lock(flavor: str) -> None:
    """Write `flavor`'s lock (or, for "pip", the installer's)."""
    spec = FLAVORS.get(flavor, {"extras": [], "overrides": [], "local_wheels": False})
    LOCK_DIR.mkdir(exist_ok=True)
    out = lock_path(flavor)
    tmp = out.with_suffix(".lock.tmp")
    overrides = LOCK_DIR / f".{flavor}-overrides.txt"
    overrides.write_text("".join(f"{pin}\n" for pin in spec["overrides"]), "utf-8")
    source = "pyproject.toml"
    if flavor == "pip":
        source = str(LOCK_DIR / ".pip.in")
        Path(source).write_text(PIP + "\n", "utf-8")
    cmd = [str(_uv()), "pip", "compile", source, "--generate-hashes", "--python-version", PYTHON,
           "--python-platform", "x86_64-manylinux_2_28", "--no-config", "--quiet", "-o", str(tmp),
           "--custom-compile-command", f"python scripts/lock.py compile {flavor}", "--override", str(overrides)]
    for extra in spec["extras"]:
        cmd += ["--extra", extra]
    if spec["local_wheels"]:
        for link in _find_links():
            cmd += ["--find-links", link]
    if out.is_file():  # uv keeps the pins of an existing output file where they still satisfy the inputs
        tmp.write_text(out.read_text("utf-8"), "utf-8")
    try:
        subprocess.run(cmd, cwd=ROOT, check=True)
        body = tmp.read_text("utf-8").replace(f"--override {overrides}", "--override <the flavor's pins>")
        body = body.replace(f"--override {overrides.relative_to(ROOT)}", "--override <the flavor's pins>")
        out.write_text(f"# inputs-sha256: {inputs_digest(flavor)}\n# flavor: {flavor} (scripts/lock.py)\n{body}",
                       "utf-8")
    finally:
        tmp.unlink(missing_ok=True)
        overrides.unlink(missing_ok=True)
        (LOCK_DIR / ".pip.in").unlink(missing_ok=True)
    print(f"wrote {out.relative_to(ROOT)}")


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in ("compile", "check", "extraneous") or any(f not in FLAVORS for f in argv[1:]):
        print(__doc__.split("\n\n")[1], file=sys.stderr)
        return 2
    flavors = argv[1:] or list(FLAVORS)
    if argv[0] == "check":
        return check(["pip", *flavors])
    if argv[0] == "extraneous":
        print(" ".join(extraneous(flavors[0])))
        return 0
    compile_lock("pip")
    for flavor in flavors:
        compile_lock(flavor)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
