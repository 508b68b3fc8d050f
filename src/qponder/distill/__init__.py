"""Cold-start distillation (Q-Ponder stage 0): teacher reasoning filtered against the MOS -> SFT data.

``run_distill(DistillSettings)`` is the library entry point behind ``qponder distill``. Submodules: ``config``
(settings), ``backends`` (teachers: OpenAI-compatible server, local model, registry for plugins' backends),
``filtering`` (keep/reject rules, statistics), ``pipeline`` (resumable run, records, dataset card).
"""

from qponder.distill.config import DistillSettings, FilterSettings, TeacherSettings
from qponder.distill.pipeline import (
    DECISIONS_FILE,
    SFT_FIELDS,
    SFT_FILE,
    DistillResult,
    run_distill,
    select_samples,
)

__all__ = [
    "DECISIONS_FILE", "SFT_FIELDS", "SFT_FILE", "DistillResult", "DistillSettings", "FilterSettings",
    "TeacherSettings", "run_distill", "select_samples",
]
