"""The verdict rules: from our numbers and a paper config's ``claim:`` to table rows.

A paper config's ``claim.rules`` lists the claims checked, each with the paper's sentence and
where it stands (``quote``, ``where``) — or ``ours: true`` and our ``text`` for a claim the paper
does not make — and the name of the ``rule`` that tests it, with the rule's parameters. Every row
of the report names its rule; the rules are pure functions of the stored numbers. This module holds
the shared types and the Assumption 8 rules (Fig. 6, B7, B8); :mod:`.drift_verdicts` and
:mod:`.feature_verdicts` hold those of Figs. 1–3 and Figs. 4/5, B9–B13.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal, Sequence

from ..analysis import RELATIVE, PositivityRule
from ..workflows.reproduce import PaperConfig

__all__ = ["Verdict", "COUNT_KEYS", "Row", "ExperimentReport", "ClaimSpec", "claim_specs",
           "assumption8_rows",
           "assumption8_curves",
           "assumption8_depth_table", "merge_assumption8_rows", "pd_onset", "depth_ranges",
           "positivity_rule", "calibrated_rule", "ASSUMPTION8_RULES", "INTERLACING"]

Verdict = Literal["agree", "disagree", "not tested", "consistent", "inconsistent"]
"""``agree`` / ``disagree``: a counted rule (one that can fail) against the paper's words;
``not tested``: no verdict (too few points, not run at the paper's size); ``consistent`` /
``inconsistent``: a consistency check (self-referential, calibrated, or implied by an identity),
reported but never counted as agreement with the paper."""

COUNT_KEYS = ("agree", "disagree", "not tested", "consistency check")


@dataclass
class Row:
    """One line of a figure's table: which curve or setting, the paper's claim (quoted, with
    where it stands) or ours (marked), the rule that tests it, our number, the verdict, why."""

    claim: str
    ours: str
    verdict: Verdict
    why: str = ""
    rule: str = ""
    subject: str = ""

    @property
    def counted(self) -> bool:
        """Whether the row counts as agreement or disagreement with the paper."""
        return self.verdict in ("agree", "disagree")

    @property
    def tally(self) -> str:
        """The column of the report's header this row is counted in."""
        return ("consistency check" if self.verdict in ("consistent", "inconsistent")
                else self.verdict)


@dataclass
class ExperimentReport:
    """What the report says about one experiment."""

    exp: PaperConfig
    record: dict[str, Any] | None
    rows: list[Row] = field(default_factory=list)
    figures: list[Path] = field(default_factory=list)
    size: str = ""
    problem: str = ""  # why there are no rows (not run, failed, unreadable store)
    merged: list[dict[str, Any]] = field(default_factory=list)  # records of --merge runs
    tables: list[str] = field(default_factory=list)  # further Markdown (per-depth λ_min, …)

    @property
    def records(self) -> list[dict[str, Any]]:
        """The run records behind this report: the main run, then the merged ones."""
        return ([self.record] if self.record else []) + self.merged

    def counts(self) -> dict[str, int]:
        """How many rows agree, disagree, are not tested, or are consistency checks (``n/a``:
        the rows without a counted verdict, for readers of the older three columns)."""
        out = dict.fromkeys(COUNT_KEYS, 0)
        for r in self.rows:
            out[r.tally] += 1
        out["n/a"] = out["not tested"] + out["consistency check"]
        return out


@dataclass(frozen=True)
class ClaimSpec:
    """One entry of ``claim.rules``: the rule's name and parameters, and whose claim it is."""

    rule: str
    params: dict[str, Any]
    quote: str = ""
    where: str = ""
    ours: bool = False
    text: str = ""

    @property
    def claim(self) -> str:
        """The claim as the report prints it: the paper's sentence in quotes and where it
        stands, or ours marked as ours."""
        if self.ours:
            return f"(ours, not the paper's) {self.text}"
        return f"“{self.quote}” ({self.where})"


def claim_specs(claim: dict[str, Any], known: Sequence[str]) -> list[ClaimSpec]:
    """The ``claim.rules`` of a paper config; a rule not in ``known``, or a paper claim without its
    quote and place, is a ValueError naming it."""
    out = []
    for i, entry in enumerate(claim.get("rules", [])):
        entry = dict(entry)
        name = entry.pop("rule", None)
        if name not in known:
            raise ValueError(f"claim.rules[{i}]: unknown rule {name!r}; this job's rules: "
                             f"{', '.join(known)}")
        meta = {k: entry.pop(k) for k in ("quote", "where", "ours", "text") if k in entry}
        spec = ClaimSpec(name, entry, **meta)
        if not spec.ours and not (spec.quote and spec.where):
            raise ValueError(f"claim.rules[{i}] ({name}): the paper's sentence (quote) and where "
                             "it stands (where) are required, or ours: true with text")
        if spec.ours and not spec.text:
            raise ValueError(f"claim.rules[{i}] ({name}): a claim of ours needs its text")
        out.append(spec)
    return out


def fmt(x: float) -> str:
    """A number in three significant digits ('nan' when not finite)."""
    return "nan" if not math.isfinite(x) else f"{x:.3g}"


# ---- Assumption 8 (Fig. 6, B7, B8) ---------------------------------------------------------


def positivity_rule(config: dict[str, Any]) -> PositivityRule:
    """The adopted positivity rule of an assumption8 job config (the relative one by default)."""
    spec = config.get("positivity")
    return RELATIVE if spec is None else PositivityRule.model_validate(spec)


def pd_onset(depths: Sequence[int], positive: Sequence[bool]) -> int | None:
    """Smallest computed depth from which every computed depth is positive (None: never)."""
    onset = None
    for d, p in sorted(zip(depths, positive), reverse=True):
        if not p:
            break
        onset = d
    return onset


@dataclass
class _Curve:
    """λ_min against depth of one (dataset, activation, kernel), with both verdicts."""

    depths: list[int]
    lam_min: list[float]
    residual: list[float]
    threshold: list[float]  # the adopted rule's
    tau_rel: list[float]
    pos: list[bool]  # adopted rule
    pos_rel: list[bool]
    n: list[int] = field(default_factory=list)
    lam_max: list[float] = field(default_factory=list)

    @property
    def onset(self) -> int | None:
        return pd_onset(self.depths, self.pos)

    @property
    def onset_rel(self) -> int | None:
        return pd_onset(self.depths, self.pos_rel)


def assumption8_curves(rows: Sequence[dict[str, Any]], rule: PositivityRule
            ) -> dict[tuple[str, str, str], _Curve]:
    """Rows of an assumption8 table grouped into curves, verdicts recomputed from λ_min, λ_max, n
    and the Ritz residual (so stores written under any rule are read the same way)."""
    groups: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault((str(r["dataset"]), str(r["activation"]), str(r["kernel"])), []).append(r)
    out = {}
    for key, rr in groups.items():
        rr = sorted(rr, key=lambda r: int(r["depth"]))
        lo = [float(r["lambda_min"]) for r in rr]
        res = [float(r.get("lambda_min_residual", 0.0)) for r in rr]
        n = [int(r["n"]) for r in rr]
        hi = [float(r["lambda_max"]) for r in rr]
        out[key] = _Curve([int(r["depth"]) for r in rr], lo, res,
                          [rule.threshold(a, b) for a, b in zip(n, hi)],
                          [RELATIVE.threshold(a, b) for a, b in zip(n, hi)],
                          [rule.positive(*v) for v in zip(lo, n, hi, res)],
                          [RELATIVE.positive(*v) for v in zip(lo, n, hi, res)], n, hi)
    return out


def _onset_text(c: _Curve, rule: PositivityRule) -> str:
    def one(onset: int | None) -> str:
        if onset is None:
            return "never positive"
        return f"L={onset}" + (" (the shallowest computed)" if onset == c.depths[0] else "")

    also = "" if rule.rule == "relative" else f", {one(c.onset_rel)} under relative"
    return f"onset {one(c.onset)} under {rule.rule}{also} (depths {depth_ranges(c.depths)})"


def _around(c: _Curve, depth: int | None) -> str:
    """λ_min against both thresholds at the onset and just below it."""
    idx = [i for i, d in enumerate(c.depths) if depth is not None and d in (depth - 1, depth)]
    idx = idx or [len(c.depths) - 1]
    return "; ".join(f"L={c.depths[i]}: λ_min {c.lam_min[i]:.2e}"
                     + (f" ± {c.residual[i]:.0e}" if c.residual[i] else "")
                     + f" vs threshold {c.threshold[i]:.1e}, τ_rel {c.tau_rel[i]:.1e}"
                     for i in idx)


def _onset_verdict(c: _Curve, target: Any) -> tuple[Verdict, str]:
    """Verdict of "positive from depth ``target``" (an int, ``first``: positive at every computed
    depth, or ``after_first``: not positive at the shallowest computed depth, positive from some
    deeper one on) under the adopted rule."""
    onset, depths = c.onset, c.depths
    if target == "first":
        ok = onset == depths[0]
        return ("agree" if ok else "disagree",
                "" if ok else f"not positive at L={depths[0]}" if onset is not None
                else "never positive")
    if target == "after_first":
        ok = onset is not None and onset > depths[0]
        return ("agree" if ok else "disagree", "" if ok else
                "never positive" if onset is None else f"already positive at L={depths[0]}")
    target = int(target)
    above = [p for d, p in zip(depths, c.pos) if d >= target]
    below = [p for d, p in zip(depths, c.pos) if d < target]
    if not above:
        return "not tested", f"depth {target} not computed (depths {depths})"
    if all(above) and (not below or not below[-1]):
        coarse = not (target in depths and (not below or target - 1 in depths))
        return "agree", f"consistent on the computed depths {depths} (coarse grid)" if coarse else ""
    if onset is None:
        return "disagree", "never positive"
    return "disagree", f"positive from L={onset}, not {target}"


def _rule_ntk_always_pd(spec: ClaimSpec, curves: dict[tuple[str, str, str], _Curve],
                        rule: PositivityRule) -> list[Row]:
    use = RELATIVE if spec.params.get("positivity", "adopted") == "relative" else rule
    out = []
    for (dataset, act, kind), c in curves.items():
        if kind != "ntk":
            continue
        pos = c.pos_rel if use is RELATIVE else c.pos
        bad = [d for d, p in zip(c.depths, pos) if not p]
        i = min(range(len(c.depths)), key=lambda k: c.lam_min[k])
        also = "" if rule.rule == "relative" else \
            f", {sum(c.pos_rel)}/{len(c.depths)} under relative"
        ours = (f"positive at {sum(c.pos)}/{len(c.depths)} depths under {rule.rule}{also}; "
                "smallest λ_min "
                f"{c.lam_min[i]:.2e} (L={c.depths[i]}; threshold {c.threshold[i]:.1e}, τ_rel "
                f"{c.tau_rel[i]:.1e})")
        out.append(Row(spec.claim, ours, "agree" if not bad else "disagree",
                       "" if not bad else f"not positive under {use.rule} at L={bad}",
                       f"ntk_always_pd: NTK λ_min positive under the {use.rule} rule at every "
                       "depth", f"{dataset}, {act}"))
    return out


INTERLACING = ("implied by Cauchy interlacing: the NTK Gram is the principal submatrix of the "
               "JNTK Gram on the value slots, so λ_min(JNTK) ≤ λ_min(NTK) for every input")


def _rule_jntk_below_ntk(spec: ClaimSpec, curves: dict[tuple[str, str, str], _Curve],
                         rule: PositivityRule) -> list[Row]:
    """"Much smaller": NTK λ_min / JNTK λ_min ≥ ``factor`` at every depth (the ratio per depth
    is reported). A factor ≤ 1 holds for every input by interlacing: then the row is a
    consistency check, never counted."""
    factor = float(spec.params.get("factor", 10.0))
    test = (f"jntk_below_ntk: NTK λ_min / JNTK λ_min ≥ {factor:g} at every depth"
            + (" (interlacing: a consistency check)" if factor <= 1 else ""))
    out = []
    for (dataset, act, kind), c in curves.items():
        ntk = curves.get((dataset, act, "ntk"))
        if kind != "jntk" or ntk is None:
            continue
        ratio = {d: ntk.lam_min[ntk.depths.index(d)] / lo for d, lo in zip(c.depths, c.lam_min)
                 if d in ntk.depths and lo > 0}
        bad = [d for d, v in ratio.items() if not v >= factor]
        ours = ("ratio per depth: " + ", ".join(f"L={d}: {fmt(v)}" for d, v in ratio.items())
                if ratio else "no depth with both kernels and a positive JNTK λ_min")
        if factor <= 1:
            verdict: Verdict = "consistent" if not bad else "inconsistent"
            why = INTERLACING + (f"; violated at L={bad}: a numerical error" if bad else "")
        else:
            verdict = "not tested" if not ratio else "agree" if not bad else "disagree"
            why = "" if not bad else f"ratio < {factor:g} at L={bad}"
        out.append(Row(spec.claim, ours, verdict, why, test, f"{dataset}, {act}"))
    return out


def _rule_jntk_onset(spec: ClaimSpec, curves: dict[tuple[str, str, str], _Curve],
                     rule: PositivityRule) -> list[Row]:
    """The onset under the config's (primary) rule against the paper's; with ``calibrated:`` (a
    positivity rule whose constant was chosen so that the paper's onsets come out) one more row
    per curve, a consistency check: what that rule gives, never counted as agreement."""
    targets = spec.params.get("onset", {})
    cal = spec.params.get("calibrated")
    cal_rule = None if cal is None else PositivityRule.model_validate(cal)
    cal_curves = None if cal_rule is None else _recomputed(curves, cal_rule)
    out = []
    for (dataset, act, kind), c in curves.items():
        if kind != "jntk" or act not in targets:
            continue
        verdict, why = _onset_verdict(c, targets[act])
        target = targets[act]
        said = {"first": "positive at every depth", "after_first":
                "not positive at the shallowest depth, positive from some deeper one on"
                }.get(target, f"positive from L={target}, not at L={target}−1")
        out.append(Row(spec.claim, f"{_onset_text(c, rule)}; {_around(c, c.onset)}", verdict,
                       why, f"jntk_onset: JNTK {said} under the {rule.rule} rule",
                       f"{dataset}, {act}"))
        if cal_curves is not None and cal_rule is not None:
            cc = cal_curves[(dataset, act, kind)]
            v, w = _onset_verdict(cc, target)
            out.append(Row(spec.claim, f"{_onset_text(cc, cal_rule)}; {_around(cc, cc.onset)}",
                           "consistent" if v == "agree" else "inconsistent",
                           (str(spec.params.get("calibrated_note", "")) + ("; " + w if w else "")
                            ).strip("; "),
                           f"jntk_onset: (calibrated, a consistency check, not counted) "
                           f"under {cal_rule.describe()}", f"{dataset}, {act} (calibrated)"))
    return out


def _recomputed(curves: dict[tuple[str, str, str], _Curve], rule: PositivityRule
                ) -> dict[tuple[str, str, str], _Curve]:
    """The same curves with the verdicts of another rule (thresholds from n and λ_max)."""
    out = {}
    for key, c in curves.items():
        n_hi = [(c.n[i], c.lam_max[i]) for i in range(len(c.depths))]
        out[key] = _Curve(c.depths, c.lam_min, c.residual, [rule.threshold(*v) for v in n_hi],
                          c.tau_rel, [rule.positive(lo, n, hi, r) for lo, (n, hi), r in
                                      zip(c.lam_min, n_hi, c.residual)], c.pos_rel, c.n, c.lam_max)
    return out


ASSUMPTION8_RULES: dict[str, Callable[..., list[Row]]] = {
    "ntk_always_pd": _rule_ntk_always_pd, "jntk_below_ntk": _rule_jntk_below_ntk,
    "jntk_onset": _rule_jntk_onset}


def assumption8_rows(rows: Sequence[dict[str, Any]], claim: dict[str, Any],
                     rule: PositivityRule, quick: bool = False) -> list[Row]:
    """Rows for Fig. 6 / B7 / B8 from the λ_min table, positive under ``rule`` (the config's) and
    under the relative rule; a row may carry ``lambda_min_residual`` (a Ritz value θ ≥ λ_min: the
    verdicts use θ − residual). Rules: ``ntk_always_pd`` (``positivity: adopted | relative``),
    ``jntk_below_ntk`` (``factor``), ``jntk_onset`` (``onset: {activation: L | first |
    after_first}``)."""
    curves = assumption8_curves(rows, rule)
    out: list[Row] = []
    for spec in claim_specs(claim, list(ASSUMPTION8_RULES)):
        out += ASSUMPTION8_RULES[spec.rule](spec, curves, rule)
    if quick:
        for r in out:
            r.why = (r.why + "; " if r.why else "") + "quick run on a subset: λ_min depends on " \
                "the points"
    return out


def calibrated_rule(claim: dict[str, Any]) -> PositivityRule | None:
    """The ``calibrated:`` positivity rule of a claim's ``jntk_onset`` rule (None: none)."""
    for r in claim.get("rules", []):
        if r.get("rule") == "jntk_onset" and r.get("calibrated") is not None:
            return PositivityRule.model_validate(r["calibrated"])
    return None


def assumption8_depth_table(rows: Sequence[dict[str, Any]], rule: PositivityRule,
                            other: PositivityRule | None = None) -> str:
    """λ_min per depth, NTK and JNTK, under the adopted rule and ``other`` (the relative rule by
    default, or a calibrated one) (Markdown, one table per dataset and activation): the reason
    the two onsets differ, depth by depth."""
    other = RELATIVE if other is None else other
    curves = assumption8_curves(rows, rule)
    alt = _recomputed(curves, other)
    yes = {True: "✓", False: "·"}
    out = []
    for (dataset, act, kind), j in curves.items():
        if kind != "jntk":
            continue
        ntk, jo = curves.get((dataset, act, "ntk")), alt[(dataset, act, kind)]
        no = alt.get((dataset, act, "ntk"))
        ntk_tau = "" if no is None else f" (NTK: {no.threshold[0]:.2e})"
        out += [f"**{dataset}, {act}** — adopted rule {rule.describe()}; other rule "
                f"{other.describe()}{ntk_tau} (✓ positive, · not)", "",
                "| L | NTK λ_min | NTK adopted | NTK other | JNTK λ_min | adopted threshold | "
                "JNTK adopted | other threshold | JNTK other |",
                "|---:|---:|:-:|:-:|---:|---:|:-:|---:|:-:|"]
        for i, d in enumerate(j.depths):
            k = ntk.depths.index(d) if ntk is not None and d in ntk.depths else None
            n_cells = ("— | — | —" if k is None or ntk is None or no is None else
                       f"{ntk.lam_min[k]:.3e} | {yes[ntk.pos[k]]} | {yes[no.pos[k]]}")
            res = f" ± {j.residual[i]:.0e}" if j.residual[i] else ""
            out.append(f"| {d} | {n_cells} | {j.lam_min[i]:.3e}{res} | {j.threshold[i]:.2e} | "
                       f"{yes[j.pos[i]]} | {jo.threshold[i]:.1e} | {yes[jo.pos[i]]} |")
        out.append("")
    return "\n".join(out)


def merge_assumption8_rows(tables: Sequence[Sequence[dict[str, Any]]]
                           ) -> tuple[list[dict[str, Any]], list[str]]:
    """Rows of several assumption8 runs as one table: a (dataset, activation, kernel, depth)
    computed by more than one run is taken from the first; the second value says, per later run,
    the depths whose rows were skipped so (e.g. "run 2: L=11 (4 rows)")."""
    merged: dict[tuple[str, str, str, int], dict[str, Any]] = {}
    skipped: list[str] = []
    for t, table in enumerate(tables):
        dropped: dict[int, int] = {}
        for r in table:
            key = (str(r["dataset"]), str(r["activation"]), str(r["kernel"]), int(r["depth"]))
            if key in merged:
                dropped[key[3]] = dropped.get(key[3], 0) + 1
                continue
            merged[key] = r
        if dropped:
            skipped.append(f"run {t + 1}: L={depth_ranges(sorted(dropped))} "
                           f"({sum(dropped.values())} rows)")
    return list(merged.values()), skipped


def depth_ranges(depths: Sequence[int]) -> str:
    """[1, 2, 3, 5, 7, 8] → "1–3, 5, 7–8"."""
    parts: list[str] = []
    start = prev = depths[0]
    for d in list(depths[1:]) + [None]:  # type: ignore[list-item]
        if d is not None and d == prev + 1:
            prev = d
            continue
        parts.append(f"{start}" if start == prev else f"{start}–{prev}")
        if d is not None:
            start = prev = d
    return ", ".join(parts)
