"""What the push stages share: where to push, the token check, retries of transient failures, one-line errors.

The token comes from HF_TOKEN or the client's stored login (`hf auth login`); nothing here reads,
prints or stores it.

Retries: huggingface_hub 2.4 retries with backoff (its `http_backoff`) the preupload call and the LFS
batch and uploads, but not repo creation, repo info, the card check or the commit itself (a retried
commit POST could commit twice if only its answer was lost). So a whole push is retried instead. That
is safe because a push is idempotent: the client leaves out files whose content the Hub already has,
so repeating a push that did land commits nothing.

The client uploads file contents with Xet whenever `hf_xet` is installed (it is a dependency of
huggingface_hub) and HF_HUB_DISABLE_XET is not set, else with LFS; neither falls back to the other. A
Xet upload that fails raises hf_xet's plain ConnectionError, RuntimeError or PermissionError, an LFS
batch that refuses files a ValueError: so a failure is told apart by the client function it came from.
"""

from __future__ import annotations

import argparse
import logging
import os
import time
import traceback
from collections.abc import Callable
from typing import TypeVar

from core.cli import stage_parser
from core.config import HUB_REPO_ID, PATTERN_MEANINGS
from core.errors import UserError, shortened

log = logging.getLogger(__name__)

T = TypeVar("T")

# The statuses the client's own http_backoff retries: timeouts, rate limits, server errors.
TRANSIENT_STATUSES = frozenset({408, 429, 500, 502, 503, 504})
ATTEMPTS = 5
FIRST_WAIT_SECONDS = 1.0
# The client sets no timeout at all, so a stalled connection would hang forever instead of failing
# and being retried. Per network operation (connect, each read or write), not per whole upload.
TIMEOUT_SECONDS = 120.0
# The rules of the client's validate_repo_id, in words: the config's pattern, and what the client adds.
REPO_ID_RULES = (
    f"{PATTERN_MEANINGS[HUB_REPO_ID]}; no part may start or end with '-' or '.', hold '--' or '..', or end "
    "in .git"
)


def push_parser(description: str) -> argparse.ArgumentParser:
    parser = stage_parser(description)
    parser.add_argument(
        "--if-configured",
        action="store_true",
        help="skip with a message, instead of failing, when no repo or token is configured",
    )
    return parser


def offline_variable() -> str | None:
    """The variable that keeps the Hub client offline (HF_HUB_OFFLINE, or TRANSFORMERS_OFFLINE, which the
    client reads when HF_HUB_OFFLINE is empty), or None when it is online."""
    from huggingface_hub import is_offline_mode

    if not is_offline_mode():
        return None
    return "HF_HUB_OFFLINE" if os.environ.get("HF_HUB_OFFLINE") else "TRANSFORMERS_OFFLINE"


def check_repo_id(repo_id: str, where: str) -> None:
    """A UserError in words, naming `where` the id comes from, when the client would refuse the id."""
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    try:
        validate_repo_id(repo_id)
    except HFValidationError:
        raise UserError(f"{where}: {shortened(repo_id)!r} is not a valid repo id: {REPO_ID_RULES}") from None


def push_target(repo_id: str | None, field: str, if_configured: bool) -> str | None:
    """The repo to push to, or None (after saying why) when something is missing and `if_configured`."""
    from huggingface_hub import get_token

    missing = []
    if not repo_id:
        missing.append(f"a repo id ({field}, or HUB_REPO=user/name)")
    if get_token() is None:
        missing.append("a token (HF_TOKEN, or `hf auth login`)")
    offline = offline_variable()
    if offline:
        missing.append(f"the Hub client online ({offline} is set: unset it)")
    if not missing:
        check_repo_id(repo_id, field)
        return repo_id
    message = "push needs " + " and ".join(missing)
    if if_configured:
        log.info("push skipped: %s", message)
        return None
    raise UserError(message)


def configure_client() -> None:
    """Give the client's shared HTTP session a timeout, and keep its per-request log lines out of ours."""
    import httpx2
    from huggingface_hub import get_session

    get_session().timeout = httpx2.Timeout(TIMEOUT_SECONDS)
    logging.getLogger("httpx2").setLevel(logging.WARNING)


def status_of(error: BaseException) -> int | None:
    response = getattr(error, "response", None)
    return getattr(response, "status_code", None)


def failure_reason(error: BaseException) -> str:
    """`HTTP 503`, or the kind of network failure (`ConnectError`, `ReadTimeout`, ...)."""
    status = status_of(error)
    return f"HTTP {status}" if status else type(error).__name__


def is_transient(error: BaseException) -> bool:
    """A server error, rate limit or timeout status, or a network failure (reset, refused, timed out)."""
    import httpx2

    return isinstance(error, httpx2.TransportError) or status_of(error) in TRANSIENT_STATUSES


def upload_protocol(error: BaseException) -> str | None:
    """Which protocol, Xet or LFS, was uploading file contents when the error came out of the client."""
    functions = set()
    cause: BaseException | None = error
    while cause is not None:  # the error and what it was raised from
        functions |= {frame.f_code.co_name for frame, _ in traceback.walk_tb(cause.__traceback__)}
        cause = cause.__cause__ or cause.__context__
    if "_upload_xet_files" in functions:
        return "Xet"
    return "LFS" if "_upload_files" in functions else None


def one_line(error: BaseException, limit: int = 300) -> str:
    """`HTTP 422: <the server's message>` or `<type>: <message>` on one line, at most `limit` long."""
    message = getattr(error, "server_message", None) or str(error)
    return shortened(f"{failure_reason(error)}: {' '.join(message.split())}", limit)


def describe_failure(error: BaseException, what: str, repo_id: str, attempts: int) -> str:
    """One line naming the repo and what to do about it."""
    status = status_of(error)
    namespace = repo_id.split("/")[0]
    if status == 401:
        return (
            f"the Hub refused the token while pushing {what} to {repo_id} (401): set HF_TOKEN to a valid "
            "token with write access, or run `hf auth login`"
        )
    if status == 403:
        return (
            f"the token may not write to {repo_id} (403): use a token with write access to {namespace}, "
            "or push to your own namespace (HUB_REPO=you/name)"
        )
    if status == 404:
        return (
            f"{repo_id} not found while pushing {what} (404): check the repo id (HUB_REPO=user/name) and "
            "that the namespace exists"
        )
    if is_transient(error):
        return (
            f"pushing {what} to {repo_id} failed {attempts} times ({failure_reason(error)}): the Hub or the "
            "network is unavailable; try again later (pushing again is safe)"
        )
    protocol, detail = upload_protocol(error), one_line(error)
    if protocol == "Xet":
        return (
            f"the Xet storage upload of {what} to {repo_id} failed ({detail}): push again with "
            "HF_HUB_DISABLE_XET=1 in the environment to upload through LFS instead"
        )
    if protocol == "LFS" and "xet" in detail.lower():
        return (
            f"the Hub refused the LFS upload of {what} to {repo_id} and asks for Xet storage ({detail}): "
            "unset HF_HUB_DISABLE_XET (and `pip install hf_xet` if it is missing) so that the client "
            "uploads with Xet"
        )
    return f"pushing {what} to {repo_id} failed ({detail})"


def with_retries(
    push: Callable[[], T],
    what: str,
    repo_id: str,
    attempts: int = ATTEMPTS,
    first_wait: float = FIRST_WAIT_SECONDS,
) -> T:
    """Run `push`, again after 1, 2, 4, ... seconds on transient failures; any failure left is one line."""
    import httpx2
    from huggingface_hub.errors import HfHubHTTPError

    wait, attempt = first_wait, 1
    while True:
        try:
            return push()
        except (HfHubHTTPError, httpx2.TransportError) as error:
            if not is_transient(error) or attempt == attempts:
                raise UserError(describe_failure(error, what, repo_id, attempt)) from None
            attempt += 1
            log.warning(
                "pushing %s to %s: %s; retrying in %g s (attempt %d of %d)",
                what, repo_id, failure_reason(error), wait, attempt, attempts,
            )  # fmt: skip
            time.sleep(wait)
            wait *= 2
        except (OSError, RuntimeError, ValueError) as error:  # the Xet or LFS upload, a file that went away
            raise UserError(describe_failure(error, what, repo_id, attempt)) from None
