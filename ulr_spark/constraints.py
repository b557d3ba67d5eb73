"""Value constraints shared by the config sections and the model options: pydantic field
validators whose errors read as the rule a user should follow."""

from __future__ import annotations

from pydantic import AfterValidator


def interval(low: float, high: float, *, low_open: bool = False, high_open: bool = False) -> AfterValidator:
    """Use as ``Annotated[float, interval(0, 1, high_open=True)]``: the value must lie in the
    interval; the error reads ``must be in [0, 1)``."""
    text = f"must be in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"

    def check(value: float) -> float:
        below = value <= low if low_open else value < low
        above = value >= high if high_open else value > high
        if below or above:
            raise ValueError(text)
        return value

    return AfterValidator(check)
