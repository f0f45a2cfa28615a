"""A stage's key: what must be unchanged for its recorded outputs to be reused.

The key is a digest of
- the stage's own **code**: the source of its module and of every kd-edge module it imports, directly
  or through a registry's ``"module:attr"`` entry, read as syntax trees (a comment or a blank line
  changes nothing), so that a changed stage is redone on an old run and an unchanged one is not;
- the recipe fields of the stage's sections that **differ from their defaults**, so that a field
  added later with a default (one that keeps what the code did) changes no old run's key;
- the files it reads from outside the run and its upstream stages' outputs and keys.

The **defaults** a stage ran with are recorded beside its key; a default that has changed since (for a
field the recipe still leaves to it) makes the stage out of date (``stale_defaults``).

Configuration modules (``kd_edge/config.py``, ``*/config.py``) are not code here: a recipe's schema is
covered by the non-default fields and the recorded defaults. ``kd_edge.errors`` and ``kd_edge.progress``
are left out too: messages and progress bars change no output.
"""

from __future__ import annotations

import ast
import hashlib
from pathlib import Path
from typing import Any, Iterable

import kd_edge

PACKAGE_ROOT = Path(kd_edge.__file__).resolve().parent
NOT_CODE = ("kd_edge.errors", "kd_edge.progress")


def _is_config(module: str) -> bool:
    return module == "kd_edge.config" or module.endswith(".config")


def _source(root: Path, module: str) -> Path | None:
    parts = module.split(".")[1:]
    if not parts:  # kd_edge itself
        return root / "__init__.py"
    rel = Path(*parts)
    for path in (root / rel.with_suffix(".py"), root / rel / "__init__.py"):
        if path.is_file():
            return path
    return None


def _imports(tree: ast.AST, module: str) -> set[str]:
    """kd-edge modules a module's syntax tree names: imports anywhere in it, and registry targets."""
    found: set[str] = set()
    package = module if module.count(".") == 0 else module.rsplit(".", 1)[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("kd_edge"))
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[:len(parts) - node.level + 1] + ([base] if base else []))
            if base.startswith("kd_edge"):
                found.add(base)
                found.update(f"{base}.{a.name}" for a in node.names)  # `from kd_edge import artifacts`
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value.startswith("kd_edge.") \
                and ":" in node.value:
            found.add(node.value.split(":")[0])
    return found


# "module:sha256 of its bytes" -> [digest of its syntax tree, the kd-edge modules it names]. A value is a
# function of the bytes, so it never goes stale; the pipeline keeps it in the manifest (parsing every
# module costs ~0.4 s, reading and hashing the bytes ~1 ms).
PARSED: dict[str, list] = {}


def _module(root: Path, module: str) -> tuple[str, list[str]] | None:
    """(digest of the module's syntax tree, the kd-edge modules it names), or None for no such module."""
    path = _source(root, module)
    if path is None:
        return None
    data = path.read_bytes()
    key = f"{module}:{hashlib.sha256(data).hexdigest()}"
    if key not in PARSED:
        tree = ast.parse(data.decode("utf-8"))
        PARSED[key] = [hashlib.sha256(ast.dump(tree).encode()).hexdigest(), sorted(_imports(tree, module))]
    digest, names = PARSED[key]
    return digest, names


def code_modules(modules: Iterable[str], root: Path | None = None) -> dict[str, str]:
    """Every kd-edge module reachable from ``modules`` (configuration and NOT_CODE left out), with digests."""
    root = root or PACKAGE_ROOT
    seen: dict[str, str] = {}
    todo = list(modules)
    while todo:
        name = todo.pop()
        if name in seen or _is_config(name) or name in NOT_CODE:
            continue
        found = _module(root, name)
        if found is None:
            continue  # `from kd_edge.x import name` where name is not a module
        seen[name], names = found
        todo.extend(names)
    # a module implies its packages' __init__ (imported first), which registries live in
    for name in list(seen):
        parts = name.split(".")
        for i in range(1, len(parts)):
            pkg = ".".join(parts[:i])
            if pkg not in seen and not _is_config(pkg):
                found = _module(root, pkg)
                if found is not None:
                    seen[pkg] = found[0]
    return dict(sorted(seen.items()))


def code_digest(modules: Iterable[str], root: Path | None = None) -> str:
    """One digest of the code ``modules`` run (see ``code_modules``)."""
    return digest_of(code_modules(modules, root))


def digest_of(modules: dict[str, str]) -> str:
    """One digest of ``code_modules``'s answer."""
    return hashlib.sha256(repr(sorted(modules.items())).encode()).hexdigest()


def _leaves(node: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(node, dict) and node:
        out: dict[str, Any] = {}
        for k, v in node.items():
            out.update(_leaves(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    return {prefix: node}


def section(data: dict[str, Any], dotted: str) -> Any:
    """The value at a dotted key of a recipe dump (None where absent)."""
    node: Any = data
    for part in dotted.split("."):
        node = node.get(part) if isinstance(node, dict) else None
    return node


def _under(key: str, sections: Iterable[str]) -> bool:
    return any(key == s or key.startswith(s + ".") for s in sections)


class RecipeFields:
    """A recipe split once into what it sets and what it leaves to defaults, for every stage's key."""

    def __init__(self, recipe):
        self.explicit = recipe.model_dump(mode="json", exclude_defaults=True)
        set_leaves = _leaves(self.explicit)
        self.defaulted = {k: v for k, v in _leaves(recipe.model_dump(mode="json")).items()
                          if k not in set_leaves and not any(k.startswith(s + ".") for s in set_leaves)}

    def parts(self, sections: tuple[str, ...]) -> tuple[dict[str, Any], dict[str, Any]]:
        """(the sections with only their non-default fields, {dotted field: default} of the fields of those
        sections that the recipe leaves to their defaults)."""
        config = {s: section(self.explicit, s) for s in sections}
        return config, {k: v for k, v in self.defaulted.items() if _under(k, sections)}



def stale_defaults(recorded: dict[str, Any] | None, current: dict[str, Any]) -> list[str]:
    """Fields a stage ran with at a default that is now another (fields added since are not stale)."""
    return sorted(k for k, v in (recorded or {}).items() if k in current and current[k] != v)
