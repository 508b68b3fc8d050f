"""The ``lexicon`` reader, the default: the score a reasoning implies by its quality words. Cheap, deterministic and
CPU-only, so the consistency reward costs next to nothing per step. Numbers written in the reasoning are ignored on
purpose: otherwise copying the answer into the reasoning would max out the reward."""

from __future__ import annotations

import re

from qponder.prompts import LEVELS
from qponder.rewards.readers import Reader, register_reader


# lexicon_score(text):
#   1. Lower-case, turn "n't" into " not", split into word tokens; punctuation and contrast words (but, however,
#      although, though, while, whereas, yet, except) are clause boundaries that no modifier crosses.
#   2. Match phrases longest-first: *descriptors* (defects, value -1 or -0.5: blurry, noise, compression
#      artefacts, over-/under-exposed, washed out, dull, ...; merits, +1 or +0.5: sharp, crisp, clean, vivid,
#      well exposed, fine detail, ...) and *level words* (excellent 5, good 4, fair 3, poor 2, bad 1, plus a few
#      synonyms: great 4.5, average 3, mediocre 2.5, terrible 1, high quality 4, low quality 2, ...).
#   3. Modifiers in the same clause: a negator (not, no, without, little, lack(s), free, minimal, negligible,
#      low, reduced, ...) up to 3 tokens before, or after the descriptor behind a copula ("noise is minimal",
#      "noise-free", "sharpness is lacking"), negates it; a negation carries over "or"/"nor" ("no blur or noise").
#      A negated defect counts +0.5 x its size (absence of a defect is mildly good), a negated merit -1 x its size
#      ("not sharp" is as bad as "soft"); intensity is ignored under negation. Otherwise the nearest intensifier up
#      to 2 tokens before (or right after a copula) scales the value: severe/heavy/extreme x2, very/significant/
#      noticeable/obvious x1.5, moderate/some x1, slight/mild/minor/a little x0.5; values are clipped to [-2, 2].
#      Level words: intensified l -> 3 + (l - 3) x m, negated l -> 3 - 0.5 sign(l - 3) ("not bad" 3.5); clipped
#      to [1, 5].
#   4. s_desc = 3 + mean(descriptor values); s_level = mean(level values); score = s_level when only levels are
#      present, s_desc when only descriptors are, else (2 s_level + s_desc) / 3 (the explicit verdict dominates);
#      None when neither occurs. Numbers in the text are ignored on purpose (see the module docstring).

_BOUNDARY_WORDS = frozenset("but however although though while whereas yet except".split())
_PRE_NEGATORS = frozenset(
    "not no without little never none nor neither lack lacks lacking lacked free minimal negligible barely hardly "
    "absence absent zero nothing low reduced limited loss lost".split())
_POST_NEGATORS = frozenset(
    "not minimal negligible absent free lacking missing invisible imperceptible unnoticeable barely hardly low "
    "limited reduced lost none nonexistent suppressed".split())
_COPULA = frozenset(
    "is are was were be been being appears appear seems seem looks look remains remain largely mostly almost "
    "nearly completely entirely essentially practically virtually effectively quite relatively fairly very "
    "rather level levels".split())
_CARRY_NEGATION = frozenset("or nor any visible noticeable obvious apparent significant major other signs of".split())
_INTENSIFIERS: dict[str, float] = {
    **dict.fromkeys("severe severely heavy heavily extreme extremely excessive excessively massive massively "
                    "intense strongly".split(), 2.0),
    **dict.fromkeys("very highly significant significantly considerable considerably substantial substantially "
                    "noticeable noticeably obvious obviously prominent pronounced major overly really strong high "
                    "clearly".split(), 1.5),
    **dict.fromkeys("moderate moderately some quite rather fairly".split(), 1.0),
    **dict.fromkeys("somewhat partly partially".split(), 0.75),
    **dict.fromkeys("slight slightly mild mildly minor faint faintly subtle subtly marginally light lightly "
                    "a_little a_bit".split(), 0.5),
}
_MERGE = {("a", "little"): "a_little", ("a", "bit"): "a_bit"}


def _phrases(spec: str, value: float) -> dict[tuple[str, ...], float]:
    return {tuple(p.split()): value for p in spec.split(",") if p.strip()}


_DESCRIPTORS: dict[tuple[str, ...], float] = {
    **_phrases(
        "blur, blurry, blurred, blurriness, blurring, out of focus, defocus, defocused, unfocused, motion blur, "
        "lens blur, camera shake, shake, smeared, smearing, smudged, fuzzy, noise, noisy, grainy, graininess, "
        "colour noise, color noise, luminance noise, speckle, speckles, artefact, artefacts, artifact, artifacts, "
        "compression, compressed, compression artefacts, compression artifacts, jpeg artefacts, jpeg artifacts, "
        "blocking, blocky, blockiness, ringing, banding, pixelated, pixelation, pixelization, aliasing, jagged, "
        "jaggies, halo, halos, haloing, distortion, distortions, distorted, degraded, degradation, overexposed, "
        "overexposure, over exposed, over exposure, underexposed, underexposure, under exposed, under exposure, "
        "clipped, clipping, blown out, blown highlights, crushed, crushed shadows, too dark, too bright, dull, "
        "washed out, washedout, desaturated, faded, hazy, haze, foggy, colour cast, color cast, oversaturated, "
        "over saturated, unnatural, low contrast, low resolution, loss of detail, ghosting, moire, fringing, "
        "chromatic aberration, oversharpened, over sharpened, overprocessed, over processed, murky, muddy, "
        "poorly exposed, poorly focused, out of focus blur", -1.0),
    **_phrases("soft, softness, grain, muted, flat, vignetting, harsh, noticeable grain", -0.5),
    **_phrases(
        "sharp, crisp, detailed, fine detail, fine details, clean, vivid, vibrant, well exposed, properly exposed, "
        "correctly exposed, balanced, well balanced, pleasing, high resolution, in focus, well focused, "
        "well defined, razor sharp", 1.0),
    **_phrases("sharpness, clarity, clear, detail, details, natural, accurate, rich, focused, texture", 0.5),
}
_LEVEL_PHRASES: dict[tuple[str, ...], float] = {
    **{(w.strip(),): v for w, v in LEVELS},
    **_phrases("great, outstanding, superb", 4.5),
    **_phrases("decent", 3.5),
    **_phrases("average, acceptable, moderate quality, medium quality", 3.0),
    **_phrases("mediocre", 2.5),
    **_phrases("high quality", 4.0),
    **_phrases("low quality", 2.0),
    **_phrases("terrible, awful, unacceptable, very low quality", 1.0),
}
_IGNORED: dict[tuple[str, ...], float] = _phrases("fair amount, fair share, good amount, good deal", 0.0)

_LEX: dict[str, list[tuple[tuple[str, ...], str, float]]] = {}
for _table, _kind in ((_DESCRIPTORS, "desc"), (_LEVEL_PHRASES, "level"), (_IGNORED, "skip")):
    for _phrase, _val in _table.items():
        _LEX.setdefault(_phrase[0], []).append((_phrase, _kind, _val))
for _cands in _LEX.values():
    _cands.sort(key=lambda c: -len(c[0]))  # longest match first
del _table, _kind, _phrase, _val, _cands

_TOKEN_RE = re.compile(r"[a-z0-9]+|[.,;:!?()\[\]\n]")
_NT_RE = re.compile(r"n't\b")
_BOUNDARY = "|"


def _lex_tokens(text: str) -> list[str]:
    raw = _TOKEN_RE.findall(_NT_RE.sub(" not", text.lower().replace("\u2019", "'")))
    out: list[str] = []
    for t in raw:
        if not t[0].isalnum() or t in _BOUNDARY_WORDS:
            if out and out[-1] != _BOUNDARY:
                out.append(_BOUNDARY)
            continue
        if out and (out[-1], t) in _MERGE:
            out[-1] = _MERGE[(out[-1], t)]
            continue
        out.append(t)
    return out


def _pre_modifiers(tokens: list[str], start: int) -> tuple[bool, float | None]:
    """(negated, intensity) from up to 3 tokens before ``start`` in the same clause."""
    negated, intensity = False, None
    for d in range(1, 4):
        k = start - d
        if k < 0 or tokens[k] == _BOUNDARY:
            break
        t = tokens[k]
        if t in _PRE_NEGATORS:  # "a little" was merged into the intensifier "a_little" by the tokenizer
            negated = True
        elif d <= 2 and intensity is None and t in _INTENSIFIERS:
            intensity = _INTENSIFIERS[t]
    return negated, intensity


def _post_modifiers(tokens: list[str], end: int) -> tuple[bool, float | None]:
    """(negated, intensity) from what follows a descriptor behind an optional copula: "noise is minimal"."""
    k, skipped = end, 0
    while k < len(tokens) and tokens[k] in _COPULA and skipped < 3:
        k += 1
        skipped += 1
    if k >= len(tokens) or tokens[k] == _BOUNDARY:
        return False, None
    t = tokens[k]
    if t in _POST_NEGATORS:
        return True, None
    if skipped and t in _INTENSIFIERS:  # "noise is slight" / "blur is severe"; not "blur very" (no copula)
        return False, _INTENSIFIERS[t]
    return False, None


def lexicon_score(text: str) -> float | None:
    """The 1-5 score a reasoning text implies by its quality words (rules in the comment above), or None."""
    if not isinstance(text, str) or not text:
        return None
    tokens = _lex_tokens(text)
    desc: list[float] = []
    levels: list[float] = []
    i, n = 0, len(tokens)
    last_neg_end = -10  # end index of the last negated descriptor, for "no blur or noise"
    while i < n:
        cands = _LEX.get(tokens[i])
        if not cands:
            i += 1
            continue
        for phrase, kind, value in cands:
            if tuple(tokens[i:i + len(phrase)]) == phrase:
                break
        else:
            i += 1
            continue
        end = i + len(phrase)
        if kind == "skip":
            i = end
            continue
        negated, intensity = _pre_modifiers(tokens, i)
        if kind == "desc":
            if not negated and last_neg_end >= 0 and all(t in _CARRY_NEGATION for t in tokens[last_neg_end:i]) \
                    and any(t in ("or", "nor") for t in tokens[last_neg_end:i]):
                negated = True
            post_neg, post_int = _post_modifiers(tokens, end)
            negated = negated or post_neg
            if intensity is None:
                intensity = post_int
            if negated:
                v = 0.5 * abs(value) if value < 0 else -abs(value)
                last_neg_end = end
            else:
                v = max(-2.0, min(2.0, value * (intensity or 1.0)))
            desc.append(v)
        else:  # level word
            if negated:
                lv = 3.0 - 0.5 * (1 if value > 3 else -1 if value < 3 else 0)
            else:
                lv = 3.0 + (value - 3.0) * (intensity or 1.0)
            levels.append(max(1.0, min(5.0, lv)))
        i = end
    if not desc and not levels:
        return None
    s_desc = 3.0 + sum(desc) / len(desc) if desc else None
    s_level = sum(levels) / len(levels) if levels else None
    if s_desc is None:
        score = s_level
    elif s_level is None:
        score = s_desc
    else:
        score = (2.0 * s_level + s_desc) / 3.0
    return max(1.0, min(5.0, score))


class LexiconReader:
    """Reader wrapper around :func:`lexicon_score` (stateless, deterministic)."""

    def __call__(self, texts: list[str]) -> list[float | None]:
        return [lexicon_score(t) for t in texts]


@register_reader("lexicon")
def _lexicon_reader() -> Reader:
    return LexiconReader()
