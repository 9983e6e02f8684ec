"""Feedback ids that carry what calibration needs, signed, so that any worker or replica
accepts the label for an id another one served.

An id is `payload.signature`: the payload (base64url JSON) holds the model, the kind of
prediction (item or pair), the probability served and when; the signature is an HMAC-SHA256
of it with a key every process shares (`monitoring.feedback_key`, or $PLAUDIT_FEEDBACK_KEY).
A client cannot forge or alter one without the key. Without a configured key each process
makes its own, and only the process that served an id accepts its label.
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import secrets
import time
from dataclasses import dataclass

ENV_KEY = "PLAUDIT_FEEDBACK_KEY"
SIGNATURE_BYTES = 16


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


class FeedbackIds:
    """`mint` an id for a served probability; `read` one back (None: forged, altered or not ours)."""

    def __init__(self, key: str | None = None):
        key = key or os.environ.get(ENV_KEY)
        self.shared = bool(key)  # False: a key of this process's own
        self._key = key.encode() if key else secrets.token_bytes(32)

    def _sign(self, payload: str) -> str:
        return _b64(hmac.new(self._key, payload.encode(), hashlib.sha256).digest()[:SIGNATURE_BYTES])

    def mint(self, model: str, kind: str, probability: float, now: float | None = None) -> str:
        fields = [model, kind, round(probability, 6), round(now if now is not None else time.time(), 3),
                  secrets.token_hex(4)]  # the nonce: equal predictions still get different ids
        payload = _b64(json.dumps(fields, separators=(",", ":")).encode())
        return f"{payload}.{self._sign(payload)}"

    def read(self, token: str) -> Prediction | None:
        payload, dot, signature = token.partition(".")
        try:  # whatever a client sends: never an error, at most not ours
            if not dot or not hmac.compare_digest(signature.encode(), self._sign(payload).encode()):
                return None
            model, kind, probability, served_at, _ = json.loads(_unb64(payload))
            return Prediction(str(model), str(kind), float(probability), float(served_at))
        except (ValueError, TypeError, UnicodeError):
            return None
