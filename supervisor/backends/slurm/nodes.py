"""Which node to exclude, pure: a node whose rounds keep failing is left out of later
submissions (``--exclude``; in steps mode its places leave the pool), as a sick GPU is
quarantined on one server.

A node is excluded once ``after`` rounds in a row failed there (exit code, signal, time
limit; capacity ends such as a cancel or a node failure do not count) while rounds
succeeded on other nodes, and the failures were of more than one object (a broken mesh
fails everywhere), or one of them then succeeded elsewhere. The last node that ever
succeeded is never excluded: when everything fails the state machine stops the run.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class _Node:
    ok: int = 0
    streak: list[tuple[str, str]] = field(default_factory=list)  # (object, reason)
    failed_rounds: set[str] = field(default_factory=set)  # round names of the streak


class NodeHealth:
    def __init__(self, after: int) -> None:
        self.after = after
        self.nodes: dict[str, _Node] = {}
        self.excluded: dict[str, str] = {}  # node -> why

    def _node(self, node: str) -> _Node:
        return self.nodes.setdefault(node, _Node())

    def failed(self, node: str, code: str, name: str, reason: str) -> str | None:
        """A round failed on ``node``: the reason it is excluded now, or None."""
        rec = self._node(node)
        rec.streak.append((code, reason))
        rec.failed_rounds.add(name)
        return self._judge(node, succeeded_elsewhere=False)

    def succeeded(self, node: str, name: str) -> list[tuple[str, str]]:
        """A round succeeded on ``node``: nodes excluded now (a round that had failed on
        them succeeded here), each with its reason."""
        rec = self._node(node)
        rec.ok += 1
        rec.streak, rec.failed_rounds = [], set()
        out = []
        for other in list(self.nodes):
            if other != node and other not in self.excluded:
                why = self._judge(other, name in self.nodes[other].failed_rounds)
                if why:
                    out.append((other, why))
        return out

    def _judge(self, node: str, succeeded_elsewhere: bool) -> str | None:
        rec = self.nodes[node]
        others_ok = [n for n, r in self.nodes.items()
                     if n != node and r.ok and n not in self.excluded]
        varied = len({c for c, _ in rec.streak}) > 1 or succeeded_elsewhere
        if node in self.excluded or len(rec.streak) < self.after or not others_ok \
                or not varied:
            return None
        last = rec.streak[-1][1]
        self.excluded[node] = (f"{len(rec.streak)} rounds in a row failed on it while rounds "
                               f"succeeded on {', '.join(sorted(others_ok))} (last: {last})")
        return self.excluded[node]
