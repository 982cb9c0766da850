"""The report: reads the runs of ``jntk reproduce`` back and writes, per figure, the paper's
claim next to our number and a verdict (``jntk report``), into ``docs/reproduction.md``.

It never re-implements an analysis: :mod:`.evaluate` reads the stores the jobs wrote,
:mod:`.verdicts` holds the rules (each claim in a paper config's ``claim:`` block is a rule on
the stored numbers, so a different number flips the verdict), :mod:`.markdown` writes the file
and copies the figures, keeping the hand-written part above :data:`GENERATED_MARKER`.
"""

from .evaluate import collect, evaluate
from .markdown import GENERATED_MARKER, write_report
from .verdicts import (ExperimentReport, Row, assumption8_rows, drift_rows, eigenfeatures_rows,
                       merge_assumption8_rows)

__all__ = ["GENERATED_MARKER", "ExperimentReport", "Row", "assumption8_rows", "collect",
           "drift_rows", "eigenfeatures_rows", "evaluate", "merge_assumption8_rows",
           "write_report"]
