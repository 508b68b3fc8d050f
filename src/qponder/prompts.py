"""Every prompt qponder sends to a model, in one place, versioned.

The student prompt is used verbatim by SFT data, GRPO, `qponder score`, `qponder eval` and the server, so all stages
agree byte for byte (a prompt that drifts between SFT and evaluation silently costs accuracy). Teacher prompts are
selectable by name and carry a version in the name; `prompt_fingerprint` goes into dataset cards so a distilled
dataset records exactly which text produced it.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

from qponder.errors import QponderError

#: Output contract for every stage: reasoning in <think>, a 1-5 score (up to 2 decimals) in <answer>.
OUTPUT_FORMAT = (
    "First think about the image's quality inside <think> </think> tags, then give the final score, a number "
    "between 1 and 5 with up to two decimals, inside <answer> </answer> tags."
)

STUDENT_PROMPT = (
    "You are an expert in image quality assessment. Examine the image's sharpness, noise, compression artefacts, "
    "exposure, contrast and colour, and how they affect its perceived quality. Rate the quality on a scale from 1 "
    "(bad) to 5 (excellent). " + OUTPUT_FORMAT
)

#: Q-Align / DeQA-style level words, best first, with their scores. The leading space matters on Qwen tokenizers:
#: " good" is one token where "good" may not be (DeQA-Score issue #24).
LEVELS: tuple[tuple[str, float], ...] = (
    (" excellent", 5.0),
    (" good", 4.0),
    (" fair", 3.0),
    (" poor", 2.0),
    (" bad", 1.0),
)

#: Level read-out (score --readout levels): the user asks for one word and the assistant turn is pre-filled with
#: LEVEL_ANSWER_PREFIX, so the next token is one of LEVELS (Q-Align / DeQA-Score style, one forward pass).
LEVEL_QUESTION = "Rate the quality of the image in one word."
LEVEL_ANSWER_PREFIX = "The quality of the image is"
LEVEL_READOUT_PROMPT = LEVEL_QUESTION + " " + LEVEL_ANSWER_PREFIX

#: Text-only read-out used by the `levels` consistency reader: the reasoning alone, no image.
REASONING_READOUT_PROMPT = (
    "Here is an assessment of an image's quality:\n{reasoning}\n"
    "Judging only from this assessment, the quality of the image is"
)

#: Judge (OpenAI-compatible) read-out for the `judge` consistency reader: the score a reasoning alone implies.
REASONING_JUDGE_SYSTEM = (
    "You read written assessments of image quality and say which score they imply on the 5-point scale: "
    "5 excellent, 4 good, 3 fair, 2 poor, 1 bad. Reply with the number only."
)
REASONING_JUDGE_PROMPT = (
    "Here is an assessment of an image's quality:\n{reasoning}\n\n"
    "Judging only from this assessment, what score from 1 to 5 does it imply? Reply with the number only."
)

#: Description-quality judge (`qponder eval --judge`): Q-Bench A2-style ratings of a reasoning against its image.
DESCRIPTION_JUDGE_SYSTEM = (
    "You are an expert in image quality assessment reviewing a description of an image's visual quality "
    "(sharpness, noise, artefacts, exposure, colour, content)."
)
DESCRIPTION_JUDGE_PROMPT = (
    "Here is a description of this image's quality, written by a model:\n\n\"\"\"{reasoning}\"\"\"\n\n"
    "Rate it on three criteria, each 0, 1 or 2:\n"
    "- completeness: does it cover the quality factors that matter in this image? (0 misses most, 2 covers all)\n"
    "- precision: are its statements about the image correct? (0 mostly wrong, 1 partly wrong, 2 correct)\n"
    "- relevance: does it stay on visual quality rather than unrelated content? (0 off-topic, 2 fully relevant)\n"
    'Reply with JSON only: {{"completeness": c, "precision": p, "relevance": r}}'
)


@dataclass(frozen=True)
class TeacherPrompt:
    """A versioned teacher prompt. `user` may contain ``{mos}`` (MOS-informed variants)."""

    name: str
    system: str
    user: str
    mos_informed: bool = False

    def render_user(self, mos: float | None = None) -> str:
        if self.mos_informed:
            if mos is None:
                raise QponderError(f"teacher prompt {self.name!r} is MOS-informed and needs the sample's MOS")
            return self.user.format(mos=f"{mos:.2f}")
        return self.user


_EXPERT_SYSTEM = (
    "You are a senior image quality assessment (IQA) expert who has rated thousands of photographs for "
    "subjective quality studies. You judge perceived technical quality the way a panel of human raters does, on "
    "the 5-point absolute category rating scale: 5 excellent, 4 good, 3 fair, 2 poor, 1 bad."
)

_EXPERT_STEPS = (
    "Assess the image step by step:\n"
    "1. Sharpness and blur: is detail crisp, or is there defocus, motion or lens blur? Where?\n"
    "2. Noise and grain: luminance or colour noise, and how visible it is in flat regions.\n"
    "3. Compression and processing artefacts: blocking, ringing, banding, pixelation, over-sharpening halos.\n"
    "4. Exposure and contrast: clipped highlights or crushed shadows, too dark or too bright, flat or harsh "
    "contrast.\n"
    "5. Colour: saturation, colour casts, unnatural or shifted colours.\n"
    "6. Content and composition: whether the subject is clear and how much the defects above matter for it.\n"
    "Then weigh these factors the way human raters would (severe defects dominate; minor ones matter little) "
    "and decide the overall score. Your reasoning must support the score you give."
)

TEACHER_PROMPTS: dict[str, TeacherPrompt] = {
    p.name: p
    for p in (
        TeacherPrompt(
            name="expert-blind-v1",
            system=_EXPERT_SYSTEM,
            user=_EXPERT_STEPS + "\n\n" + OUTPUT_FORMAT,
        ),
        TeacherPrompt(
            name="expert-mos-v1",
            system=_EXPERT_SYSTEM,
            user=(
                _EXPERT_STEPS
                + "\n\nHuman raters gave this image a mean opinion score of {mos} on the 1-5 scale. Use it only to "
                "calibrate your judgement: explain, from what is visible in the image, why its quality is what it "
                "is. Do not mention the human score in your reasoning; your answer must be your own image-grounded "
                "score.\n\n" + OUTPUT_FORMAT
            ),
            mos_informed=True,
        ),
    )
}

DEFAULT_TEACHER_PROMPT = "expert-blind-v1"


def get_teacher_prompt(name: str) -> TeacherPrompt:
    try:
        return TEACHER_PROMPTS[name]
    except KeyError:
        raise QponderError(
            f"unknown teacher prompt {name!r}; available: {', '.join(sorted(TEACHER_PROMPTS))}"
        ) from None


def student_messages(image: Any = None, prompt: str = STUDENT_PROMPT) -> list[dict]:
    """The student's conversation: one user turn with the image block first, then the prompt text.

    ``image`` may be a PIL image (inference), a path/URL string, or None (TRL fills the block from the dataset's
    ``images`` column).
    """
    block: dict[str, Any] = {"type": "image"}
    if image is not None:
        block["image"] = image
    return [{"role": "user", "content": [block, {"type": "text", "text": prompt}]}]


def think_block(reasoning: str) -> str:
    """The reasoning part of the output contract, as it stands before the answer (and before a read-out's prefix)."""
    return f"<think>{reasoning}</think>\n"


def format_target(reasoning: str, score: float) -> str:
    """The assistant text the student is trained to produce (the output contract, written once)."""
    return f"{think_block(reasoning.strip())}<answer>{score:.2f}</answer>"


def prompt_fingerprint(*texts: str) -> str:
    """Short, stable id of prompt text(s) for dataset cards and result files."""
    h = hashlib.sha256("\x1e".join(texts).encode("utf-8")).hexdigest()
    return h[:12]
