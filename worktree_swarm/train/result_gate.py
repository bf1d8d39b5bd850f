"""The merge-result gate: test what the train built, find the merge that broke it, rebuild without it.

bors's rule: test the merge result, not the branches. Each branch passed the gate on its own, yet
two of them together can still break the build; bisection over the train's merge commits finds
the first merge after which the configured checks fail.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from worktree_swarm.gate.probe import Prober
from worktree_swarm.gate.report import GateReport
from worktree_swarm.git.merge_tree import merge_tree
from worktree_swarm.git.repo import Repo
from worktree_swarm.util.types import Sha


@dataclass(frozen=True)
class TrainMerge:
    commit: Sha        # the merge commit on the integration branch
    parent: Sha        # its first parent: the integration head before it
    theirs: Sha        # its second parent: the task branch's head
    message: str


def train(repo: Repo, base: Sha, head: Sha) -> list[TrainMerge]:
    """The merge commits from BASE to HEAD along the first-parent chain, oldest first."""
    out = repo.git("log", "--first-parent", "--reverse", "--format=%H %P%x00%B%x00", f"{base}..{head}").stdout
    merges: list[TrainMerge] = []
    records = out.split("\0")
    for header, body in zip(records[0::2], records[1::2]):
        commit, *parents = header.split()
        if len(parents) == 2:
            merges.append(TrainMerge(Sha(commit), Sha(parents[0]), Sha(parents[1]), body.strip() + "\n"))
    return merges


def first_bad(count: int, passes: Callable[[int], bool]) -> int:
    """The smallest i in 1..count with passes(i) false, given passes(0) and not passes(count)."""
    good, bad = 0, count
    while bad - good > 1:
        mid = (good + bad) // 2
        if passes(mid):
            good = mid
        else:
            bad = mid
    return bad


@dataclass(frozen=True)
class Dropped:
    merge: TrainMerge
    why: str            # guilty | built-on | conflicts


@dataclass(frozen=True)
class Rebuilt:
    head: Sha
    dropped: list[Dropped]      # merges left out, oldest first


def rebuild_without(repo: Repo, merges: Sequence[TrainMerge], guilty: int) -> Rebuilt:
    """Replay the merges after merges[guilty] onto its parent, leaving it out. Only objects are
    written; no ref moves.

    A branch that started on top of the guilty merge carries it in its history: merging it again
    would bring the guilty change back, so such a merge is dropped (its task must be redone), as is
    one that no longer applies cleanly.
    """
    bad = merges[guilty]
    head = bad.parent
    dropped = [Dropped(bad, "guilty")]
    for m in merges[guilty + 1:]:
        if repo.is_ancestor(bad.commit, m.theirs):
            dropped.append(Dropped(m, "built-on"))
            continue
        result = merge_tree(repo, head, m.theirs)
        if result.tree is None:
            dropped.append(Dropped(m, "conflicts"))
            continue
        head = repo.commit(result.tree, [head, m.theirs], m.message)
    return Rebuilt(head, dropped)


@dataclass(frozen=True)
class Verdict:
    report: GateReport                    # the checks on the integration head
    guilty: TrainMerge | None = None      # the first merge after which they fail
    base_fails: bool = False              # the base already fails: nothing can be blamed
    rebuilt: Rebuilt | None = None


def judge(repo: Repo, prober: Prober, *, base: Sha, head: Sha) -> Verdict:
    """Test the integration HEAD; on failure bisect, and rebuild the branch without the culprit."""
    report = prober.report(head)
    if report.passed:
        return Verdict(report)
    if not prober.report(base).passed:
        return Verdict(report, base_fails=True)
    merges = train(repo, base, head)
    index = first_bad(len(merges), lambda i: i == 0 or prober.report(merges[i - 1].commit).passed) - 1
    guilty = merges[index]
    return Verdict(report, guilty=guilty, rebuilt=rebuild_without(repo, merges, index))
