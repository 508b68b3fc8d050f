"""Cold-start distillation (Q-Ponder stage 0): teacher reasoning filtered against the MOS -> SFT data.

``run_distill(DistillSettings)`` is the library entry point behind ``qponder distill``; ``distill_demo_records``
distils the built-in demo dataset with the offline rule teacher (used by ``qponder demo`` and benchmarks).
Submodules: ``config`` (settings), ``backends`` (teachers), ``rule_teacher`` (the offline stand-in), ``filtering``
(keep/reject rules, statistics), ``pipeline`` (resumable run, records, dataset card).
"""

from qponder.distill.config import DistillSettings, FilterSettings, TeacherSettings
from qponder.distill.pipeline import (
    DECISIONS_FILE,
    SFT_FIELDS,
    SFT_FILE,
    DistillResult,
    distill_demo_records,
    run_distill,
    select_samples,
)

__all__ = [
    "DECISIONS_FILE", "SFT_FIELDS", "SFT_FILE", "DistillResult", "DistillSettings", "FilterSettings",
    "TeacherSettings", "distill_demo_records", "run_distill", "select_samples",
]
