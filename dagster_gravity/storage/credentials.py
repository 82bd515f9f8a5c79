"""Each S3 site's credentials: a boto3 Session per credential source, cached.

A site's sites.yaml storage names where its keys come from (`profile`, or
`access_key_id_env` + `secret_access_key_env` [+ `session_token_env`]), never the keys. The
names are resolved here, in the process that makes the site's client: the run process, or
the worker of the site the step runs at. A site that names nothing gets a fresh Session on
the process-wide boto3 chain, as before per-site credentials existed.

Messages name the site, the field and the variable or profile; a secret's value never
enters one.
"""

from __future__ import annotations

import os
import socket
import threading

import boto3
from botocore.exceptions import BotoCoreError, ProfileNotFound

from dagster_gravity.errors import GravityConfigError
from dagster_gravity.storage.base import StorageError
from dagster_gravity.topology import S3Credentials

# S3 error codes that mean "these credentials are not accepted here"
REFUSED_CODES = frozenset(
    {"InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied", "InvalidToken", "ExpiredToken", "403", "Forbidden"}
)


class SiteCredentialsError(StorageError, GravityConfigError):
    """A site's credentials cannot be had in this process: a variable unset, a profile missing."""


# (kind, values...) -> Session; keyed by the resolved values, so rotated keys get a new Session
_sessions: dict[tuple, boto3.session.Session] = {}
_sessions_lock = threading.Lock()


def session_for(
    credentials: S3Credentials | None,
    site: str,
    settings_at: str | None = None,
    settings_file: str | None = None,
) -> boto3.session.Session:
    """The boto3 Session holding `site`'s credentials, resolved in this process."""
    if credentials is None:
        return boto3.session.Session()  # the process-wide chain, looked up afresh as before
    if credentials.profile is not None:
        key: tuple = ("profile", credentials.profile)
    else:
        values = {
            field: _variable(credentials, field, site, settings_at, settings_file)
            for field in ("access_key_id_env", "secret_access_key_env")
        }
        token = (
            _variable(credentials, "session_token_env", site, settings_at, settings_file)
            if credentials.session_token_env
            else None
        )
        key = ("env", values["access_key_id_env"], values["secret_access_key_env"], token)
    with _sessions_lock:
        session = _sessions.get(key)
        if session is None:
            session = _sessions[key] = _new_session(key, credentials, site, settings_at, settings_file)
    return session


def describe(credentials: S3Credentials | None, settings_at: str | None = None) -> str:
    """Which credentials a site's client uses, in words (names only)."""
    if credentials is None:
        return "the process-wide boto3 chain (no profile or *_env in the site's storage)"
    return credentials.describe() + (f" ({settings_at})" if settings_at else "")


def _new_session(key, credentials: S3Credentials, site, settings_at, settings_file) -> boto3.session.Session:
    if key[0] == "profile":
        try:
            return boto3.session.Session(profile_name=credentials.profile)
        except (ProfileNotFound, BotoCoreError) as exc:
            raise SiteCredentialsError(
                f"{_field(settings_at, 'profile', settings_file)} names the boto3 profile {credentials.profile!r}, "
                f"which {_here()} does not have ({type(exc).__name__}: {exc}); define it in the AWS config "
                "files ($AWS_CONFIG_FILE, $AWS_SHARED_CREDENTIALS_FILE or ~/.aws) where the site's steps run",
                site=site,
            ) from None
    _, key_id, secret, token = key
    return boto3.session.Session(aws_access_key_id=key_id, aws_secret_access_key=secret, aws_session_token=token)


def _variable(credentials: S3Credentials, field: str, site, settings_at, settings_file) -> str:
    name = getattr(credentials, field)
    value = os.environ.get(name)
    if not value:
        raise SiteCredentialsError(
            f"{_field(settings_at, field, settings_file)} names the environment variable ${name}, which is "
            f"{'empty' if value == '' else 'not set'} in {_here()}; set it where the site's S3 client is made "
            f"(the run process, or the worker of site {site!r})",
            site=site,
        )
    return value


def _field(settings_at: str | None, field: str, settings_file: str | None) -> str:
    where = f"{settings_at}.{field}" if settings_at else f"storage.{field}"
    return where + (f" in {settings_file}" if settings_file else "")


def _here() -> str:
    return f"this process (pid {os.getpid()} on {socket.gethostname()})"
