"""Read-only views of the Hugging Face hub cache, through huggingface_hub's own cache API.

Locations come from `huggingface_hub.constants` (HF_HOME, HF_HUB_CACHE), read at call time.
"""

from huggingface_hub import CachedRepoInfo, CachedRevisionInfo, constants, scan_cache_dir
from huggingface_hub.errors import CacheNotFound

MODEL = "model"


def cache_location() -> dict[str, str]:
    """Where the hub stores things: HF_HOME and the hub download cache HF_HUB_CACHE."""
    return {"HF_HOME": constants.HF_HOME, "HF_HUB_CACHE": constants.HF_HUB_CACHE}


def cached_repos(repo_type: str | None = MODEL) -> list[CachedRepoInfo]:
    """Repos in the hub cache (of `repo_type`, or all when None), by repo id; empty if the cache does not exist."""
    try:
        info = scan_cache_dir(constants.HF_HUB_CACHE)
    except CacheNotFound:
        return []
    repos = [r for r in info.repos if repo_type is None or r.repo_type == repo_type]
    return sorted(repos, key=lambda r: (r.repo_type, r.repo_id))


def cached_revisions(repo_id: str, repo_type: str = MODEL) -> list[CachedRevisionInfo]:
    """Cached snapshots of one repo, newest first; empty if it is not cached."""
    revisions = [rev for repo in cached_repos(repo_type) if repo.repo_id == repo_id for rev in repo.revisions]
    return sorted(revisions, key=lambda rev: rev.last_modified, reverse=True)


def resolve_cached_revision(repo_id: str, revision: str | None = None, repo_type: str = MODEL) -> str | None:
    """The commit hash of a cached snapshot, or None if it is not cached.

    `revision` may be a ref (e.g. "main"), a full commit hash or a prefix of one; None means the snapshot that
    "main" points to, else the newest one.
    """
    revisions = cached_revisions(repo_id, repo_type)
    if revision is None:
        main = next((rev for rev in revisions if "main" in rev.refs), None)
        chosen = main or (revisions[0] if revisions else None)
        return chosen.commit_hash if chosen else None
    for rev in revisions:
        if revision in rev.refs or rev.commit_hash.startswith(revision):
            return rev.commit_hash
    return None


def is_cached(repo_id: str, revision: str | None = None, repo_type: str = MODEL) -> bool:
    """True if the hub cache holds `repo_id` (at `revision`: a ref or commit hash prefix, if given)."""
    return resolve_cached_revision(repo_id, revision, repo_type) is not None
