"""Public names imported on first use (PEP 562), written once for every package that re-exports them.

A package's `__init__` keeps its `__all__` and its `if TYPE_CHECKING:` imports (for type checkers and
readers), and gets `__getattr__` and `__dir__` from `lazy_exports`:

    __getattr__, __dir__ = lazy_exports(__name__, globals(), {"DARTS": "nasopt.oneshot.darts", ...})

so `import nasopt` costs milliseconds and torch is loaded by the first name that needs it.
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["lazy_exports"]


def lazy_exports(package: str, namespace: dict[str, Any], names: Mapping[str, str | tuple[str, str | None]], *,
                 submodules: bool = False) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """`__getattr__` and `__dir__` for `package`: `names` maps a public name to the module that defines it
    (the attribute of the same name), or to (module, attribute), or (module, None) for the module itself.
    With `submodules`, any other submodule is reachable as an attribute (`nasopt.oneshot.darts` after
    `import nasopt.oneshot`). A resolved name is stored in `namespace`: later lookups are plain reads."""

    def __getattr__(name: str) -> Any:
        if name in names:
            target = names[name]
            module, attribute = (target, name) if isinstance(target, str) else target
            value = importlib.import_module(module)
            value = value if attribute is None else getattr(value, attribute)
            namespace[name] = value
            return value
        if submodules and not name.startswith("__") and importlib.util.find_spec(f"{package}.{name}") is not None:
            return importlib.import_module(f"{package}.{name}")
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    def __dir__() -> list[str]:
        return sorted({*namespace, *names})

    return __getattr__, __dir__
