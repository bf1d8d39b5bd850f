"""Git as the transport for code: what the integrator and a worker push and fetch, and nothing more.

Everything goes under the run's private namespace on the remote (`refs/wswarm/<run>/…`, never
`refs/heads`): the integrator pushes each start commit once, a worker fetches exactly that ref and
pushes its task branch, and the integrator fetches that one ref into the task's local branch.
"""

from __future__ import annotations

from pathlib import Path

from worktree_swarm.git.repo import Repo
from worktree_swarm.remote.protocol import run_refs, start_ref, task_ref
from worktree_swarm.util import proc
from worktree_swarm.util.errors import CommandError
from worktree_swarm.util.types import BranchName, Sha

QUIET = ("-q", "--no-verify")


def push_start(repo: Repo, remote: str, run: str, sha: Sha) -> None:
    """Put commit SHA on the remote where workers fetch it from (only the objects it lacks travel)."""
    repo.git("push", *QUIET, remote, f"{sha}:{start_ref(run, sha)}")


def fetch_start(repo: Repo, remote: str, run: str, sha: Sha) -> None:
    """Fetch the start commit of an attempt; CommandError when the remote does not have it."""
    if _has_commit(repo, sha):
        return
    repo.git("fetch", "-q", "--no-tags", "--no-write-fetch-head", remote, start_ref(run, sha))
    if not _has_commit(repo, sha):
        raise CommandError(["git", "fetch", remote, start_ref(run, sha)], 1,
                           f"the remote's {start_ref(run, sha)} is not commit {sha}")


def push_task(repo: Repo, remote: str, run: str, task_id: str, n: int, branch: BranchName) -> None:
    """Push attempt N's branch to its ref on the remote (a retried push of the same attempt replaces it)."""
    repo.git("push", *QUIET, "--force", remote, f"refs/heads/{branch}:{task_ref(run, task_id, n)}")


def fetch_task(repo: Repo, remote: str, run: str, task_id: str, n: int, branch: BranchName, head: Sha) -> None:
    """Fetch attempt N's branch into local BRANCH; CommandError unless it arrives at HEAD, the commit
    the worker reported (a ref moved meanwhile is not what was gated)."""
    repo.git("fetch", "-q", "--no-tags", "--no-write-fetch-head", remote,
             f"+{task_ref(run, task_id, n)}:refs/heads/{branch}")
    got = repo.branch_sha(branch)
    if got != head:
        raise CommandError(["git", "fetch", remote, task_ref(run, task_id, n)], 1,
                           f"the remote's branch of attempt {n} is at {got}, not at the gated commit {head}")


def fetch_tasks(repo: Repo, remote: str, run: str, attempts: list[tuple[str, int, BranchName, Sha]]) -> list[str | None]:
    """`fetch_task` for each (task, n, branch, head) of ATTEMPTS, in one fetch while every ref is there
    (one git fetch per batch of outcomes, not per outcome); for each, None or why it failed."""
    if len(attempts) > 1:
        specs = [f"+{task_ref(run, task_id, n)}:refs/heads/{branch}" for task_id, n, branch, _ in attempts]
        try:
            repo.git("fetch", "-q", "--no-tags", "--no-write-fetch-head", remote, *specs)
        except CommandError:
            pass        # one ref missing fails them all: each is fetched alone below, to say which
        else:
            return [None if repo.branch_sha(branch) == head else
                    f"the remote's branch of attempt {n} is at {repo.branch_sha(branch)}, not at the gated commit {head}"
                    for _, n, branch, head in attempts]
    errors: list[str | None] = []
    for task_id, n, branch, head in attempts:
        try:
            fetch_task(repo, remote, run, task_id, n, branch, head)
            errors.append(None)
        except CommandError as exc:
            errors.append(str(exc).splitlines()[0])
    return errors


def delete_run_refs(repo: Repo, remote: str, run: str) -> int:
    """Remove the run's refs from the remote once it is over; how many there were."""
    out = repo.git("ls-remote", "--refs", remote, run_refs(run) + "*").stdout
    refs = [line.split("\t", 1)[1] for line in out.splitlines() if "\t" in line]
    for at in range(0, len(refs), 200):
        repo.git("push", *QUIET, remote, *(":" + ref for ref in refs[at:at + 200]))
    return len(refs)


def roots(repo: Repo, commit: str = "HEAD") -> list[str]:
    """The root commits of COMMIT's history: what names the repository on every machine."""
    return repo.git("rev-list", "--max-parents=0", commit).stdout.split()


def clone(url: str, dest: Path) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    proc.git("clone", "-q", "--no-tags", url, dest, cwd=dest.parent)


def origin_url(path: Path) -> str | None:
    res = proc.git("remote", "get-url", "origin", cwd=path, check=False)
    return res.stdout.strip() if res.returncode == 0 else None


def _has_commit(repo: Repo, sha: str) -> bool:
    return repo.git("cat-file", "-e", f"{sha}^{{commit}}", check=False).returncode == 0


def fetch_all(path: Path) -> None:
    """Bring an existing clone up to date with its origin's branches."""
    proc.git("fetch", "-q", "--no-tags", "origin", cwd=path)
