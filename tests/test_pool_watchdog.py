"""``PoolWatchdog``: a job received that no pool process has begun while one is free is a stuck
pool (celery/celery#2011); a job waiting behind busy processes is not."""

from __future__ import annotations

import pytest
from celery.worker import state

from agent.preread.celery_app import PoolWatchdog


class Request:
    def __init__(self, request_id: str):
        self.id = request_id


@pytest.fixture
def requests():
    held: list[Request] = []  # the state's sets are weak: keep the requests alive
    yield held
    for request in held:
        state.reserved_requests.discard(request)
        state.active_requests.discard(request)


def received(requests, request_id: str, *, active: bool = False) -> Request:
    request = Request(request_id)
    requests.append(request)
    state.reserved_requests.add(request)
    if active:
        state.active_requests.add(request)
    return request


def test_a_job_not_begun_with_a_process_free_is_a_stuck_pool(requests):
    watchdog = PoolWatchdog(concurrency=1, stuck_after_s=10)
    received(requests, "a")
    assert not watchdog.stuck(100.0)
    assert not watchdog.stuck(109.0)
    assert watchdog.stuck(111.0)


def test_a_job_waiting_behind_busy_processes_is_not(requests):
    watchdog = PoolWatchdog(concurrency=1, stuck_after_s=10)
    received(requests, "running", active=True)
    received(requests, "next")
    assert not watchdog.stuck(100.0) and not watchdog.stuck(500.0)


def test_the_wait_starts_anew_for_each_job(requests):
    watchdog = PoolWatchdog(concurrency=2, stuck_after_s=10)
    first = received(requests, "a")
    assert not watchdog.stuck(100.0)
    state.active_requests.add(first)  # begun: no longer waiting
    received(requests, "b")
    assert not watchdog.stuck(105.0)
    assert not watchdog.stuck(114.0)  # "b" has waited 9 s
    assert watchdog.stuck(116.0)
