"""Secrets kept out of what wswarm writes and shows: known values and what looks like a key."""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path

# Credentials by name: the model API's keys, cloud and forge tokens, agent sockets.
_CREDENTIAL_NAME = re.compile(r"KEY|TOKEN|SECRET|PASS|CREDENTIAL|AUTH|COOKIE|DSN|PRIVATE|_PWD$|_PAT$",
                              re.IGNORECASE)
_URL_PASSWORD = re.compile(r"://[^/@\s]+@")
_CREDENTIAL_PREFIXES = ("ANTHROPIC_", "CLAUDE_", "AWS_", "AZURE_", "CLOUDSDK_", "GOOGLE_", "OPENAI_", "VAULT_",
                        "DOCKER_", "KUBECONFIG", "GPG_", "SSH_")


def is_credential(name: str, value: str) -> bool:
    """Whether an environment variable holds a credential, by its name or by its value."""
    return bool(name.startswith(_CREDENTIAL_PREFIXES) or _CREDENTIAL_NAME.search(name) or _URL_PASSWORD.search(value))


# Order matters: a span already reported (sk-ant-...) is not reported again under a later kind.
SECRET_PATTERNS: list[tuple[str, re.Pattern[str]]] = [(kind, re.compile(rx)) for kind, rx in [
    ("PEM private key", r"-----BEGIN (?P<secret>(?:(?:RSA|EC|DSA|OPENSSH|PGP|ENCRYPTED) )?"
                        r"PRIVATE KEY(?: BLOCK)?)-----"),
    ("AWS access key id", r"(?<![A-Z0-9])(?:AKIA|ASIA)(?P<secret>[A-Z0-9]{16})(?![A-Z0-9])"),
    ("AWS secret access key", r"(?i:aws_secret_access_key)[\"']?\s*[:=]\s*[\"']?"
                              r"(?P<secret>[A-Za-z0-9/+=]{40})(?![A-Za-z0-9/+=])"),
    ("GitHub token", r"\bgh[pousr]_(?P<secret>[A-Za-z0-9]{36})\b"),
    ("GitHub token", r"\bgithub_pat_(?P<secret>[A-Za-z0-9_]{82})\b"),
    ("Anthropic API key", r"\bsk-ant-(?P<secret>[A-Za-z0-9_-]{20,})"),
    ("OpenAI API key", r"\bsk-(?:proj|svcacct|admin)-(?P<secret>[A-Za-z0-9_-]{20,})"),
    ("OpenAI API key", r"\bsk-(?P<secret>[A-Za-z0-9]{20,})\b"),
    ("Slack token", r"\bxox[abposr]-(?P<secret>[A-Za-z0-9-]{10,})"),
    ("Google API key", r"\bAIza(?P<secret>[0-9A-Za-z_-]{35})(?![0-9A-Za-z_-])"),
    ("Stripe live key", r"\b[sr]k_live_(?P<secret>[A-Za-z0-9]{20,})\b"),
]]

# Documentation and templates are full of fake keys: AWS's own AKIAIOSFODNN7EXAMPLE, "ghp_xxxx…",
# "sk-<your key>", "${TOKEN}". A secret part made of one repeated character or holding one of these
# is a placeholder, not a leak. (Most patterns cannot contain "<" or "${"; the check is cheap.)
_PLACEHOLDER_HINTS = ("EXAMPLE", "example", "xxxx", "XXXX", "<", ">", "${")


def is_placeholder(secret: str) -> bool:
    return len(set(secret)) <= 1 or any(h in secret for h in _PLACEHOLDER_HINTS)


def secret_env_values(environ: Mapping[str, str]) -> list[str]:
    """Values of environment variables that hold credentials (the rule the sandbox keeps them out
    by), long enough to matter."""
    return [v for k, v in environ.items() if is_credential(k, v) and len(v) >= 8]


def redact_secrets(text: str, *, known: Iterable[str] = ()) -> str:
    """TEXT with every secret the secrets check would flag, and every KNOWN value, cut to a preview."""
    for value in sorted(set(known), key=len, reverse=True):
        text = text.replace(value, "[redacted]")
    for kind, pattern in SECRET_PATTERNS:
        text = pattern.sub(lambda m: m.group() if kind != "PEM private key" and
                           is_placeholder(m.group("secret")) else preview(m.group()) + "[redacted]", text)
    return text


def scrub_logs(folder: Path, *, known: Iterable[str]) -> None:
    """Redact secrets (KNOWN values, and whatever the secrets check would flag) in every file under
    FOLDER — logs, raw agent streams — so nothing wswarm keeps holds a key an agent or a check
    printed. Only a file that held one is rewritten, atomically."""
    known = list(known)
    for path in folder.rglob("*"):
        if not path.is_file() or path.is_symlink():
            continue
        try:
            text = path.read_bytes().decode("utf-8", errors="surrogateescape")
        except OSError:
            continue
        clean = redact_secrets(text, known=known)
        if clean != text:
            tmp = path.with_name(path.name + ".scrub")
            tmp.write_bytes(clean.encode("utf-8", errors="surrogateescape"))
            os.replace(tmp, path)


def preview(value: str) -> str:
    """At most the first four characters, so a reader can find the line but not use the key."""
    return value[:4] + "…"
