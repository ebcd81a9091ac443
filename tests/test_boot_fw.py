"""Inventory, boot manifest, boot files and USB boot orchestration in the firmware.

The scenarios (tests/mpy/scenarios_boot_*.py) run the whole firmware on a fake board under
CPython; tests/mpy/boot_units.py runs the same modules under the real MicroPython unix port
with an RP2040-sized heap (the whole app plus a host rig does not fit one 192K heap).
The keys they push are real ones, made here with `cryptography`.
"""

from __future__ import annotations

import base64
import json
import pathlib
import sys
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization as ser
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from tests.mprun import run_micropython

HERE = pathlib.Path(__file__).parent
sys.path.insert(0, str(HERE / "mpy"))

import scenarios_boot_files  # noqa: E402
import scenarios_boot_inventory  # noqa: E402
import scenarios_boot_usb  # noqa: E402

MODULES = [scenarios_boot_inventory, scenarios_boot_files, scenarios_boot_usb]
ALL = [sc for m in MODULES for sc in m.SCENARIOS]

PEM = ser.Encoding.PEM
SPKI = ser.PublicFormat.SubjectPublicKeyInfo
PKCS8 = ser.PrivateFormat.PKCS8


def make_keys() -> dict[str, Any]:
    ed = ed25519.Ed25519PrivateKey.generate()
    ecp = ec.generate_private_key(ec.SECP256R1())
    p384 = ec.generate_private_key(ec.SECP384R1())
    ed_raw = ed.public_key().public_bytes(ser.Encoding.Raw, ser.PublicFormat.Raw)
    ec_raw = ecp.public_key().public_bytes(ser.Encoding.X962, ser.PublicFormat.UncompressedPoint)
    tuf_key = ed25519.Ed25519PrivateKey.generate().public_key()
    tuf_hex = tuf_key.public_bytes(ser.Encoding.Raw, ser.PublicFormat.Raw).hex()
    root = {
        "signatures": [{"keyid": "a1" * 32, "sig": "00" * 64}],
        "signed": {
            "_type": "root",
            "spec_version": "1.0.31",
            "version": 1,
            "expires": "2030-01-01T00:00:00Z",
            "consistent_snapshot": True,
            "keys": {
                "a1" * 32: {
                    "keytype": "ed25519",
                    "scheme": "ed25519",
                    "keyval": {"public": tuf_hex},
                }
            },
            "roles": {
                r: {"keyids": ["a1" * 32], "threshold": 1}
                for r in ("root", "targets", "snapshot", "timestamp")
            },
        },
    }
    keys: dict[str, Any] = {
        "ed_pem": ed.public_key().public_bytes(PEM, SPKI).decode(),
        "ed_hex": ed_raw.hex(),
        "ec_pem": ecp.public_key().public_bytes(PEM, SPKI).decode(),
        "ec_hex": ec_raw.hex(),
        "ed_priv_pem": ed.private_bytes(PEM, PKCS8, ser.NoEncryption()).decode(),
        "ec_priv_pem": ecp.private_bytes(
            PEM, ser.PrivateFormat.TraditionalOpenSSL, ser.NoEncryption()
        ).decode(),
        "p384_pem": p384.public_key().public_bytes(PEM, SPKI).decode(),
        "tuf_root": json.dumps(root, separators=(",", ":")),
    }
    keys["bad"] = bad_keys(keys)
    return keys


def pem_of(der: bytes) -> str:
    return (
        f"-----BEGIN PUBLIC KEY-----\n{base64.encodebytes(der).decode()}-----END PUBLIC KEY-----\n"
    )


def bad_keys(k: dict[str, str]) -> dict[str, str]:
    """Key texts the BMC must refuse (`invalid`), by what is wrong with them; some get
    past MicroPython's lenient parsers, so they are tried under it too (boot_units)."""
    ed_pem, ec_pem, tuf_root = k["ed_pem"], k["ec_pem"], k["tuf_root"]
    ed_der, ec_der = (
        ser.load_pem_public_key(p.encode()).public_bytes(ser.Encoding.DER, SPKI)
        for p in (ed_pem, ec_pem)
    )
    ed_raw, ec_raw = bytes.fromhex(k["ed_hex"]), bytes.fromhex(k["ec_hex"])

    def spki(algid: bytes, raw: bytes) -> bytes:
        alg = b"\x30" + bytes([len(algid)]) + algid
        bits = b"\x03" + bytes([len(raw) + 1, 0]) + raw
        return b"\x30" + bytes([len(alg) + len(bits)]) + alg + bits

    oid_ed = bytes.fromhex("06032b6570")
    oid_ec_p256 = bytes.fromhex("06072a8648ce3d020106082a8648ce3d030107")
    assert spki(oid_ed, ed_raw) == ed_der and spki(oid_ec_p256, ec_raw) == ec_der
    body = ed_pem.split("\n")[1]
    out = {
        # PEM: one block, of base64 and nothing else
        "pem, two blocks": ed_pem + ec_pem,
        "pem, a private key after the public": ed_pem + k["ed_priv_pem"],
        "pem, text after END": ed_pem + "and more",
        "pem, not base64 in the body": ed_pem.replace(body, body[:8] + "!?" + body[8:]),
        "pem, = in the body": ed_pem.replace(body, body[:8] + "=" + body[8:]),
        # DER: SubjectPublicKeyInfo, distinguished encoding
        "der, long form of a short length": pem_of(b"\x30\x81" + ed_der[1:]),
        "der, Ed25519 with NULL parameters": pem_of(spki(oid_ed + b"\x05\x00", ed_raw)),
        "der, Ed25519 with a curve": pem_of(spki(oid_ed + oid_ec_p256[9:], ed_raw)),
        # Ed25519: 32 bytes, but not a point of the curve
        "hex, Ed25519 y not a point": "02" + "00" * 31,
        "hex, Ed25519 y >= q": "ff" * 31 + "7f",
        "der, bytes after the curve": pem_of(spki(oid_ec_p256 + b"\x05\x00", ec_raw)),
    }
    signed = '"signed":{'
    assert signed in tuf_root
    extra = '"signed":{"x":%s,'
    out.update(
        {
            # MicroPython's json.loads takes these; the root is served as it is
            "tuf root, trailing comma": tuf_root[:-1] + ",}",
            "tuf root, no colon": tuf_root.replace(signed, extra % '"a" 1', 1),
            "tuf root, unknown escape": tuf_root.replace(signed, extra % '"\\q"', 1),
            "tuf root, raw newline in a string": tuf_root.replace(signed, extra % '"a\nb"', 1),
            "tuf root, number 012": tuf_root.replace(signed, extra % "012", 1),
            "tuf root, a key twice": tuf_root.replace(signed, '"signed":{"_type":"targets",', 1),
        }
    )
    return out


@pytest.fixture
def keyed_tmp(tmp_path: pathlib.Path) -> pathlib.Path:
    (tmp_path / "keys.json").write_text(json.dumps(make_keys()))
    return tmp_path


@pytest.mark.parametrize("scenario", ALL, ids=[sc.__name__ for sc in ALL])
def test_boot_scenario_cpython(scenario: object, keyed_tmp: pathlib.Path) -> None:
    root = keyed_tmp / "run"
    root.mkdir()
    scenario(str(root))  # type: ignore[operator]


def test_boot_modules_micropython(keyed_tmp: pathlib.Path) -> None:
    """Inventory, boot files, streaming and orchestration under the real MicroPython."""
    proc = run_micropython(HERE / "mpy" / "boot_units.py", str(keyed_tmp))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    passed = [ln.split()[1] for ln in proc.stdout.splitlines() if ln.startswith("PASS ")]
    assert passed == ["inventory", "stream", "chunk", "orchestration", "stream", "prune"], (
        proc.stdout
    )


def test_manifest_of_32_micropython(tmp_path: pathlib.Path) -> None:
    """A 32-entry Pi 5 manifest set from an uploaded files list and listed back under the
    real MicroPython with an RP2040-sized heap; the heap a set and a listing take."""
    proc = run_micropython(HERE / "mpy" / "manifest_units.py", str(tmp_path))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    passed = [ln.split()[1] for ln in proc.stdout.splitlines() if ln.startswith("PASS ")]
    assert passed == ["set", "listing", "restart"], proc.stdout
