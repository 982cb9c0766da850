"""Write examples/explore_store.ipynb from the '# %%' cells of examples/explore_store.py.

    python examples/sync_notebook.py

The script is the source of truth (it runs in the tests); the notebook is generated from it,
without outputs, so the two cannot drift apart (tests/test_examples.py compares them). A code
cell headed ``# %% tags=["parameters"]`` carries that tag (papermill's parameters cell).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

HERE = Path(__file__).resolve().parent


def cells_of(script: str) -> list[dict]:
    """Notebook cells (nbformat 4) of a percent-format script."""
    cells = []
    for chunk in re.split(r"^# %%", script, flags=re.M)[1:]:
        header, _, body = chunk.partition("\n")
        body = body.strip("\n")
        tags = re.search(r"tags=(\[.*\])", header)  # '# %% tags=["parameters"]' (papermill)
        metadata = {"tags": json.loads(tags[1])} if tags else {}
        if header.strip() == "[markdown]":
            lines = [line[2:] if line.startswith("# ") else line.lstrip("#")
                     for line in body.splitlines()]
            source = "\n".join(lines)
            cells.append({"cell_type": "markdown", "metadata": {},
                          "source": source.splitlines(keepends=True)})
        else:
            cells.append({"cell_type": "code", "execution_count": None, "metadata": metadata,
                          "outputs": [], "source": body.splitlines(keepends=True)})
    return cells


def main() -> None:
    """Regenerate examples/explore_store.ipynb from examples/explore_store.py."""
    script = (HERE / "explore_store.py").read_text()
    notebook = {
        "cells": cells_of(script),
        "metadata": {
            "kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
            "language_info": {"name": "python", "pygments_lexer": "ipython3"},
        },
        "nbformat": 4,
        "nbformat_minor": 5,
    }
    for i, cell in enumerate(notebook["cells"]):
        cell["id"] = f"cell-{i:02d}"
    (HERE / "explore_store.ipynb").write_text(json.dumps(notebook, indent=1, ensure_ascii=False)
                                              + "\n")


if __name__ == "__main__":
    main()
