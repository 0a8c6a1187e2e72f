"""Credentials never reach the logs, ``/metrics`` or ``/health``, even at DEBUG, in both styles.

The agents run as real processes with every log line kept: a database password in a DSN that
fails to connect, and an HTTP bearer token used (and guessed wrong) while metrics are scraped.
"""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.agents import AgentProcess
from tests.helpers import free_port, wait_until

pytestmark = pytest.mark.integration

SECRET = "S3cret-" + uuid.uuid4().hex


@pytest.mark.parametrize("style", ["human", "json"])
@pytest.mark.parametrize(
    "dsn",
    [
        f"postgresql://kingest:{SECRET}@127.0.0.1:1/shop",
        f"mysql://root:{SECRET}@127.0.0.1:1/test",
    ],
    ids=["postgres", "mysql"],
)
def test_a_dsn_that_fails_never_shows_its_password(
    dsn: str, style: str, endpoint_url: str, tmp_path: Path
) -> None:
    database = "postgres" if dsn.startswith("postgresql") else "mysql"
    done = subprocess.run(
        [sys.executable, "-m", "kingest", "--log-level", "DEBUG", "--log-style", style,
         "cdc", database, "--dsn", dsn, "--stream", "s", "--endpoint-url", endpoint_url,
         "--checkpoint", str(tmp_path / "c.db"), "--dlq-dir", str(tmp_path / "dlq")],
        capture_output=True, text=True, timeout=120, cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 1, done.stderr
    assert "127.0.0.1" in done.stderr  # it does say what failed
    assert SECRET not in done.stderr + done.stdout


def test_a_bearer_token_stays_out_of_logs_metrics_and_health(
    agents: Callable[[list[str], Path], AgentProcess],
    endpoint_url: str,
    stream_factory: Any,
    tmp_path: Path,
) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(SECRET + "\n")
    port, metrics_port = free_port(), free_port()
    agent = agents(
        ["--log-level", "DEBUG", "--log-style", "json", "http",
         "--listen", f"127.0.0.1:{port}", "--token-file", str(token_file),
         "--stream", stream_factory(shards=1), "--endpoint-url", endpoint_url,
         "--metrics-address", f"127.0.0.1:{metrics_port}"],
        tmp_path,
    )  # fmt: skip

    def post(token: str) -> int:
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/v1/events",
            data=json.dumps({"event_type": "login", "user_id": "u1"}).encode(),
            headers={"Content-Type": "application/json", "Authorization": f"Bearer {token}"},
        )
        try:
            with urllib.request.urlopen(request, timeout=30) as answer:
                return int(answer.status)
        except urllib.error.HTTPError as refused:
            return refused.code
        except OSError:
            return 0

    wait_until(lambda: post(SECRET) == 200 or agent.process.poll() is not None, 60, "an answer")
    assert post(SECRET + "x") == 401
    exposed = []
    for path in ("/metrics", "/health"):
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}{path}", timeout=5) as page:
            exposed.append(page.read().decode())
    assert 'kingest_producer_accepted_records_total{source="app_events"} 1' in exposed[0]
    assert agent.stop() == 0
    logs = agent.stderr
    assert '"level":"DEBUG"' in logs, "no DEBUG line was written: the test proves little"
    for text in (logs, *exposed):
        assert SECRET not in text
