"""Tampered release packages are refused by `care score` and by `care models pull`, and no loading path
ever unpickles anything.

- `care score --model DIR` accepts a package only when its files are exactly those `manifest.json` lists,
  each with the listed size and sha256, and none is a symlink: a changed byte in any file, a missing file,
  an extra file and every kind of lying manifest (rehashed file but wrong size or file list, phantom or
  out-of-package entries, malformed entries, non-JSON or absurdly nested JSON) are refused with exit 1, one
  line, and no output file.
- `care models pull` also refuses a stored package with an extra file, and one whose manifest was rewritten
  consistently to match a tampered file: the stored manifest no longer hashes to the sha256 the registry
  recorded at registration (the top-level digest). Nothing is left at --out.
- Pickle payloads whose unpickling would create a sentinel file (`pytorch_model.bin`, `training_args.bin`,
  `*.pkl`, ...) are refused as extra files; listed in a consistent manifest, `care score` scores without
  unpickling them (no `pickle.find_class` audit event; only the manifest's sha256 reads them); the training
  and release loaders (base model, adapter, merge, export) refuse weights that are not safetensors before
  reading them, and a model directory's custom code (`auto_map`) is never imported. The sentinel never appears.

Already covered elsewhere: test_release.py (load_package: flipped byte in model.onnx, missing tokenizer.json,
extra file) and test_registry.py (pull: flipped byte, missing file, edited size).
"""

from __future__ import annotations

import json
import os
import pickle
import shlex
import shutil
import sys
from pathlib import Path

import pytest

from conftest import session_dict, write_jsonl_file
from test_registry import _stored_dir
from test_release import build_tiny_release
from zenml_env import zenml_store  # noqa: F401  (module-scoped fixture)

pytestmark = pytest.mark.timeout(300)

MODEL_NAME = "care-tamper"
PICKLE_NAMES = ("pytorch_model.bin", "training_args.bin", "model.pkl", "adapter_model.bin", "optimizer.pt")


# ------------------------------------------------------------------------------------------ helpers


@pytest.fixture(scope="module")
def rel(tmp_path_factory):
    return build_tiny_release(tmp_path_factory.getbasetemp() / "tiny_release")


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> Path:
    return write_jsonl_file(tmp_path_factory.mktemp("tamper_in"), [session_dict(session_id="t1")])


@pytest.fixture
def pkg(rel, tmp_path) -> Path:
    dest = tmp_path / "pkg"
    shutil.copytree(rel["package"], dest)
    return dest


def _manifest(root: Path) -> dict:
    return json.loads((root / "manifest.json").read_text("utf-8"))


def _write_manifest_as_is(root: Path, manifest) -> None:
    """What an attacker writes: any JSON, no checks."""
    (root / "manifest.json").write_text(json.dumps(manifest, indent=2), "utf-8")


def _remanifest(root: Path, **metadata) -> None:
    """Rewrite manifest.json consistently with whatever files are there now (the tool's own writer)."""
    from care.release.manifest import write_manifest

    meta = {k: v for k, v in _manifest(root).items() if k != "files"}
    write_manifest(root, {**meta, **metadata})


def _flip(path: Path, at: int | None = None) -> bytes:
    data = path.read_bytes()
    i = len(data) // 2 if at is None else at
    path.write_bytes(data[:i] + bytes([data[i] ^ 0x01]) + data[i + 1:])
    return data


def _score(run_cli, model: Path, inputs: Path, out: Path):
    return run_cli("score", "--model", model, inputs, "--out", out)


def assert_refused(result, out: Path | None, *needles: str) -> None:
    """Exit 1, exactly one stderr line `error: ...` naming every needle, no traceback, nothing written."""
    exc = result.exception
    assert exc is None or isinstance(exc, SystemExit), f"uncaught {type(exc).__name__}: {str(exc)[:300]}"
    assert result.exit_code == 1, result.output[-500:]
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), lines[:5]
    for needle in needles:
        assert needle in lines[0], (needle, lines[0][:500])
    assert result.stdout == ""
    if out is not None:
        assert not out.exists()
        assert not [p for p in out.parent.iterdir() if p.name.startswith(f".{out.name}")], "temp file left behind"


# ------------------------------------------------------------------------------------------ care score


def test_the_untouched_package_scores(run_cli, pkg, inputs, tmp_path):
    """The control: the copy every test below damages is accepted as it is."""
    out = tmp_path / "o.jsonl"
    result = _score(run_cli, pkg, inputs, out)
    assert result.exit_code == 0, result.output[-500:]
    assert [json.loads(line)["session_id"] for line in out.read_text("utf-8").splitlines()] == ["t1"]


def test_a_changed_byte_in_any_file_is_refused(run_cli, pkg, inputs, tmp_path):
    out = tmp_path / "o.jsonl"
    files = sorted(_manifest(pkg)["files"])
    assert {"model.onnx", "tokenizer.json", "tokenizer_config.json", "instrument.yaml", "README.md"} <= set(files)
    for rel in files:
        for at in (0, None, -1):  # first, middle and last byte
            size = (pkg / rel).stat().st_size
            original = _flip(pkg / rel, None if at is None else at % size)
            assert_refused(_score(run_cli, pkg, inputs, out), out, f"{rel}: sha256 does not match the manifest")
            (pkg / rel).write_bytes(original)
    with open(pkg / "model.onnx", "ab") as fh:  # one byte more
        fh.write(b"\x00")
    assert_refused(_score(run_cli, pkg, inputs, out), out, "model.onnx: size")


def test_a_missing_file_is_refused(run_cli, pkg, inputs, tmp_path):
    out = tmp_path / "o.jsonl"
    for rel in sorted(_manifest(pkg)["files"]):
        data = (pkg / rel).read_bytes()
        (pkg / rel).unlink()
        assert_refused(_score(run_cli, pkg, inputs, out), out, f"{rel}: missing")
        (pkg / rel).write_bytes(data)
    (pkg / "manifest.json").unlink()
    assert_refused(_score(run_cli, pkg, inputs, out), out, "no manifest; not a release package")


@pytest.mark.parametrize("name", ["notes.txt", "nested/dir/extra.json", ".hidden", "model.onnx_data",
                                  "tokenizer.model", "line\nbreak.txt"])
def test_an_extra_file_is_refused(run_cli, pkg, inputs, tmp_path, name):
    out = tmp_path / "o.jsonl"
    (pkg / name).parent.mkdir(parents=True, exist_ok=True)
    (pkg / name).write_bytes(b"extra")
    needle = name.replace("\n", "?")  # named on the one line, non-printables replaced
    assert_refused(_score(run_cli, pkg, inputs, out), out, f"{needle}: not in the manifest")


def test_a_symlink_is_refused_even_to_identical_bytes(run_cli, pkg, inputs, tmp_path):
    out = tmp_path / "o.jsonl"
    outside = tmp_path / "tokenizer.json"
    shutil.copyfile(pkg / "tokenizer.json", outside)
    (pkg / "tokenizer.json").unlink()
    (pkg / "tokenizer.json").symlink_to(outside)
    assert_refused(_score(run_cli, pkg, inputs, out), out, "symbolic links are not allowed")


def _lie(pkg: Path, tmp_path: Path, how: str) -> str:
    """Damage `pkg` and make its manifest lie about it; return what the refusal must name."""
    m = _manifest(pkg)
    files = m["files"]
    from care.release.manifest import sha256_file

    def rehash(rel: str, size: bool = True) -> None:
        files[rel]["sha256"] = sha256_file(pkg / rel)
        if size:
            files[rel]["size"] = (pkg / rel).stat().st_size

    if how == "rehashed_but_size_kept":
        with open(pkg / "model.onnx", "ab") as fh:
            fh.write(b"\x00" * 16)
        rehash("model.onnx", size=False)
        need = "model.onnx: size"
    elif how == "rehashed_but_an_entry_dropped":
        _flip(pkg / "tokenizer.json")
        rehash("tokenizer.json")
        del files["config.json"]
        need = "config.json: not in the manifest"
    elif how == "rehashed_with_a_phantom_entry":
        _flip(pkg / "model.onnx")
        rehash("model.onnx")
        files["weights.safetensors"] = {"sha256": "0" * 64, "size": 1}
        need = "weights.safetensors: missing"
    elif how == "entry_outside_the_package":
        outside = tmp_path / "model.onnx"
        shutil.copyfile(pkg / "model.onnx", outside)
        files["../model.onnx"] = files.pop("model.onnx")
        (pkg / "model.onnx").unlink()
        need = "../model.onnx: missing"
    elif how == "absolute_entry":
        files["/etc/hostname"] = files.pop("README.md")
        (pkg / "README.md").unlink()
        need = "/etc/hostname: missing"
    elif how == "sha256_digit_edited":
        sha = files["tokenizer.json"]["sha256"]
        files["tokenizer.json"]["sha256"] = ("1" if sha[0] != "1" else "2") + sha[1:]
        need = "tokenizer.json: sha256 does not match"
    elif how == "entry_not_a_mapping":
        files["tokenizer.json"] = files["tokenizer.json"]["sha256"]
        need = "tokenizer.json: manifest entry malformed"
    elif how == "size_as_text":
        files["instrument.yaml"]["size"] = str(files["instrument.yaml"]["size"])
        need = "instrument.yaml: size"
    elif how == "newline_in_a_name":
        files["a\nb"] = {"sha256": "0" * 64, "size": 1}
        need = "a?b: missing"
    elif how == "files_not_a_mapping":
        m["files"] = sorted(files)
        need = "manifest has no 'files' mapping"
    elif how == "not_json":
        (pkg / "manifest.json").write_text(json.dumps(m)[:-10], "utf-8")
        return "manifest is not valid JSON"
    elif how == "nested_100000_deep":
        (pkg / "manifest.json").write_text("[" * 100_000 + "]" * 100_000, "utf-8")
        return "manifest is not valid JSON"
    elif how == "number_over_digit_limit":
        (pkg / "manifest.json").write_text(json.dumps(m).replace('"size": ', '"size": ' + "9" * 5000, 1), "utf-8")
        return "manifest is not valid JSON"
    else:  # pragma: no cover
        raise AssertionError(how)
    _write_manifest_as_is(pkg, m)
    return need


LIES = ["rehashed_but_size_kept", "rehashed_but_an_entry_dropped", "rehashed_with_a_phantom_entry",
        "entry_outside_the_package", "absolute_entry", "sha256_digit_edited", "entry_not_a_mapping", "size_as_text",
        "newline_in_a_name", "files_not_a_mapping", "not_json", "nested_100000_deep", "number_over_digit_limit"]


@pytest.mark.parametrize("how", LIES)
def test_a_lying_manifest_is_refused(run_cli, pkg, inputs, tmp_path, how):
    out = tmp_path / "o.jsonl"
    need = _lie(pkg, tmp_path, how)
    assert_refused(_score(run_cli, pkg, inputs, out), out, need)


# ------------------------------------------------------------------------------------------ care models pull


def _register_variant(rel, tmp_path: Path, tag: str, extra_files: dict[str, bytes] | None = None) -> int:
    """Register a copy of the tiny package whose manifest is unique to `tag` (so its stored folder is its own)."""
    from zenml_registry.client import register_package

    src = tmp_path / f"src-{tag}"
    shutil.copytree(rel["package"], src)
    for name, data in (extra_files or {}).items():
        (src / name).write_bytes(data)
    _remanifest(src, data_version=f"tamper-{tag}")
    return register_package(src, MODEL_NAME)


def _pull(run_cli, version: int, dest: Path):
    return run_cli("models", "pull", "--version", str(version), "--out", dest, "--model-name", MODEL_NAME)


def test_pull_of_an_untouched_version_verifies_and_scores(zenml_store, rel, run_cli, inputs, tmp_path):
    """The control: what the refusals below refuse works when nothing was touched."""
    v = _register_variant(rel, tmp_path, "clean")
    dest = tmp_path / "pulled" / "model"
    result = _pull(run_cli, v, dest)
    assert result.exit_code == 0, result.output[-500:]
    out = tmp_path / "o.jsonl"
    assert _score(run_cli, dest, inputs, out).exit_code == 0 and out.is_file()


@pytest.mark.parametrize("damage", ["extra_file", "extra_file_in_a_folder", "consistent_rewrite",
                                    "consistent_rewrite_of_the_metadata"])
def test_pull_refuses_a_tampered_store(zenml_store, rel, run_cli, tmp_path, damage):
    v = _register_variant(rel, tmp_path, damage)
    stored = _stored_dir(zenml_store.client, MODEL_NAME, v)
    if damage == "extra_file":
        (stored / "notes.txt").write_bytes(b"extra")
        need = "1 file(s) in the stored package are not in its manifest: notes.txt"
    elif damage == "extra_file_in_a_folder":
        (stored / "sub").mkdir()
        (stored / "sub" / "x.json").write_bytes(b"{}")
        need = "not in its manifest: sub/x.json"
    elif damage == "consistent_rewrite":  # the manifest is made to match the tampered file: only the digest knows
        _flip(stored / "model.onnx")
        _remanifest(stored)
        need = "does not match the registered sha256"
    else:  # a metadata lie (gate verdict) with every file hash still right
        _remanifest(stored, gate={"passed": True, "note": "rewritten"})
        need = "does not match the registered sha256"
    from care.release.manifest import verify_package

    if damage.startswith("consistent"):
        verify_package(stored)  # the stored package is self-consistent: the manifest alone cannot tell
    dest = tmp_path / "pulled" / "model"
    assert_refused(_pull(run_cli, v, dest), None, need)
    assert not dest.exists() and os.listdir(dest.parent) == []


# ------------------------------------------------------------------------------------------ pickles

_FIND_CLASS: list[str] = []
_OPENED: list[tuple[str, tuple[str, ...]]] = []
_WATCH: dict[str, object] = {"on": False, "names": frozenset()}


def _audit(event: str, args: tuple) -> None:
    if not _WATCH["on"]:
        return
    if event == "pickle.find_class":
        _FIND_CLASS.append(f"{args[0]}.{args[1]}")
    elif event == "open" and isinstance(args[0], (str, bytes, os.PathLike)):
        path = os.fsdecode(args[0])
        if os.path.basename(path) in _WATCH["names"]:
            frames, f = [], sys._getframe(1)
            while f is not None:
                frames.append(f"{f.f_globals.get('__name__')}.{f.f_code.co_name}")
                f = f.f_back
            _OPENED.append((path, tuple(frames)))


sys.addaudithook(_audit)  # cannot be removed: inert unless a test switches it on


@pytest.fixture
def audit():
    """Records every unpickled class and every open of a payload file while the test runs."""
    _FIND_CLASS.clear()
    _OPENED.clear()
    _WATCH.update(on=True, names=frozenset(PICKLE_NAMES))
    try:
        yield _FIND_CLASS, _OPENED
    finally:
        _WATCH["on"] = False


class _Payload:
    """Unpickling this runs a shell command that creates `sentinel`."""

    def __init__(self, sentinel: Path):
        self.sentinel = sentinel

    def __reduce__(self):
        return os.system, (f"touch {shlex.quote(str(self.sentinel))}",)


@pytest.fixture
def payload(tmp_path):
    """(pickle bytes, sentinel path); proves first that unpickling such bytes does create its sentinel."""
    probe = tmp_path / "probe-sentinel"
    pickle.loads(pickle.dumps(_Payload(probe)))
    assert probe.exists(), "the payload must be live, or the tests below prove nothing"
    sentinel = tmp_path / "SENTINEL-unpickled"
    return pickle.dumps(_Payload(sentinel)), sentinel


def _only_hashed(opened) -> None:
    """Every open of a payload file came from the manifest check (the verified read that hashes each file)."""
    for path, frames in opened:
        assert {"care.release.manifest.sha256_file", "care.release.manifest.read_verified"} & set(frames), \
            (path, frames[:6])


def test_unlisted_pickles_are_refused_and_never_run(run_cli, pkg, inputs, tmp_path, payload, audit):
    data, sentinel = payload
    for name in PICKLE_NAMES:
        (pkg / name).write_bytes(data)
    find_class, opened = audit
    opened.clear()  # forget the writes above
    out = tmp_path / "o.jsonl"
    assert_refused(_score(run_cli, pkg, inputs, out), out, *(f"{n}: not in the manifest" for n in PICKLE_NAMES))
    assert not sentinel.exists() and find_class == []
    assert opened == [], "an unlisted payload file was read"


def test_listed_pickles_are_never_unpickled_by_score(run_cli, pkg, inputs, tmp_path, payload, audit):
    data, sentinel = payload
    for name in PICKLE_NAMES:
        (pkg / name).write_bytes(data)
    _remanifest(pkg)  # consistent: the package verifies, pickles included
    find_class, opened = audit
    opened.clear()  # forget the writes and hashes above
    out = tmp_path / "o.jsonl"
    result = _score(run_cli, pkg, inputs, out)
    assert result.exit_code == 0, result.output[-500:]
    assert len(out.read_text("utf-8").splitlines()) == 1
    assert not sentinel.exists()
    assert find_class == [], f"something was unpickled: {find_class[:5]}"
    assert {Path(p).name for p, _ in opened} == set(PICKLE_NAMES)  # the audit sees these files ...
    _only_hashed(opened)  # ... and only the manifest check read them


def test_the_registry_never_unpickles(zenml_store, rel, run_cli, inputs, tmp_path, payload, audit):
    data, sentinel = payload
    # an extra pickle dropped into the stored package: pull refuses before copying anything
    v = _register_variant(rel, tmp_path, "pickle-extra")
    (_stored_dir(zenml_store.client, MODEL_NAME, v) / "pytorch_model.bin").write_bytes(data)
    dest = tmp_path / "pulled-extra" / "model"
    assert_refused(_pull(run_cli, v, dest), None, "not in its manifest: pytorch_model.bin")
    assert not dest.exists()
    # a pickle registered inside the package (listed): pulled as bytes, scored without being unpickled
    v = _register_variant(rel, tmp_path, "pickle-listed", extra_files={n: data for n in PICKLE_NAMES})
    dest = tmp_path / "pulled-listed" / "model"
    result = _pull(run_cli, v, dest)
    assert result.exit_code == 0, result.output[-500:]
    out = tmp_path / "o.jsonl"
    assert _score(run_cli, dest, inputs, out).exit_code == 0
    find_class, _opened = audit
    assert not sentinel.exists() and find_class == []


def test_model_loaders_read_safetensors_only(rel, tmp_path, payload, audit):
    """Base model, adapter, full fine-tune, merge and export refuse pickle-only weights before reading them."""
    from care.model.presets import load_base
    from care.errors import CareError
    from care.release.export import export_onnx
    from care.release.merge import merge_adapter
    from care.model.training import load_finetuned

    data, sentinel = payload

    def pickled(src: Path, name: str, drop: str, weights: str) -> Path:
        d = tmp_path / name
        shutil.copytree(src, d)
        (d / drop).unlink()
        (d / weights).write_bytes(data)
        (d / "training_args.bin").write_bytes(data)
        return d

    base = pickled(rel["base"], "base", "model.safetensors", "pytorch_model.bin")
    adapter = pickled(rel["adapter"], "adapter", "adapter_model.safetensors", "adapter_model.bin")
    full = pickled(rel["merged"], "full", "model.safetensors", "pytorch_model.bin")
    calls = {
        "load_base": lambda: load_base(base),
        "load_finetuned(adapter)": lambda: load_finetuned(rel["base"], adapter),
        "load_finetuned(full)": lambda: load_finetuned(rel["base"], full),
        "merge_adapter(adapter)": lambda: merge_adapter(rel["base"], adapter, tmp_path / "m1", rel["check_inputs"],
                                                        1.0),
        "merge_adapter(full)": lambda: merge_adapter(rel["base"], full, tmp_path / "m2", [], 1.0),
        "export_onnx": lambda: export_onnx(full, tmp_path / "onnx"),
    }
    _OPENED.clear()  # forget the writes above
    for name, call in calls.items():
        with pytest.raises(CareError, match="safetensors"):
            call()
    find_class, opened = audit
    assert not sentinel.exists() and find_class == []
    assert opened == [], f"a pickle file was opened: {opened[0][0] if opened else ''}"
    assert not any((tmp_path / d).exists() for d in ("m1", "m2", "onnx"))


def test_a_model_directory_s_custom_code_is_never_imported(rel, tmp_path):
    """`auto_map` in config.json / tokenizer_config.json names code in the directory: it is never run
    (transformers' trust_remote_code stays off; care/ never sets it)."""
    from care.model.presets import load_base

    sentinel = tmp_path / "SENTINEL-remote-code"
    d = tmp_path / "remote"
    shutil.copytree(rel["base"], d)
    (d / "evil.py").write_text(f"import pathlib\npathlib.Path({str(sentinel)!r}).touch()\n", "utf-8")
    for name, key, value in (("config.json", "auto_map", {"AutoConfig": "evil.C", "AutoModelForCausalLM": "evil.M"}),
                             ("tokenizer_config.json", "auto_map", {"AutoTokenizer": ["evil.T", "evil.T"]})):
        doc = json.loads((d / name).read_text("utf-8"))
        doc[key] = value
        (d / name).write_text(json.dumps(doc), "utf-8")
    try:
        load_base(d)
    except Exception:  # refusing is as good as ignoring the code; running it is not
        pass
    assert not sentinel.exists()
    assert not any(m == "evil" or m.endswith(".evil") for m in sys.modules)


def test_no_loading_code_can_unpickle():
    """The source of every loader: no pickle, joblib or torch.load, no trust_remote_code, safetensors only."""
    root = Path(__file__).parents[1]
    sources = {p: p.read_text("utf-8") for d in ("care", "pipelines", "steps") for p in (root / d).rglob("*.py")}
    for needle in ("import pickle", "cloudpickle", "joblib", "torch.load", "trust_remote_code=True",
                   "allow_pickle=True", "yaml.load(", "yaml.unsafe_load", "weights_only=False"):
        hits = [str(p.relative_to(root)) for p, text in sources.items() if needle in text]
        assert not hits, (needle, hits)
    for p, text in sources.items():
        for line in text.splitlines():
            if "AutoModelForCausalLM.from_pretrained(" in line:
                assert "use_safetensors=True" in line, (str(p.relative_to(root)), line.strip())
