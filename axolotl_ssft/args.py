"""`SSFTArgs`: the pydantic model of the plugin's top-level YAML keys, and the checks that refuse what cannot work.

The `ssft_*` fields are generated from `trl_ssft.config.SSFTFields` (same names, defaults and help
texts as `SSFTConfig`). Axolotl-only keys (column mapping of one-column-group-per-teacher datasets,
adapted to `trl_ssft.traces.columns.row_from_columns`, help texts from `trl_ssft.traces`) are declared in
`AXOLOTL_ONLY_FIELDS`.

Axolotl merges this model into its own config model, so the validator below sees the whole config
(a plain dict) and can refuse options that break "one question per row" (the table of recipe options and
their refusals: `trl_ssft.recipe_options`).
"""

from __future__ import annotations

import difflib
import typing
from dataclasses import MISSING, fields
from typing import Any

from pydantic import BaseModel, Field, create_model, model_validator

from trl_ssft.config import SSFTFields, validate_ssft_fields
from trl_ssft.gfpo.fields import GFPO_FIELD_NAMES, GFPOFields, gfpo_settings
from trl_ssft.recipe_options import AXOLOTL, check_recipe
from trl_ssft.traces.sources import SourceSpec
from trl_ssft.traces.verify import VerifyOptions

# Dataset `type:` values that select the ssft strategy (the plugin rewrites the short name).
SSFT_DATASET_TYPES = ("ssft", "axolotl_ssft.ssft")
SSFT_STRATEGY = "axolotl_ssft.ssft"
# `ssft_match_tokens: null` survives Axolotl's config round trip as this (longer than any trace).
WHOLE_TRACE = 2**31 - 1

def _help(cls, name: str) -> str:
    """The help string of a `trl_ssft.traces` option (one text for the CLI, the Python API and this schema)."""
    return next(f.metadata["help"] for f in fields(cls) if f.name == name)


AXOLOTL_ONLY_FIELDS: dict[str, tuple[Any, Any, str]] = {
    "ssft_prompt_column": (
        typing.Optional[str], None,
        "Axolotl only. Column holding the question (a string, or a list of chat messages). Set it with "
        "`ssft_trace_columns` to read a one-column-group-per-teacher dataset (`trl_ssft.traces.sources."
        "row_from_columns`); leave both unset for the ssft format (`prompt`, `traces`).",
    ),
    "ssft_trace_columns": (
        typing.Optional[list[str]], None,
        "Axolotl only. One column per teacher holding its thinking (with `ssft_final_columns`) or its complete "
        "trace. Empty traces are dropped (counted); a row left with no trace is dropped. `trace_sources` = "
        "`ssft_trace_sources`, or the column names.",
    ),
    "ssft_final_columns": (
        typing.Optional[list[str]], None,
        "Axolotl only. " + _help(SourceSpec, "final_columns") + " Each trace is laid out by "
        "`ssft_trace_template`, so it ends with its answer.",
    ),
    "ssft_grade_columns": (typing.Optional[list[str]], None, "Axolotl only. " + _help(SourceSpec, "grade_columns")),
    "ssft_trace_sources": (typing.Optional[list[str]], None,
                           "Axolotl only. One teacher label per trace column (default: the column names)."),
    "ssft_answer_column": (typing.Optional[str], None, "Axolotl only. " + _help(SourceSpec, "answer_column")),
    "ssft_answer_from": (typing.Optional[str], None, "Axolotl only. " + _help(SourceSpec, "answer_from")),
    "ssft_trace_template": (typing.Optional[str], "think", "Axolotl only. " + _help(VerifyOptions, "template")),
    "ssft_system_prompt": (
        typing.Optional[str], None,
        "Axolotl only. With `ssft_prompt_column` holding plain strings: the question becomes a chat "
        "[system, user] conversation with this system message (rendered with the chat template).",
    ),
}
COLUMN_KEYS = tuple(AXOLOTL_ONLY_FIELDS)  # the column mapping: part of the prepared-dataset cache key


# Every rule about a recipe option (refused, kept, mapped, not applied) lives in `trl_ssft.recipe_options.OPTIONS`;
# packing options are mapped to the padding-free set loss by `axolotl_ssft.packing.map_packing_options`.


def _field_specs(dataclass_type) -> dict[str, tuple[Any, Any]]:
    """Pydantic field specs (type, default, help) of a dataclass of options (`SSFTFields`, `GFPOFields`)."""
    hints = typing.get_type_hints(dataclass_type)
    specs = {}
    for f in fields(dataclass_type):
        default = f.default if f.default is not MISSING else None
        specs[f.name] = (hints[f.name], Field(default=default, description=f.metadata.get("help", "")))
    return specs


GFPO_SWITCH_HELP = ("With `rl: grpo`: run GFPO (Global Forking Policy Optimization, stage 2) on an SSFT model: "
                    "GRPO that trains only the choice of the forking token (`axolotl_ssft.gfpo`).")


def _gfpo_field_specs() -> dict[str, tuple[Any, Any]]:
    return {"gfpo": (typing.Optional[bool], Field(default=None, description=GFPO_SWITCH_HELP)),
            **_field_specs(GFPOFields)}


def _ssft_field_specs() -> dict[str, tuple[Any, Any]]:
    specs = _field_specs(SSFTFields)
    for name, (tp, default, help_text) in AXOLOTL_ONLY_FIELDS.items():
        specs[name] = (tp, Field(default=default, description=help_text))
    return specs


SSFT_KEYS: tuple[str, ...] = tuple(f.name for f in fields(SSFTFields)) + tuple(AXOLOTL_ONLY_FIELDS)


def ssft_settings(cfg: Any):
    """The SSFT values of an Axolotl cfg (dict or DictDefault) as a namespace, defaults for absent/null keys.

    `ssft_match_tokens: null` (whole traces) is turned into `WHOLE_TRACE` by the plugin's `register`,
    because Axolotl drops null values when it validates the config.
    """
    from types import SimpleNamespace

    values = {}
    for f in fields(SSFTFields):
        v = cfg.get(f.name)
        values[f.name] = f.default if v is None else v
    for name, (_, default, _) in AXOLOTL_ONLY_FIELDS.items():
        v = cfg.get(name)
        values[name] = default if v is None else v
    return SimpleNamespace(**values)


PLUGIN_CLASS = "axolotl_ssft.plugin.SSFTPlugin"


def plugin_listed(cfg: Any) -> bool:
    """True when an `SSFTPlugin` (or a subclass) is registered for this config's `plugins:`.

    Recognised by its qualified class name, so that the dataset strategy (`ssft.py`) need not import
    `plugin.py`, which imports it (no import cycle).
    """
    try:
        from axolotl.integrations.base import PluginManager
    except ImportError:  # pragma: no cover
        return False
    plugins = PluginManager.get_instance().plugins
    for name in cfg.get("plugins") or []:
        classes = type(plugins.get(name)).__mro__
        if any(f"{c.__module__}.{c.__qualname__}" == PLUGIN_CLASS for c in classes):
            return True
    return False


def misspelt_keys(cfg: dict) -> list[str]:
    """Top-level keys that look like SSFT options but are not one (e.g. `ssft_num_fork_token`)."""
    bad = []
    for key in cfg:
        if isinstance(key, str) and key.lower().startswith("ssft") and key not in SSFT_KEYS:
            bad.append(key)
    return bad


def _misspelt_message(bad: list[str]) -> str:
    parts = []
    for key in bad:
        close = difflib.get_close_matches(key, SSFT_KEYS, n=1)
        parts.append(f"`{key}`" + (f" (did you mean `{close[0]}`?)" if close else ""))
    return (
        f"Unknown SSFT option(s): {', '.join(parts)}. Axolotl would silently drop them. "
        f"Known options: {', '.join(SSFT_KEYS)}."
    )


def _dataset_type(ds: Any) -> Any:
    if isinstance(ds, dict):
        return ds.get("type")
    return getattr(ds, "type", None)


def check_ssft_config(cfg: dict) -> None:
    """Raise `ValueError` explaining the first setting that cannot work with SSFT (whole raw config)."""
    bad = misspelt_keys(cfg)
    if bad:
        raise ValueError(_misspelt_message(bad))
    check_recipe(cfg, AXOLOTL)
    for split in ("datasets", "test_datasets"):
        for k, ds in enumerate(cfg.get(split) or []):
            t = _dataset_type(ds)
            if t not in SSFT_DATASET_TYPES:
                raise ValueError(
                    f"`{split}[{k}]` has `type: {t}`, but with the SSFT plugin every dataset must be `type: ssft` "
                    "(one question per row, with its traces). Convert the dataset, or drop the plugin."
                )
    if not cfg.get("datasets"):
        raise ValueError("The SSFT plugin is listed but there is no `datasets:` entry with `type: ssft`.")
    if cfg.get("ssft_trace_columns") and not cfg.get("ssft_prompt_column"):
        raise ValueError("`ssft_trace_columns` needs `ssft_prompt_column` (the column with the question).")
    if cfg.get("ssft_prompt_column") and not cfg.get("ssft_trace_columns"):
        raise ValueError("`ssft_prompt_column` needs `ssft_trace_columns` (the columns with one trace each).")
    if cfg.get("ssft_prompt_column"):
        from .ssft import column_spec

        try:
            column_spec(ssft_settings(cfg))
        except ValueError as e:
            raise ValueError(f"SSFT column mapping (ssft_*_columns, ssft_trace_template): {e}") from e
    validate_ssft_fields(ssft_settings(cfg))


GFPO_KEYS: tuple[str, ...] = ("gfpo", *GFPO_FIELD_NAMES)


def gfpo_requested(cfg: Any) -> bool:
    """True when the config asks for GFPO (`gfpo: true`); `check_gfpo_config` then requires `rl: grpo`."""
    return bool(cfg.get("gfpo"))


def check_gfpo_config(cfg: dict) -> None:
    """Raise `ValueError` for a GFPO config that cannot work (whole raw config), before any model is loaded."""
    from types import SimpleNamespace

    from trl_ssft.gfpo.mixin import check_grpo_args

    bad = [k for k in cfg if isinstance(k, str) and k.lower().startswith("gfpo") and k not in GFPO_KEYS]
    if bad:
        close = {k: difflib.get_close_matches(k, GFPO_KEYS, n=1) for k in bad}
        raise ValueError("Unknown GFPO option(s): " + ", ".join(
            f"`{k}`" + (f" (did you mean `{c[0]}`?)" if c else "") for k, c in close.items())
            + f". Known options: {', '.join(GFPO_KEYS)}.")
    if str(cfg.get("rl") or "").lower() != "grpo":
        raise ValueError(f"`gfpo: true` needs `rl: grpo` (GFPO is GRPO on the forking token), got `rl: {cfg.get('rl')}`")
    for split in ("datasets", "test_datasets"):
        for k, ds in enumerate(cfg.get(split) or []):
            if _dataset_type(ds) in SSFT_DATASET_TYPES:
                raise ValueError(f"`{split}[{k}]` has `type: ssft`, but GFPO reads RL prompt rows (`prompt` plus the "
                                 "reward's columns, e.g. `answer`); leave `type` out or give an RL transform")
    trl = {k: v for k, v in (cfg.get("trl") or {}).items() if v is not None}
    trl["use_liger_kernel"] = trl.pop("use_liger_loss", False)
    check_grpo_args(SimpleNamespace(**trl), gfpo_settings(cfg))


_SSFTArgsBase = create_model("_SSFTArgsBase", __base__=BaseModel,  # type: ignore[call-overload]
                             **_ssft_field_specs(), **_gfpo_field_specs())


class SSFTArgs(_SSFTArgsBase):  # type: ignore[misc, valid-type]
    """Top-level Axolotl keys of the SSFT plugin (see `trl_ssft.config.SSFTFields` for the `ssft_*` ones)."""

    @model_validator(mode="before")
    @classmethod
    def _refuse_what_cannot_work(cls, data: Any) -> Any:
        if isinstance(data, dict):
            check_gfpo_config(data) if gfpo_requested(data) else check_ssft_config(data)
        return data
