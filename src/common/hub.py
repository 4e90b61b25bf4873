"""One quick question to the Hugging Face Hub before anything is downloaded: is it reachable, and does it have this
repository?

huggingface_hub's file downloads retry for half a minute and more when the network is down (and log a warning per
attempt) before transformers or datasets give up; a single short metadata request answers the same question in a
few seconds. With HF_HUB_OFFLINE set nothing is asked: callers use the local cache only.
"""

import functools
import logging
from enum import Enum

import httpx2
from huggingface_hub import HfApi, constants
from huggingface_hub.errors import GatedRepoError, HfHubHTTPError, RepositoryNotFoundError

from src.common.errors import UserError

logger = logging.getLogger(__name__)

HUB_CHECK_TIMEOUT_S = 2.0  # seconds per request; huggingface_hub retries a timed-out request once


class HubAnswer(Enum):
    AVAILABLE = "available"
    UNREACHABLE = "unreachable"


def hub_endpoint() -> str:
    return constants.ENDPOINT


@functools.lru_cache(maxsize=None)
def check_repo(repo_id: str, repo_type: str) -> tuple[HubAnswer, str]:
    """(answer, reason) for a model or dataset repository on the Hub: AVAILABLE, or UNREACHABLE with why.

    Raises UserError when the Hub answers that the repository does not exist or is gated (asked once per process).
    """
    kind = "dataset" if repo_type == "dataset" else "model"
    try:
        HfApi().repo_info(repo_id, repo_type=repo_type, timeout=HUB_CHECK_TIMEOUT_S)
    except GatedRepoError:
        raise UserError(
            f"{kind} {repo_id!r} on the Hugging Face Hub is gated: accept its terms on the Hub and log in "
            "(`hf auth login`), or pass a local folder"
        ) from None
    except RepositoryNotFoundError:
        raise UserError(
            f"{kind} {repo_id!r} was not found on the Hugging Face Hub ({hub_endpoint()}); check the id "
            "(a private repository needs `hf auth login`), or pass a local folder"
        ) from None
    except (httpx2.TransportError, HfHubHTTPError, OSError) as e:
        reason = " ".join(str(e).split()) or type(e).__name__
        logger.debug("the Hub at %s did not answer for %s %s: %r", hub_endpoint(), kind, repo_id, e)
        return HubAnswer.UNREACHABLE, f"{type(e).__name__}: {reason}"
    return HubAnswer.AVAILABLE, ""


def require_dataset_reachable(repo_id: str, shown_as: str, cache: str) -> None:
    """Before datasets.load_dataset online: UserError in seconds if the Hub has no such dataset or cannot be reached
    (with HF_HUB_OFFLINE set, datasets reads its cache and nothing is asked)."""
    answer, reason = check_repo(repo_id, "dataset")
    if answer is HubAnswer.UNREACHABLE:
        raise UserError(
            f"dataset {shown_as!r}: the Hugging Face Hub at {hub_endpoint()} is unreachable ({reason}); run with "
            f"network access, set HF_HUB_OFFLINE=1 to use the datasets cache at {cache}, or pass a local folder"
        )
