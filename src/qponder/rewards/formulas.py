"""The per-sample reward formulas: plain floats in, floats out. Nothing here knows about TRL, completions or
configs, so every value can be checked by hand; ``functions`` applies them to parsed completions."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from qponder.errors import QponderError


def linear_accuracy(score: float | None, mos: float, tau: float = 1.0) -> float:
    """``max(0, 1 - |score - mos| / tau)``; 0 for a missing score."""
    if score is None:
        return 0.0
    return max(0.0, 1.0 - abs(score - mos) / tau)


def threshold_accuracy(score: float | None, mos: float, tau: float = 0.35) -> float:
    """Q-Insight's binary reward: 1 if ``|score - mos| < tau`` else 0; 0 for a missing score."""
    if score is None:
        return 0.0
    return 1.0 if abs(score - mos) < tau else 0.0


def gaussian_accuracy(score: float | None, mos: float, sigma: float = 0.5) -> float:
    """``exp(-(score - mos)^2 / (2 sigma^2))``; 0 for a missing score."""
    if score is None:
        return 0.0
    d = score - mos
    return math.exp(-d * d / (2.0 * sigma * sigma))


def consistency_score(implied: float | None, score: float | None, tau: float = 1.0, margin: float = 0.0) -> float:
    """``max(0, 1 - max(0, |implied - score| - margin) / tau)``; 0 when either is missing. With a ``margin`` every
    answer within it of the reasoning's score is fully consistent (e.g. 0.5: inside the level the reasoning names),
    so the term stops pulling answers onto the reader's few values and leaves their placement to accuracy."""
    if implied is None or score is None:
        return 0.0
    return max(0.0, 1.0 - max(0.0, abs(implied - score) - margin) / tau)


RANK_EPS = 1e-8


def rank_fidelity(scores: Sequence[float | None], mos: Sequence[float], groups: Sequence[Any],
                  eps: float = RANK_EPS) -> list[float]:
    """VisualQuality-R1's in-batch rank reward, one value per sample.

    Samples are grouped into images by ``groups`` (``image_id``). For image j, mu_j and sigma_j^2 are the mean and
    population variance (ddof 0) of its *parsed* scores only (unparsed samples are left out rather than replaced by
    a random score as in the reference code); an image with no parsed score at all cannot be compared against and
    is skipped as a partner. For sample k of image i with score s and every other comparable image j:
    ``p = Phi((s - mu_j) / sqrt(sigma_i^2 + sigma_j^2 + eps))``, ``g = 1, 0, 0.5`` for MOS_i >, <, = MOS_j,
    ``f = sqrt(p g + eps) + sqrt((1 - p)(1 - g) + eps)``; the reward is the mean of f over j. A sample without a
    score gets 0, and so does every sample when the batch holds fewer than two comparable images (no order to
    learn from; a constant reward within a group adds no advantage anyway). Under TRL each process scores only its
    own slice of the generation batch (one image's group may even be split across processes), so the statistics
    come from the samples this call sees: a per-device batch should hold several images' whole groups.
    """
    import numpy as np

    n = len(scores)
    if len(mos) != n or len(groups) != n:
        raise ValueError(f"rank_fidelity: {n} scores but {len(mos)} MOS values and {len(groups)} image ids")
    index: dict[Any, int] = {}
    member: list[int] = []
    for gid in groups:
        key = gid if getattr(gid, "__hash__", None) is not None else repr(gid)  # lists etc. by their repr
        member.append(index.setdefault(key, len(index)))
    n_img = len(index)
    img_mos: list[float | None] = [None] * n_img
    parsed: list[list[float]] = [[] for _ in range(n_img)]
    for i in range(n):
        g = member[i]
        m = float(mos[i])
        if img_mos[g] is None:
            img_mos[g] = m
        elif not abs(img_mos[g] - m) <= 1e-9:  # also catches NaN
            raise QponderError(f"image {groups[i]!r} has two different MOS values in one batch "
                               f"({img_mos[g]} and {m}); image_id must identify one image")
        if scores[i] is not None:
            parsed[g].append(float(scores[i]))
    comparable = [g for g in range(n_img) if parsed[g]]
    out = [0.0] * n
    if len(comparable) < 2:
        return out
    from scipy.special import ndtr

    pos = {g: c for c, g in enumerate(comparable)}
    mu = np.array([np.mean(parsed[g]) for g in comparable])
    var = np.array([np.var(parsed[g]) for g in comparable])
    gm = np.array([img_mos[g] for g in comparable])
    rows = [i for i in range(n) if scores[i] is not None]
    chunk = 4096  # bounds memory at chunk x images
    for start in range(0, len(rows), chunk):
        idx = rows[start:start + chunk]
        own = np.array([pos[member[i]] for i in idx])
        s = np.array([float(scores[i]) for i in idx])
        z = (s[:, None] - mu[None, :]) / np.sqrt(var[own][:, None] + var[None, :] + eps)
        p = ndtr(z)
        mi = gm[own][:, None]
        g = np.where(mi > gm[None, :], 1.0, np.where(mi < gm[None, :], 0.0, 0.5))
        f = np.sqrt(p * g + eps) + np.sqrt((1.0 - p) * (1.0 - g) + eps)
        mask = np.ones_like(f, dtype=bool)
        mask[np.arange(len(idx)), own] = False  # j != i
        vals = (f * mask).sum(axis=1) / (len(comparable) - 1)
        for i, v in zip(idx, vals.tolist()):
            out[i] = v
    return out
