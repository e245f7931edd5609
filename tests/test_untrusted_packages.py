"""Untrusted release packages (issue 14, items 4 and 5).

- Verify what you load: `care score` builds model, tokenizer, chat template and instrument from the bytes whose
  sha256 it checked. A hook swaps every file on disk right after the check: the swapped bytes are never used
  (same logits, same instrument), also for a model with external data (loaded from a private verified copy).
- Only regular files: a FIFO (never opened, so never blocking), a device node, an empty or unlisted directory
  in a package are refused, each named.
- Chat templates are code from the package: rendered in a worker process with bounded time, output and
  memory; `raise_exception` text, template errors and rendered text never appear in the refusal.
- Signed releases: `--trusted-key` on `care score` and `care models pull` refuses unsigned, wrongly signed and
  re-manifested packages.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
from pathlib import Path

import numpy as np
import pytest

from conftest import session_dict, write_jsonl_file
from test_release import build_tiny_release
from test_tampering import _manifest, _remanifest, _score, assert_refused
from zenml_env import zenml_store  # noqa: F401  (module-scoped fixture)

pytestmark = pytest.mark.timeout(300)

MARKER = "MARKER-transcript-7f3a"  # stands for client text


@pytest.fixture(scope="module")
def rel(tmp_path_factory):
    return build_tiny_release(tmp_path_factory.getbasetemp() / "tiny_release")


@pytest.fixture
def pkg(rel, tmp_path) -> Path:
    dest = tmp_path / "pkg"
    shutil.copytree(rel["package"], dest)
    return dest


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> Path:
    turns = [{"speaker": "counselor", "text": "你好"}, {"speaker": "client", "text": MARKER}]
    return write_jsonl_file(tmp_path_factory.mktemp("untrusted_in"), [session_dict(session_id="u1", turns=turns)])


def _session():
    from care.data.schema import Session

    return Session.model_validate(session_dict(session_id="u1"))


def _logits(pkg_obj) -> np.ndarray:
    from care.release.onnx_runtime import answer_logits

    return answer_logits(pkg_obj, _session())[1]


# ------------------------------------------------------------------------------- verify what you load


def _swap_after_check(monkeypatch, swaps: dict[str, bytes]) -> list[str]:
    """Replace files of the package on disk right after `read_verified` returned (the race `care score` had)."""
    import care.release.manifest as manifest

    original, swapped = manifest.read_verified, []

    def checked_then_swapped(root, **kw):
        out = original(root, **kw)
        for name, data in swaps.items():
            (Path(root) / name).write_bytes(data)
            swapped.append(name)
        return out

    monkeypatch.setattr(manifest, "read_verified", checked_then_swapped)
    return swapped


def test_files_swapped_after_the_check_are_never_used(rel, pkg, monkeypatch):
    from care.data.instrument import instrument_path
    from care.release.onnx_runtime import load_package

    reference = _logits(load_package(rel["package"]))
    swaps = {
        "model.onnx": b"not a model",  # loaded by path, ONNX Runtime would fail
        "tokenizer.json": b"{}",
        "chat_template.jinja": b"{{ raise_exception('swapped') }}",
        "tokenizer_config.json": b"[]",
        "instrument.yaml": instrument_path("esconv-seeker").read_bytes(),
        "generation_config.json": b"{",
    }
    swapped = _swap_after_check(monkeypatch, swaps)
    loaded = load_package(pkg)
    assert sorted(swapped) == sorted(swaps) and (pkg / "model.onnx").read_bytes() == b"not a model"
    assert loaded.instrument.name == "wai-sr"
    np.testing.assert_array_equal(_logits(loaded), reference)


def test_external_data_is_loaded_from_a_private_verified_copy(rel, pkg, monkeypatch, tmp_path):
    """A model over 2 GB keeps its weights in model.onnx_data: hashed while copied to a private directory."""
    import glob
    import tempfile

    import onnx

    from care.release.onnx_runtime import load_package

    model = onnx.load(str(pkg / "model.onnx"))
    (pkg / "model.onnx").unlink()
    onnx.save_model(model, str(pkg / "model.onnx"), save_as_external_data=True, all_tensors_to_one_file=True,
                    location="model.onnx_data")
    _remanifest(pkg)
    reference = _logits(load_package(rel["package"]))
    weights = (pkg / "model.onnx_data").read_bytes()
    _swap_after_check(monkeypatch, {"model.onnx_data": bytes(len(weights)), "model.onnx": b"not a model"})
    before = set(glob.glob(os.path.join(tempfile.gettempdir(), "care-package-*")))
    loaded = load_package(pkg)
    np.testing.assert_allclose(_logits(loaded), reference, atol=1e-6)
    assert set(glob.glob(os.path.join(tempfile.gettempdir(), "care-package-*"))) == before  # private copy removed


# ---------------------------------------------------------------------------------- only regular files


def _odd_entries(pkg: Path, kind: str) -> str:
    if kind == "fifo":
        os.mkfifo(pkg / "tokenizer.pipe")
        return "tokenizer.pipe: a FIFO"
    if kind == "fifo_in_place_of_a_listed_file":
        (pkg / "tokenizer.json").unlink()
        os.mkfifo(pkg / "tokenizer.json")  # opening it would block forever
        return "tokenizer.json: a FIFO"
    if kind == "device":
        os.mknod(pkg / "null", stat.S_IFCHR | 0o600, os.makedev(1, 3))
        return "null: a device node"
    if kind == "empty_directory":
        (pkg / "extra").mkdir()
        return "extra/: directory not in the manifest"
    if kind == "unlisted_directory":
        (pkg / "nested" / "deeper").mkdir(parents=True)
        return "nested/deeper/: directory not in the manifest"
    raise AssertionError(kind)


@pytest.mark.parametrize("kind", ["fifo", "fifo_in_place_of_a_listed_file", "device", "empty_directory",
                                  "unlisted_directory"])
def test_only_regular_files_and_listed_directories(run_cli, pkg, inputs, tmp_path, kind):
    if kind == "device" and os.geteuid() != 0:
        pytest.skip("making a device node needs root")
    need = _odd_entries(pkg, kind)
    out = tmp_path / "o.jsonl"
    assert_refused(run_cli("score", "--model", pkg, inputs, "--out", out), out, need)


# -------------------------------------------------------------------------------- chat template sandbox


def _tokenizer_files(pkg: Path, template: str) -> dict[str, bytes]:
    files = {n: (pkg / n).read_bytes() for n in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")}
    files["chat_template.jinja"] = template.encode("utf-8")
    return files


HOSTILE = {
    "raise_exception": ("{{ raise_exception('leak: ' + messages[1].content) }}", "raise_exception"),
    "nested_loops": ("{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
                     "did not finish within"),
    "huge_output": ("{% for i in range(100000) %}{{ messages[1].content }}{% endfor %}", "output exceeded"),
    "memory": ("{% set x = 'a' * 10000000000 %}{{ x }}", "memory"),
    "error_quoting_text": ("{{ messages[1].content | int(messages[1].content.nope) }}{{ x.y.z }}",
                           "(the template's own message is not shown)"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_a_hostile_template_is_refused_without_echoing_text(pkg, case, monkeypatch):
    import care.release.template_sandbox as sandbox
    from care.errors import CareError
    from care.release.onnx_runtime import PackageTokenizer

    monkeypatch.setattr(sandbox, "RENDER_TIMEOUT_S", 1.5)
    template, need = HOSTILE[case]
    tok = PackageTokenizer(_tokenizer_files(pkg, template))
    messages = [{"role": "system", "content": "s"}, {"role": "user", "content": MARKER}]
    with pytest.raises(CareError) as exc:
        tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    text = str(exc.value)
    assert need in text and MARKER not in text and "leak" not in text and "\n" not in text


def test_a_hostile_template_in_a_package_exits_1_with_one_line(run_cli, pkg, inputs, tmp_path):
    (pkg / "chat_template.jinja").write_text("{{ raise_exception(messages[1].content) }}", "utf-8")
    _remanifest(pkg)  # consistent: only the template is hostile
    out = tmp_path / "o.jsonl"
    result = run_cli("score", "--model", pkg, inputs, "--out", out)
    assert_refused(result, out, "raise_exception")
    assert MARKER not in result.output


# ------------------------------------------------------------------------------------ signed releases


def _key_pair(where: Path, name: str) -> tuple[Path, Path]:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP256R1())
    private, public = where / f"{name}.pem", where / f"{name}.pub"
    private.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                          serialization.NoEncryption()))
    public.write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM,
                                                     serialization.PublicFormat.SubjectPublicKeyInfo))
    return private, public


def _other_key(where: Path, kind: str, password: bytes | None = None) -> tuple[Path, Path]:
    """A key pair of a type model-signing cannot use (RSA, Ed25519, EC on secp256k1), or an encrypted P-256."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

    key = {"rsa": lambda: rsa.generate_private_key(65537, 2048), "ed25519": ed25519.Ed25519PrivateKey.generate,
           "k1": lambda: ec.generate_private_key(ec.SECP256K1()),
           "locked": lambda: ec.generate_private_key(ec.SECP256R1())}[kind]()
    crypt = serialization.BestAvailableEncryption(password) if password else serialization.NoEncryption()
    private, public = where / f"{kind}.pem", where / f"{kind}.pub"
    private.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, crypt))
    public.write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM,
                                                     serialization.PublicFormat.SubjectPublicKeyInfo))
    return private, public


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    where = tmp_path_factory.mktemp("keys")
    return {"team": _key_pair(where, "team"), "other": _key_pair(where, "other"),
            **{kind: _other_key(where, kind) for kind in ("rsa", "ed25519", "k1")},
            "locked": _other_key(where, "locked", b"s3cret")}


def test_score_with_a_trusted_key(run_cli, pkg, inputs, tmp_path, keys, monkeypatch):
    from care.release.signing import sign_if_configured

    team_private, team_public = keys["team"]
    out = tmp_path / "o.jsonl"
    assert_refused(run_cli("score", "--model", pkg, inputs, "--out", out, "--trusted-key", team_public), out,
                   "not signed")
    monkeypatch.setenv("CARE_SIGNING_KEY", str(team_private))
    assert sign_if_configured(pkg) and (pkg / "manifest.sig").is_file()
    result = run_cli("score", "--model", pkg, inputs, "--out", out, "--trusted-key", team_public)
    assert result.exit_code == 0, result.output[-500:]
    out.unlink()
    assert_refused(run_cli("score", "--model", pkg, inputs, "--out", out, "--trusted-key", keys["other"][1]), out,
                   "another key")
    # an attacker changes a file and writes a consistent manifest: the signature no longer matches
    (pkg / "README.md").write_text("# edited\n", "utf-8")
    _remanifest(pkg)
    assert_refused(run_cli("score", "--model", pkg, inputs, "--out", out, "--trusted-key", team_public), out,
                   "does not verify", "manifest changed after signing")
    assert run_cli("score", "--model", pkg, inputs, "--out", out).exit_code == 0  # without a key: integrity only


def test_pull_with_a_trusted_key(zenml_store, rel, run_cli, tmp_path, keys):
    from care.release.signing import sign_package
    from zenml_registry.client import register_package

    team_private, team_public = keys["team"]
    signed, unsigned = tmp_path / "signed", tmp_path / "unsigned"
    for d, tag in ((signed, "s"), (unsigned, "u")):
        shutil.copytree(rel["package"], d)
        _remanifest(d, data_version=f"signing-{tag}")
    sign_package(signed, team_private)
    v_signed, v_unsigned = (register_package(d, "care-signed") for d in (signed, unsigned))

    def pull(version, dest, key):
        return run_cli("models", "pull", "--version", str(version), "--out", dest, "--model-name", "care-signed",
                       "--trusted-key", key)

    ok = pull(v_signed, tmp_path / "pulled" / "ok", team_public)
    assert ok.exit_code == 0 and "signed by the trusted key" in ok.output, ok.output[-500:]
    assert (tmp_path / "pulled" / "ok" / "manifest.sig").read_bytes() == (signed / "manifest.sig").read_bytes()
    for version, key, need in ((v_unsigned, team_public, "not signed"), (v_signed, keys["other"][1], "another key")):
        dest = tmp_path / f"refused-{version}-{key.stem}" / "pkg"
        result = pull(version, dest, key)
        assert result.exit_code == 1 and need in result.output, result.output[-500:]
        assert not dest.exists() and os.listdir(dest.parent) == []
    bad_key = tmp_path / "not-a-key.pub"
    bad_key.write_text("hello", "utf-8")
    assert pull(v_signed, tmp_path / "pulled" / "bad", bad_key).exit_code == 2
    for kind in ("rsa", "ed25519"):
        result = pull(v_signed, tmp_path / "pulled" / kind, keys[kind][1])
        assert result.exit_code == 2 and "accepted: an elliptic-curve key on P-256" in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1 and not (tmp_path / "pulled" / kind).exists()


def test_a_signing_key_that_is_missing_is_refused_before_training(run_cli, tmp_path, monkeypatch):
    monkeypatch.setenv("CARE_SIGNING_KEY", str(tmp_path / "absent.pem"))
    result = run_cli("train", "--params", "params.ci.yaml", "--metrics-dir", str(tmp_path / "m"))
    assert result.exit_code == 2 and "CARE_SIGNING_KEY" in result.output and not (tmp_path / "m").exists()


@pytest.mark.parametrize("kind, password, message", [
    ("rsa", None, "key type RSA; accepted: an elliptic-curve key on P-256, P-384 or P-521"),
    ("ed25519", None, "key type Ed25519; accepted"),
    ("k1", None, "key type elliptic curve on secp256k1; accepted"),
    ("locked", None, "the key is encrypted: set CARE_SIGNING_KEY_PASSWORD"),
    ("locked", "wrong", "not a private key in PEM, or CARE_SIGNING_KEY_PASSWORD is wrong"),
])
def test_a_signing_key_of_the_wrong_type_is_refused_before_training(run_cli, tmp_path, monkeypatch, keys, kind,
                                                                     password, message):
    monkeypatch.setenv("CARE_SIGNING_KEY", str(keys[kind][0]))
    if password:
        monkeypatch.setenv("CARE_SIGNING_KEY_PASSWORD", password)
    result = run_cli("train", "--params", "params.ci.yaml", "--metrics-dir", str(tmp_path / "m"))
    assert result.exit_code == 2 and result.stderr.startswith(f"error: CARE_SIGNING_KEY={keys[kind][0]}: {message}")
    assert len(result.stderr.strip().splitlines()) == 1 and not (tmp_path / "m").exists()


def test_trusted_keys_of_the_wrong_type_are_refused_in_one_line(pkg, run_cli, inputs, tmp_path, keys):
    out = tmp_path / "o.jsonl"
    for kind in ("rsa", "ed25519", "k1"):
        result = run_cli("score", "--model", pkg, inputs, "--out", out, "--trusted-key", keys[kind][1])
        assert result.exit_code == 2 and "accepted: an elliptic-curve key on P-256, P-384 or P-521" in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.output and not out.exists()


def test_the_scoring_config_is_the_prompt_config_the_package_was_built_with(rel):
    from test_release import PROMPT

    from care.model.prompts import PromptConfig
    from care.release.onnx_runtime import load_package

    loaded = load_package(rel["package"])
    assert PromptConfig.model_validate(loaded.scoring.model_dump(include=set(PromptConfig.model_fields))) == PROMPT
    assert loaded.builder.config is loaded.scoring
    assert loaded.scoring.model_dump(mode="json") == _manifest(rel["package"])["scoring"]


def test_a_scoring_config_from_an_older_version_is_refused_in_one_line(run_cli, pkg, inputs, tmp_path):
    """The old `reserve` key, no context policy: refused (naming both), never read with a default."""
    old = {k: v for k, v in _manifest(pkg)["scoring"].items() if k not in ("target_tokens", "context_policy")}
    _remanifest(pkg, scoring={**old, "reserve": 32})
    out = tmp_path / "o.jsonl"
    assert_refused(_score(run_cli, pkg, inputs, out), out, "manifest.json: scoring config:",
                   "target_tokens: Field required", "context_policy: Field required", "reserve: Extra inputs")


def test_a_malformed_signature_is_refused_in_one_line(pkg, run_cli, inputs, tmp_path, keys):
    (pkg / "manifest.sig").write_text(json.dumps({"not": "a bundle"}), "utf-8")
    out = tmp_path / "o.jsonl"
    assert_refused(run_cli("score", "--model", pkg, inputs, "--out", out, "--trusted-key", keys["team"][1]), out,
                   "does not verify")
    result = run_cli("score", "--model", pkg, inputs, "--out", out, "--trusted-key", pkg / "README.md")
    assert result.exit_code == 2 and "not a public key in PEM" in result.output


def test_pull_never_opens_a_fifo_in_the_store(zenml_store, rel, run_cli, tmp_path):
    from test_registry import _stored_dir
    from zenml_registry.client import register_package

    src = tmp_path / "src"
    shutil.copytree(rel["package"], src)
    _remanifest(src, data_version="fifo-in-store")
    version = register_package(src, "care-fifo")
    stored = _stored_dir(zenml_store.client, "care-fifo", version)
    (stored / "README.md").unlink()
    os.mkfifo(stored / "README.md")  # copying it would block forever
    dest = tmp_path / "pulled" / "pkg"
    result = run_cli("models", "pull", "--version", str(version), "--out", dest, "--model-name", "care-fifo")
    assert result.exit_code == 1 and "README.md in the stored package is not a regular file" in result.output
    assert not dest.exists()
