"""The import rules of issue 19, checked on the source with `ast` (no import-linter):

1. a service (`services.<name>`) never imports another service (`services.cli`, the command
   line, is not a service: it may import them all);
2. `streamledger` never imports `services` or `devstack`;
3. `streamledger.core` is pure: no I/O library (`FORBIDDEN_IN_CORE`), and from `streamledger`
   only `streamledger.core` (the rest of the library is adapters);
4. no runtime module (`streamledger`, `services.<name>`, `services` itself) imports `devstack`,
   even inside a function; `services.cli` imports it only inside the commands that need it
   (`stack ...`, `demo`, `serve all`), never when the module loads.

Every import statement counts, wherever it is (module level, function, class, `try`), with
relative imports resolved. `test_the_checker_*` run the checker on small synthetic trees, so a
checker that stopped seeing violations would fail too.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PACKAGES = ("streamledger", "services", "devstack")

FORBIDDEN_IN_CORE = {
    # clients of servers
    "aiokafka": "Kafka", "kafka": "Kafka", "confluent_kafka": "Kafka", "faust": "Kafka streams",
    "pymongo": "MongoDB", "motor": "MongoDB", "grpc": "gRPC", "fabric_protos": "the Fabric gateway",
    "httpx": "HTTP", "requests": "HTTP", "urllib.request": "HTTP", "http.client": "HTTP",
    "socket": "the network", "ssl": "the network",
    # servers
    "uvicorn": "an HTTP server", "starlette": "an HTTP server", "http.server": "an HTTP server",
    "prometheus_client": "the metrics server",
    # processes, files, the event loop
    "subprocess": "processes", "multiprocessing": "processes", "signal": "processes", "os": "the OS",
    "shutil": "files", "tempfile": "files", "pathlib": "files",
    "asyncio": "the event loop (nothing in core awaits)",
}
"""Library -> what it does I/O with; `streamledger.core` imports none of them."""

@dataclass(frozen=True)
class Import:
    importer: str
    imported: str
    """The module imported; for `from m import name`, `m.name` (name may be a submodule)."""
    line: int
    lazy: bool
    """Inside a function: runs when the function is called, not when the module loads."""


@dataclass(frozen=True)
class Violation:
    importer: str
    imported: str
    line: int
    rule: str

    def __str__(self) -> str:
        return f"{self.importer}:{self.line} imports {self.imported}: {self.rule}"


def module_name(root: Path, path: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def find_imports(root: Path, packages: Iterable[str] = PACKAGES) -> Iterator[Import]:
    """Every import statement of every module of `packages` under `root`."""
    for package in packages:
        for path in sorted((root / package).rglob("*.py")):
            importer = module_name(root, path)
            is_package = path.name == "__init__.py"
            yield from _imports_in(ast.parse(path.read_text(), str(path)), importer, is_package)


def _imports_in(tree: ast.AST, importer: str, is_package: bool) -> Iterator[Import]:
    lazy_lines = {node.lineno for function in ast.walk(tree)
                  if isinstance(function, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
                  for node in ast.walk(function) if isinstance(node, (ast.Import, ast.ImportFrom))}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield Import(importer, alias.name, node.lineno, node.lineno in lazy_lines)
        elif isinstance(node, ast.ImportFrom):
            base = _absolute(node, importer, is_package)
            for alias in node.names:
                imported = base if alias.name == "*" else f"{base}.{alias.name}" if base else alias.name
                yield Import(importer, imported, node.lineno, node.lineno in lazy_lines)


def _absolute(node: ast.ImportFrom, importer: str, is_package: bool) -> str:
    if not node.level:
        return node.module or ""
    package = importer.split(".") if is_package else importer.split(".")[:-1]
    base = package[:len(package) - (node.level - 1)]
    return ".".join([*base, *([node.module] if node.module else [])])


def _within(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def _service_of(module: str) -> str | None:
    """`services.<name>` for a module of a service; None for `services`, `services.cli` and the rest."""
    parts = module.split(".")
    if len(parts) >= 2 and parts[0] == "services" and parts[1] != "cli":
        return ".".join(parts[:2])
    return None


def _runtime(module: str) -> bool:
    return _within(module, "streamledger") or module == "services" or _service_of(module) is not None


def violations(imports: Iterable[Import]) -> list[Violation]:
    found = []
    for i in imports:
        def broke(rule: str, imported: str = i.imported) -> None:
            found.append(Violation(i.importer, imported, i.line, rule))

        service, imported_service = _service_of(i.importer), _service_of(i.imported)
        if service and imported_service and imported_service != service:
            broke("a service imports another service")
        if _within(i.importer, "streamledger"):
            for forbidden in ("services", "devstack"):
                if _within(i.imported, forbidden):
                    broke(f"streamledger imports {forbidden}")
        if _within(i.importer, "streamledger.core"):
            for library, what in FORBIDDEN_IN_CORE.items():
                if _within(i.imported, library):
                    broke(f"streamledger.core does I/O ({what})", library)
            if _within(i.imported, "streamledger") and not _within(i.imported, "streamledger.core"):
                broke("streamledger.core imports an adapter of the library")
        if _within(i.imported, "devstack"):
            if _runtime(i.importer) and not _within(i.importer, "streamledger"):
                broke("a runtime module imports the dev stack")
            elif i.importer == "services.cli" and not i.lazy:
                broke("services.cli loads the dev stack with the module (import it inside the command)")
    return found


# -- the repository -----------------------------------------------------------------------------

def test_the_repository_follows_the_import_rules() -> None:
    found = [str(v) for v in violations(find_imports(REPO))]
    assert found == [], "\n".join(found)


@pytest.mark.parametrize("name", ["audit", "cleaning", "dashboard", "inference", "ingestion", "learning", "ledger", "storage"])
def test_serving_a_service_loads_neither_the_dev_stack_nor_another_service(name: str) -> None:
    """What `streamledger serve NAME` imports: the command line and that service's app."""
    script = f"""
import sys
import services.cli
import services.{name}.app as app
assert callable(app.main)
loaded = {{m for m in sys.modules if m == "devstack" or m.startswith("devstack.")}}
loaded |= {{".".join(m.split(".")[:2]) for m in sys.modules if m.startswith("services.")}}
print(sorted(loaded - {{"services.cli", "services.{name}"}}))
"""
    done = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]", f"serve {name} loads {done.stdout.strip()}"


# -- the checker itself, on synthetic trees ----------------------------------------------------------

def write(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def found_in(root: Path) -> list[str]:
    return sorted(str(v) for v in violations(find_imports(root)))


def test_the_checker_finds_each_kind_of_violation(tmp_path: Path) -> None:
    write(tmp_path, {
        "services/__init__.py": "",
        "services/cli.py": "import devstack.runner\n\ndef demo():\n    from devstack import demo\n",
        "services/a/__init__.py": "",
        "services/a/app.py": "from services.b import handlers\nfrom services.a import x\nimport streamledger.kafka\n",
        "services/a/x.py": "def later():\n    import devstack\n",
        "services/b/__init__.py": "",
        "services/b/handlers.py": "from ..a.x import later\nfrom .. import a\n",
        "streamledger/__init__.py": "",
        "streamledger/ledger.py": "try:\n    from services.a import x\nexcept ImportError:\n    pass\n",
        "streamledger/core/__init__.py": "",
        "streamledger/core/pure.py": ("import hashlib, io\nfrom os import path\nimport grpc.aio\n"
                                      "from streamledger import kafka\nfrom . import other\n"
                                      "class C:\n    async def f(self):\n        import asyncio\n"),
        "devstack/__init__.py": "",
        "devstack/demo.py": "from services.a import app\n",  # the dev stack may use the services
    })
    assert found_in(tmp_path) == [
        "services.a.app:1 imports services.b.handlers: a service imports another service",
        "services.a.x:2 imports devstack: a runtime module imports the dev stack",
        "services.b.handlers:1 imports services.a.x.later: a service imports another service",
        "services.b.handlers:2 imports services.a: a service imports another service",
        "services.cli:1 imports devstack.runner: services.cli loads the dev stack with the module "
        "(import it inside the command)",
        "streamledger.core.pure:2 imports os: streamledger.core does I/O (the OS)",
        "streamledger.core.pure:3 imports grpc: streamledger.core does I/O (gRPC)",
        "streamledger.core.pure:4 imports streamledger.kafka: streamledger.core imports an adapter of the library",
        "streamledger.core.pure:8 imports asyncio: streamledger.core does I/O (the event loop (nothing in core awaits))",
        "streamledger.ledger:2 imports services.a.x: streamledger imports services",
    ]


def test_the_checker_passes_a_tree_that_follows_the_rules(tmp_path: Path) -> None:
    write(tmp_path, {
        "services/__init__.py": "",
        "services/cli.py": "import services.a.app\n\ndef serve_all():\n    from devstack.runner import ServiceGroup\n",
        "services/a/__init__.py": "",
        "services/a/app.py": "from . import handlers\nfrom services.a.handlers import run\nfrom streamledger import kafka\n",
        "services/a/handlers.py": "from streamledger.core.pure import h\n",
        "streamledger/__init__.py": "",
        "streamledger/kafka.py": "import aiokafka\nfrom streamledger.core import pure\n",
        "streamledger/core/__init__.py": "",
        "streamledger/core/pure.py": "import hashlib, io, pickle\nfrom . import other\nfrom .other import y\n",
        "streamledger/core/other.py": "",
        "devstack/__init__.py": "from services.a.app import main\n",
    })
    assert found_in(tmp_path) == []


@pytest.mark.parametrize("module, is_package, statement, expected", [
    ("services.a.app", False, "from . import x", "services.a.x"),
    ("services.a.app", False, "from .x import y", "services.a.x.y"),
    ("services.a.app", False, "from .. import b", "services.b"),
    ("services.a", True, "from . import app", "services.a.app"),
    ("services.a", True, "from ..b import c", "services.b.c"),
    ("services.a.app", False, "from services.b import *", "services.b"),
])
def test_the_checker_resolves_relative_imports(module: str, is_package: bool, statement: str, expected: str) -> None:
    (found,) = _imports_in(ast.parse(statement), module, is_package)
    assert found.imported == expected
