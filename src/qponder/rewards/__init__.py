"""GRPO reward functions for reasoning-based IQA, registered by name and weighted from the config.

Every reward is a callable with TRL's reward signature: ``f(prompts, completions, **columns) -> list[float]``.
Completions may be strings or chat-message lists (``[{"role": "assistant", "content": "..."}]``). The
ground truth comes from dataset columns, never from prompt text (the prompt is the same for every image): ``mos``
(the MOS normalised to 1-5) and, for the in-batch rank reward, ``image_id``. Every other column, and TRL's
``completion_ids`` / ``trainer_state`` / ``log_extra`` / ``log_metric`` keywords, are accepted and ignored unless
used. ``build(name, **params)`` returns one reward (its ``__name__`` is what TRL logs under ``rewards/<name>/``);
``build_reward_funcs(specs)`` turns the config's ``[{name, weight, params}]`` list into the ``reward_funcs`` for
``GRPOTrainer`` and the ``reward_weights`` for ``GRPOConfig``. Completions are parsed once per call with
:func:`qponder.parsing.parse_completion`, so every reward agrees on what counts as a score.

Rewards (``r`` per completion; a completion with no readable score gets 0 from every score-based reward):

* ``format`` — 1 if the completion follows the output contract exactly (``ParsedCompletion.format_ok``), else 0.
* ``accuracy`` — ``max(0, 1 - |s - MOS| / tau)``, tau = 1.0 (linear, dense signal).
* ``accuracy_threshold`` — Q-Insight's ``1 if |s - MOS| < tau else 0``, tau = 0.35.
* ``accuracy_gaussian`` — ``exp(-(s - MOS)^2 / (2 sigma^2))``, sigma = 0.5: full credit at 0, half credit at
  |s - MOS| ~ 0.59, 0.14 at one full point — between the threshold (sparse) and the linear (slow decay) variants.
* ``consistency`` — does the reasoning support the answer? See below. Counted only for well-formed completions
  (``require_format``, default true), like the consistency term of ``qponder_reward``.
* ``rank_fidelity`` — VisualQuality-R1's in-batch Thurstone fidelity (see :func:`rank_fidelity`).
* ``qponder_reward`` — ``w_f * format + w_a * accuracy + w_c * consistency * format_ok``: the paper's
  "accuracy + reasoning consistency" objective plus a format term, consistency counted only for well-formed
  completions so a broken output cannot collect it. Weights default to 1 each: the paper's weights are UNKNOWN.

**Reasoning consistency.** Q-Ponder's GRPO reward is "a novel reward [...] to jointly optimize scoring accuracy and
reasoning consistency" (the abstract of Cai et al., "Q-Ponder: A Unified Training Pipeline for Reasoning-based
Visual Quality Assessment", arXiv:2506.05384, https://arxiv.org/abs/2506.05384); its exact formula is UNKNOWN (the
paper body could not be read, no code is released). Our reading: the reasoning alone should imply the score the
model gives. A *reader* sees only the reasoning (no image, no answer) and returns the score ``s_r`` it implies; the
reward is ``max(0, 1 - max(0, |s_r - s| - margin) / tau_c)`` with tau_c = 1.0 and margin 0 by default. It rewards
agreement between the two halves of the output, not correctness (accuracy does that), which is what stops the policy
from drifting into a fixed boilerplate rationale followed by an unrelated number. Without a margin its peak sits
exactly on ``s_r``, and a reader that knows only a few values (the lexicon on templated reasoning) pulls the answers
onto them; ``margin: 0.5`` (``consistency_margin`` in ``qponder_reward``) pays in full anywhere inside the level the
reasoning names and leaves the answer's place there to accuracy. Readers, by name:

* ``lexicon`` (default; cheap, deterministic, CPU) — :func:`lexicon_score`, documented there. Numbers written in the
  reasoning are deliberately ignored: otherwise copying the answer into the reasoning would max out the reward.
* ``levels`` — a frozen model (by default the SFT checkpoint: pass its path as the ``model`` parameter) reads
  ``prompts.REASONING_READOUT_PROMPT`` text-only and ``s_r`` is the probability-weighted mean of the five
  ``prompts.LEVELS`` words at the next token (Q-Align style, renormalised over the five).
* ``judge`` — an OpenAI-compatible chat-completions endpoint asked for the score the reasoning implies.

To swap readers: ``params: {reader: levels, model: runs/sft/final}`` in the config (reader parameters flat beside
the reward's own, or nested under ``reader_params``), or in code pass any callable ``list[str] -> list[float | None]``
as ``reader=``; new named readers are added with ``@register_reader("name")`` on a factory. A reader returning
None for a sample gives that sample 0, counted in ``rewards/<name>/reader_fail_frac``.

**A failing reader is not trained on silently.** A judge that is down for an hour would otherwise give an hour of
zero consistency. ``consistency`` and ``qponder_reward`` watch the reader's failure share per call (one GRPO step's
batch on this process; any reader, named or a callable, through :class:`ReaderFailureWatch`): above
``reader_fail_warn`` (default 0.2) the call logs a warning naming the reader and the share; above
``reader_fail_stop`` (default 0.5) for ``reader_fail_stop_calls`` calls in a row (default 20) the run stops with a
QponderError that names the reader, the share, the bound and the count (a re-run resumes from the last
checkpoint). A call at or below the bound resets the count; a call with nothing to read leaves it as it is. Set them
in the reward's ``params`` (``{reader: judge, base_url: ..., reader_fail_stop_calls: 50}``); shares are 0-1, and
``reader_fail_stop_calls: 0`` never stops. ``qponder_reward`` with ``w_consistency: 0`` only logs the term and does
not watch it.

**Logging.** TRL logs ``rewards/<name>/mean`` and ``/std`` for each reward function. When TRL passes
``log_metric(name, value)`` (TRL >= 1.16) each reward also logs ``rewards/<name>/zero_frac`` (share of exact zeros:
a stuck format reward shows at step 10, not after 3 days); ``consistency`` adds ``reader_fail_frac`` and
``eligible_frac``; ``qponder_reward`` adds ``mean``, ``std`` and ``zero_frac`` for each sub-component under
``rewards/qponder_reward/<component>/``. Without ``log_metric`` nothing is logged.

**Layout.** ``formulas`` holds the per-sample math (floats in, floats out); ``base`` the adapter from TRL's call
convention (completion text, dataset columns, ``log_metric``) and the ``RewardFunction`` base; ``registry`` the
names (``register_reward``, ``build``, ``build_reward_funcs``); ``functions`` the rewards above, registered on
import; ``readers`` the reasoning-to-score readers, one module each. Every public name is re-exported here, and
importing this package registers the built-in rewards and readers without importing torch or transformers.
"""

from __future__ import annotations

from qponder.rewards.base import RewardFunction, completion_text, reward_stats
from qponder.rewards.formulas import (
    RANK_EPS,
    consistency_score,
    gaussian_accuracy,
    linear_accuracy,
    rank_fidelity,
    threshold_accuracy,
)
from qponder.rewards.functions import (
    AccuracyReward,
    ConsistencyReward,
    FormatReward,
    QponderReward,
    RankFidelityReward,
    ReaderFailureWatch,
)
from qponder.rewards.readers import Reader, available_readers, build_reader, register_reader
from qponder.rewards.readers.judge import JudgeReader, parse_judge_reply
from qponder.rewards.readers.levels import _MODEL_CACHE  # noqa: F401  (tests check one load per model)
from qponder.rewards.readers.levels import LevelsReader
from qponder.rewards.readers.lexicon import LexiconReader, lexicon_score
from qponder.rewards.registry import RewardSpec, available_rewards, build, build_reward_funcs, register_reward


__all__ = [
    "AccuracyReward", "ConsistencyReward", "FormatReward", "JudgeReader", "LevelsReader", "LexiconReader",
    "QponderReward", "RANK_EPS", "RankFidelityReward", "Reader", "ReaderFailureWatch", "RewardFunction", "RewardSpec",
    "available_readers", "available_rewards", "build", "build_reader", "build_reward_funcs", "completion_text",
    "consistency_score", "gaussian_accuracy", "lexicon_score", "linear_accuracy", "parse_judge_reply",
    "rank_fidelity", "register_reader", "register_reward", "reward_stats", "threshold_accuracy",
]
