"""Signed releases: `manifest.sig`, a signature over a package's `manifest.json` (OpenSSF model-signing, key-based).

The manifest holds the sha256 of every file, so signing it signs the package. The signature is a
Sigstore bundle made by the `model-signing` library with an elliptic-curve private key (PEM); it never
reaches the network. `model_signing verify key --signature manifest.sig --public_key PUB manifest.json`
checks it with the library's own CLI as well.

- Signing: when the environment variable `CARE_SIGNING_KEY` names a PEM private key file (optionally
  encrypted with the password in `CARE_SIGNING_KEY_PASSWORD`), the release build signs the package it
  built, right before the run registers it (`sign_if_configured`, called by `care.run.release`).
- Verifying: `verify_signature(manifest_bytes, signature, public_key)` checks the manifest bytes the caller
  already verified the files against (`care.release.manifest.read_verified`), never a file re-read by path.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from care.errors import CareError, UsageError
from care.fsutil import atomic_write_bytes
from care.release.manifest import MANIFEST, MAX_SIGNATURE_BYTES, SIGNATURE, read_small

KEY_ENV = "CARE_SIGNING_KEY"
PASSWORD_ENV = "CARE_SIGNING_KEY_PASSWORD"
MAX_KEY_BYTES = 64 << 10
CURVES = {"secp256r1": "P-256", "secp384r1": "P-384", "secp521r1": "P-521"}  # model-signing's key signer's
ACCEPTED = "accepted: an elliptic-curve key on P-256, P-384 or P-521, in PEM"


def _model_signing():
    try:
        from model_signing import signing, verifying
    except ImportError as exc:  # pragma: no cover - a dependency of the project
        raise CareError(f"signed releases need the model-signing package ({exc.name} is missing)") from None
    return signing, verifying


def _key_type(key: object, where: str) -> None:
    """UsageError unless `key` (public or private) is an elliptic-curve key on a curve model-signing signs with."""
    from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, ed25519, rsa, x448, x25519

    kinds = {rsa.RSAPublicKey: "RSA", rsa.RSAPrivateKey: "RSA", ed25519.Ed25519PublicKey: "Ed25519",
             ed25519.Ed25519PrivateKey: "Ed25519", ed448.Ed448PublicKey: "Ed448", ed448.Ed448PrivateKey: "Ed448",
             dsa.DSAPublicKey: "DSA", dsa.DSAPrivateKey: "DSA", x25519.X25519PublicKey: "X25519",
             x25519.X25519PrivateKey: "X25519", x448.X448PublicKey: "X448", x448.X448PrivateKey: "X448"}
    if isinstance(key, (ec.EllipticCurvePublicKey, ec.EllipticCurvePrivateKey)):
        if key.curve.name in CURVES:
            return
        raise UsageError(f"{where}: key type elliptic curve on {key.curve.name}; {ACCEPTED}")
    kind = next((name for cls, name in kinds.items() if isinstance(key, cls)), type(key).__name__)
    raise UsageError(f"{where}: key type {kind}; {ACCEPTED}")


def check_private_key(path: Path, password: str | None, where: str) -> None:
    """UsageError (one line) unless `path` holds a private key model-signing can sign with, readable with
    `password`: the check `care train` makes before any work and the release build makes again."""
    from cryptography.exceptions import UnsupportedAlgorithm
    from cryptography.hazmat.primitives import serialization

    data = _read_key(path, "signing key", UsageError)
    try:
        key = serialization.load_pem_private_key(data, password.encode() if password else None)
    except TypeError:  # a password for a plain key, or none for an encrypted one
        raise UsageError(f"{where}: the key is {'not ' if password else ''}encrypted: "
                         f"{'unset' if password else 'set'} {PASSWORD_ENV}") from None
    except (ValueError, UnsupportedAlgorithm):
        raise UsageError(f"{where}: not a private key in PEM, or {PASSWORD_ENV} is wrong; {ACCEPTED}") from None
    _key_type(key, where)


def check_public_key(data: bytes, where: str) -> None:
    """UsageError (one line) unless `data` is a public key model-signing can verify with."""
    from cryptography.exceptions import UnsupportedAlgorithm
    from cryptography.hazmat.primitives import serialization

    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise UsageError(f"{where}: not a public key in PEM; {ACCEPTED}") from None
    _key_type(key, where)


def configured_key() -> Path | None:
    """The private key named by CARE_SIGNING_KEY, or None when it is unset or empty; UsageError when it is
    missing, unreadable or of a type (or password) that cannot sign, so `care train` refuses it before work."""
    value = os.environ.get(KEY_ENV, "").strip()
    if not value:
        return None
    path = Path(value)
    if not path.is_file():
        raise UsageError(f"{KEY_ENV}={path}: no such key file")
    check_private_key(path, os.environ.get(PASSWORD_ENV) or None, f"{KEY_ENV}={path}")
    return path


def _read_key(path: Path, what: str, error: type[CareError] = CareError) -> bytes:
    """A key file's bytes (symbolic links followed: secrets are often mounted as links), at most 64 KiB."""
    try:
        if not path.is_file():
            raise error(f"{path}: no {what} file")
        if path.stat().st_size > MAX_KEY_BYTES:
            raise error(f"{path}: too large for a {what}")
        return path.read_bytes()
    except OSError as exc:
        raise error(f"{path}: cannot read the {what} ({exc.strerror or type(exc).__name__})") from None


def sign_package(root: str | Path, private_key: str | Path, password: str | None = None) -> Path:
    """Write `root/manifest.sig`, a signature over `root/manifest.json` with `private_key` (PEM, EC)."""
    signing, _ = _model_signing()
    root = Path(root)
    manifest = read_small(root / MANIFEST, 64 << 20, "manifest")
    check_private_key(Path(private_key), password, str(private_key))
    key = _read_key(Path(private_key), "signing key")
    with tempfile.TemporaryDirectory(prefix="care-sign-") as tmp:
        (Path(tmp) / MANIFEST).write_bytes(manifest)
        (Path(tmp) / "key.pem").write_bytes(key)
        try:
            signing.Config().use_elliptic_key_signer(private_key=Path(tmp) / "key.pem", password=password).sign(
                Path(tmp) / MANIFEST, Path(tmp) / SIGNATURE)
        except (ValueError, TypeError) as exc:
            raise CareError(f"{private_key}: cannot sign with this key ({type(exc).__name__}: expected an "
                            "elliptic-curve private key in PEM; a wrong or missing password also fails)") from None
        signature = (Path(tmp) / SIGNATURE).read_bytes()
    return atomic_write_bytes(root / SIGNATURE, signature)


def sign_if_configured(root: str | Path) -> bool:
    """Sign the package at `root` when CARE_SIGNING_KEY names a key; return whether it was signed."""
    key = configured_key()
    if key is None:
        return False
    sign_package(root, key, os.environ.get(PASSWORD_ENV) or None)
    return True


def verify_signature(manifest_bytes: bytes, signature: bytes | None, public_key: str | Path, where: str) -> None:
    """Raise CareError unless `signature` is a valid signature of exactly `manifest_bytes` by `public_key`."""
    _, verifying = _model_signing()
    try:
        key = _read_key(Path(public_key), "trusted key")
    except CareError as exc:
        raise UsageError(f"--trusted-key: {exc}") from None
    check_public_key(key, f"--trusted-key {public_key}")
    if signature is None:
        raise CareError(f"{where}: the package is not signed (no {SIGNATURE}); --trusted-key accepts signed packages only")
    if len(signature) > MAX_SIGNATURE_BYTES:
        raise CareError(f"{where}: {SIGNATURE} is too large")
    with tempfile.TemporaryDirectory(prefix="care-verify-") as tmp:
        t = Path(tmp)
        (t / MANIFEST).write_bytes(manifest_bytes)
        (t / SIGNATURE).write_bytes(signature)
        (t / "trusted.pem").write_bytes(key)
        try:
            config = verifying.Config().use_elliptic_key_verifier(public_key=t / "trusted.pem")
        except (ValueError, TypeError):
            raise UsageError(f"--trusted-key {public_key}: not an elliptic-curve public key in PEM") from None
        try:
            config.verify(t / MANIFEST, t / SIGNATURE)
        except Exception as exc:  # the library raises ValueError and others; its messages hold digests only
            text = str(exc)
            why = ("it was made with another key" if "Key mismatch" in text
                   else "the manifest changed after signing, or the signature is damaged")
            raise CareError(f"{where}: {SIGNATURE} does not verify with the trusted key ({why}); refusing the package") \
                from None
