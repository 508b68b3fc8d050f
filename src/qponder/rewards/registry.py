"""Rewards by name: ``register_reward`` / ``build``, and the config's ``[{name, weight, params}]`` list turned into
TRL's ``reward_funcs`` and ``reward_weights``. The built-in rewards register themselves in ``functions``."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from qponder.errors import QponderError
from qponder.rewards.base import RewardFunction, _check_params


_REWARDS: dict[str, Callable[..., RewardFunction]] = {}


def register_reward(name: str) -> Callable:
    """Decorator: register a factory ``(**params) -> RewardFunction`` under ``name``."""

    def deco(factory: Callable[..., RewardFunction]) -> Callable[..., RewardFunction]:
        _REWARDS[name] = factory
        return factory

    return deco


def available_rewards() -> list[str]:
    return sorted(_REWARDS)


def build(name: str, **params: Any) -> RewardFunction:
    """The reward registered as ``name``, configured with ``params``."""
    try:
        factory = _REWARDS[name]
    except KeyError:
        raise QponderError(f"unknown reward {name!r}; available: {', '.join(available_rewards())}") from None
    _check_params("reward", name, factory, params)
    return factory(**params)


@dataclass(frozen=True)
class RewardSpec:
    """One entry of the config's reward list."""

    name: str
    weight: float = 1.0
    params: dict = field(default_factory=dict)


def _as_spec(item: Any, i: int) -> RewardSpec:
    if isinstance(item, RewardSpec):
        return item
    if isinstance(item, Mapping):
        unknown = [k for k in item if k not in ("name", "weight", "params")]
        if unknown:
            raise QponderError(f"rewards[{i}]: unknown key {unknown[0]!r}; valid: name, weight, params")
        data = dict(item)
    elif hasattr(item, "name"):  # a config dataclass with the same fields
        data = {k: getattr(item, k) for k in ("name", "weight", "params") if hasattr(item, k)}
    else:
        raise QponderError(f"rewards[{i}]: expected a mapping with name/weight/params, got {type(item).__name__}")
    if not isinstance(data.get("name"), str) or not data["name"]:
        raise QponderError(f"rewards[{i}]: missing reward name")
    weight = data.get("weight", 1.0)
    try:
        if isinstance(weight, bool):
            raise ValueError
        weight = float(weight)
    except (TypeError, ValueError):
        raise QponderError(f"rewards[{i}] ({data['name']}): weight must be a number, got {weight!r}") from None
    if not math.isfinite(weight):
        raise QponderError(f"rewards[{i}] ({data['name']}): weight must be finite, got {weight!r}")
    params = data.get("params") or {}
    if not isinstance(params, Mapping):
        raise QponderError(f"rewards[{i}] ({data['name']}): params must be a mapping, got {type(params).__name__}")
    return RewardSpec(data["name"], weight, dict(params))


def build_reward_funcs(specs: Sequence[Any]) -> tuple[list[RewardFunction], list[float]]:
    """``(reward_funcs, reward_weights)`` for GRPOTrainer / GRPOConfig from the config's reward list.

    The same reward configured twice gets a ``#2``, ``#3`` ... suffix in its logged name so the curves stay apart.
    """
    if not specs:
        raise QponderError("no rewards configured; give at least one {name, weight, params} entry")
    funcs: list[RewardFunction] = []
    weights: list[float] = []
    seen: dict[str, int] = {}
    for i, item in enumerate(specs):
        spec = _as_spec(item, i)
        fn = build(spec.name, **spec.params)
        count = seen.get(fn.__name__, 0) + 1
        seen[fn.__name__] = count
        if count > 1:
            fn.__name__ = f"{fn.__name__}#{count}"
        funcs.append(fn)
        weights.append(spec.weight)
    return funcs, weights
