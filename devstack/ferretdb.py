"""FerretDB 1.24 (MongoDB wire protocol) on its SQLite backend, built with `go`."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from pymongo import MongoClient

from devstack.part import InstallError, Part, content_key, run_tool
from devstack.settings import DEPLOY_DIR

MODULE_DIR = DEPLOY_DIR / "ferretdb"
FIXES = MODULE_DIR / "fixes.json"
PACKAGE = "github.com/FerretDB/FerretDB/cmd/ferretdb"


class FerretDBPart(Part):
    name = "ferretdb"
    marker = "ferretdb"

    @property
    def port(self) -> int:
        return self.settings.mongo_port

    @property
    def version(self) -> str:
        for line in (MODULE_DIR / "go.mod").read_text().splitlines():
            words = line.split()
            if words[:1] == ["github.com/FerretDB/FerretDB"]:
                return words[1]
        raise InstallError(f"{MODULE_DIR / 'go.mod'} does not require github.com/FerretDB/FerretDB")

    @property
    def build_dir(self) -> Path:
        return self.settings.home / "ferretdb" / content_key(MODULE_DIR / "go.mod", MODULE_DIR / "go.sum", FIXES)

    @property
    def binary(self) -> Path:
        return self.build_dir / "ferretdb"

    def is_installed(self) -> bool:
        return self.binary.exists()

    def install(self) -> None:
        if self.is_installed():
            return
        if shutil.which("go") is None:
            raise InstallError("Go (`go`) is needed to build FerretDB")
        src = self.build_dir / "src"
        shutil.rmtree(src, ignore_errors=True)
        src.mkdir(parents=True)
        for name in ("go.mod", "go.sum"):
            shutil.copy(MODULE_DIR / name, src / name)
        run_tool(["go", "mod", "vendor"], "downloading FerretDB's Go modules", cwd=src)
        # The module zip lacks the generated version file that FerretDB's build embeds.
        version_file = src / "vendor/github.com/FerretDB/FerretDB/build/version/version.txt"
        version_file.write_text(self.version + "\n")
        apply_fixes(src)
        partial = self.build_dir / "ferretdb.partial"
        run_tool(["go", "build", "-mod=vendor", "-o", str(partial), PACKAGE], "building FerretDB", cwd=src)
        partial.rename(self.binary)
        shutil.rmtree(src, ignore_errors=True)

    def command(self) -> tuple[list[str], dict[str, str]]:
        data = self.settings.data_dir / "ferretdb"
        data.mkdir(parents=True, exist_ok=True)
        argv = [
            str(self.binary),
            "--handler=sqlite",
            f"--sqlite-url=file:{data}/",
            f"--state-dir={data}",
            f"--listen-addr=127.0.0.1:{self.port}",
            "--debug-addr=-",  # its default (127.0.0.1:8088) is the dashboard's port
            "--telemetry=disable",
            "--log-level=warn",
        ]
        return argv, {"FERRETDB_TELEMETRY": "disable", "DO_NOT_TRACK": "1"}

    def healthy(self) -> bool:
        client: MongoClient = MongoClient(
            f"mongodb://127.0.0.1:{self.port}", serverSelectionTimeoutMS=2000, connectTimeoutMS=2000
        )
        try:
            return client.admin.command("ping").get("ok") == 1.0
        except Exception:
            return False
        finally:
            client.close()


def apply_fixes(src: Path) -> None:
    """Apply `deploy/ferretdb/fixes.json` to the vendored source: each fix replaces one exact
    text; a text that is not there (a new FerretDB version) stops the build, naming the fix."""
    for fix in json.loads(FIXES.read_text())["fixes"]:
        path = src / fix["file"]
        text = path.read_text()
        if text.count(fix["old"]) != 1:
            raise InstallError(f"FerretDB fix for {fix['file']} no longer applies: {fix['old']!r} is not there "
                               f"exactly once; review {FIXES} for this FerretDB version ({fix['why'][:80]}...)")
        path.write_text(text.replace(fix["old"], fix["new"]))
