"""The seed specification's ``MultiSourceKinesisProducer``, kept as-is for comparison.

This is the sketch from the project's seed specification (section "통합 데이터 전송 클래스",
/work/shared/seed/000_2221aff2b8b8fdde.txt), copied faithfully so that ``kingest bench`` can
measure it beside kingest. It is **not** part of kingest's API and it keeps every defect of the
original on purpose, among them:

* ``send_data()`` drops a record when the queue (``maxsize=10000``) stays full for 1 s and only
  logs it: the record is counted nowhere;
* records the service refuses (``FailedRecordCount > 0``) are never retried, only counted;
* ``by_source[...]["sent"]`` counts every record of a batch as sent, failed ones included;
* ``stop()`` does not drain the queue: what is still queued when it is called is lost;
* one record per ``Queue.get(timeout=1)``, a batch waits up to 5 s for more records, and the
  sender thread sleeps up to 1 s in ``get`` before it notices ``stop()``;
* ``logging.basicConfig(level=logging.INFO)`` in the constructor reconfigures the root logger.

The only changes are what running it needs, each marked ``# bench:``: the boto3 client takes an
endpoint URL and other client arguments (dummy credentials for a local endpoint), and the
methods carry type annotations (mypy strict covers this package); no behaviour changed. The
Korean comments and messages are the original's.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from datetime import datetime
from queue import Empty, Queue
from typing import Any

import boto3


class MultiSourceKinesisProducer:
    """다중 소스 데이터를 Kinesis로 전송하는 통합 클래스"""

    def __init__(
        self,
        stream_name: str,
        region: str = "us-east-1",
        batch_size: int = 500,
        endpoint_url: str | None = None,  # bench: where to send (the original has no way)
        **client_kwargs: Any,  # bench: e.g. aws_access_key_id/aws_secret_access_key
    ) -> None:
        self.kinesis = boto3.client(
            "kinesis",
            region_name=region,
            endpoint_url=endpoint_url,  # bench
            **client_kwargs,  # bench
        )
        self.stream_name = stream_name
        self.batch_size = batch_size

        # 데이터 큐
        self.data_queue: Queue[dict[str, Any]] = Queue(maxsize=10000)

        # 통계
        self.stats: dict[str, Any] = {
            "total_sent": 0,
            "total_failed": 0,
            "by_source": {},
            "start_time": time.time(),
        }

        # 스레드 관리
        self.running = False
        self.sender_thread: threading.Thread | None = None

        # 로깅 설정
        logging.basicConfig(level=logging.INFO)
        self.logger = logging.getLogger(__name__)

    def start(self) -> None:
        """배치 전송 스레드 시작"""
        self.running = True
        self.sender_thread = threading.Thread(target=self._batch_sender)
        self.sender_thread.daemon = True
        self.sender_thread.start()
        self.logger.info("Kinesis producer started")

    def stop(self) -> None:
        """전송 스레드 중지"""
        self.running = False
        if self.sender_thread:
            self.sender_thread.join(timeout=30)
        self.logger.info("Kinesis producer stopped")

    def send_data(self, data: dict[str, Any], data_source: str, partition_key: Any = None) -> None:
        """데이터를 큐에 추가"""
        try:
            # 파티션 키 자동 생성
            if not partition_key:
                partition_key = self._generate_partition_key(data, data_source)

            # 메타데이터 추가
            enriched_data = {
                **data,
                "source": data_source,
                "ingestion_timestamp": datetime.utcnow().isoformat(),
            }

            record = {
                "data": enriched_data,
                "partition_key": partition_key,
                "source": data_source,
            }

            self.data_queue.put(record, timeout=1)

        except Exception as e:
            self.logger.error(f"Failed to queue data: {e}")

    def _generate_partition_key(self, data: dict[str, Any], data_source: str) -> Any:
        """데이터 소스별 파티션 키 생성"""
        if data_source == "web_logs":
            return data.get("session_id", data.get("ip_address", "default"))
        elif data_source == "iot_sensors":
            return data.get("device_id", "unknown_device")
        elif data_source == "database_cdc":
            return f"{data.get('table', 'unknown')}_{data.get('transaction_id', 'unknown')}"
        else:
            return f"{data_source}_{hash(str(data)) % 1000}"

    def _batch_sender(self) -> None:
        """배치 전송 메인 루프"""
        batch: list[dict[str, Any]] = []
        last_send_time = time.time()

        while self.running:
            try:
                # 큐에서 데이터 가져오기
                try:
                    record = self.data_queue.get(timeout=1)
                    batch.append(record)
                except Empty:
                    pass

                current_time = time.time()

                # 배치 크기 또는 시간 기준으로 전송
                should_send = len(batch) >= self.batch_size or (
                    batch and (current_time - last_send_time) >= 5  # 5초 타임아웃
                )

                if should_send:
                    self._send_batch(batch)
                    batch = []
                    last_send_time = current_time

            except Exception as e:
                self.logger.error(f"Batch sender error: {e}")

        # 종료 시 남은 배치 전송
        if batch:
            self._send_batch(batch)

    def _send_batch(self, batch: list[dict[str, Any]]) -> None:
        """배치 데이터 전송"""
        if not batch:
            return

        try:
            # Kinesis 레코드 형식으로 변환
            kinesis_records = []
            for record in batch:
                kinesis_records.append(
                    {"Data": json.dumps(record["data"]), "PartitionKey": record["partition_key"]}
                )

            # 배치 전송
            response = self.kinesis.put_records(
                Records=kinesis_records, StreamName=self.stream_name
            )

            # 통계 업데이트
            success_count = len(kinesis_records) - response["FailedRecordCount"]
            self.stats["total_sent"] += success_count
            self.stats["total_failed"] += response["FailedRecordCount"]

            # 소스별 통계
            for record in batch:
                source = record["source"]
                if source not in self.stats["by_source"]:
                    self.stats["by_source"][source] = {"sent": 0, "failed": 0}

                self.stats["by_source"][source]["sent"] += 1

            if response["FailedRecordCount"] > 0:
                self.logger.warning(
                    f"Batch send: {success_count} success, {response['FailedRecordCount']} failed"
                )
                # 실패한 레코드 재시도 로직 추가 가능
            else:
                self.logger.debug(f"Batch send successful: {success_count} records")

        except Exception as e:
            self.logger.error(f"Failed to send batch: {e}")
            self.stats["total_failed"] += len(batch)

    def get_stats(self) -> dict[str, Any]:
        """통계 정보 반환"""
        elapsed_time = time.time() - self.stats["start_time"]
        total_records = self.stats["total_sent"] + self.stats["total_failed"]

        return {
            "total_sent": self.stats["total_sent"],
            "total_failed": self.stats["total_failed"],
            "success_rate": (self.stats["total_sent"] / max(total_records, 1)) * 100,
            "throughput_per_sec": total_records / max(elapsed_time, 1),
            "elapsed_time": elapsed_time,
            "queue_size": self.data_queue.qsize(),
            "by_source": self.stats["by_source"],
        }
