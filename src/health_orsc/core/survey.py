"""survey: design-based estimates from a labelled sample, with svy (design-based survey analysis).

The validation sample is a probability sample of the snapshot's candidates: strata (source x
category x level), each item drawn with a known inclusion probability. The shares a report
claims (benign precision of a category, the jury's false rejections) are estimates over the
whole pool, so each labelled item counts with its design weight (1 / its inclusion
probability), and intervals come from the design (svy: Taylor linearisation, strata, the
finite-population correction), never from treating the sample as one simple random sample.

- A sampled item that people left undecided (no label, a tie) is a nonrespondent: its weight
  moves to the decided items of its stratum (svy's `weighting.adjust`, one cell per stratum).
  A stratum with no decided item is left out, and its population is reported as unmeasured.
- `equal` designs (stratified simple random sampling) use the finite-population correction;
  unequal-probability designs are treated as with-replacement within their strata (no
  correction), which errs toward wider intervals.
- A stratum with one decided item and more in its population ("singleton") has no variance
  of its own: its deviation is taken from the overall mean (svy's `center`, R's
  `survey.lonely.psu = "adjust"`), a conservative choice the report names.
- Shares have Korn-Graubard intervals (svy's `prop`, `ci_method="korn-graubard"`): defined at
  0 and 1, where benign precision usually is, and conservative for small samples.

Every figure is rounded to 6 decimals, so differences in the last bits between machines do
not reach a stored report that `orsc verify` recomputes.

Example:
    units = [Unit(id="a", stratum="kept:x:easy", population=8, probability=0.25,
                  values={"benign": 1}, domains={"category": "x", "source": "kept"}), ...]
    est = Survey(units, equal=True).share("benign", where={"source": "kept"})
"""

from __future__ import annotations

import warnings
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel

DIGITS = 6
SINGLETON_RULE = "center"
INTERVAL = "korn-graubard"


@dataclass(frozen=True)
class Unit:
    """One sampled item. `values`: its 0/1 variables (None for every one: a nonrespondent);
    `domains`: the columns estimates are restricted or grouped by."""
    id: str
    stratum: str
    population: int          # N of its stratum
    probability: float       # its inclusion probability, > 0
    values: dict[str, int] | None
    domains: dict[str, str] = field(default_factory=dict)


class Estimate(BaseModel):
    """A design-based share: its estimate, standard error, interval at `confidence`, degrees
    of freedom, and the labelled items behind it (`n`). All None when no item was labelled."""
    estimate: float | None
    se: float | None
    low: float | None
    high: float | None
    df: int | None
    n: int
    confidence: float


def _round(x: Any) -> float | None:
    if x is None:
        return None
    x = float(x)
    return None if x != x else round(x, DIGITS)  # NaN -> None


class Survey:
    """The labelled units under their design. `equal`: stratified simple random sampling
    (finite-population corrected); otherwise unequal probabilities within strata. None:
    equal when every stratum's units have one and the same probability."""

    def __init__(self, units: list[Unit], equal: bool | None = None, confidence: float = 0.95) -> None:
        import polars as pl

        self.confidence = confidence
        if equal is None:
            probabilities = defaultdict(set)
            for u in units:
                probabilities[u.stratum].add(u.probability)
            equal = all(len(p) == 1 for p in probabilities.values())
        self.equal = equal
        population = {u.stratum: u.population for u in units}
        decided = dict.fromkeys(population, 0)
        for u in units:
            if u.values is not None:
                decided[u.stratum] += 1
        self.unmeasured = {h: n for h, n in population.items() if not decided[h]}
        self.singletons = sorted(h for h, m in decided.items() if m == 1 and population[h] > 1)
        kept = [u for u in units if decided[u.stratum]]
        names = sorted({k for u in kept if u.values is not None for k in u.values})
        domains = sorted({k for u in kept for k in u.domains})
        self.frame = pl.DataFrame({
            "_id": [u.id for u in kept], "_stratum": [u.stratum for u in kept],
            "_N": [u.population for u in kept], "_w": [1 / u.probability for u in kept],
            "_resp": ["rr" if u.values is not None else "nr" for u in kept],
            **{d: [u.domains.get(d) for u in kept] for d in domains},
            **{v: [None if u.values is None else u.values[v] for u in kept] for v in names},
        }, schema_overrides={"_N": pl.Int64, "_w": pl.Float64, **dict.fromkeys(names, pl.Int64)})
        self._sample = self._design() if len(self.frame) else None

    def _design(self):
        import svy

        design = svy.Design(stratum="_stratum", psu="_id", wgt="_w",
                            pop_size="_N" if self.equal else None, singleton=SINGLETON_RULE)
        sample = svy.Sample(self.frame, design)
        if (self.frame["_resp"] == "nr").any():
            sample = sample.weighting.adjust(resp_status="_resp", cells="_stratum", wgt_name="_nrw")
        return sample

    def share(self, y: str, where: dict[str, Any] | None = None) -> Estimate:
        """The weighted share of units with `y` = 1 among those matching `where` (column ->
        value), with its Korn-Graubard interval."""
        import svy

        n = self._count(where)
        if not n:
            return Estimate(estimate=None, se=None, low=None, high=None, df=None, n=0,
                            confidence=self.confidence)
        cond = [svy.col(k) == v for k, v in (where or {}).items()]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # svy notes a share at 0 or 1; Korn-Graubard covers it
            result = self._sample.estimation.prop(y, where=cond or None, ci_method=INTERVAL,
                                                  alpha=1 - self.confidence)
        rows = {r[y]: r for r in result.to_polars().iter_rows(named=True)}
        if 1 in rows:
            r = rows[1]
            est, low, high = r["est"], r["lci"], r["uci"]
        else:  # no labelled unit has y = 1 anywhere: the share is 0, its interval the y = 0 row's
            r = rows[0]
            est, low, high = 1 - r["est"], 1 - r["uci"], 1 - r["lci"]
        return Estimate(estimate=_round(est), se=_round(r["se"]), low=_round(low), high=_round(high),
                        df=int(r["df"]), n=n, confidence=self.confidence)

    def weights(self) -> dict[str, float]:
        """Each decided unit's design weight after the nonresponse adjustment (svy's)."""
        if self._sample is None:
            return {}
        data = self._sample.data.select(["_id", self._sample.design.wgt])
        return {str(i): float(w) for i, w in data.iter_rows()}

    def _count(self, where: dict[str, Any] | None) -> int:
        import polars as pl

        frame = self.frame.filter(pl.col("_resp") == "rr")
        for k, v in (where or {}).items():
            frame = frame.filter(pl.col(k) == v)
        return len(frame)
