"""docs/segments.md shows what the code does: each ```json rule followed by a ```sql block compiles to
that SQL (whitespace aside), and each followed by an ```errors block is refused with exactly those
errors."""

from __future__ import annotations

import json
import re
import uuid
from pathlib import Path

import pytest

from geniehelper.segments.compiler import compile_rule
from geniehelper.segments.rules import RuleErrors, parse_rules

DOC = Path(__file__).resolve().parent.parent / "docs" / "segments.md"
# The segment the references example names, and the rules the document gives it.
REFERENCED = {uuid.UUID("00000000-0000-0000-0000-00000000005e"): parse_rules({"lifecycle": {"in": ["vip"]}})}
BLOCK = re.compile(r"```json\n(.*?)```\s*```(sql|errors)\n(.*?)```", re.S)


def normalized(sql: str) -> str:
    text = re.sub(r"\s+", " ", sql).strip()
    return re.sub(r"\( ", "(", re.sub(r" \)", ")", text))


def examples(kind: str) -> list[tuple[str, str]]:
    return [(rule, shown) for rule, found, shown in BLOCK.findall(DOC.read_text(encoding="utf-8")) if found == kind]


def test_the_document_has_its_examples() -> None:
    assert len(examples("sql")) >= 12 and len(examples("errors")) >= 1


@pytest.mark.parametrize(("rule", "sql"), examples("sql"), ids=lambda v: normalized(v)[:60])
def test_each_documented_rule_compiles_to_the_documented_sql(rule: str, sql: str) -> None:
    compiled = compile_rule(parse_rules(json.loads(rule)), uuid.uuid4(), REFERENCED)
    assert normalized(compiled.sql) == normalized(sql)


@pytest.mark.parametrize(("rule", "errors"), examples("errors"))
def test_each_documented_refusal_is_the_refusal(rule: str, errors: str) -> None:
    with pytest.raises(RuleErrors) as refused:
        parse_rules(json.loads(rule))
    assert [str(e) for e in refused.value.errors] == errors.strip().splitlines()
