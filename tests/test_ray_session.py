"""workflows.ray_session: the one Ray start says what it does, and stops only what it started."""

from __future__ import annotations

import logging

import pytest

from jntk_dist.workflows.ray_session import ray_session


def test_embedded_start_is_announced_timed_and_owned(caplog: pytest.LogCaptureFixture,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    import ray

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert not ray.is_initialized()
    with caplog.at_level(logging.INFO, logger="jntk_dist.workflows.ray_session"):
        with ray_session(num_cpus=1) as started:
            assert started and ray.is_initialized()
            assert ray.cluster_resources()["CPU"] == 1
            with ray_session(num_cpus=2) as nested:  # Ray is up: joined, not restarted
                assert not nested
            assert ray.is_initialized()  # the inner block did not shut down the outer's Ray
        assert not ray.is_initialized()  # the block that started it stopped it
    messages = [r.getMessage() for r in caplog.records]
    assert messages[0] == "starting Ray (embedded, 1 CPU) …"
    assert messages[1].startswith("Ray ready in ") and messages[1].endswith("(1 CPUs in the cluster)")
    assert len(messages) == 2  # the nested block logged nothing
