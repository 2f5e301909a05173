"""One configured connection to a DICOMweb service: authentication, timeouts, retries, and the
translation of every HTTP failure into one sentence a clinician understands.

Retries (tenacity, exponential backoff) cover 5xx answers, connection errors and timeouts, never
4xx: a refused login or a missing study does not get better by asking again.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TypeVar
from urllib.parse import urlsplit, urlunsplit

import requests
from dicomweb_client.api import DICOMwebClient
from tenacity import Retrying, retry_if_exception, stop_after_attempt, wait_exponential

from agent.settings import LoupeSettings
from tools.errors import LoupeError

log = logging.getLogger(__name__)
T = TypeVar("T")

# dicomweb-client logs each request's URL and headers at DEBUG, and urllib3 each URL: QIDO query
# strings carry patient names and ids, headers the bearer token. Neither may reach a log file,
# whatever level the application logs at.
for _chatty in ("dicomweb_client", "urllib3.connectionpool"):
    logging.getLogger(_chatty).setLevel(logging.WARNING)


class PacsError(LoupeError):
    """The PACS could not do what was asked (unreachable, refused, missing, too slow)."""


class PacsNotConfiguredError(PacsError):
    pass


class PacsNotFoundError(PacsError):
    pass


class _UnescapedWildcards(requests.Session):
    """A session that leaves QIDO's ``*`` and ``?`` wildcards unescaped in query strings.

    dicomweb-client percent-encodes every query value, and some servers (Orthanc 1.10 among them)
    match the encoded text literally, so ``PatientName=DOE*`` would find nothing. ``match_value``
    keeps every other character out of the query (it becomes the ``?`` wildcard), so nothing
    else needs escaping."""

    def request(self, method, url, *args, **kwargs):  # type: ignore[override]
        base, mark, query = str(url).partition("?")
        if mark:
            url = base + "?" + query.replace("%2A", "*").replace("%3F", "?")
        return super().request(method, url, *args, **kwargs)


def match_value(text: str) -> str:
    """A QIDO matching value that survives any server's URL decoding: letters, digits, ``-._``
    and the wildcards ``*`` and ``?`` are kept; any other character (spaces, ``^`` between name
    parts, accented letters) becomes ``?``, the wildcard for one character, so it still matches
    itself."""
    return "".join(c if (c.isascii() and c.isalnum()) or c in "-._*?" else "?" for c in text.strip())


def _service_address(url: str) -> str:
    """The URL as it may appear in a message: no user or password, no query."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit((parts.scheme, netloc, parts.path.rstrip("/"), "", ""))


class PacsConnection:
    """The configured DICOMweb service, with Loupe's retries and error sentences.

    ``run(action, what)`` calls ``action(client)`` and translates failures; ``what`` names the
    request in the clinician's terms ("search the PACS", "retrieve image 3 of 40")."""

    def __init__(self, settings: LoupeSettings):
        if not settings.dicomweb_url:
            raise PacsNotConfiguredError("No PACS is configured: set LOUPE_DICOMWEB_URL to its DICOMweb address.")
        self.address = _service_address(settings.dicomweb_url)
        self.read_timeout_s = settings.dicomweb_read_timeout_s
        self.attempts = settings.dicomweb_retry_attempts
        self.initial_s = settings.dicomweb_retry_initial_s
        session = _UnescapedWildcards()
        headers = {}
        if settings.dicomweb_token is not None:
            headers["Authorization"] = f"Bearer {settings.dicomweb_token.get_secret_value()}"
        elif settings.dicomweb_user:
            password = settings.dicomweb_password.get_secret_value() if settings.dicomweb_password else ""
            session.auth = (settings.dicomweb_user, password)
        #: The HTTP session with the PACS's credentials, for a server's own API beside DICOMweb.
        self.session, self.headers = session, headers
        self.timeout = (settings.dicomweb_connect_timeout_s, settings.dicomweb_read_timeout_s)
        self.client = DICOMwebClient(settings.dicomweb_url.rstrip("/"), session=session, headers=headers or None,
                                     timeout=(settings.dicomweb_connect_timeout_s, settings.dicomweb_read_timeout_s))
        self.client.set_http_retry_params(retry=False)  # ours below: backoff on 5xx and connection errors only

    def run(self, action: Callable[[DICOMwebClient], T], what: str) -> T:
        retrying = Retrying(stop=stop_after_attempt(self.attempts), reraise=True,
                            wait=wait_exponential(multiplier=self.initial_s, max=10 * max(self.initial_s, 0.1)),
                            retry=retry_if_exception(_transient))
        try:
            return retrying(action, self.client)
        except requests.RequestException as error:
            raise self._error(error, what) from error

    def _error(self, error: requests.RequestException, what: str) -> PacsError:
        log.info("PACS request failed: %s (%s)", what, type(error).__name__)  # never the URL's secrets
        status = error.response.status_code if error.response is not None else None
        if isinstance(error, requests.Timeout):
            return PacsError(f"The PACS at {self.address} did not answer within {self.read_timeout_s:g} s "
                             f"(to {what}); try again, or raise LOUPE_DICOMWEB_READ_TIMEOUT_S.")
        if isinstance(error, requests.ConnectionError):
            return PacsError(f"The PACS at {self.address} could not be reached (to {what}); check LOUPE_DICOMWEB_URL "
                             "and the network.")
        if status in (401, 403):
            return PacsError(f"The PACS at {self.address} refused Loupe's credentials (HTTP {status}) to {what}; "
                             "check LOUPE_DICOMWEB_USER and LOUPE_DICOMWEB_PASSWORD, or LOUPE_DICOMWEB_TOKEN.")
        if status == 404:
            return PacsNotFoundError(f"The PACS has no such item (HTTP 404) to {what}.")
        if status is not None:
            return PacsError(f"The PACS at {self.address} answered HTTP {status} to the request to {what}.")
        return PacsError(f"The request to the PACS at {self.address} to {what} failed ({type(error).__name__}).")


def _transient(error: BaseException) -> bool:
    if isinstance(error, (requests.ConnectionError, requests.Timeout)):
        return True
    response = getattr(error, "response", None)
    return isinstance(error, requests.HTTPError) and response is not None and response.status_code >= 500
