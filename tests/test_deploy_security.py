"""Security across the repository: the dashboard / Jobs API never listens on 0.0.0.0 without
token auth; no token is written into any file; configs and stores are read without pickle or eval.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from deploy_files import DEPLOY, REPO
from jntk_dist.workflows.config import ConfigError, load_config


# ---- security across the repository -----------------------------------------------------


def test_no_open_unauthenticated_dashboard_anywhere() -> None:
    for path in sorted(DEPLOY.rglob("*")) + sorted((REPO / "configs").glob("*.yaml")):
        if not path.is_file():
            continue
        text = path.read_text()
        assert not re.search(r"dashboard[-_]host[=:\s\"']+0\.0\.0\.0", text), path
        assert "RAY_AUTH_MODE=disabled" not in text and not re.search(
            r"RAY_AUTH_MODE[\"']?\s*[:=]\s*[\"']?disabled", text), path
        assert not re.search(r"RAY_AUTH_TOKEN=[\"']?[0-9a-f]{16,}", text), path


def test_configs_and_stores_are_never_unpickled_or_evaluated(tmp_path: Path) -> None:
    from jntk_dist.workflows.gram import GramJobConfig

    sources = [p for room in ("workflows", "store", "cli")
               for p in sorted((REPO / "jntk_dist" / room).rglob("*.py"))]
    sources += sorted((REPO / "jobs").glob("*.py")) + sorted((REPO / "examples").glob("*.py"))
    for path in sources:
        code = path.read_text()
        for pattern in (r"pickle\.loads?\(", r"^\s*(import|from) (cloud)?pickle", r"\beval\(",
                        r"\bexec\(", r"yaml\.load\(", r"unsafe_load", r"allow_pickle\s*=\s*True",
                        r"yaml\.(Full|Unsafe)?Loader"):
            assert not re.search(pattern, code, re.M), f"{path.relative_to(REPO)}: {pattern}"
    # A YAML tag that would run code under an unsafe loader is just an error.
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.yaml"
    evil.write_text(f"output: !!python/object/apply:os.system ['touch {marker}']\n"
                    "dataset: {name: banknote}\nkernel: {depth: 1}\n")
    with pytest.raises(ConfigError):
        load_config(evil, GramJobConfig)
    assert not marker.exists()
