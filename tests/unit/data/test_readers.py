"""The chunked JSON reader gives the same records and the same errors whatever the chunk size
(values, numbers, escapes and UTF-8 sequences cut at every possible place)."""

from __future__ import annotations

import json

import pytest

from mbdefense.core.errors import DataError
from mbdefense.data import readers
from mbdefense.data.loading import load_examples

RECORDS = [
    {"instruction": "caf\u00e9 \u2603 \U0001F600", "input": "tab\there", "output": "x",
     "n": 12345.678e-3, "m": -7, "big": 10 ** 20, "flags": [True, False, None]},
    {"instruction": 'quote " and \\ backslash', "output": "esc \u00e9", "deep": [[[{"a": 1}]]]},
    {"messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "u"},
                  {"role": "assistant", "content": "a"}], "score": 0.5},
]


def _outcome(path):
    try:
        return [e.to_dict() for e in load_examples(path)]
    except DataError as exc:
        return str(exc)


VARIANTS = {
    "indented": json.dumps(RECORDS, indent=2, ensure_ascii=False),
    "compact": json.dumps(RECORDS, ensure_ascii=False),
    "escaped": json.dumps(RECORDS, ensure_ascii=True),
    "bom": "\ufeff" + json.dumps(RECORDS, ensure_ascii=False),
    "bad_syntax": json.dumps(RECORDS, indent=1).replace('"m": -7', '"m": -7 "oops"'),
    "bad_field": json.dumps(RECORDS, indent=1).replace('"output": "x"', '"output": 1.5e3'),
    "truncated": json.dumps(RECORDS, indent=1)[:-40],
    "trailing_number": "[" + json.dumps(RECORDS[0]) + ", 123456]",
}


@pytest.mark.parametrize("variant", sorted(VARIANTS))
@pytest.mark.parametrize("chunk", [1, 2, 3, 5, 7, 13])
def test_chunk_size_does_not_matter(tmp_path, monkeypatch, variant, chunk):
    path = tmp_path / f"{variant}.json"
    path.write_bytes(VARIANTS[variant].encode("utf-8"))
    expected = _outcome(path)
    monkeypatch.setattr(readers, "_CHUNK", chunk)
    assert _outcome(path) == expected


def test_expected_outcomes(tmp_path):
    path = tmp_path / "compact.json"
    path.write_text(VARIANTS["compact"], encoding="utf-8")
    assert _outcome(path)[0]["n"] == 12345.678e-3 and _outcome(path)[0]["big"] == 10 ** 20
    path = tmp_path / "bad_syntax.json"
    path.write_text(VARIANTS["bad_syntax"], encoding="utf-8")
    assert "bad_syntax.json:7: invalid JSON: Expecting ',' delimiter (column 11)" \
        in _outcome(path)
    path = tmp_path / "trailing_number.json"
    path.write_text(VARIANTS["trailing_number"], encoding="utf-8")
    assert "expected an object (a record), got int" in _outcome(path)


def test_line_numbers_past_the_first_chunk(tmp_path):
    records = [{"instruction": f"i{n}", "input": "", "output": "x" * 100} for n in range(30_000)]
    text = json.dumps(records, indent=2)  # record k starts on line 2 + 5k
    path = tmp_path / "big.json"
    path.write_text(text.replace('"instruction": "i25000"', '"instruction": 7'),
                    encoding="utf-8")
    assert path.stat().st_size > 3 * readers._CHUNK
    assert "big.json:125002: field 'instruction'" in _outcome(path)
    raw = text.encode()
    at = raw.index(b'"i29000"')
    path.write_bytes(raw[:at + 2] + b"\xff" + raw[at + 2:])
    assert "big.json:145003: not valid UTF-8 (byte 0xff)" in _outcome(path)
