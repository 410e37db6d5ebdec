"""A sweep file: one base config and named sets of overrides, read and validated before any work.

A sweep file (``configs/experiments/*.yaml``)::

    description: GPT at five sizes at a fixed token budget     # one line, shown in the report
    base: ../shakespeare_char_cpu.yaml                         # a config, relative to this file
    data: {input: ../../data/tinyshakespeare.txt, tokenizer: char}   # optional, see below
    overrides: {train.max_iters: 600, train.eval_interval: 100}      # every run
    runs:                                                      # name -> its overrides, in order
      d32: {model.n_embd: 32, model.n_head: 2}
      d64: {model.n_embd: 64, model.n_head: 4}
    analysis: capacity                                         # optional: gpt.analysis.lessons' figures
    presets:                                                   # --preset gpu
      gpu:
        overrides: {train.max_iters: 5000}                     # merged into overrides
        runs: {d32: null, d512: {model.n_embd: 512}}           # null drops a run; new ones follow

Every run's config is the base config with, in this order, the sweep's ``overrides``, the run's
own, and the command line's ``key=value`` overrides set on it; the sweep then puts the run's output
in ``OUT/NAME`` (``train.out_dir``) and, with a ``data`` section, its data in ``OUT/data``
(``data.dir``), so neither may be overridden. ``data`` holds data_prep's options (``input``,
``tokenizer``, ``vocab_size``, ``val_fraction``, ...: its long flags with ``_`` for ``-``); paths in
``input``, ``hf_data_files`` and a ``tokenizer`` file are relative to the sweep file. Without it
the runs read the base config's ``data.dir``.

Everything is validated here, each run's whole config through :func:`gpt.base.config.config_from_dict`,
so a mistake is one line naming the file and the run before anything is trained.
"""

from __future__ import annotations

import copy
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from gpt.base.config import (
    Config,
    apply_override,
    config_from_dict,
    read_config_file,
    read_yaml_file,
    set_key,
)
from gpt.base.errors import UserError

DATA_DIR = "data"  # OUT/data: the data a sweep prepares
REPORT_DIR = "report"  # OUT/report: the comparison
RESERVED_NAMES = (DATA_DIR, REPORT_DIR)
RUN_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
OWNED_KEYS = ("train.out_dir",)  # set by the sweep; data.dir too when it prepares the data
PATH_OPTIONS = ("input", "hf_data_files")  # data_prep options that hold paths
NOT_DATA_OPTIONS = ("out", "overwrite")  # the sweep decides these


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class PresetFile(_Strict):
    description: str | None = None
    data: dict[str, Any] | None = None
    overrides: dict[str, Any] = Field(default_factory=dict)
    runs: dict[str, dict[str, Any] | None] = Field(default_factory=dict)


class SweepFile(_Strict):
    description: str
    base: str
    data: dict[str, Any] | None = None
    overrides: dict[str, Any] = Field(default_factory=dict)
    runs: dict[str, dict[str, Any] | None] = Field(min_length=1)
    analysis: str | None = None
    presets: dict[str, PresetFile] = Field(default_factory=dict)


@dataclass(frozen=True)
class PlannedRun:
    """One run of a sweep: its name, its own overrides (for the report) and its whole config."""

    name: str
    overrides: dict[str, Any]
    config: Config


@dataclass(frozen=True)
class Sweep:
    path: Path
    name: str  # the file's stem, with the preset: "capacity", "capacity-gpu"
    description: str
    preset: str | None
    out: Path
    data: dict[str, Any] | None  # the data section as written (after the preset), if any
    data_prep_argv: list[str] | None  # data_prep's command line for it, into OUT/data
    runs: list[PlannedRun]
    analysis: str | None

    @property
    def data_dir(self) -> Path:
        return self.out / DATA_DIR

    def run_dir(self, name: str) -> Path:
        return self.out / name


def load_sweep(
    path: Path,
    preset: str | None = None,
    overrides: list[str] = (),
    out: Path | None = None,
    analyses: tuple[str, ...] = (),
) -> Sweep:
    """Read, merge the preset into and validate a sweep file; ``analyses`` are the known names."""
    where = f"sweep file {path}"
    spec = _validated(_read(path), where)
    if preset is not None:
        spec = _with_preset(spec, preset, where)
    name = path.stem if preset is None else f"{path.stem}-{preset}"
    out = out or Path("runs") / name
    if spec.analysis is not None and spec.analysis not in analyses:
        known = ", ".join(analyses) or "none"
        raise UserError(f"{where}: unknown analysis {spec.analysis!r}; known: {known}")
    base = path.parent / spec.base
    base_config = read_config_file(base) if base.is_file() else None
    if base_config is None:
        raise UserError(f"{where}: its base config {base} does not exist; fix base")
    runs = [
        _plan_run(run_name, run_overrides or {}, spec, base_config, overrides, out, where)
        for run_name, run_overrides in spec.runs.items()
    ]
    data_argv = None
    if spec.data is not None:
        data_argv = data_prep_argv(spec.data, path.parent, out / DATA_DIR, where)
    return Sweep(
        path=path,
        name=name,
        description=spec.description,
        preset=preset,
        out=out,
        data=spec.data,
        data_prep_argv=data_argv,
        runs=runs,
        analysis=spec.analysis,
    )


def _read(path: Path) -> dict:
    raw = read_yaml_file(path, "sweep file", "one such as configs/experiments/*.yaml")
    if not isinstance(raw, dict):
        raise UserError(f"sweep file {path} must hold a mapping with description, base and runs")
    return raw


def _validated(raw: dict, where: str) -> SweepFile:
    try:
        return SweepFile.model_validate(raw)
    except ValidationError as error:
        raise UserError(f"{where}: {_describe(error)}") from None


def _describe(error: ValidationError) -> str:
    problems = []
    for detail in error.errors():
        key = ".".join(str(part) for part in detail["loc"])
        if detail["type"] == "extra_forbidden":
            valid = "description, base, data, overrides, runs, analysis, presets"
            if len(detail["loc"]) > 1:  # inside a preset
                valid = "description, data, overrides, runs"
            problems.append(f"unknown key '{key}' (valid keys: {valid})")
        elif detail["type"] == "missing":
            problems.append(f"'{key}' is missing")
        else:
            problems.append(f"'{key}': {detail['msg'].lower()}")
    return "; ".join(problems)


def _with_preset(spec: SweepFile, preset: str, where: str) -> SweepFile:
    """The sweep with preset ``preset`` merged over it: its overrides and data options key by key,
    its runs run by run (a new name is added at the end, null drops a run)."""
    if preset not in spec.presets:
        known = ", ".join(spec.presets) or "none"
        raise UserError(f"{where} has no preset {preset!r}; its presets: {known}")
    chosen = spec.presets[preset]
    runs = {name: dict(overrides or {}) for name, overrides in spec.runs.items()}
    for name, overrides in chosen.runs.items():
        if overrides is None:
            if name not in runs:
                raise UserError(f"{where}: preset {preset!r} drops run {name!r}, which it lacks")
            del runs[name]
        else:
            runs[name] = {**runs.get(name, {}), **overrides}
    if not runs:
        raise UserError(f"{where}: preset {preset!r} drops every run")
    data = spec.data
    if chosen.data is not None:
        data = {**(spec.data or {}), **chosen.data}
    return spec.model_copy(
        update={
            "description": chosen.description or spec.description,
            "data": data,
            "overrides": {**spec.overrides, **chosen.overrides},
            "runs": runs,
        }
    )


def _plan_run(
    name: str,
    own: dict[str, Any],
    spec: SweepFile,
    base_config: dict,
    command_line: list[str],
    out: Path,
    where: str,
) -> PlannedRun:
    if not RUN_NAME.match(name) or name in RESERVED_NAMES:
        raise UserError(
            f"{where}: run name {name!r} must be letters, digits, '_', '-' or '.' (not starting "
            f"with one of the last three) and not {' or '.join(RESERVED_NAMES)}"
        )
    owned = OWNED_KEYS + (("data.dir",) if spec.data is not None else ())
    raw = copy.deepcopy(base_config)
    try:
        for source, settings in (("overrides", spec.overrides), (f"run {name}", own)):
            for key, value in settings.items():
                if key in owned:
                    raise UserError(
                        f"{source} sets {key}, which the sweep sets itself (each run's folder is "
                        "OUT/NAME, the prepared data OUT/data); remove it, or pass --out"
                    )
                set_key(raw, str(key), value, f"{source}: key {key!r}")
        for override in command_line:
            apply_override(raw, override)
        set_key(raw, "train.out_dir", str(out / name))
        if spec.data is not None:
            set_key(raw, "data.dir", str(out / DATA_DIR))
        config = config_from_dict(raw)
    except UserError as error:
        raise UserError(f"{where}, run {name}: {error}") from None
    return PlannedRun(name, own, config)


def data_prep_argv(data: dict[str, Any], base: Path, out: Path, where: str) -> list[str]:
    """data_prep's command line for a sweep's ``data`` section, checked by data_prep's own parser."""
    from data_prep.options import build_parser  # after the sweep file itself is known good

    argv = []
    for key, value in data.items():
        if key in NOT_DATA_OPTIONS:
            raise UserError(
                f"{where}: data.{key} is the sweep's to set (the data goes to OUT/data)"
            )
        values = value if isinstance(value, list) else [value]
        if key in PATH_OPTIONS or (key == "tokenizer" and value not in ("char", "bpe")):
            values = [os.path.normpath(base / str(v)) for v in values]
        flag = "--" + key.replace("_", "-")
        if value is True:
            argv.append(flag)
        elif value not in (False, None):
            argv += [flag, *map(str, values)]
    argv += ["--out", str(out)]
    try:
        build_parser().parse_args(argv)
    except UserError as error:
        raise UserError(f"{where}: its data section: {error}") from None
    return argv
