"""Typed job configs, validated once at the edge (YAML file + ``--set key.sub=value`` overrides).

Every job (``jntk gram``, the solvers, the analyses) describes itself with a subclass of
:class:`JobConfig`. Unknown keys are errors that name the key; so are wrong types and values.
Inner code receives plain values taken from the validated model.

    cfg = load_config("configs/quickstart.yaml", GramJobConfig, overrides=["kernel.depth=5"])

Shared pieces: :class:`DatasetSpec` (a named dataset of :mod:`jntk_dist.data` or a file) and
:class:`KernelSpec` (kind, depth, activation, dtype, λ).
"""

from __future__ import annotations

import difflib
import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, Mapping, Sequence, TypeVar

import numpy as np
import yaml
from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator

from ..errors import ConfigError, ConvergenceError, InputError, ResourceError

__all__ = [
    "ConfigError",
    "InexactResultError",
    "InputError",
    "MAX_DEPTH",
    "check_max_depth",
    "JobError",
    "JobConfig",
    "DatasetSpec",
    "KernelSpec",
    "LoadedData",
    "load_config",
    "read_config",
    "validate_config",
    "apply_overrides",
    "config_hash",
    "config_diff",
    "OutputJobConfig",
    "OutputPath",
    "StoreOutput",
    "StoreLocation",
    "ray_job_submission_id",
]

ConfigT = TypeVar("ConfigT", bound="JobConfig")


def _local_output(value: Any) -> Any:
    if isinstance(value, str) and "://" in value:
        raise ValueError(f"object-store URLs are not supported for this key ({value!r}): it "
                         "takes a local path, or one on a file system all nodes share (job "
                         "outputs take URLs; their scratch files, e.g. checkpoints, do not)")
    return value


def _store_output(value: Any) -> Any:
    """A URL stays a string (checked to name an fsspec protocol); anything else is a path."""
    if isinstance(value, str) and "://" in value:
        import fsspec

        scheme = value.split("://", 1)[0].lower()
        if scheme not in fsspec.available_protocols():
            raise ValueError(f"unknown URL scheme {scheme!r} in {value!r}: not an fsspec "
                             "protocol (use a path, file://, s3://, gs://, …)")
        return value
    return Path(value) if isinstance(value, str) else value


def ray_job_submission_id() -> str | None:
    """The submission id when this process is the driver of a ``ray job submit`` job, else None."""
    raw = os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR")
    if not raw:
        return None
    try:
        metadata = json.loads(raw).get("metadata") or {}
    except (json.JSONDecodeError, AttributeError):
        metadata = {}
    return str(metadata.get("job_submission_id") or "(unknown id)")


def _warn_relative_in_ray_job(value: Any) -> Any:
    if isinstance(value, Path) and not value.is_absolute():
        job = ray_job_submission_id()
        if job is not None:
            logging.getLogger(__name__).warning(
                "output %r is a relative path inside the Ray job %s: it resolves to %s, in the "
                "job's working directory (under `ray job submit --working-dir` Ray's unpacked "
                "copy, deleted with the session). Use an absolute path on a shared file system "
                "or an object-store URL (s3://, gs://) for results you want to keep",
                str(value), job, Path(value).resolve())
    return value


OutputPath = Annotated[Path, BeforeValidator(_local_output),
                       AfterValidator(_warn_relative_in_ray_job)]
"""A local or shared-file-system path written by a job (URLs are refused, not mangled): scratch
files such as checkpoints. Job outputs are :data:`StoreOutput` (a path or a URL).

A relative path inside a ``ray job submit`` job logs a warning (it lands in Ray's temporary
working directory)."""

StoreOutput = Annotated[Path | str, BeforeValidator(_store_output),
                        AfterValidator(_warn_relative_in_ray_job)]
"""A Zarr store's location: a local path (``Path``) or an fsspec URL (``str``: s3://, gs://,
file://…); relative paths in a Ray job warn as for :data:`OutputPath`."""

StoreLocation = Annotated[Path | str, BeforeValidator(_store_output)]
"""A store a job reads (e.g. the analyses' ``store:``): a local path or an fsspec URL."""


JobError = ResourceError
"""A job that could not finish for a reason its message names (workers, memory, disk): the
package's :class:`~jntk_dist.errors.ResourceError` under its older name."""


class InexactResultError(ConvergenceError):
    """A solve, eigendecomposition or λ_min missed its tolerance: its results are written with
    ``converged: false``, and the job fails unless the config says ``accept_inexact: true``."""


class JobConfig(BaseModel):
    """Base of every job config: unknown keys are errors, assignments are validated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict (paths as strings), e.g. for a store's attributes."""
        return self.model_dump(mode="json")


class OutputJobConfig(JobConfig):
    """A job whose results (and the stores it reads) are local paths or fsspec URLs.

    ``storage_options`` go to fsspec for every URL of the job (its ``output`` and the fields
    named in :attr:`url_fields`, e.g. an input ``store``): ``endpoint_url``, ``profile``,
    ``anon`` …; keep secrets in the environment. Their values are never recorded in results
    (:meth:`recorded`).
    """

    url_fields: ClassVar[tuple[str, ...]] = ("output",)
    storage_options: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _options_need_a_url(self) -> "OutputJobConfig":
        from ..store.locations import is_url

        if self.storage_options and not any(is_url(getattr(self, f, None))
                                            for f in self.url_fields):
            raise ValueError(f"storage_options apply to URLs (s3://, gs://, …); none of "
                             f"{', '.join(self.url_fields)} is one")
        return self

    def options_for(self, location: Any) -> dict[str, Any] | None:
        """The fsspec options for ``location``: ``storage_options`` for a URL, None for a path."""
        from ..store.locations import is_url

        return dict(self.storage_options) if is_url(location) else None

    def recorded(self) -> dict[str, Any]:
        """The config as results record it: storage option values left out (credentials)."""
        data = self.to_dict()
        data["storage_options"] = {k: "<not recorded>" for k in data["storage_options"]}
        return data


# ---- data -------------------------------------------------------------------------------


@dataclass(frozen=True)
class LoadedData:
    """Inputs and labels of a dataset: X float64 (n, d0), y float64 (n,)."""

    X: np.ndarray
    y: np.ndarray
    name: str
    feature_names: tuple[str, ...] = ()  # the input columns' names (named datasets)


class DatasetSpec(BaseModel):
    """A dataset: ``name`` (+ ``options``) of :func:`jntk_dist.data.load_dataset`, or ``path``.

    ``path`` is a ``.npz`` with arrays ``X`` (n, d0) and ``y`` (n,), or a ``.npy`` / ``.csv``
    holding one (n, d0+1) numeric table whose last column is y (a CSV header line is allowed).
    A relative path is taken relative to the config file's folder. File data are used as they
    are (no preprocessing): the kernels expect unit-norm rows.
    """

    model_config = ConfigDict(extra="forbid")

    name: str | None = None
    options: dict[str, Any] = Field(default_factory=dict)
    path: Path | None = None

    @field_validator("path")
    @classmethod
    def _resolve_path(cls, value: Path | None, info: ValidationInfo) -> Path | None:
        if value is None:
            return None
        base = (info.context or {}).get("base_dir")
        if not value.is_absolute() and base is not None:
            value = Path(base) / value
        if value.suffix.lower() not in (".npz", ".npy", ".csv"):
            raise ValueError(f"dataset file must be .npz, .npy or .csv, got {value.name!r}")
        return value

    @model_validator(mode="after")
    def _one_source(self) -> "DatasetSpec":
        if (self.name is None) == (self.path is None):
            raise ValueError("give exactly one of 'name' (a dataset of jntk_dist.data) or 'path'")
        if self.path is not None and self.options:
            raise ValueError("'options' apply to a named dataset, not to 'path'")
        return self

    def load(self) -> LoadedData:
        """Read the dataset (X as float64 (n, d0), y as float64 (n,))."""
        if self.name is not None:
            from ..data import load_dataset  # imported lazily: data is optional for configs

            ds = load_dataset(self.name, **self.options)
            return LoadedData(np.asarray(ds.X, dtype=np.float64),
                              np.asarray(ds.y, dtype=np.float64), self.name,
                              tuple(ds.feature_names))
        path = self.path
        assert path is not None
        from ..data import read_xy_file

        X, y = read_xy_file(path)
        return LoadedData(X, y, path.stem)


# ---- kernel -----------------------------------------------------------------------------


MAX_DEPTH = 1000
"""The deepest kernel a config may ask for. Measured (2026-12-07, ``jntk_dist.nngp`` / ``ntk``
of 4 unit points in d0 = 3): by depth 1000 the normalised NNGP and NTK of gelu and the NNGP of
erf equal their depth-2000 values to 1e-30 (at depth 300 to 1e-9): the fields have reached
their fixed point, so a deeper network gives the same kernel; beyond it the erf NTK overflows
float64, and the recursion costs one layer step per depth (depth 10⁸ ran for minutes with no
output). A bound with this reason, not a limit of the code."""


def check_max_depth(depth: int) -> int:
    """``depth`` when it is at most :data:`MAX_DEPTH`, else a :class:`ConfigError` saying why."""
    if depth > MAX_DEPTH:
        raise ConfigError(f"depth {depth} > {MAX_DEPTH}: by depth {MAX_DEPTH} the kernel's "
                          "fields have reached their fixed point (deeper networks give the "
                          "same kernel to float64 precision; see docs/store.md)")
    return depth


class KernelSpec(BaseModel):
    """Which kernel: ``kind`` jntk (Θ) or nngp (Jacobian NNGP Σ^(L)), depth L ≥ 1, activation.

    ``lam`` is the Jacobian-regularisation weight λ readers apply by default (Θ_λ = ΛΘΛ); stores
    keep the unscaled kernel.
    """

    model_config = ConfigDict(extra="forbid")

    kind: Literal["jntk", "nngp"] = "jntk"
    depth: int = Field(ge=1)
    activation: str = "gelu"
    dtype: Literal["float64", "float32"] = "float64"
    lam: float | None = Field(default=None, ge=0.0, allow_inf_nan=False)

    @field_validator("activation")
    @classmethod
    def _known_smooth_activation(cls, value: str) -> str:
        from ..kernels import get_activation

        act = get_activation(value)  # raises ValueError naming the accepted names
        act.require_smooth()  # Jacobian kernels need φ'' Lipschitz
        return act.name

    @field_validator("depth")
    @classmethod
    def _depth_below_fixed_point(cls, value: int) -> int:
        return check_max_depth(value)


# ---- loading ----------------------------------------------------------------------------


def apply_overrides(data: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """Apply ``key.sub=value`` strings (values parsed as YAML) to a nested dict, in place."""
    for item in overrides:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE, e.g. kernel.depth=3")
        try:
            value = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError as err:
            raise ConfigError(f"--set {item!r}: value is not valid YAML ({err})") from None
        node = data
        parts = key.split(".")
        for depth, part in enumerate(parts[:-1]):
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            elif not isinstance(child, dict):
                where = ".".join(parts[: depth + 1])
                raise ConfigError(f"--set {item!r}: {where!r} is {child!r}, not a section")
            node = child
        node[parts[-1]] = value
    return data


def _model_at(model_cls: Any, loc: Sequence[Any]) -> Any:
    """The pydantic model class that holds the key at ``loc`` (None when it cannot be told)."""
    for part in loc:
        fields = getattr(model_cls, "model_fields", None)
        if fields is None:
            return None
        if isinstance(part, int):  # an item of a list field: stay on the list's item model
            continue
        if part not in fields:
            return None
        model_cls = _inner_model(fields[part].annotation)
    return model_cls if hasattr(model_cls, "model_fields") else None


def _inner_model(annotation: Any) -> Any:
    """The first pydantic model inside an annotation (``X | None``, ``list[X]``, …)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()):
        found = _inner_model(arg)
        if found is not None:
            return found
    return None


def _did_you_mean(model_cls: Any, loc: Sequence[Any]) -> str:
    """`` — did you mean 'kernel'?`` for a mistyped key, or ''."""
    holder = _model_at(model_cls, loc[:-1])
    if holder is None or not loc:
        return ""
    close = difflib.get_close_matches(str(loc[-1]), list(holder.model_fields), n=1, cutoff=0.6)
    return f" — did you mean {close[0]!r}?" if close else ""


def _format_errors(err: ValidationError, source: str, model_cls: Any = None) -> str:
    lines = []
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"]) or "(top level)"
        if e["type"] == "extra_forbidden":
            lines.append(f"  {key}: unknown key{_did_you_mean(model_cls, e['loc'])}")
        elif e["type"] == "missing":
            lines.append(f"  {key}: missing (a required key)")
        elif not e["loc"]:  # a check across keys: its message names them; the input is everything
            lines.append(f"  {key}: {e['msg']}")
        else:
            lines.append(f"  {key}: {e['msg']} (got {e.get('input')!r})")
    return f"invalid config {source}:\n" + "\n".join(lines)


def _yaml_problem(path: Path, err: yaml.YAMLError) -> str:
    """One line naming the file, the line and column, and what is wrong."""
    mark = getattr(err, "problem_mark", None)
    where = f", line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    problem = getattr(err, "problem", None) or str(err)
    context, start = getattr(err, "context", None), getattr(err, "context_mark", None)
    if context and start is not None:
        context += f" (line {start.line + 1}, column {start.column + 1})"
    what = f"{context}: {problem}" if context else problem
    return f"config {path}{where}: not valid YAML ({' '.join(what.split())})"


def _config_text(path: Path) -> str:
    """The text of a config file, or a one-line error naming what is wrong with the path."""
    if not path.exists():
        raise FileNotFoundError(f"config file {path} does not exist")
    if path.is_dir():
        raise ConfigError(f"config {path} is a folder, not a YAML file")
    if not path.is_file():
        raise ConfigError(f"config {path} is not a regular file (a device, a pipe or a socket)")
    try:
        return path.read_text(encoding="utf-8")
    except PermissionError:
        raise ConfigError(f"config {path} cannot be read: permission denied") from None
    except UnicodeDecodeError as err:
        raise ConfigError(f"config {path} is not a UTF-8 text file (byte {err.start}: "
                          f"{err.reason})") from None
    except OSError as err:
        raise ConfigError(f"config {path} cannot be read: {err.strerror or err}") from None


def read_config(source: str | Path | Mapping[str, Any]
                ) -> tuple[dict[str, Any], str, Path | None]:
    """A config's keys as a plain dict, how to name it in errors, and the folder its relative
    paths are taken from: read from a YAML file (or copied from a mapping); no model needed, so
    a wrong path or bad YAML is answered before any job module is imported."""
    if isinstance(source, Mapping):
        return json.loads(json.dumps(dict(source), default=str)), "(dict)", None
    path = Path(source)
    try:
        data = yaml.safe_load(_config_text(path)) or {}
    except yaml.YAMLError as err:
        raise ConfigError(_yaml_problem(path, err)) from None
    if not isinstance(data, dict):
        raise ConfigError(f"config {path}: top level must be a mapping of keys, "
                          f"got {type(data).__name__}")
    return data, str(path), path.resolve().parent


def validate_config(read: tuple[dict[str, Any], str, Path | None], model_cls: type[ConfigT],
                    overrides: Sequence[str] = ()) -> ConfigT:
    """What :func:`read_config` returned, plus ``--set`` overrides, validated into ``model_cls``."""
    data, label, base_dir = read
    apply_overrides(data, overrides)
    if overrides:
        label += f" with --set {' '.join(overrides)}"
    try:
        return model_cls.model_validate(data, context={"base_dir": base_dir})
    except ValidationError as err:
        raise ConfigError(_format_errors(err, label, model_cls)) from None


def load_config(source: str | Path | Mapping[str, Any], model_cls: type[ConfigT],
                overrides: Sequence[str] = ()) -> ConfigT:
    """Validate a YAML file (or a dict) plus ``key.sub=value`` overrides into ``model_cls``.

    Errors are :class:`ConfigError` (a ``ValueError``) naming the file and each offending key.
    """
    return validate_config(read_config(source), model_cls, overrides)


def config_hash(config: BaseModel | Mapping[str, Any]) -> str:
    """Stable SHA-256 of a config's canonical JSON form."""
    data = config.model_dump(mode="json") if isinstance(config, BaseModel) else config
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()


def config_diff(old: Mapping[str, Any], new: Mapping[str, Any], prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two nested config dicts, as 'key: old -> new'."""
    out: list[str] = []
    for key in sorted(set(old) | set(new), key=str):
        a, b = old.get(key, "<absent>"), new.get(key, "<absent>")
        name = f"{prefix}{key}"
        if isinstance(a, Mapping) and isinstance(b, Mapping):
            out.extend(config_diff(a, b, prefix=f"{name}."))
        elif a != b:
            out.append(f"{name}: {a!r} -> {b!r}")
    return out
