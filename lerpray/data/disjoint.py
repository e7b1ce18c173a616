"""One owner per source text: every text goes to at most one (attribute, pole), before any split is drawn.

The built-in attributes draw on the same archive (VADER's snippets feed sentiment, simplicity, formality and
humor), and simplicity's sentences are cut from the very snippets the other poles use whole. Two texts are "the
same text" when, after `normalise` (case folded, punctuation dropped, whitespace collapsed), one equals the other
or, if it has at least `MIN_CONTAINED_WORDS` words, occurs inside it as a run of whole words. Same-text links are
closed transitively into groups; each group goes to one claimant pole (chosen by a seeded hash, so no attribute is
favoured); inside that pole a text contained in another of its texts is dropped. A pole's texts are then split into
train and held-out as before, so no text of one (attribute, pole, split) equals or contains a text of another.

    kept = assign_disjoint({"sentiment.positive": [...], "simplicity.simple": [...]}, seed=0)
"""

from __future__ import annotations

import hashlib
import re
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence

__all__ = ["MIN_CONTAINED_WORDS", "assign_disjoint", "normalise", "shared_texts"]

MIN_CONTAINED_WORDS = 5  # shorter texts ("Great movie.") count as the same text only when equal
_TOKEN = re.compile(r"[a-z0-9]+")


def normalise(text: str) -> str:
    """Lower-case alphanumeric words joined by single spaces: "It's GREAT!!" -> "it s great"."""
    return " ".join(_TOKEN.findall(text.lower()))


class _Groups:
    """Union-find over text ids."""

    def __init__(self, n: int) -> None:
        self.parent = list(range(n))

    def find(self, i: int) -> int:
        while self.parent[i] != i:
            self.parent[i] = self.parent[self.parent[i]]
            i = self.parent[i]
        return i

    def union(self, i: int, j: int) -> None:
        self.parent[self.find(i)] = self.find(j)


def _containment_links(norms: Sequence[str]) -> Iterable[tuple[int, int]]:
    """(i, j) for every pair of distinct normalised texts where text i occurs inside text j as whole words."""
    k = MIN_CONTAINED_WORDS
    index: dict[tuple[str, ...], list[int]] = defaultdict(list)  # first-k-words key -> texts holding it anywhere
    words = [n.split() for n in norms]
    for j, w in enumerate(words):
        for start in range(max(0, len(w) - k + 1)):
            index[tuple(w[start : start + k])].append(j)
    for i, w in enumerate(words):
        if len(w) < k:
            continue
        needle = f" {norms[i]} "
        for j in dict.fromkeys(index.get(tuple(w[:k]), ())):
            if j != i and len(words[j]) > len(w) and needle in f" {norms[j]} ":
                yield i, j


def _links(norms: Sequence[str]) -> list[tuple[int, int]]:
    """(i, j) for every pair where text i is the same text as text j and i is the one dropped when both sit in
    one pole: i equals an earlier j, or i is contained in j."""
    first: dict[str, int] = {}
    links = []
    for i, n in enumerate(norms):
        j = first.setdefault(n, i)
        if j != i:
            links.append((i, j))
    unique = list(first.values())
    links += [(unique[i], unique[j]) for i, j in _containment_links([norms[u] for u in unique])]
    return links


def _rank(seed: int, key: str) -> bytes:
    return hashlib.sha256(f"{seed}\0{key}".encode()).digest()


def assign_disjoint(poles: Mapping[str, Sequence[str]], *, seed: int = 0) -> dict[str, list[str]]:
    """pole name -> its texts, each same-text group kept in one pole only; inside it, contained texts dropped.

    Texts that normalise to nothing are dropped. The owner of a group claimed by several poles is the claimant
    with the lowest sha256(seed, the group's greatest normalised text, pole); the kept order is the input order.
    """
    entries = [(pole, t) for pole, texts in poles.items() for t in dict.fromkeys(texts) if normalise(t)]
    norms = [normalise(t) for _, t in entries]
    links = _links(norms)
    groups = _Groups(len(norms))
    for i, j in links:
        groups.union(i, j)
    members: dict[int, list[int]] = defaultdict(list)
    for i in range(len(norms)):
        members[groups.find(i)].append(i)
    owner: dict[int, str] = {}
    for root, ids in members.items():
        longest = max(norms[i] for i in ids)
        claimants = sorted({entries[i][0] for i in ids})
        owner[root] = min(claimants, key=lambda pole: _rank(seed, f"{longest}\0{pole}"))
    kept: dict[str, list[str]] = {pole: [] for pole in poles}
    for i, (pole, text) in enumerate(entries):
        if pole == owner[groups.find(i)]:
            kept[pole].append(text)
    for pole, texts in kept.items():  # inside a pole, an equal (after normalising) or contained text goes
        dropped = {i for i, _ in _links([normalise(t) for t in texts])}
        kept[pole] = [t for i, t in enumerate(texts) if i not in dropped]
    return kept


def shared_texts(a: Sequence[str], b: Sequence[str]) -> list[tuple[str, str]]:
    """(text of a, text of b) pairs that are the same text (equal or contained after `normalise`, either way
    round): the check the tests run on every pair of splits."""
    na, nb = [normalise(t) for t in a], [normalise(t) for t in b]
    norms = na + nb
    pairs = set()
    for i, j in _links(norms):
        lo, hi = min(i, j), max(i, j)
        if lo < len(na) <= hi:
            pairs.add((a[lo], b[hi - len(na)]))
    return sorted(pairs)
