"""The ``rule`` teacher backend: the offline rule teacher (``qponder.demo.rule_teacher``) behind the same interface as
a teacher VLM server, so ``qponder distill`` runs without a 72B model. Registered by ``qponder.demo.register``."""

from __future__ import annotations

import asyncio
from typing import Any, Sequence

from qponder.distill.backends import TeacherBackend, TeacherReply, TeacherRequest
from qponder.distill.config import TeacherSettings
from qponder.errors import QponderError

RULE_TEACHER_VERSION = "rule-v1"


class RuleBackend(TeacherBackend):
    """Deterministic classical-metrics "expert" (see qponder.demo.rule_teacher). Not a real teacher."""

    deterministic = True
    card_note = ("**Teacher: the built-in rule-based stand-in** (`qponder.demo.rule_teacher`), not a "
                 "vision-language model. Its rationales come from classical image statistics; use this data for "
                 "demos and tests, not to train a real model.")

    def __init__(self, settings: TeacherSettings | None = None):
        from qponder.demo.rule_teacher import CALIBRATION
        from qponder.io import json_dumps
        from qponder.prompts import prompt_fingerprint

        self.calibration_id = prompt_fingerprint(json_dumps(CALIBRATION, indent=None))
        self.wording = settings.rule_wording if settings is not None else "varied"
        self.teacher_id = f"{RULE_TEACHER_VERSION}:{self.calibration_id}" + (
            "" if self.wording == "varied" else f":{self.wording}")
        self.max_batch = 32
        self.concurrency = 1

    def prepare(self, sample: Any) -> Any:
        from qponder.data import load_image

        img = load_image(sample.image)
        if min(img.size) < 8:
            raise QponderError(f"{sample.image}: image of {img.size[0]}x{img.size[1]} px is too small to assess")
        return img

    def _generate_sync(self, requests: Sequence[TeacherRequest]) -> list[TeacherReply | BaseException]:
        from qponder.demo.rule_teacher import assess

        out: list[TeacherReply | BaseException] = []
        for r in requests:
            try:
                # The rule teacher ignores the prompt text; `seed` (the attempt number) only changes the wording.
                base = r.seed or 0
                out.append(TeacherReply(texts=[assess(r.payload, r.image_id, sample=base + j,
                                                      wording=self.wording).text
                                               for j in range(r.n)], requests=1))
            except ValueError as e:  # e.g. an image too small to measure
                out.append(QponderError(f"{r.image_id}: {e}"))
        return out

    async def generate(self, requests: Sequence[TeacherRequest]) -> list[TeacherReply | BaseException]:
        return await asyncio.to_thread(self._generate_sync, requests)

    def describe(self) -> dict[str, Any]:
        return {"id": self.teacher_id, "backend": "rule",
                "note": "deterministic rule-based stand-in for a teacher VLM (qponder.demo.rule_teacher); "
                        "calibrated on the demo train split only"}
