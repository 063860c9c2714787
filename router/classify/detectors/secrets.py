"""Credentials: provider key formats, private keys, tokens and ``password: ...`` assignments.

Provider formats are exact enough to stand alone. A generic value (an AWS
secret key, a short password) needs the word that names it: a key in an
assignment (``password = ...``, ``"api_key": "..."``, ``aws_secret_access_key=``)
or ``my password is ...``. Values that are code, types or placeholders
(``os.environ[...]``, ``str``, ``${DB_PASSWORD}``, ``<your-key>``) are not secrets.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from router.classify.detectors._engine import WORD, Match, Pattern, clear_after, clear_before, near, pattern
from router.features import Span

__all__ = ["secrets"]


@dataclass(frozen=True)
class _Format:
    hints: tuple[str, ...]  # one must occur in the lower-cased text, checked at C speed first
    pattern: Pattern
    confidence: float
    alphanumeric: bool = False  # the value must hold a letter and a digit


_FORMATS = (
    _Format(
        ("private key",),
        pattern(
            "pem_private_key",
            r"-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY(?: BLOCK)?-----(?s:.*?)"
            r"(?:-----END (?:[A-Z0-9]+ )*PRIVATE KEY(?: BLOCK)?-----|$)",
        ),
        0.99,
    ),
    _Format(
        ("sk-proj-", "sk-ant-", "sk-svcacct-", "sk-admin-"),
        pattern("openai_anthropic_key", r"sk-(?:proj|ant|svcacct|admin)-[A-Za-z0-9_\-]{20,}"),
        0.97,
    ),
    # A bare "sk-" key must hold a letter and a digit: "sk-learn-compatible-estimators" is no key.
    _Format(("sk-",), pattern("openai_legacy_key", r"sk-[A-Za-z0-9_\-]{20,}"), 0.95, alphanumeric=True),
    _Format(("akia", "asia"), pattern("aws_access_key_id", r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b"), 0.97),
    _Format(("gh", "github_pat_"), pattern("github_token", r"\bgh[pousr]_[A-Za-z0-9]{36,}|\bgithub_pat_\w{50,}"), 0.97),
    _Format(("gl",), pattern("gitlab_token", r"\bgl(?:pat|ptt|dt|rt|cbt|oas|soat|ft|imt)-[0-9A-Za-z_\-]{20,}"), 0.97),
    _Format(
        ("xox", "xapp-"), pattern("slack_token", r"\bxox[abposre]-[A-Za-z0-9-]{10,}|\bxapp-\d-[A-Za-z0-9-]{20,}"), 0.95
    ),
    _Format(("aiza",), pattern("google_api_key", r"AIza[0-9A-Za-z_\-]{35}"), 0.95),
    _Format(("_live_", "_test_"), pattern("stripe_key", r"\b(?:sk|rk)_(?:live|test)_[0-9A-Za-z]{16,}"), 0.97),
    _Format(("eyj",), pattern("jwt", r"\beyJ[A-Za-z0-9_\-]{8,}\.eyJ[A-Za-z0-9_\-]{8,}\.[A-Za-z0-9_\-]*"), 0.9),
    _Format(("hf_",), pattern("huggingface_token", r"\bhf_[A-Za-z0-9]{30,}\b"), 0.95),
    _Format(("npm_",), pattern("npm_token", r"\bnpm_[A-Za-z0-9]{36}\b"), 0.95),
    _Format(("sg.",), pattern("sendgrid_key", r"\bSG\.[A-Za-z0-9_\-]{16,32}\.[A-Za-z0-9_\-]{16,64}"), 0.97),
    _Format((":",), pattern("telegram_bot_token", r"\b\d{8,10}:AA[A-Za-z0-9_\-]{30,40}\b"), 0.95),
    _Format(
        ("accountkey", "sharedaccesskey"),
        pattern("azure_key", r"(?i)(?:AccountKey|SharedAccessKey)\s*=\s*([A-Za-z0-9+/]{20,}={0,2})"),
        0.97,
    ),
    _Format(("sig=",), pattern("azure_sas_signature", r"[?&]sig=([A-Za-z0-9%+/]{20,}(?:=|%3[Dd]){0,2})"), 0.9),
    _Format(
        ("secret", "secretaccesskey"),
        pattern(
            "aws_secret_access_key",
            r"(?i)(?:aws_?secret_?access_?key|secret_?access_?key|aws_?secret(?:_?key)?)[\"']?\s*(?:[:=]|=>)\s*[\"']?"
            r"([A-Za-z0-9/+]{40})",
        ),
        0.97,
    ),
)

_BASE64_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/=")

_BEARER = pattern("bearer_token", r"(?i)\bbearer\s+([A-Za-z0-9\-._~+/]{8,}=*)")
_URL_PASSWORD = pattern("url_credentials", r"\b[a-zA-Z][a-zA-Z0-9+.\-]*://[^\s/:@]{1,128}:([^\s/@]{1,128})@")
# A bare 40-character AWS secret next to its access key id, without a key name.
_AWS_SECRET_BARE = pattern("aws_secret_bare", r"[A-Za-z0-9/+]{40}")

_STRONG_KEYS = (
    r"pass(?:word|wd|wort|phrase|code)|pwd|mot de passe|contrase[ñn]a|senha|hasło|secret[_\-]?key|client[_\-]?secret|"
    r"api[_\-]?key|apikey|access[_\-]?key|access[_\-]?token|auth[_\-]?token|refresh[_\-]?token|private[_\-]?key|"
    r"secret[_\-]?token|app[_\-]?secret|bot[_\-]?token"
)
_WEAK_KEYS = r"pass|token|secret|key|credentials?"
_VALUE = r"(?:\"([^\"\n]{1,256})\"|'([^'\n]{1,256})'|([^\s\"',;)}\]]{1,256}))"
_ASSIGNMENT = pattern("secret_assignment", rf"(?i)({_STRONG_KEYS}|{_WEAK_KEYS})[\"']?\s*(?:=>|:=|[:=])\s*{_VALUE}")
_PASSWORD_IS = pattern(
    "password_is", r"(?i)\b(?:pass(?:word|wd|code|phrase)|pwd|passwort)\s+(?:is|was|is now)\s+[\"']?([^\s\"',;]{1,128})"
)
# "login admin, pass: letmein": a user name nearby makes even a plain word a password.
_LOGIN_CUE = pattern("secret_login_cue", r"(?i)\b(?:login|log in|user(?:name)?|account|credentials?|wifi|wi-fi|ssid)\b")
_KEY_HINTS = ("pass", "pwd", "secret", "key", "token", "senha", "contrase", "hasło", "mot de passe", "credential")

_PLACEHOLDER = pattern(
    "secret_placeholder",
    r"(?i)[$<{%\[(].*|\*+|x+|\.+|-+|_+|#+|\?+|none|null|nil|undefined|true|false|yes|no|on|off|required|optional|"
    r"str|string|int|integer|bool|boolean|text|varchar.*|char.*|bytes|any|object|secret|password|passwd|pwd|pass|"
    r"token|key|changeme|redacted|hidden|example|placeholder|dummy|test|your[_\-]?\w*|my[_\-]?\w*|\w*_here|\w*\.\.\.",
)
# An unquoted value that is an expression: ``os.environ[...]``, ``get_key()``, ``self.password``.
_CODE = pattern("secret_code_value", r"[A-Za-z_]\w*(?:[.(\[].*)")
_PATH = pattern("secret_path_value", r"[/~].*|\.{1,2}/.*")
# Words that follow "my password is" without being the password.
_NOT_A_PASSWORD = frozenset(
    """
    too not wrong incorrect invalid correct required expired strong weak secure safe the a an my your same
    different case case-sensitive still now being also saved stored hashed encrypted set reset changed missing
    empty blank long short visible hidden shown at in on for of to and or but very really so just only always
    never good bad fine ok okay easy hard simple complex what this that it there here needed protected
    displayed sent generated random unique private public known unknown forgotten lost locked
    """.split()  # noqa: SIM905 - a word list reads better as text
)


def _has_letter_and_digit(value: str) -> bool:
    return any(ch.isdigit() for ch in value) and any(ch.isalpha() for ch in value)


def _value(m: Match) -> tuple[int, int, bool] | None:
    """(start, end, quoted) of the matched value group."""
    for group, quoted in ((2, True), (3, True), (4, False)):
        if m.start(group) >= 0:
            return m.start(group), m.end(group), quoted
    return None


def _weak_key_value(text: str, key_start: int, value: str) -> bool:
    """After "pass", "token" or "key" (words of many meanings) only a credential-looking value counts."""
    if not clear_before(text, key_start, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"):
        return False  # "monkey: banana"
    if len(value) >= 8 and _has_letter_and_digit(value):
        return True
    return near(_LOGIN_CUE, text, key_start, 48)


def _keyword_argument(text: str, m: Match, end: int) -> bool:
    """``User(name=name, password=hashed)``: a variable passed by name, not a literal."""
    value = text[m.start(4) : end]
    listed = text[max(0, m.start() - 2) : m.start()].endswith(("(", ", ", ","))
    return listed and value.replace("_", "").isalpha() and value.islower() and text[end : end + 1] in (",", ")")


def _assignments(text: str) -> Iterator[Span]:
    for m in _ASSIGNMENT.finditer(text):
        found = _value(m)
        if found is None:
            continue
        # Trailing punctuation stays in the span: "Sommer2024!" may end in "!", and
        # redacting a sentence's full stop costs less than leaking a password's last character.
        start, end, quoted = found
        value, key = text[start:end], m.group(1).lower()
        if not value.strip() or _PLACEHOLDER.fullmatch(value):
            continue
        if not quoted and (_CODE.fullmatch(value) or _PATH.fullmatch(value) or _keyword_argument(text, m, end)):
            continue
        weak = key in ("pass", "token", "secret", "key", "credential", "credentials")
        if weak and not _weak_key_value(text, m.start(), value):
            continue
        yield Span("secret", start, end, 0.8 if weak else 0.85)


def _passwords_said(text: str) -> Iterator[Span]:
    for m in _PASSWORD_IS.finditer(text):
        start, end = m.start(1), m.end(1)
        value = text[start:end]
        if value and value.lower() not in _NOT_A_PASSWORD and not _PLACEHOLDER.fullmatch(value):
            yield Span("secret", start, end, 0.8)


def _bearer_tokens(text: str) -> Iterator[Span]:
    for m in _BEARER.finditer(text):
        value = m.group(1)
        if value.isupper() or "token" in value.lower() or _PLACEHOLDER.fullmatch(value):
            continue  # BEARER_TOKEN, YOUR_API_KEY
        if len(value) >= 16 or _has_letter_and_digit(value):
            yield Span("secret", m.start(1), m.end(1), 0.9)


def _url_passwords(text: str) -> Iterator[Span]:
    for m in _URL_PASSWORD.finditer(text):
        value = m.group(1)
        if not _PLACEHOLDER.fullmatch(value):
            # Above an e-mail's 0.95: "app:S3cr3t@db.internal" is a password, not an address.
            yield Span("secret", m.start(1), m.end(1), 0.97)


def _aws_secrets_beside(text: str, key_ids: list[Span]) -> Iterator[Span]:
    for key in key_ids:
        lo = max(0, key.start - 200)
        window = text[lo : key.end + 200]
        for m in _AWS_SECRET_BARE.finditer(window):
            start, end = lo + m.start(), lo + m.end()
            value = m.group()
            if (
                clear_before(text, start, _BASE64_CHARS)
                and clear_after(text, end, _BASE64_CHARS)
                and any(ch.isupper() for ch in value)
                and any(ch.islower() for ch in value)
                and not (key.start <= start < key.end)
            ):
                yield Span("secret", start, end, 0.9)


def _formats(text: str, lowered: str) -> Iterator[Span]:
    for spec in _FORMATS:
        if not any(hint in lowered for hint in spec.hints):
            continue
        for m in spec.pattern.finditer(text):
            group = 1 if m.lastindex else 0
            start, end = m.start(group), m.end(group)
            if group == 0 and not clear_before(text, start, WORD):
                continue
            if group and not clear_after(text, end, _BASE64_CHARS):
                continue  # a longer run than the format allows
            if spec.alphanumeric and not _has_letter_and_digit(m.group(group)):
                continue
            yield Span("secret", start, end, spec.confidence)


def secrets(text: str) -> Iterator[Span]:
    lowered = text.lower()
    found = list(_formats(text, lowered))
    yield from found
    key_ids = [s for s in found if text.startswith(("AKIA", "ASIA"), s.start)]
    if key_ids:
        yield from _aws_secrets_beside(text, key_ids)
    if "bearer" in lowered:
        yield from _bearer_tokens(text)
    if "://" in text and "@" in text:
        yield from _url_passwords(text)
    if any(hint in lowered for hint in _KEY_HINTS):
        yield from _assignments(text)
        yield from _passwords_said(text)
