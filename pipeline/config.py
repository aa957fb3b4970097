"""`--config job.toml`: a job's settings in a file that a notebook and a cluster job can share; flags win."""

from __future__ import annotations

import json
from pathlib import Path

CREDENTIAL_KEYS = {"key", "secret", "token", "password", "session_token", "aws_access_key_id",
                   "aws_secret_access_key", "aws_session_token"}


class ConfigError(Exception):
    """A configuration file that cannot be used as written: one line, exit 2."""


def _credentials(options: dict) -> list[str]:
    """Credential-like keys anywhere in storage options: they belong in the environment, not a file."""
    found = [k for k in options if k.lower() in CREDENTIAL_KEYS]
    for value in options.values():
        if isinstance(value, dict):
            found += _credentials(value)
    return found


def load_config(path: str, known: set[str]) -> dict:
    """The file's settings under the names of the subcommand's options (dashes or underscores)."""
    try:
        import tomllib
    except ImportError as exc:  # Python 3.10
        raise ConfigError("--config needs Python 3.11 or later (tomllib)") from exc
    try:
        settings = tomllib.loads(Path(path).read_text())
    except OSError as exc:
        raise ConfigError(f"--config: cannot read {path}: {exc.strerror}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"--config: {path} is not valid TOML: {exc}") from exc
    profile = settings.pop("profile", {})
    if not isinstance(profile, dict):
        raise ConfigError("--config: [profile] must be a table of option = true/false")
    values = {name.replace("-", "_"): value for name, value in {**settings, **profile}.items()}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ConfigError(f"--config: unknown setting(s) {', '.join(unknown)} in {path}")
    options = values.get("storage_options")
    if isinstance(options, dict):
        if _credentials(options):
            raise ConfigError(f"--config: storage_options in {path} hold credentials "
                              f"({', '.join(sorted(_credentials(options)))}); keep them in the environment")
        values["storage_options"] = json.dumps(options)
    return values
