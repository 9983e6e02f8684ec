"""Feedback ids that carry what calibration needs, signed, so that any worker or replica
accepts the label for an id another one served.

An id is `payload.signature`: the payload (base64url JSON) holds the model, the kind of
prediction (item or pair), the probability served, when, a nonce and the fingerprint of
the key that signed it; the signature is an HMAC-SHA256 of the payload with that key. A
client cannot forge or alter an id without the key; the fingerprint (4 bytes of an HMAC of
a constant, which tells nothing of the key) only says why an id is refused: signed by
another key, or forged or altered.

The key, in order: `monitoring.feedback_key` or $PLAUDIT_FEEDBACK_KEY (configured: every
worker, replica and restart that has it accepts the id); else the key `plaudit serve` made
when it started and gave its workers ($PLAUDIT_SERVER_FEEDBACK_KEY: ids are accepted by any
worker of that server until it stops); else (`bentoml serve` run directly, as in a
container) the key of the processes one parent started: BentoML's arbiter starts the
workers, so they share it until the arbiter stops (`sibling_key`).
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import secrets
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ENV_KEY = "PLAUDIT_FEEDBACK_KEY"
SERVER_ENV_KEY = "PLAUDIT_SERVER_FEEDBACK_KEY"  # made by `plaudit serve` for its workers; never configured
SIGNATURE_BYTES = 16
FINGERPRINT_BYTES = 4

# Why a label's id is refused, the `reason` of plaudit_feedback_unmatched_total.
FORGED = "forged"  # not an id this key signed, nor one that names another key: forged, altered, or not an id
OTHER_KEY = "other_key"  # signed by another key: another replica's, or this server's before a restart
EXPIRED = "expired"  # older than monitoring.pending_ttl_s
ALREADY_LABELLED = "already_labelled"  # this process accepted a label for it before
REASONS = (FORGED, OTHER_KEY, EXPIRED, ALREADY_LABELLED)


@dataclass(frozen=True)
class Prediction:
    """What a signed id carries: the prediction served, by whom and when."""

    model: str
    kind: str
    probability: float
    served_at: float  # unix seconds


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def configured_key(key: str | None = None) -> str | None:
    """The key that outlives a restart and crosses replicas: `monitoring.feedback_key`, else $PLAUDIT_FEEDBACK_KEY."""
    return key or os.environ.get(ENV_KEY) or None


def share_with_workers(key: str | None) -> bool:
    """In the process that starts the workers (`plaudit serve`): without a configured key,
    make one for this start and put it in the environment the workers inherit. Returns
    whether the key is configured, i.e. whether ids outlive a restart and cross replicas."""
    if configured_key(key):
        os.environ.pop(SERVER_ENV_KEY, None)
        return True
    os.environ[SERVER_ENV_KEY] = secrets.token_urlsafe(32)
    return False


def _started(pid: int) -> str | None:
    """When process `pid` started (clock ticks since boot, /proc/PID/stat's 22nd field): a pid
    and its start time name one process, even after the pid is reused."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rpartition(")")[2].split()[19]  # fields after the name, which may hold spaces


def sibling_key() -> bytes:
    """The key of every process the same parent started: made by the first of them, kept in a
    file of this user's alone, named by the parent's pid and start time (a reused pid gets a
    new key); files of parents that have ended are removed. Where /proc is missing, a key of
    this process's own."""
    parent = os.getppid()
    started = _started(parent)
    if started is None:
        return secrets.token_bytes(32)
    folder = Path(tempfile.gettempdir()) / f"plaudit-feedback-keys-{os.getuid()}"
    folder.mkdir(mode=0o700, exist_ok=True)
    if folder.stat().st_uid != os.getuid() or folder.stat().st_mode & 0o077:
        return secrets.token_bytes(32)  # not ours alone: another user could read the key
    path = folder / f"{parent}-{started}"
    fd, draft = tempfile.mkstemp(dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(secrets.token_bytes(32))
        try:
            os.link(draft, path)  # atomic: the first sibling's key wins, whole
        except FileExistsError:
            pass
    finally:
        os.unlink(draft)
    for old in folder.iterdir():
        pid, _, when = old.name.partition("-")
        if pid.isdigit() and when and _started(int(pid)) != when:
            old.unlink(missing_ok=True)
    return path.read_bytes()


class FeedbackIds:
    """`mint` an id for a served probability; `read` one back (None: refused, `refusal` says why)."""

    def __init__(self, key: str | None = None):
        key = configured_key(key)
        self.shared = bool(key)  # configured: False for a server's or a process's own key
        key = key or os.environ.get(SERVER_ENV_KEY)
        self._key = key.encode() if key else sibling_key()
        self.fingerprint = _b64(hmac.new(self._key, b"plaudit feedback key fingerprint",
                                         hashlib.sha256).digest()[:FINGERPRINT_BYTES])

    def _sign(self, payload: str) -> str:
        return _b64(hmac.new(self._key, payload.encode(), hashlib.sha256).digest()[:SIGNATURE_BYTES])

    def mint(self, model: str, kind: str, probability: float, now: float | None = None) -> str:
        fields = [model, kind, round(probability, 6), round(now if now is not None else time.time(), 3),
                  secrets.token_hex(4),  # the nonce: equal predictions still get different ids
                  self.fingerprint]
        payload = _b64(json.dumps(fields, separators=(",", ":")).encode())
        return f"{payload}.{self._sign(payload)}"

    def read(self, token: str) -> Prediction | None:
        payload, dot, signature = token.partition(".")
        try:  # whatever a client sends: never an error, at most not ours
            if not dot or not hmac.compare_digest(signature.encode(), self._sign(payload).encode()):
                return None
            model, kind, probability, served_at = json.loads(_unb64(payload))[:4]  # ids before the fingerprint: 5 fields
            return Prediction(str(model), str(kind), float(probability), float(served_at))
        except (ValueError, TypeError, UnicodeError):
            return None

    def refusal(self, token: str) -> str:
        """Why `read` refused `token`: OTHER_KEY if it names another key's fingerprint, else FORGED."""
        try:
            fields = json.loads(_unb64(token.partition(".")[0]))
        except (ValueError, TypeError, UnicodeError):
            return FORGED
        named = fields[5] if isinstance(fields, list) and len(fields) == 6 else None
        return OTHER_KEY if isinstance(named, str) and named != self.fingerprint else FORGED
