"""``kingest parse`` end to end: JSON lines out, reasons and summary on stderr, exit status."""

from __future__ import annotations

import os
import queue
import subprocess
import sys
import threading
import time
from pathlib import Path

import orjson
import pytest

from kingest.sources.weblog import compile_format

DATA = Path(__file__).parent.parent / "data" / "weblog"
LINE = (
    '192.168.1.1 - - [26/May/2024:10:30:45 +0000] "GET /api/users HTTP/1.1" 200 1234 '
    '"https://example.com" "Mozilla/5.0"'
)
BAD_DATE = LINE.replace("26/May", "30/Feb")


def kingest(
    *args: str, stdin: bytes | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "kingest", "parse", *args],
        input=stdin,
        capture_output=True,
        timeout=120,
        cwd=cwd,
        check=False,
    )


def records(result: subprocess.CompletedProcess[bytes]) -> list[dict[str, object]]:
    return [orjson.loads(line) for line in result.stdout.splitlines()]


def stderr_lines(result: subprocess.CompletedProcess[bytes]) -> list[str]:
    return result.stderr.decode().splitlines()


def test_every_line_accepted_exits_0_with_compact_json_in_order(tmp_path: Path) -> None:
    source = DATA / "apache_combined.log"
    result = kingest("--format", "combined", str(source))
    assert result.returncode == 0, result.stderr
    parser = compile_format("combined")
    expected = [parser(line) for line in source.read_bytes().splitlines()]
    assert records(result) == expected
    # Compact: orjson's output, one object a line.
    assert result.stdout.splitlines()[0] == orjson.dumps(expected[0])
    assert stderr_lines(result) == [f"kingest parse: {len(expected)} lines accepted, 0 rejected"]


@pytest.mark.parametrize(
    ("name", "format_name"),
    [
        ("apache_common.log", "common"),
        ("apache_vhost_combined.log", "vhost_combined"),
        ("nginx_access.log", "nginx"),
        ("events.jsonl", "json"),
    ],
)
def test_samples_of_each_format(name: str, format_name: str) -> None:
    result = kingest("--format", format_name, str(DATA / name))
    assert result.returncode == 0, result.stderr
    lines = (DATA / name).read_bytes().splitlines()
    assert len(records(result)) == len(lines)


def test_rejected_lines_are_reported_and_exit_1(tmp_path: Path) -> None:
    log = tmp_path / "access.log"
    log.write_bytes(f"{LINE}\n{BAD_DATE}\n\ngarbage here\n{LINE}".encode())
    result = kingest("--format", "combined", str(log))
    assert result.returncode == 1
    assert len(records(result)) == 2
    assert stderr_lines(result) == [
        "line 2: bad timestamp '30/Feb/2024:10:30:45 +0000': day is out of range for month",
        "line 3: empty line",
        "line 4: expected ' ' at column 13, found end of line",
        "kingest parse: 2 lines accepted, 3 rejected",
    ]


def test_several_files_name_the_file_and_count_lines_per_file(tmp_path: Path) -> None:
    first = tmp_path / "a.log"
    second = tmp_path / "b.log"
    first.write_text(f"{LINE}\n{BAD_DATE}\n")
    second.write_text(f"{BAD_DATE}\n{LINE}\n")
    result = kingest("--format", "combined", str(first), str(second))
    assert result.returncode == 1
    assert len(records(result)) == 2
    reason = "bad timestamp '30/Feb/2024:10:30:45 +0000': day is out of range for month"
    assert stderr_lines(result) == [
        f"{first}:2: {reason}",
        f"{second}:1: {reason}",
        "kingest parse: 2 lines accepted, 2 rejected",
    ]


def test_standard_input_with_and_without_dash() -> None:
    data = f"{LINE}\r\n{LINE}\r\n".encode()
    for args in ([], ["-"]):
        result = kingest("--format", "combined", *args, stdin=data)
        assert result.returncode == 0, result.stderr
        assert len(records(result)) == 2
    mixed = kingest("--format", "combined", "-", str(DATA / "apache_combined.log"), stdin=b"x\n")
    assert mixed.returncode == 1
    assert stderr_lines(mixed)[0] == "<stdin>:1: expected ' ' at column 2, found end of line"


def test_last_line_without_newline_and_crlf_file(tmp_path: Path) -> None:
    log = tmp_path / "crlf.log"
    log.write_bytes(f"{LINE}\r\n{LINE}".encode())
    result = kingest("--format", "combined", str(log))
    assert result.returncode == 0, result.stderr
    assert [r["user_agent"] for r in records(result)] == ["Mozilla/5.0", "Mozilla/5.0"]


def test_custom_formats_explicit_and_detected(tmp_path: Path) -> None:
    nginx = '$remote_addr [$time_local] "$request" $status $request_time "$http_x_forwarded_for"'
    line = b'::1 [26/May/2024:10:30:45 +0200] "GET / HTTP/2.0" 200 0.005 "10.0.0.1"\n'
    for args in (["--format", "nginx", "--log-format", nginx], ["--log-format", nginx]):
        result = kingest(*args, stdin=line)
        assert result.returncode == 0, result.stderr
        (record,) = records(result)
        assert record["request_time"] == 0.005
        assert record["http_x_forwarded_for"] == "10.0.0.1"
        assert record["timestamp"] == "2024-05-26T10:30:45+02:00"
    apache = '%h %t "%r" %>s %b %D'
    line = b'::1 [26/May/2024:10:30:45 +0000] "GET / HTTP/1.1" 200 - 1500\n'
    for args in (["--format", "apache", "--log-format", apache], ["--log-format", apache]):
        result = kingest(*args, stdin=line)
        assert result.returncode == 0, result.stderr
        assert records(result)[0]["request_time_us"] == 1500


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([], "give --format"),
        (["--format", "zzz"], "unknown log format 'zzz'"),
        (["--format", "apache"], "needs a log format string"),
        (["--format", "combined", "--log-format", "%h"], "needs the format 'apache' or 'nginx'"),
        (["--format", "apache", "--log-format", "%h %Z"], "unsupported directive %Z"),
        (["--log-format", "no fields"], "no $variables nor % directives"),
        (
            ["--format", "combined", "/nonexistent/access.log"],
            "cannot read /nonexistent/access.log",
        ),
    ],
)
def test_unusable_arguments_exit_2(args: list[str], message: str) -> None:
    result = kingest(*args, stdin=LINE.encode())
    assert result.returncode == 2
    assert result.stdout == b""
    assert message in result.stderr.decode()
    assert "Traceback" not in result.stderr.decode()


def test_an_unreadable_file_among_good_ones_exits_2_naming_it(tmp_path: Path) -> None:
    good = tmp_path / "good.log"
    good.write_text(LINE + "\n")
    result = kingest("--format", "combined", str(good), str(tmp_path))
    assert result.returncode == 2
    assert f"cannot read {tmp_path}" in result.stderr.decode()
    if os.geteuid() != 0:  # root reads anything
        locked = tmp_path / "locked.log"
        locked.write_text(LINE + "\n")
        locked.chmod(0)
        result = kingest("--format", "combined", str(locked))
        assert result.returncode == 2
        assert f"cannot read {locked}" in result.stderr.decode()


def test_help() -> None:
    result = kingest("--help")
    assert result.returncode == 0
    help_text = result.stdout.decode()
    assert "--log-format" in help_text and "--format" in help_text


def test_standard_input_is_streamed() -> None:
    process = subprocess.Popen(
        [sys.executable, "-m", "kingest", "parse", "--format", "combined"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert process.stdin is not None and process.stdout is not None
    lines: queue.Queue[bytes] = queue.Queue()
    stdout = process.stdout

    def read_lines() -> None:
        for line in iter(stdout.readline, b""):
            lines.put(line)

    reader = threading.Thread(target=read_lines, daemon=True)
    reader.start()
    try:
        for number in range(3):
            process.stdin.write(LINE.replace("/api/users", f"/n{number}").encode() + b"\n")
            process.stdin.flush()
            # The record comes out while the input is still open.
            deadline = time.monotonic() + 30
            line = lines.get(timeout=max(0.0, deadline - time.monotonic()))
            assert orjson.loads(line)["path"] == f"/n{number}"
        process.stdin.close()
        assert process.wait(timeout=60) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        process.stdout.close()
        assert process.stderr is not None
        process.stderr.close()


def test_a_closed_stdout_ends_quietly(tmp_path: Path) -> None:
    log = tmp_path / "big.log"
    log.write_bytes((LINE + "\n").encode() * 200_000)
    process = subprocess.Popen(
        [sys.executable, "-m", "kingest", "parse", "--format", "combined", str(log)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert process.stdout is not None and process.stderr is not None
    assert process.stdout.readline().startswith(b"{")
    process.stdout.close()  # as `| head -1` does
    stderr = process.stderr.read().decode()
    process.stderr.close()
    assert process.wait(timeout=120) != 0
    assert "Traceback" not in stderr
    assert "BrokenPipe" not in stderr
