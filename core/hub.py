"""What the push stages share: where to push, the token check, retries of transient failures, one-line errors.

The token comes from HF_TOKEN or the client's stored login (`hf auth login`); nothing here reads,
prints or stores it.

Retries: huggingface_hub 2.4 retries with backoff (its `http_backoff`) the preupload call and the LFS
batch and uploads, but not repo creation, repo info, the card check or the commit itself (a retried
commit POST could commit twice if only its answer was lost). So a whole push is retried instead. That
is safe because a push is idempotent: the client leaves out files whose content the Hub already has,
so repeating a push that did land commits nothing.
"""

from __future__ import annotations

import argparse
import logging
import time
from collections.abc import Callable
from typing import TypeVar

from core.cli import stage_parser
from core.errors import UserError

log = logging.getLogger(__name__)

T = TypeVar("T")

# The statuses the client's own http_backoff retries: timeouts, rate limits, server errors.
TRANSIENT_STATUSES = frozenset({408, 429, 500, 502, 503, 504})
ATTEMPTS = 5
FIRST_WAIT_SECONDS = 1.0
# The client sets no timeout at all, so a stalled connection would hang forever instead of failing
# and being retried. Per network operation (connect, each read or write), not per whole upload.
TIMEOUT_SECONDS = 120.0


def push_parser(description: str) -> argparse.ArgumentParser:
    parser = stage_parser(description)
    parser.add_argument(
        "--if-configured",
        action="store_true",
        help="skip with a message, instead of failing, when no repo or token is configured",
    )
    return parser


def push_target(repo_id: str | None, field: str, if_configured: bool) -> str | None:
    """The repo to push to, or None (after saying why) when something is missing and `if_configured`."""
    from huggingface_hub import get_token

    missing = []
    if not repo_id:
        missing.append(f"a repo id ({field}, or HUB_REPO=user/name)")
    if get_token() is None:
        missing.append("a token (HF_TOKEN, or `hf auth login`)")
    if not missing:
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
    server_message = getattr(error, "server_message", None) or type(error).__name__
    return f"pushing {what} to {repo_id} failed (HTTP {status}): {server_message}".replace("\n", " ")


def with_retries(
    push: Callable[[], T],
    what: str,
    repo_id: str,
    attempts: int = ATTEMPTS,
    first_wait: float = FIRST_WAIT_SECONDS,
) -> T:
    """Run `push`, again after 1, 2, 4, ... seconds on transient failures; any failure left is one line."""
    import httpx2
    from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

    wait, attempt = first_wait, 1
    while True:
        try:
            return push()
        except OfflineModeIsEnabled:
            raise UserError(f"cannot push {what} to {repo_id}: HF_HUB_OFFLINE is set; unset it") from None
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
