"""Turn a reward spec from a config file into a callable, and read what columns it needs."""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import inspect
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

from grpo.rewards.builtin import BUILTIN_REWARDS
from grpo.rewards.errors import RewardSpecError

__all__ = ["CALL_ARGUMENTS", "required_columns", "resolve_reward", "spec_function_name"]

# The arguments every reward function receives besides the dataset columns.
CALL_ARGUMENTS = frozenset({"prompts", "completions"})

_SPEC_FORMS = (
    "a built-in name ({builtins}), 'package.module:function', or 'path/to/file.py:function'"
)


def _forms() -> str:
    return _SPEC_FORMS.format(builtins=", ".join(sorted(BUILTIN_REWARDS)))


def resolve_reward(spec: str) -> Callable[..., Any]:
    """Return the reward function named by `spec`.

    `spec` is one of:

    - a built-in name: "accuracy", "format", "reasoning_length" (functions), "math", "code",
      "reward_model" (classes: `RewardFunction` builds them with the config's kwargs);
    - "package.module:function": the module is imported normally (it must be on sys.path);
    - "path/to/file.py:function": the file is loaded from its path (relative to the working
      directory); its folder is on sys.path while the file runs, so it can import its
      neighbours at the top. Loading the same file twice gives the same module.

    The part after ":" may be dotted ("module:Class.method"); it may name a class, which
    `RewardFunction` then builds with the kwargs. Raises `RewardSpecError` naming the spec when
    it cannot be resolved or does not name a callable.
    """
    if not isinstance(spec, str) or not spec.strip():
        raise RewardSpecError(
            f"reward spec must be a non-empty string, got {spec!r}; use {_forms()}"
        )
    spec = spec.strip()
    if ":" not in spec:
        if spec in BUILTIN_REWARDS:
            return BUILTIN_REWARDS[spec]
        if spec.endswith(".py"):
            raise RewardSpecError(
                f"reward spec {spec!r} names a file but not the function in it; "
                f"write '{spec}:function_name'"
            )
        raise RewardSpecError(f"unknown built-in reward {spec!r}; use {_forms()}")

    location, _, attribute = spec.rpartition(":")
    if not location or not attribute:
        raise RewardSpecError(f"reward spec {spec!r} is incomplete; use {_forms()}")
    if _looks_like_path(location):
        module = _load_file(spec, Path(location))
    else:
        module = _import_module(spec, location)

    target: Any = module
    walked: list[str] = []
    for part in attribute.split("."):
        walked.append(part)
        if not hasattr(target, part):
            where = location if len(walked) == 1 else ".".join(walked[:-1])
            raise RewardSpecError(
                f"reward spec {spec!r}: {where!r} has no attribute {part!r}. "
                f"Callables defined there: {_callables_in(target) or 'none'}"
            )
        target = getattr(target, part)
    if not callable(target):
        raise RewardSpecError(
            f"reward spec {spec!r}: {attribute!r} is not callable (its type is "
            f"{type(target).__name__}); "
            "point the spec at a function fn(prompts, completions, **columns) -> list[float | None]"
        )
    return target


def spec_function_name(spec: str) -> str:
    """A short default name for the reward `spec` (for metrics): the built-in name, or the
    function name after ':' ("my_rewards.py:Checker.score" gives "score")."""
    spec = spec.strip()
    if ":" not in spec:
        return spec
    return spec.rpartition(":")[2].split(".")[-1]


def _looks_like_path(location: str) -> bool:
    return location.endswith(".py") or "/" in location or "\\" in location


def _import_module(spec: str, name: str) -> ModuleType:
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        # Tell "the module itself is missing" apart from "it imports something missing".
        if exc.name is not None and (name == exc.name or name.startswith(exc.name + ".")):
            raise RewardSpecError(
                f"reward spec {spec!r}: module {name!r} cannot be imported (no module named "
                f"{exc.name!r}). Install it or add its folder to PYTHONPATH, or give a file "
                "path instead: 'path/to/file.py:function'"
            ) from exc
        raise RewardSpecError(
            f"reward spec {spec!r}: importing module {name!r} failed because it imports "
            f"{exc.name!r}, which is not installed"
        ) from exc
    except Exception as exc:
        raise RewardSpecError(
            f"reward spec {spec!r}: importing module {name!r} raised {type(exc).__name__}: {exc}"
        ) from exc


def _load_file(spec: str, path: Path) -> ModuleType:
    path = path.expanduser()
    if not path.is_file():
        raise RewardSpecError(
            f"reward spec {spec!r}: file {str(path)!r} not found (looked in "
            f"{str(path.resolve())!r}); paths are relative to the working directory"
        )
    resolved = path.resolve()
    # A name unique to the file's location, so two "rewards.py" in different folders do not
    # replace each other in sys.modules, and loading the same file twice reuses the module.
    digest = hashlib.sha1(str(resolved).encode()).hexdigest()[:10]
    module_name = f"_grpo_reward_file_{_identifier(resolved.stem)}_{digest}"
    if module_name in sys.modules:
        return sys.modules[module_name]
    import_spec = importlib.util.spec_from_file_location(module_name, resolved)
    if import_spec is None or import_spec.loader is None:
        raise RewardSpecError(
            f"reward spec {spec!r}: {str(path)!r} cannot be loaded as a Python module; "
            "it must be a .py file"
        )
    module = importlib.util.module_from_spec(import_spec)
    # Registered before running so that dataclasses and pickling inside the file can find it.
    sys.modules[module_name] = module
    folder = str(resolved.parent)
    sys.path.insert(0, folder)
    try:
        import_spec.loader.exec_module(module)
    except BaseException as exc:
        del sys.modules[module_name]
        if not isinstance(exc, Exception):
            raise
        raise RewardSpecError(
            f"reward spec {spec!r}: running {str(path)!r} raised {type(exc).__name__}: {exc}"
        ) from exc
    finally:
        # Only our own entry: the file may have changed sys.path itself.
        if folder in sys.path:
            sys.path.remove(folder)
    return module


def _identifier(stem: str) -> str:
    return "".join(ch if ch.isalnum() else "_" for ch in stem)


def _callables_in(obj: Any) -> str:
    if not hasattr(obj, "__dict__"):
        return ""
    # For a module, list what it defines, not what it imported.
    home = obj.__name__ if isinstance(obj, ModuleType) else None
    names = sorted(
        name
        for name, value in vars(obj).items()
        if not name.startswith("_")
        and callable(value)
        and not isinstance(value, ModuleType)
        and (home is None or getattr(value, "__module__", None) == home)
    )
    shown = ", ".join(names[:15])
    return shown + (f", ... ({len(names) - 15} more)" if len(names) > 15 else "")


def required_columns(fn: Callable[..., Any]) -> set[str]:
    """The dataset columns `fn` needs: its parameters, other than `prompts` and `completions`,
    that can be passed by keyword and have no default.

    `required_columns(accuracy) == {"answer"}`. A parameter with a default (such as
    `reasoning_length`'s `target_chars`) is optional; `**kwargs` requires nothing. A callable
    whose signature cannot be read (some C functions) requires nothing.
    """
    try:
        signature = inspect.signature(fn)
    except (TypeError, ValueError):
        return set()
    keyword_kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    return {
        name
        for name, param in signature.parameters.items()
        if param.kind in keyword_kinds
        and param.default is inspect.Parameter.empty
        and name not in CALL_ARGUMENTS
    }
