"""Page layouts and click models of the simulated scenarios beyond pbm (docs/design.md, "Simulator").

Spark column expressions over one request's page, used by
:func:`ulr_spark.simulation.simulator.shown_items`; everything runs in array functions, with no
shuffle and no Python UDF.

- ``context``: the examination of slot k drops next to a strong neighbour,

      e_k = theta_k * (1 - neighbour_effect * max_{j in N(k)} s_j),

  where N(k) is the slot before and after it in a list (left, right, above and below on a
  grid) and s_j the neighbour's attraction P(attracted | y_j) (``neighbour_signal:
  attraction``) or its salient flag (``neighbour_signal: salience``).
- ``layout: blended``: the page alternates salient and plain items, each class in the logging
  ranker's order; when one class runs out, the other fills the remaining slots in its order
  (:func:`blended_slate`). Half the pages (a hash of the request) start with a salient item,
  half with a plain one: the salience of a slot's neighbours is then tied to the item's own
  class, not to the slot, so a position table cannot absorb the neighbour effect (with a fixed
  phase, slot parity alone would explain it and every model would fit it).
- ``trust`` (trust bias, Agarwal et al., WWW 2019): a person who examines slot k clicks a
  relevant item with probability eps+_k and an irrelevant one with probability eps-_k,

      P(click | k, y) = theta_k * (a(y) * eps+_k + (1 - a(y)) * eps-_k),
      eps+_k = 1 - (k + 1) / 100,   eps-_k = 0.65 / k,

  with a(y) = eps + (1 - eps) (2^y - 1) / 15 the attraction of label y: the higher a slot, the
  more it is trusted, so clicks there say less about relevance.
"""

from __future__ import annotations

from pyspark.sql import DataFrame
from pyspark.sql import functions as F


def neighbour_max(signals: F.Column, index: F.Column, grid_columns: int) -> F.Column:
    """The largest signal among the slot's neighbours on the page (0 when it has none): the slots
    just before and after it in a list; left, right, above and below on a grid.

    Reads the page's ``signals`` array at the 0-based ``index`` of the slot; ``get`` returns
    null outside the array, which counts as no neighbour."""
    a, i = signals, index
    if grid_columns <= 0:
        neighbours = [F.get(a, i - 1), F.get(a, i + 1)]
    else:
        column = F.pmod(i, F.lit(grid_columns))
        neighbours = [
            F.when(column > 0, F.get(a, i - 1)),
            F.when(column < grid_columns - 1, F.get(a, i + 1)),
            F.get(a, i - grid_columns),
            F.get(a, i + grid_columns),
        ]
    return F.greatest(*[F.coalesce(n, F.lit(0.0)) for n in neighbours])


def blended_slate(pages: DataFrame, order: str, slate_size: int, into: str, salient_first: F.Column) -> DataFrame:
    """Adds column ``into``: the first ``slate_size`` entries of the ranker's ``order`` array
    (entries with a ``salient`` field, best first), laid out salient, plain, salient, ... when
    the boolean ``salient_first`` holds for the page, plain, salient, plain, ... otherwise.

    With m = min(#salient, #plain) pairs, slot j (0-based) holds, for j < 2m, the (j // 2)-th
    best of the first class when j is even and of the other class when j is odd; from slot
    2m on, the class that is left holds its (j - m)-th best (m of it already shown). The two
    class arrays are columns of their own so that Spark filters each page once, not once per slot.
    """
    salient, plain, pairs = f"{into}_salient", f"{into}_plain", f"{into}_pairs"
    pages = pages.withColumn(salient, F.filter(order, lambda e: e["salient"] == 1)).withColumn(
        plain, F.filter(order, lambda e: e["salient"] == 0)
    )
    pages = pages.withColumn(pairs, F.least(F.size(salient), F.size(plain)))
    m = F.col(pairs)

    def pick(j: F.Column) -> F.Column:
        alternating = j < 2 * m
        even = F.pmod(j, F.lit(2)) == 0
        from_salient = F.when(alternating, F.when(salient_first, even).otherwise(~even)).otherwise(F.size(salient) > m)
        rank = F.when(alternating, F.floor(j / 2).cast("int")).otherwise(j - m)
        return F.when(from_salient, F.element_at(salient, rank + 1)).otherwise(F.element_at(plain, rank + 1))

    slots = F.sequence(F.lit(0), F.lit(slate_size - 1))
    return pages.withColumn(into, F.transform(slots, pick)).drop(salient, plain, pairs)


def trust_click(examination: F.Column, attraction: F.Column, slot: F.Column) -> F.Column:
    """P(click) under trust bias for the 1-based ``slot`` (see the module docstring)."""
    relevant = 1.0 - (slot + 1) / 100.0
    irrelevant = 0.65 / slot
    return examination * (attraction * relevant + (1.0 - attraction) * irrelevant)
