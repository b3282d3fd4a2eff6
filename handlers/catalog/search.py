"""Catalogue search: finds service items from what a citizen types ("身份证过期了怎么办").

An engine: it knows nothing of the catalogue's files or tables. The catalogue reader hands it the
published items, and the bot its FAQ entries, as plain dicts::

    index = SearchIndex.build(items, synonyms)      # items: Item.model_dump(mode="json") + department_name
    hits = index.search("身份证过期了怎么办")         # [Hit(code, name, score, reason)], best first
    found = [h for h in hits if h.score >= SearchIndex.MIN_SCORE]   # the bot's "没有找到" test

Ranking
-------
* Segmentation: jieba search mode (``lcut_for_search``; the index uses ``jieba.tokenize(mode=
  "search")``, the same cut with offsets), with every catalogue name, alias, keyword
  and synonym word added to jieba's dictionary so they come out as units; tokens longer than four
  characters also yield every dictionary word inside them (search mode alone stops at three), so an
  alias like "身份证到期换证" still gives 身份证/到期/换证. Question filler (怎么办, 要, 什么, 吗 ...)
  is dropped on both sides; process words (办理, 申请, 手续 ...) count only weakly in a query.
* Scoring is a per-field Okapi BM25 sum ("BM25F-lite"): each field group is its own BM25 collection
  with its own document frequencies and lengths (k1=1.5, b=0.75, idf = ln(1 + (N-n+.5)/(n+.5))),
  and an item's score is the field-weighted sum: name+aliases x3, keywords x2, sub_name x2,
  summary+conditions+steps x1, material names x1, department name x0.5. Per-field document
  frequencies matter: "身份证" is in every item's materials but in one item's name, so it is
  rare - and decisive - in the name field. All doc-side BM25 parts are precomputed at build time
  into postings ``term -> {item: score}``; a search only adds them up.
* Query expansion: a query term in a synonym group also looks for the group's other words at
  0.8 of its weight (a literal query term keeps its own weight); process words (办理, 申请 ...)
  weigh 0.1-0.15, a lone character not in the catalogue's vocabulary (证, 卡) 0.5, and a piece of
  a longer catalogue word in the query (房子 inside 租房子) 0.5, without synonym expansion.
* Character-pair fallback, for what jieba splits oddly: the query characters left over - not
  covered by a token that matched something, nor by filler - are turned into ordered character
  pairs at distance <= 3 (weights 1 / 0.7 / 0.6) and looked up, at 0.5 of a word's weight, in a
  second per-field BM25 index over the items' character pairs at distance 1-2. So "开个小店"
  still reaches 开店 (个体工商户登记) and the abbreviation 驾证 reaches 驾驶证, while
  well-segmented queries are scored on words alone.

``MIN_SCORE`` (2.0) separates answers from noise. On the demo catalogue a single content word in
an item's name, aliases or keywords scores 8 or more, a word found only in body text about 2 (交通
in 交通违法), and a lone weak word, lone character or stray character pair stays below 1.5.
Hits between 0 and MIN_SCORE are still returned (the mini-program may list them as "相关"); the
bot says "没有找到" when the best hit is below it.

jieba is initialised once per process (quietly: its logger is set to WARNING, so "Building prefix
dict" never reaches stdout/stderr). Adding words is idempotent; building the same catalogue twice
gives the same index. jieba's dictionary is process-global, so words from another catalogue built
earlier in the same process stay known (harmless: they only make some runs segment as units).
"""

from __future__ import annotations

import logging
import math
import re
import threading
import unicodedata
from collections import Counter, defaultdict
from dataclasses import dataclass

import jieba
import numpy as np

__all__ = ["Hit", "SearchIndex", "tokenize"]

K1, B = 1.5, 0.75
SYNONYM_WEIGHT = 0.8
PAIR_WEIGHT = 0.5
PAIR_DISTANCE_WEIGHTS = {1: 1.0, 2: 0.7, 3: 0.6}
SUBWORD_FACTOR = 0.5  # a word inside a longer catalogue word of the query (房子 in 租房子)
SINGLE_CHAR_WEIGHT = 0.5  # a lone character (证, 卡) says little unless the catalogue lists it (取)

FIELD_WEIGHTS = {"title": 3.0, "keywords": 2.0, "sub_name": 2.0, "body": 1.0, "materials": 1.0, "department": 0.5}

# Question filler: dropped from queries and documents alike.
STOP_WORDS = frozenset(
    """
    怎么 怎么办 怎么样 怎样 咋 咋办 咋样 如何 要 要求 什么 什么样 啥 哪些 哪个 哪 吗 么 了 的 地 得 着 过
    我 我们 你 你们 您 他 她 俺 自己 想 想要 办 办下来 弄 搞 需要 须 带 带上 去 去哪 去哪里 去哪儿 哪里 哪儿
    到哪 到哪里 在哪 在哪里 能 能不能 可以 可不可以 呢 啊 呀 吧 嘛 哦 哈 呗 一下 一个 个 下 请问 问 问一下
    你好 您好 请 麻烦 帮 帮忙 帮我 给 让 在 是 有 还 就 都 也 和 与 及 或 或者 并 把 被 对 从 到 该 应该
    得要 必须 现在 已经 刚 刚刚 马上 这个 那个 这 那 些 有点 一点 多少 多久 几天 时候 呢吗 啥的
    """.split()
)
# Process words: meaningful only weakly ("居住证怎么办理" is about 居住证, not 办理).
WEAK_WORDS = {
    "办理": 0.15,
    "申请": 0.15,
    "申办": 0.15,
    "手续": 0.1,
    "流程": 0.1,
    "材料": 0.1,
    "资料": 0.1,
    "条件": 0.1,
    "所需": 0.1,
    "证件": 0.15,
    "网上": 0.1,
    "线上": 0.1,
    "在线": 0.1,
}

_WORDISH = re.compile(r"\w")
_CJK_RUN = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]+")

_jieba_lock = threading.RLock()
_jieba_ready = False
_added_words: set[str] = set()
_phrase_parts: dict[str, list[str]] = {}  # phrase added as a word -> how jieba cut it before


def _ensure_jieba() -> None:
    """Loads jieba's dictionary once per process, without its "Building prefix dict" noise."""
    global _jieba_ready
    if _jieba_ready:
        return
    with _jieba_lock:
        if not _jieba_ready:
            jieba.setLogLevel(logging.WARNING)
            jieba.initialize()
            _jieba_ready = True


def _add_words(vocabulary: set[str], phrases: set[str]) -> None:
    """Adds words to jieba's dictionary so they segment as units, each only once per process.

    `vocabulary` (keywords, synonym words) goes in first; then each phrase (name, alias) is cut
    with that dictionary and its parts remembered, so a phrase that now comes out as one unit
    still yields its words ("公积金怎么取" -> 公积金, 怎么, 取), and then the phrase goes in too.
    Everything is sorted, so the same catalogue always gives the same dictionary.
    """
    _ensure_jieba()
    with _jieba_lock:
        for word in sorted(vocabulary - _added_words):
            if len(word) > 1:
                jieba.add_word(word)
            _added_words.add(word)
        for phrase in sorted(phrases - _added_words):
            parts = jieba.lcut(phrase)
            if len(parts) > 1:
                _phrase_parts[phrase] = parts
        for phrase in sorted(phrases - _added_words):
            if len(phrase) > 1:
                jieba.add_word(phrase)
            _added_words.add(phrase)


def _normalize(text: str) -> str:
    return unicodedata.normalize("NFKC", text or "").lower().strip()


def _spans(text: str) -> list[tuple[str, int, int]]:
    """Search-mode tokens of normalized text with their offsets, plus the dictionary words inside
    tokens longer than four characters (search mode only looks for 2- and 3-character words), plus
    the parts of catalogue phrases that came out as one token."""
    freq = jieba.dt.FREQ
    out: dict[tuple[str, int, int], None] = {}
    for token, start, end in jieba.tokenize(text, mode="search"):  # = lcut_for_search, with offsets
        if not token.strip() or not _WORDISH.search(token):
            continue
        out[(token, start, end)] = None
        if len(token) > 4:
            for size in range(4, len(token)):
                for i in range(len(token) - size + 1):
                    if freq.get(token[i : i + size]):
                        out[(token[i : i + size], start + i, start + i + size)] = None
        at = start
        for part in _phrase_parts.get(token, ()):
            if part.strip() and _WORDISH.search(part):
                out[(part, at, at + len(part))] = None
            at += len(part)
    return list(out)


def tokenize(text: str) -> list[str]:
    """The content tokens of `text` (normalized, stop words removed), in order, with repeats."""
    _ensure_jieba()
    return [t for t, _, _ in _spans(_normalize(text)) if t not in STOP_WORDS]


def _doc_pairs(text: str) -> list[str]:
    """Character pairs at distance 1 and 2 in the CJK runs of `text` (驾驶证 gives 驾驶, 驾证, 驶证)."""
    return [
        run[i] + run[i + d]
        for run in _CJK_RUN.findall(_normalize(text))
        for i in range(len(run))
        for d in (1, 2)
        if i + d < len(run)
    ]


def _query_pairs(text: str, spans: list[tuple[str, int, int]], hit: set[str]) -> dict[str, float]:
    """Ordered character pairs (distance <= 3, with weights) inside the query's leftover runs:
    CJK characters covered neither by a query token that matched something nor by filler."""
    blocked = [False] * len(text)
    for token, start, end in spans:
        if token in hit or token in STOP_WORDS or token in WEAK_WORDS:
            blocked[start:end] = [True] * (end - start)
    runs = "".join(" " if blocked[i] else ch for i, ch in enumerate(text))
    pairs: dict[str, float] = {}
    for run in _CJK_RUN.findall(runs):
        for i in range(len(run)):
            for distance, weight in PAIR_DISTANCE_WEIGHTS.items():
                if i + distance < len(run):
                    pair = run[i] + run[i + distance]
                    pairs[pair] = max(pairs.get(pair, 0.0), weight)
    return pairs


def _bm25_postings(fields: dict[str, list[list[str]]]) -> dict[str, dict[int, float]]:
    """term -> {doc: sum over fields of weight x BM25 term score}; each field is its own collection."""
    postings: dict[str, dict[int, float]] = defaultdict(lambda: defaultdict(float))
    for field, docs in fields.items():
        n = len(docs)
        counts = [Counter(tokens) for tokens in docs]
        lengths = [len(tokens) for tokens in docs]
        avgdl = (sum(lengths) / n) if n and sum(lengths) else 1.0
        df = Counter(term for c in counts for term in c)
        weight = FIELD_WEIGHTS[field]
        for doc, c in enumerate(counts):
            norm = K1 * (1 - B + B * lengths[doc] / avgdl)
            for term, tf in c.items():
                idf = math.log(1 + (n - df[term] + 0.5) / (df[term] + 0.5))
                postings[term][doc] += weight * idf * tf * (K1 + 1) / (tf + norm)
    return {term: dict(by_doc) for term, by_doc in postings.items()}


# A posting list as two arrays: the items holding the term (ascending) and each one's score part.
Postings = tuple[np.ndarray, np.ndarray]


def _as_arrays(postings: dict[str, dict[int, float]]) -> dict[str, Postings]:
    """term -> (item indices ascending, parts): compact, and a handful of objects per term instead
    of one per (term, item), so a large catalogue's index costs the garbage collector little."""
    out: dict[str, Postings] = {}
    for term, by_doc in postings.items():
        docs = sorted(by_doc)
        out[term] = (
            np.fromiter(docs, dtype=np.intp, count=len(docs)),
            np.fromiter((by_doc[d] for d in docs), dtype=np.float64, count=len(docs)),
        )
    return out


def _holds(postings: Postings, doc: int) -> bool:
    docs = postings[0]
    at = int(docs.searchsorted(doc))
    return at < len(docs) and int(docs[at]) == doc


def _field_texts(item: dict) -> dict[str, list[str]]:
    """The texts of each field group of an item (content dict as published)."""
    steps = item.get("steps") or []
    return {
        "title": [item.get("name") or "", *(item.get("aliases") or [])],
        "keywords": list(item.get("keywords") or []),
        "sub_name": [item.get("sub_name") or ""],
        "body": [
            item.get("summary") or "",
            *(item.get("conditions") or []),
            *(f"{s.get('name', '')} {s.get('description', '')}" for s in steps if isinstance(s, dict)),
        ],
        "materials": [m.get("name", "") for m in item.get("materials") or [] if isinstance(m, dict)],
        "department": [item.get("department_name") or ""],
    }


@dataclass(frozen=True)
class Hit:
    code: str
    name: str
    score: float
    reason: str


@dataclass
class _QueryTerm:
    term: str  # what is looked up
    weight: float  # the best weight any query token gives it
    sources: dict[str, bool]  # query token it comes from -> through a synonym group (not literally)


class SearchIndex:
    """A BM25 index over catalogue items; build with `SearchIndex.build`, query with `search`."""

    # Below this the bot answers "没有找到". On the demo catalogue one content word in an item's name,
    # aliases or keywords scores 8 or more; one word found only in body text (交通 in 交通违法) about
    # 1.9; a lone weak word (办理, 申请), a lone character (证) or a stray character pair stays below 1.5.
    MIN_SCORE = 2.0

    def __init__(self, codes, names, words, pairs, groups, core_vocabulary, phrases):
        self._codes: list[str] = codes
        self._names: list[str] = names
        self._words: dict[str, Postings] = _as_arrays(words)
        self._pairs: dict[str, Postings] = _as_arrays(pairs)
        self._groups: dict[str, list[str]] = groups
        self._core: frozenset[str] = core_vocabulary
        self._phrases: frozenset[str] = phrases

    def __len__(self) -> int:
        return len(self._codes)

    @classmethod
    def build(cls, items: list[dict], synonyms: list[list[str]]) -> SearchIndex:
        groups_norm = [[_normalize(w) for w in group if _normalize(w)] for group in synonyms or []]
        keywords = {_normalize(k) for item in items for k in item.get("keywords") or []}
        phrases = {
            _normalize(p)
            for item in items
            for p in [item.get("name"), item.get("sub_name"), *(item.get("aliases") or [])]
            if p
        }
        core = keywords | {w for group in groups_norm for w in group}
        _add_words({w for w in core if w.strip()}, {p for p in phrases - core if p.strip()})

        fields: dict[str, list[list[str]]] = {field: [] for field in FIELD_WEIGHTS}
        pair_fields: dict[str, list[list[str]]] = {field: [] for field in FIELD_WEIGHTS}
        for item in items:
            for field, texts in _field_texts(item).items():
                fields[field].append([t for text in texts for t in tokenize(text)])
                pair_fields[field].append([p for text in texts for p in _doc_pairs(text)])

        groups: dict[str, list[str]] = {}
        for group in groups_norm:
            for word in group:
                others = groups.setdefault(word, [])
                others.extend(w for w in group if w != word and w not in others)
        return cls(
            [item["code"] for item in items],
            [item["name"] for item in items],
            _bm25_postings(fields),
            _bm25_postings(pair_fields),
            groups,
            frozenset(core),
            frozenset(phrases - core),
        )

    # -- querying ---------------------------------------------------------------------------

    def _expand(self, tokens: dict[str, float]) -> list[_QueryTerm]:
        """Query token weights -> the terms to look up: each token, and its synonyms at 0.8."""
        terms: dict[str, _QueryTerm] = {}

        def offer(term: str, weight: float, source: str, synonym: bool) -> None:
            qt = terms.setdefault(term, _QueryTerm(term, 0.0, {}))
            qt.weight = max(qt.weight, weight)
            qt.sources[source] = qt.sources.get(source, True) and synonym

        for token, factor in tokens.items():
            weight = factor * WEAK_WORDS.get(
                token, SINGLE_CHAR_WEIGHT if len(token) == 1 and token not in self._core else 1.0
            )
            offer(token, weight, token, False)
            if factor < 1:  # a piece of a catalogue word: its synonyms would be noise (房子 in 租房子)
                continue
            for other in self._groups.get(token, ()):
                offer(other, weight * SYNONYM_WEIGHT, token, True)
        return list(terms.values())

    def _query_tokens(self, spans: list[tuple[str, int, int]]) -> dict[str, float]:
        """Content tokens of the query -> weight factor: 0.5 for a piece of a catalogue word (房子
        inside 租房子: the unit carries the meaning, and the piece is not expanded by synonyms),
        1 otherwise (the pieces of an alias or of an ordinary phrase count fully)."""
        units = [(start, end) for token, start, end in spans if token in self._core]
        tokens: dict[str, float] = {}
        for token, start, end in spans:
            if token in STOP_WORDS:
                continue
            inside = any(s <= start and end <= e and (s, e) != (start, end) for s, e in units)
            tokens[token] = max(tokens.get(token, 0.0), SUBWORD_FACTOR if inside else 1.0)
        return tokens

    def search(self, query: str, limit: int = 10) -> list[Hit]:
        """Items matching `query`, best first; scores rounded to 3 decimals, only scores > 0.

        Scores add up in one array over the items (each posting is a pair of arrays: item indices
        and their parts), in the same order as a per-item sum, so the figures are the same to the
        last bit; only the best `limit` are rounded, sorted and explained."""
        _ensure_jieba()
        text = _normalize(query)
        if not text or limit <= 0 or not self._codes:
            return []
        spans = _spans(text)
        scores = np.zeros(len(self._codes))
        hit_terms: list[tuple[_QueryTerm, Postings]] = []
        hit_sources: set[str] = set()
        for qt in self._expand(self._query_tokens(spans)):
            postings = self._words.get(qt.term)
            if postings is None:
                continue
            hit_sources.update(qt.sources)
            docs, parts = postings
            scores[docs] += qt.weight * parts
            hit_terms.append((qt, postings))
        hit_pairs: list[tuple[str, Postings]] = []
        for pair, weight in _query_pairs(text, spans, hit_sources).items():
            postings = self._pairs.get(pair)
            if postings is None:
                continue
            docs, parts = postings
            scores[docs] += PAIR_WEIGHT * weight * parts
            hit_pairs.append((pair, postings))

        # A score that rounds to 0.000 is no hit; of the rest, only those that may rank in the
        # first `limit` (ties at the cut included) are rounded and sorted.
        candidates = np.flatnonzero(scores >= 0.0004)
        if len(candidates) > limit:
            cut = np.partition(scores[candidates], len(candidates) - limit)[len(candidates) - limit]
            candidates = candidates[scores[candidates] >= cut - 0.001]
        ranked = sorted(
            ((rounded, int(doc)) for doc in candidates.tolist() if (rounded := round(float(scores[doc]), 3)) > 0),
            key=lambda sd: (-sd[0], sd[1]),
        )[:limit]
        hits = []
        for score, doc in ranked:
            # doc -> query token -> the synonyms through which it hit (empty: it hit literally)
            matched: dict[str, list[str]] = {}
            for qt, postings in hit_terms:
                if _holds(postings, doc):
                    for source, synonym in qt.sources.items():
                        syns = matched.setdefault(source, [])
                        if synonym:
                            syns.append(qt.term)
            pairs = [pair for pair, postings in hit_pairs if _holds(postings, doc)]
            hits.append(Hit(self._codes[doc], self._names[doc], score, self._reason(text, matched, pairs)))
        return hits

    def _reason(self, text: str, matched: dict[str, list[str]], pairs: list[str]) -> str:
        """匹配：身份证、过期（同义：有效期满）；相近：开店 - the query words that hit and how."""
        sources = list(matched)
        # Alias-like phrases ("身份证到期换证") are shown through the words inside them that hit.
        shown = [s for s in sources if not (s in self._phrases and any(o != s and o in s for o in sources))]
        shown = [s for s in shown if not any(o != s and s in o for o in shown)]
        shown.sort(key=lambda s: (text.find(s), -len(s)))
        parts = []
        for s in shown[:6]:
            syns: list[str] = []
            for source, source_syns in matched.items():
                if source in s:  # the shown word itself, or a word inside it
                    syns.extend(w for w in source_syns if w != s and w not in s and w not in syns)
            parts.append(f"{s}（同义：{'、'.join(syns[:3])}）" if syns else s)
        covered = shown + [w for syns in matched.values() for w in syns]
        near = [p for p in dict.fromkeys(pairs) if not any(p in c for c in covered)][:3]
        reason = f"匹配：{'、'.join(parts)}" if parts else ""
        if near:
            reason += ("；" if reason else "") + f"相近：{'、'.join(near)}"
        return reason
