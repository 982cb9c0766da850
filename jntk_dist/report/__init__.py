"""The report: reads the runs of ``jntk reproduce`` back and writes, per figure, the paper's
claim next to our number and a verdict (``jntk report``), into ``<runs>/reproduction.md`` (docs/reproduction.md when ``--out`` names it).

It never re-implements an analysis: :mod:`.evaluate` reads the stores the jobs wrote (and redraws
their figures), the rules live in :mod:`.verdicts` (shared types, Assumption 8: Fig. 6, B7, B8),
:mod:`.drift_verdicts` (Figs. 1–3) and :mod:`.feature_verdicts` (Figs. 4/5, B9–B13) — each row
names the rule of its config's ``claim.rules`` and quotes the paper's sentence it checks, so a
different number flips the verdict — and :mod:`.markdown` writes the file and copies the figures,
keeping the hand-written part above :data:`GENERATED_MARKER`.
"""

from .drift_verdicts import DRIFT_RULES, DriftNumbers, drift_rows
from .evaluate import collect, evaluate
from .feature_verdicts import FEATURE_RULES, eigenfeatures_rows
from .markdown import GENERATED_MARKER, write_report
from .verdicts import (ASSUMPTION8_RULES, ExperimentReport, Row, assumption8_rows,
                       merge_assumption8_rows, positivity_rule)

__all__ = ["ASSUMPTION8_RULES", "DRIFT_RULES", "FEATURE_RULES", "GENERATED_MARKER",
           "DriftNumbers", "ExperimentReport", "Row", "assumption8_rows", "collect", "drift_rows",
           "eigenfeatures_rows", "evaluate", "merge_assumption8_rows", "positivity_rule",
           "write_report"]
