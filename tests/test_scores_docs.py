"""docs/scoring.md's coefficient and engagement tables are the model's (`geniehelper.segments.scoring`)."""

from __future__ import annotations

import re
from pathlib import Path

from geniehelper.segments import scoring

DOC = (Path(__file__).resolve().parent.parent / "docs" / "scoring.md").read_text(encoding="utf-8")


def table(first_header: str) -> dict[str, float]:
    block = DOC.split(f"| {first_header} |", 1)[1].split("\n\n", 1)[0]
    rows = [line.split("|")[1:-1] for line in block.splitlines()[2:] if line.startswith("|")]
    return {cells[0].strip(): float(cells[2].strip()) for cells in rows}


def test_the_documented_coefficients_are_the_models() -> None:
    assert table("churn term") == scoring.CHURN
    assert table("upsell term") == scoring.UPSELL
    assert table("engagement part") == scoring.ENGAGEMENT
    assert f"`{scoring.MODEL_VERSION}`" in DOC
    assert re.search(rf"max\(churn_risk, {scoring.LTV_MIN_CHURN}\)", DOC) and "at most 24" in DOC
