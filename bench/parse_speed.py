"""Throughput of ``kingest parse --format combined`` against the seed's WebLogParser loop.

Workload: an Apache combined-format log from the web log simulator (IPv4 and IPv6 clients,
several UTC offsets, about 20 requests per simulated second, so neighbouring lines share their
second as in a real log). Both sides run as a child process that reads the same file and writes
one JSON document per line to /dev/null: ``kingest parse`` (orjson, compact), and the seed's
class copied below, unchanged, in a loop that ``json.dumps`` each result. Figures are the best
of ``--repeats`` runs, in lines per second of wall time and of CPU time (user + system).

Run: .venv/bin/python bench/parse_speed.py [--lines N] [--repeats R] [--file PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

from kingest.sources.simulate.weblog import WebLogSimulator

BLOCK_LINES = 10_000


# The seed's parser, as the seed wrote it (only reformatted), for the baseline.
class WebLogParser:
    def __init__(self):
        # Combined 로그 형식 정규식
        self.log_pattern = re.compile(
            r"(\S+) \S+ \S+ \[([\w:/]+\s[+\-]\d{4})\] "
            r'"(\S+) (\S+) (\S+)" (\d{3}) (\d+|-) "([^"]*)" "([^"]*)"'
        )

    def parse_log_line(self, log_line):
        """로그 라인을 구조화된 데이터로 변환"""
        match = self.log_pattern.match(log_line)
        if not match:
            return None

        ip, timestamp, method, path, protocol, status, size, referer, user_agent = match.groups()

        return {
            "timestamp": self.convert_timestamp(timestamp),
            "ip_address": ip,
            "method": method,
            "path": path,
            "protocol": protocol,
            "status_code": int(status),
            "response_size": int(size) if size.isdigit() else 0,
            "referer": referer if referer != "-" else None,
            "user_agent": user_agent,
            "log_type": "web_access",
        }

    def convert_timestamp(self, timestamp_str):
        """로그 타임스탬프를 ISO 형식으로 변환"""
        try:
            dt = datetime.strptime(timestamp_str, "%d/%b/%Y:%H:%M:%S %z")
            return dt.isoformat()
        except:  # noqa: E722
            return datetime.utcnow().isoformat()


def run_seed(path: str) -> None:
    """The baseline: parse every line of ``path`` with the seed's class, JSON to stdout."""
    parser = WebLogParser()
    write = sys.stdout.write
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            write(json.dumps(parser.parse_log_line(line)) + "\n")


def write_log(path: Path, lines: int) -> None:
    simulator = WebLogSimulator(seed=2024)
    with path.open("w", encoding="utf-8") as handle:
        remaining = lines
        while remaining:
            block = simulator.lines(min(BLOCK_LINES, remaining))
            handle.write("\n".join(block) + "\n")
            remaining -= len(block)


def count_lines(path: Path) -> int:
    with path.open("rb") as handle:
        return sum(chunk.count(b"\n") for chunk in iter(lambda: handle.read(1 << 20), b""))


def timed(command: list[str]) -> tuple[float, float, bytes]:
    """Run ``command`` with stdout to /dev/null; return wall s, CPU s and its stderr."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    with open(os.devnull, "wb") as devnull:
        result = subprocess.run(command, stdout=devnull, stderr=subprocess.PIPE, check=False)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    if result.returncode != 0:
        sys.exit(f"{command[:3]} failed ({result.returncode}): {result.stderr.decode()[-500:]}")
    return wall, cpu, result.stderr


def main() -> None:
    options = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    options.add_argument("--lines", type=int, default=500_000, help="log lines (default 500k)")
    options.add_argument("--repeats", type=int, default=3, help="runs of each side, best kept")
    options.add_argument("--file", type=Path, help="log file to use (written if missing)")
    options.add_argument("--seed-baseline", metavar="PATH", help=argparse.SUPPRESS)
    args = options.parse_args()
    if args.seed_baseline:
        run_seed(args.seed_baseline)
        return
    with tempfile.TemporaryDirectory(prefix="kingest-parse-bench-") as scratch:
        path = args.file or Path(scratch) / "access.log"
        if not path.exists():
            started = time.perf_counter()
            write_log(path, args.lines)
            print(f"wrote {path} in {time.perf_counter() - started:.1f} s")
        lines = count_lines(path)
        size_mb = path.stat().st_size / 1e6
        print(f"input: {lines:,} combined-format lines, {size_mb:.1f} MB")
        kingest = [sys.executable, "-m", "kingest", "parse", "--format", "combined", str(path)]
        seed = [sys.executable, __file__, "--seed-baseline", str(path)]
        results: dict[str, tuple[float, float]] = {}
        for name, command in (("kingest parse", kingest), ("seed WebLogParser", seed)):
            best_wall = best_cpu = float("inf")
            for _ in range(args.repeats):
                wall, cpu, stderr = timed(command)
                best_wall, best_cpu = min(best_wall, wall), min(best_cpu, cpu)
                if name == "kingest parse" and f"{lines} lines accepted, 0 rejected" not in (
                    stderr.decode()
                ):
                    sys.exit(f"kingest parse did not accept every line: {stderr.decode()}")
            results[name] = (best_wall, best_cpu)
            print(
                f"{name:18} {lines / best_wall:>10,.0f} lines/s wall ({best_wall:.2f} s)"
                f"   {lines / best_cpu:>10,.0f} lines/s CPU ({best_cpu:.2f} s)"
            )
        ours, theirs = results["kingest parse"], results["seed WebLogParser"]
        print(
            f"ratio (kingest / seed): {theirs[0] / ours[0]:.2f}x wall, "
            f"{theirs[1] / ours[1]:.2f}x CPU"
        )


if __name__ == "__main__":
    main()
