"""An index of benchmark fingerprints that answers "which benchmark item does this row
match?" without comparing all pairs.

- ids: a dict from normalised source id to the benchmark's items.
- frames: multi-index hashing. Each 64-bit frame hash is cut into four 16-bit bands, and
  each band value maps to the benchmark videos holding it. A row's candidates are the
  videos sharing any band of any of its frames (dict lookups, no scan); only those are
  compared frame by frame. Two hashes within 3 bits always share a band (pigeonhole);
  within the default 6 bits they almost always do, and a match needs most frames, so
  one intact band among them is enough to find it.
- questions: a dict of normalised questions (exact match) and a dict from word n-gram to
  the questions holding it; a row's overlap with each candidate is counted from its own
  n-grams only.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from avcurate.decontam.fingerprints import hamming, ngrams

BANDS, BAND_BITS = 4, 16


@dataclass(frozen=True)
class Item:
    """One benchmark question, with the fingerprints of its video."""

    benchmark: str
    id: str
    source_id: str | None
    hashes: tuple[int, ...]
    question: str  # normalised


@dataclass(frozen=True)
class Match:
    item: Item
    signal: str   # "id", "frames" or "question"
    detail: str


def bands(h: int) -> list[tuple[int, int]]:
    return [(b, (h >> (b * BAND_BITS)) & 0xFFFF) for b in range(BANDS)]


@dataclass
class BenchmarkIndex:
    """Fingerprints of every item of one or more benchmarks, indexed for lookup."""

    ngram: int = 6
    items: list[Item] = field(default_factory=list)
    # plain dicts (not defaultdicts of lambdas): the index travels to Ray workers by pickle
    by_id: dict[str, list[int]] = field(default_factory=dict)
    by_band: dict[tuple[int, int], set[int]] = field(default_factory=dict)
    videos: dict[tuple[int, ...], int] = field(default_factory=dict)  # hashes -> first item
    by_question: dict[str, int] = field(default_factory=dict)
    by_ngram: dict[str, set[int]] = field(default_factory=dict)
    ngram_counts: list[int] = field(default_factory=list)

    def add(self, item: Item) -> None:
        k = len(self.items)
        self.items.append(item)
        if item.source_id:
            self.by_id.setdefault(item.source_id, []).append(k)
        if item.hashes and item.hashes not in self.videos:  # a video asked about many times
            self.videos[item.hashes] = k
            for h in item.hashes:
                for band in bands(h):
                    self.by_band.setdefault(band, set()).add(k)
        grams = ngrams(item.question, self.ngram) if item.question else set()
        if item.question:
            self.by_question.setdefault(item.question, k)
        for g in grams:
            self.by_ngram.setdefault(g, set()).add(k)
        self.ngram_counts.append(len(grams))

    def match_id(self, sid: str | None) -> Match | None:
        if sid and sid in self.by_id:
            item = self.items[self.by_id[sid][0]]
            return Match(item, "id", f"same source id {sid!r}")
        return None

    def match_frames(self, hashes: list[int], max_distance: int, min_share: float
                     ) -> Match | None:
        if not hashes:
            return None
        # flat frames (black, one colour) hash to almost all 0s or 1s and are shared by many
        # videos: they take part in the comparison but do not propose candidates
        informative = [h for h in hashes if 4 <= h.bit_count() <= 60]
        candidates = set().union(*(self.by_band.get(b, ()) for h in informative
                                   for b in bands(h)))
        best: tuple[float, int] | None = None
        for k in candidates:
            theirs = self.items[k].hashes
            close = sum(hamming(a, b) <= max_distance for a, b in zip(hashes, theirs, strict=False))
            share = close / max(len(hashes), len(theirs))
            if share >= min_share and (best is None or share > best[0]):
                best = (share, k)
        if best is None:
            return None
        share, k = best
        return Match(self.items[k], "frames", f"{round(share * len(hashes))}/{len(hashes)} frames "
                     f"within {max_distance} bits")

    def match_question(self, question: str, min_overlap: float) -> Match | None:
        if not question:
            return None
        if question in self.by_question:
            return Match(self.items[self.by_question[question]], "question", "same question")
        grams = ngrams(question, self.ngram)
        if not grams:
            return None  # shorter than n words: only an exact match counts
        hits = Counter(k for g in grams for k in self.by_ngram.get(g, ()))
        if not hits:
            return None
        k, shared = hits.most_common(1)[0]
        # overlap: shared n-grams over the shorter question's n-grams (containment), so a
        # benchmark question pasted inside a longer one counts as well as a light edit
        overlap = shared / max(1, min(len(grams), self.ngram_counts[k]))
        if overlap >= min_overlap:
            return Match(self.items[k], "question", f"{overlap:.2f} of {self.ngram}-grams shared")
        return None
