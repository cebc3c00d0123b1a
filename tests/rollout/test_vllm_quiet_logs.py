"""vLLM's known-harmless start-up warnings are dropped by message; its other warnings show.

Plain logging, no vLLM needed: the filters sit on the loggers vLLM's modules log to."""

from __future__ import annotations

import logging

import pytest

from grpo.rollout import vllm_engine


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@pytest.fixture
def cpu_worker_log(monkeypatch):
    log = logging.getLogger("vllm.v1.worker.cpu_worker")
    monkeypatch.setattr(log, "filters", [])
    records = _Records()
    log.addHandler(records)
    yield log, records
    log.removeHandler(records)


def test_harmless_messages_dropped_others_kept(cpu_worker_log, monkeypatch):
    log, records = cpu_worker_log
    monkeypatch.setenv("VLLM_LOGGING_LEVEL", "WARNING")
    vllm_engine._quiet_vllm_logs()
    vllm_engine._quiet_vllm_logs()  # idempotent: one filter
    assert sum(isinstance(f, vllm_engine._DropMessages) for f in log.filters) == 1
    log.warning("%s is not found in LD_PRELOAD. For best performance ...", "libtcmalloc")
    log.warning("CPU backend doesn't allow to use `torch.set_num_threads` after the thread")
    log.warning("KV cache is too small for max_num_seqs; requests will be preempted")
    assert records.messages == [
        "KV cache is too small for max_num_seqs; requests will be preempted"
    ]


def test_info_level_shows_everything(cpu_worker_log, monkeypatch):
    log, records = cpu_worker_log
    monkeypatch.setenv("VLLM_LOGGING_LEVEL", "INFO")
    vllm_engine._quiet_vllm_logs()
    assert not log.filters
    log.warning("libiomp is not found in LD_PRELOAD.")
    assert records.messages == ["libiomp is not found in LD_PRELOAD."]
