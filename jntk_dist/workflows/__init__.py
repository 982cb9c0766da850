"""The jobs: one module per job, each a typed config and a ``run`` that returns a result, all
listed in one registry (:mod:`.registry`) that the CLI, ``jobs/*.py`` and the paper
reproduction use.

* :mod:`.gram` — Gram tiles on Ray actors into a Zarr store (``jntk gram``);
* :mod:`.solve`, :mod:`.eigen`, :mod:`.assumption8`, :mod:`.eigenfeatures` — the analyses, on a
  store or on small data (what they share: :mod:`.problem`);
* :mod:`.drift` — grids of finite networks on Ray Train (``jntk drift``);
* :mod:`.kernel` — one dataset's kernel to a file in this process (``jntk kernel``);
* :mod:`.reproduce` — the paper's experiments (``jntk reproduce``);
* :mod:`.config` — the typed configs, validated once at the edge.
"""
