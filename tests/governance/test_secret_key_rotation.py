"""The multi-node order for rotating SECRET_ENCRYPTION_KEYS (docs/operations.md): append, swap,
re-encrypt, drop. At every step, a process still on the previous step's list opens what a
process on the current step's list wrote; prepending on one node first does not."""

from __future__ import annotations

import pytest
from cryptography.fernet import Fernet

from governance import secrets

OLD, NEW = Fernet.generate_key().decode(), Fernet.generate_key().decode()
STEPS = [[OLD], [OLD, NEW], [NEW, OLD], [NEW]]


def _encrypted(settings, keys: list[str], plaintext: str) -> str:
    settings.SECRET_ENCRYPTION_KEYS = keys
    return secrets.encrypt_text(plaintext)


def _opened(settings, keys: list[str], token: str) -> str:
    settings.SECRET_ENCRYPTION_KEYS = keys
    return secrets.decrypt_text(token)


@pytest.mark.parametrize("step", [1, 2])
def test_a_process_one_step_behind_opens_what_the_next_step_writes(settings, step):
    behind, ahead = STEPS[step - 1], STEPS[step]
    token = _encrypted(settings, ahead, "hook-secret")
    assert _opened(settings, behind, token) == "hook-secret"
    assert _opened(settings, ahead, _encrypted(settings, behind, "x")) == "x"


def test_dropping_the_old_key_after_reencryption_loses_nothing(settings):
    token = _encrypted(settings, STEPS[0], "signing-key")
    settings.SECRET_ENCRYPTION_KEYS = STEPS[2]
    rotated = secrets.reencrypt(token)  # manage.py rotate_bundle_key --reencrypt
    assert _opened(settings, STEPS[3], rotated) == "signing-key"
    with pytest.raises(secrets.KeyUnavailable):
        _opened(settings, STEPS[3], token)  # not re-encrypted: the old key was still needed


def test_prepending_on_one_node_first_breaks_the_others(settings):
    """Why the order matters: a node given `new,old` before the others know `new` writes what
    they cannot open (their builds fail until they restart)."""
    token = _encrypted(settings, [NEW, OLD], "channel-url")
    with pytest.raises(secrets.KeyUnavailable):
        _opened(settings, [OLD], token)
