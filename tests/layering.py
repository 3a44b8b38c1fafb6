"""The package's layering rules, checked on the source (imports inside functions included).

Parts are the folders of benchlib/. Arrows point one way: a part may import only the parts
listed for it. Only `megatron` imports Megatron-Core; torch and triton only in `megatron`,
`convert` and `data`; the login-node parts import neither, not even lazily. docs/ARCHITECTURE.md
shows the same table.
"""
from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

# part -> the benchlib parts it may import
ALLOWED_PARTS: dict[str, frozenset[str]] = {
    "core": frozenset(),
    "config": frozenset({"core"}),
    "render": frozenset({"core", "config"}),
    "metrics": frozenset({"core", "config"}),
    "planning": frozenset({"core", "config", "metrics"}),
    "launch": frozenset({"core", "config", "render", "metrics", "planning"}),
    "megatron": frozenset({"core", "config"}),
    "convert": frozenset({"core", "config", "megatron"}),
    "data": frozenset({"core", "config", "megatron"}),
}
ROOT_MODULES = {"__init__", "__main__", "cli"}  # the dispatcher: imports parts by name only
LOGIN_NODE_PARTS = frozenset({"core", "config", "render", "launch", "metrics", "planning"})
GPU_LIBRARIES = frozenset({"torch", "triton", "transformer_engine"})
MEGATRON = "megatron"


@dataclass(frozen=True)
class Violation:
    path: str
    line: int
    imported: str
    rule: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: imports {self.imported}: {self.rule}"


def _imports(tree: ast.AST, package: list[str]) -> list[tuple[int, str]]:
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: `.` is the module's own package, each further dot one up
                base = package[: len(package) - (node.level - 1)]
                name = ".".join(base + ([node.module] if node.module else []))
            else:
                name = node.module or ""
            found.append((node.lineno, name))
            if name in ("benchlib",) or (node.level and not node.module):
                found += [(node.lineno, f"{name}.{alias.name}") for alias in node.names]
    return found


def check_tree(package_dir: Path) -> list[Violation]:
    """Every import in package_dir (a benchlib/ folder) that breaks a rule."""
    package_dir = Path(package_dir)
    out: list[Violation] = []
    for path in sorted(package_dir.rglob("*.py")):
        rel = path.relative_to(package_dir)
        module_parts = ["benchlib", *rel.with_suffix("").parts]
        if len(rel.parts) == 1:
            if rel.stem not in ROOT_MODULES:
                out.append(Violation(str(rel), 1, "-", f"a module at the package root must belong to a part (one of {', '.join(ALLOWED_PARTS)})"))
            continue
        part = rel.parts[0]
        if part not in ALLOWED_PARTS:
            out.append(Violation(str(rel), 1, "-", f"unknown part {part!r}: add it to ALLOWED_PARTS with its arrows"))
            continue
        tree = ast.parse(path.read_text(), filename=str(path))
        for line, name in _imports(tree, module_parts[:-1]):
            top = name.split(".")[0]
            if top == "benchlib":
                words = name.split(".")
                target = words[1] if len(words) > 1 else ""
                if target in ROOT_MODULES or target in ("", "__version__"):
                    if target in ROOT_MODULES:
                        out.append(Violation(str(rel), line, name, "parts never import the package root (cli)"))
                elif target != part and target not in ALLOWED_PARTS[part]:
                    allowed = ", ".join(sorted(ALLOWED_PARTS[part])) or "no other part"
                    out.append(Violation(str(rel), line, name, f"{part} may import only {allowed}"))
            elif top == MEGATRON and part != "megatron":
                out.append(Violation(str(rel), line, name, "only benchlib/megatron imports Megatron-Core"))
            elif top in GPU_LIBRARIES and part in LOGIN_NODE_PARTS:
                out.append(Violation(str(rel), line, name, f"{part} runs on login nodes: no {top}, not even lazily"))
    return out
