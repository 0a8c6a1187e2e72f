"""``kingest schema list|show|validate``: the known schemas, one document, JSON lines checked."""

from __future__ import annotations

import json
from pathlib import Path

import orjson
import pytest

from kingest.cli.main import main

ORDERS = {
    "type": "object",
    "required": ["order_id"],
    "properties": {"order_id": {"type": "integer"}},
}


def user_schemas(tmp_path: Path) -> Path:
    directory = tmp_path / "schemas"
    directory.mkdir()
    (directory / "orders.v1.json").write_text(json.dumps(ORDERS))
    (directory / "orders.v2.json").write_text(json.dumps({**ORDERS, "required": []}))
    return directory


def test_list_names_every_schema_with_its_versions(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["schema", "list", "--schema-path", str(user_schemas(tmp_path))]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "orders v1 v2" in lines
    assert "web_logs v1" in lines and any(line.startswith("database_cdc ") for line in lines)


def test_show_prints_a_document_check_can_read(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    paths = ["--schema-path", str(user_schemas(tmp_path))]
    assert main(["schema", "show", "orders", "--version", "1", *paths]) == 0
    assert orjson.loads(capsys.readouterr().out) == ORDERS
    assert main(["schema", "show", "orders", "--version", "9", *paths]) == 2
    assert "orders" in capsys.readouterr().err


def test_validate_lists_each_invalid_line_and_exits_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    records = tmp_path / "orders.jsonl"
    records.write_text('{"order_id": 1}\n\n{"order_id": "x"}\n{nope\n{"order_id": 3}\n')
    paths = ["--schema-path", str(user_schemas(tmp_path))]
    status = main(
        ["schema", "validate", "--schema", "orders", "--version", "1", *paths, str(records)]
    )
    captured = capsys.readouterr()
    assert status == 1
    assert captured.out.splitlines() == [
        f'{records}:3: $.order_id: "x" is not of type "integer"',
        f"{records}:4: not JSON: " + captured.out.splitlines()[1].split("not JSON: ", 1)[1],
    ]
    assert "2 valid, 2 invalid against orders/v1" in captured.err


def test_validate_exit_statuses(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good = tmp_path / "good.jsonl"
    good.write_text('{"order_id": 1}\n')
    paths = ["--schema-path", str(user_schemas(tmp_path))]
    assert main(["schema", "validate", "--schema", "orders", *paths, str(good)]) == 0
    assert main(["schema", "validate", "--schema", "nothing", *paths, str(good)]) == 2
    missing = str(tmp_path / "missing.jsonl")
    assert main(["schema", "validate", "--schema", "orders", *paths, missing]) == 2
    assert main(["schema", "list", "--schema-path", str(tmp_path / "none")]) == 2
    assert "does not exist" in capsys.readouterr().err
