"""Load a user's reward function from a Python file, with verl's contract and config keys.

Config (either spelling; the second is verl's newer one):

    custom_reward_function:           # or  reward.custom_reward_function:
      path: my_reward.py              # a .py file, "file://my_reward.py", or "pkg://my_pkg.my_module"
      name: compute_score             # default compute_score
      reward_kwargs: {scale: 2.0}     # optional, passed to every call as keyword arguments

The function is called once per response as

    fn(data_source=..., solution_str=..., ground_truth=..., extra_info=..., **reward_kwargs)

and returns a number, or a dict with a "score" key whose other keys are logged as metrics. Model output
only ever reaches the function as a string argument; nothing here evaluates it.
"""

import importlib
import importlib.util
import inspect
import math
import numbers
import os
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from rl_trainer.errors import UserError

DEFAULT_FN_NAME = "compute_score"
_PKG_PREFIX = "pkg://"
_FILE_PREFIX = "file://"


class CustomRewardFn:
    """A loaded user reward function: merges `reward_kwargs`, turns its failures into one-line `UserError`s.

    Calls return a float, or a dict whose "score" is a float (other keys untouched).
    """

    def __init__(self, fn: Callable[..., Any], path: str, name: str, reward_kwargs: Mapping[str, Any] | None = None):
        self.fn = fn
        self.path = path
        self.name = name
        self.reward_kwargs = dict(reward_kwargs or {})

    def __repr__(self) -> str:
        return f"CustomRewardFn({self.path}:{self.name}, reward_kwargs={self.reward_kwargs})"

    def __call__(
        self,
        data_source: str,
        solution_str: str,
        ground_truth: Any,
        extra_info: dict | None = None,
        **kwargs: Any,
    ) -> float | dict:
        where = f"custom reward function {self.path}:{self.name}"
        call_kwargs = dict(data_source=data_source, solution_str=solution_str, ground_truth=ground_truth)
        call_kwargs.update(extra_info=extra_info, **kwargs)
        # As in verl, configured reward_kwargs win over call-time kwargs.
        call_kwargs.update(self.reward_kwargs)
        try:
            result = self.fn(**call_kwargs)
        except Exception as e:
            source_file = getattr(getattr(self.fn, "__code__", None), "co_filename", self.path)
            raise UserError(
                f"{where} raised {type(e).__name__} at {_raise_site(e, source_file)} while scoring "
                f"data_source={data_source!r}: {_first_line(e)}; fix the function"
            ) from e

        if isinstance(result, Mapping):
            if "score" not in result:
                raise UserError(
                    f"{where} returned a dict without a 'score' key (keys: {sorted(map(str, result))}) "
                    f"for data_source={data_source!r}; add 'score'"
                )
            return {**result, "score": self._check_number(result["score"], where, data_source, "['score']")}
        return self._check_number(result, where, data_source, "")

    @staticmethod
    def _check_number(value: Any, where: str, data_source: str, field: str) -> float:
        if isinstance(value, str) or not isinstance(value, numbers.Real):
            raise UserError(
                f"{where} returned{field} {type(value).__name__} {_short_repr(value)} for "
                f"data_source={data_source!r}; return a float or a dict with a float 'score'"
            )
        value = float(value)
        if not math.isfinite(value):
            raise UserError(
                f"{where} returned{field} {value} for data_source={data_source!r}; rewards must be finite numbers"
            )
        return value


def load_custom_reward_fn(
    path: str, name: str = DEFAULT_FN_NAME, reward_kwargs: Mapping[str, Any] | None = None
) -> CustomRewardFn:
    """Import `name` from the file (or `pkg://module`) at `path` and wrap it; `UserError` on every failure."""
    if path.startswith(_PKG_PREFIX):
        module_name = path[len(_PKG_PREFIX) :].replace("/", ".")
        try:
            module = importlib.import_module(module_name)
        except Exception as e:
            raise UserError(
                f"custom_reward_function.path={path!r}: importing module {module_name!r} failed with "
                f"{type(e).__name__}: {_first_line(e)}; fix the module or the path"
            ) from e
    else:
        module = _import_file(path)

    fn = getattr(module, name, None)
    if fn is None or not callable(fn):
        defined = _functions_defined_in(module)
        raise UserError(
            f"custom_reward_function.name={name!r}: {path} defines no function {name!r} "
            f"(it defines: {', '.join(defined) or 'no functions'}); set custom_reward_function.name"
        )
    if inspect.iscoroutinefunction(fn):
        raise UserError(f"custom reward function {path}:{name} is async; define it with plain `def`")
    return CustomRewardFn(fn, path, name, reward_kwargs)


def custom_reward_config(config: Mapping[str, Any]) -> tuple[str | None, str, dict[str, Any]]:
    """(path, name, reward_kwargs) from `custom_reward_function` or `reward.custom_reward_function`.

    Works on an OmegaConf DictConfig or a plain dict. path is None when no custom function is set; name
    defaults to "compute_score". Setting different paths under both spellings is a `UserError`.
    """
    legacy = _lookup(config, "custom_reward_function")
    newer = _lookup(_lookup(config, "reward"), "custom_reward_function")
    legacy_path, newer_path = _lookup(legacy, "path"), _lookup(newer, "path")
    if legacy_path and newer_path and legacy_path != newer_path:
        raise UserError(
            f"custom_reward_function.path={legacy_path!r} and reward.custom_reward_function.path={newer_path!r} "
            f"disagree; set only one of them"
        )
    section = newer if newer_path else legacy
    path = newer_path or legacy_path or None
    name = _lookup(section, "name") or DEFAULT_FN_NAME
    reward_kwargs = _lookup(section, "reward_kwargs") or {}
    if not isinstance(reward_kwargs, Mapping):
        raise UserError(
            f"custom_reward_function.reward_kwargs must be a mapping of keyword arguments, got "
            f"{type(reward_kwargs).__name__}; write it as {{key: value}}"
        )
    return (str(path) if path else None), str(name), _to_plain_dict(reward_kwargs)


def get_custom_reward_fn(config: Mapping[str, Any]) -> CustomRewardFn | None:
    """The configured custom reward function, or None when `custom_reward_function.path` is unset."""
    path, name, reward_kwargs = custom_reward_config(config)
    if path is None:
        return None
    return load_custom_reward_fn(path, name, reward_kwargs)


def _import_file(path: str):
    file_path = Path(os.path.expanduser(path[len(_FILE_PREFIX) :] if path.startswith(_FILE_PREFIX) else path))
    if not file_path.is_file():
        raise UserError(
            f"custom_reward_function.path={path!r}: no such file ({file_path.absolute()}); "
            f"give the path to a .py file (relative paths are from the current directory)"
        )
    module_name = f"rl_trainer_custom_reward_{file_path.stem}_{abs(hash(str(file_path.resolve())))}"
    spec = importlib.util.spec_from_file_location(module_name, file_path)
    if spec is None or spec.loader is None:
        raise UserError(f"custom_reward_function.path={path!r}: Python cannot import this file; use a .py file")
    module = importlib.util.module_from_spec(spec)
    # The module is in sys.modules only while it runs (dataclasses with postponed annotations look it up
    # there); afterwards it is removed, as verl leaves it out, so its functions pickle by value when
    # shipped to a worker that cannot import the file by name.
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as e:
        raise UserError(
            f"custom_reward_function.path={path!r}: importing {file_path} failed with "
            f"{type(e).__name__} at {_raise_site(e, str(file_path))}: {_first_line(e)}; fix the file"
        ) from e
    finally:
        sys.modules.pop(module_name, None)
    return module


def _functions_defined_in(module) -> list[str]:
    """Public callables whose home is `module` itself (not ones it imported)."""
    return sorted(
        attr
        for attr, value in vars(module).items()
        if callable(value) and not attr.startswith("_") and getattr(value, "__module__", None) == module.__name__
    )


def _lookup(node: Any, key: str) -> Any:
    # DictConfig is a MutableMapping, and `in` is safe on it even in struct mode.
    if isinstance(node, Mapping) and key in node:
        return node[key]
    return None


def _to_plain_dict(mapping: Mapping[str, Any]) -> dict[str, Any]:
    if isinstance(mapping, DictConfig):
        return OmegaConf.to_container(mapping, resolve=True)
    return dict(mapping)


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else "(no message)"


def _raise_site(e: BaseException, path: str) -> str:
    """"file:line" of the deepest traceback frame in the user's file (else the deepest frame at all)."""
    if isinstance(e, SyntaxError) and e.filename:
        return f"{e.filename}:{e.lineno}"
    target = os.path.realpath(os.path.expanduser(path.removeprefix(_FILE_PREFIX)))
    in_user_file = deepest = None
    tb = e.__traceback__
    while tb is not None:
        site = f"{tb.tb_frame.f_code.co_filename}:{tb.tb_lineno}"
        if os.path.realpath(tb.tb_frame.f_code.co_filename) == target:
            in_user_file = site
        deepest, tb = site, tb.tb_next
    return in_user_file or deepest or "unknown location"


def _short_repr(value: Any, limit: int = 60) -> str:
    text = repr(value).replace("\n", " ")
    return text if len(text) <= limit else text[: limit - 3] + "..."
