"""Who may start and cancel training when the app is served to a class.

Rules (the sidebar asks :func:`training_access`):

- The app listens on 127.0.0.1 by default (``.streamlit/config.toml``): only this machine
  reaches it, and training works as it always did.
- Served beyond loopback (``--server.address 0.0.0.0`` or a LAN address) without a teacher
  key, training from the browser is off; every other page stays open.
- With a teacher key (``$XRCOMPARE_TEACHER_KEY`` or ``teacher_key`` in Streamlit's
  secrets), students queue training requests under a name and cancel their own; cancelling
  anyone's request and reordering the queue need the key, typed once per browser session;
  it is compared in constant time and never sent to the page.
- On loopback without a key, the one user is the teacher.

No Streamlit here: the page passes the server address and the key it found.
"""

from __future__ import annotations

import hmac
import ipaddress
import os
from dataclasses import dataclass

TEACHER_KEY_VARIABLE = "XRCOMPARE_TEACHER_KEY"
TEACHER_KEY_SECRET = "teacher_key"
LOOPBACK_NAMES = ("localhost", "localhost.localdomain", "ip6-localhost")


def is_loopback(address: str | None) -> bool:
    """Whether a listening address reaches only this machine ("" or None: every interface,
    so not loopback)."""
    text = (address or "").strip().strip("[]").lower()
    if not text:
        return False
    if text in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(text).is_loopback
    except ValueError:
        return False  # a host name other than localhost: reachable from elsewhere


def teacher_key_from(environ: dict | None = None, secrets=None) -> str | None:
    """The teacher key: the environment variable first, then the secrets mapping; None when
    neither holds a non-empty value."""
    environ = os.environ if environ is None else environ
    value = str(environ.get(TEACHER_KEY_VARIABLE, "") or "").strip()
    if value:
        return value
    if secrets is not None:
        try:
            value = str(secrets.get(TEACHER_KEY_SECRET, "") or "").strip()
        except Exception:  # no secrets file, or an unreadable one: no key from there
            value = ""
    return value or None


def key_matches(typed: str | None, key: str | None) -> bool:
    """Constant-time comparison of a typed key with the teacher key (False without a key)."""
    if not key or not typed:
        return False
    return hmac.compare_digest(typed.strip().encode("utf-8"), key.encode("utf-8"))


@dataclass(frozen=True)
class TrainingAccess:
    """What the training sidebar may offer: ``allowed`` (queueing at all), ``needs_key``
    (the teacher's powers need the key typed first) and ``reason`` (one sentence when
    training is off)."""

    allowed: bool
    needs_key: bool
    reason: str | None = None


def training_access(address: str | None, key: str | None) -> TrainingAccess:
    """Training access for a server listening on ``address`` with teacher key ``key``."""
    if key:
        return TrainingAccess(allowed=True, needs_key=True)
    if is_loopback(address):
        return TrainingAccess(allowed=True, needs_key=False)
    shown = address or "every network interface"
    return TrainingAccess(
        allowed=False, needs_key=False,
        reason=(f"Training from the browser is off: this app is served to the network "
                f"({shown}) and no teacher key is set; set {TEACHER_KEY_VARIABLE} (or "
                f"{TEACHER_KEY_SECRET} in .streamlit/secrets.toml) and restart to enable it."))
