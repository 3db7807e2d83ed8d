"""The Fabric commands and their sample configuration: built with `go` from the release
pinned in deploy/fabric/go.mod, or taken from a folder of official release binaries
(`STREAMLEDGER_STACK_FABRIC_BIN`); and the contract's chaincode server, always built here."""

from __future__ import annotations

import hashlib
import re
import shutil
import subprocess
import threading
from pathlib import Path

from devstack.part import InstallError, content_key, run_tool
from devstack.settings import DEPLOY_DIR, REPO_ROOT, StackSettings

MODULE_DIR = DEPLOY_DIR / "fabric"
FABRIC_MODULE = "github.com/hyperledger/fabric"
COMMANDS = ("configtxgen", "configtxlator", "cryptogen", "orderer", "osnadmin", "peer")
"""Built from go.mod's `tool` block (which must name each), or found in the release folder."""
CHAINCODE_DIR = REPO_ROOT / "chaincode"


def pinned_commit() -> str:
    """The short commit at the end of go.mod's Fabric pseudo-version."""
    found = re.search(rf"^\s*{re.escape(FABRIC_MODULE)} v\S+-([0-9a-f]{{12}})\b", (MODULE_DIR / "go.mod").read_text(), re.M)
    return found.group(1) if found else "unknown"


def pinned_release() -> str:
    """The release named in go.mod's header ("3.1.5"): the version the built binaries report."""
    found = re.search(r"Fabric v(\d+\.\d+\.\d+) release", (MODULE_DIR / "go.mod").read_text())
    if found is None:
        raise InstallError(f"{MODULE_DIR / 'go.mod'}: its header comment names no 'Fabric vX.Y.Z release'")
    return found.group(1)


class FabricBinaries:
    """One lock, so parallel part installs build once."""

    _lock = threading.Lock()

    def __init__(self, settings: StackSettings) -> None:
        self.settings = settings

    @property
    def version(self) -> str:
        if self.settings.fabric_bin is not None:
            return f"release binaries in {self.settings.fabric_bin}"
        return pinned_release()

    @property
    def build_dir(self) -> Path:
        # Keyed by the command list too: a build made before a command joined the list lacks it.
        pins = content_key(MODULE_DIR / "go.mod", MODULE_DIR / "go.sum")
        key = hashlib.sha256(f"{pins} {' '.join(COMMANDS)}".encode()).hexdigest()[:12]
        return self.settings.home / "fabric" / key

    @property
    def bin(self) -> Path:
        return self.settings.fabric_bin or self.build_dir / "bin"

    @property
    def sampleconfig(self) -> Path:
        """core.yaml and orderer.yaml; a release archive keeps them in config/ beside bin/."""
        if self.settings.fabric_bin is not None:
            return self.settings.fabric_bin.parent / "config"
        return self.build_dir / "sampleconfig"

    @property
    def chaincode(self) -> Path:
        # Keyed by the contract's sources too: an edited contract gets a fresh build.
        sources = sorted(p for p in CHAINCODE_DIR.rglob("*.go") if not p.name.endswith("_test.go"))
        key = content_key(CHAINCODE_DIR / "go.mod", CHAINCODE_DIR / "go.sum", *sources)
        return self.settings.home / "fabric" / "chaincode" / key / "streamledger-chaincode"

    def tool(self, name: str) -> str:
        return str(self.bin / name)

    def _fabric_ready(self) -> bool:
        if self.settings.fabric_bin is None:
            return (self.bin / ".complete").exists()
        return all((self.bin / c).exists() for c in COMMANDS) and (self.sampleconfig / "core.yaml").exists()

    def is_installed(self) -> bool:
        return self._fabric_ready() and self.chaincode.exists()

    def install(self) -> None:
        with self._lock:
            if self.is_installed():
                return
            if self.settings.fabric_bin is not None and not self._fabric_ready():
                raise InstallError(f"STREAMLEDGER_STACK_FABRIC_BIN={self.settings.fabric_bin} must hold "
                                   f"{', '.join(COMMANDS)}, with core.yaml and orderer.yaml in {self.sampleconfig}")
            if shutil.which("go") is None:
                raise InstallError("Go (`go`) is needed to build Fabric and the chaincode")
            if not self._fabric_ready():
                self._build_fabric()
            if not self.chaincode.exists():
                partial = self.chaincode.with_suffix(".partial")
                partial.parent.mkdir(parents=True, exist_ok=True)
                run_tool(["go", "build", "-o", str(partial), "."], "building the StreamLedger chaincode",
                         cwd=CHAINCODE_DIR)
                partial.rename(self.chaincode)

    def _build_fabric(self) -> None:
        src = self.build_dir / "src"
        shutil.rmtree(src, ignore_errors=True)
        src.mkdir(parents=True)
        for name in ("go.mod", "go.sum"):
            shutil.copy(MODULE_DIR / name, src / name)
        partial = self.build_dir / "bin.partial"
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir()
        release = pinned_release()
        # What Fabric's own Makefile stamps into a release build, so `peer version` says 3.1.5.
        ldflags = (f"-X {FABRIC_MODULE}/common/metadata.Version={release} "
                   f"-X {FABRIC_MODULE}/common/metadata.CommitSHA={pinned_commit()}")
        run_tool(["go", "build", "-ldflags", ldflags, "-o", str(partial) + "/",
                  *(f"{FABRIC_MODULE}/cmd/{c}" for c in COMMANDS)],
                 f"building Fabric {release} ({', '.join(COMMANDS)})", cwd=src)
        found = subprocess.run(["go", "list", "-m", "-f", "{{.Dir}}", FABRIC_MODULE],
                               cwd=src, capture_output=True, text=True)
        module_dir = Path(found.stdout.strip())
        if found.returncode != 0 or not (module_dir / "sampleconfig").is_dir():
            raise InstallError(f"cannot find {FABRIC_MODULE}'s sampleconfig/: {found.stderr.strip()}")
        self.sampleconfig.mkdir(parents=True, exist_ok=True)
        for name in ("core.yaml", "orderer.yaml"):
            shutil.copyfile(module_dir / "sampleconfig" / name, self.sampleconfig / name)
        shutil.rmtree(self.bin, ignore_errors=True)
        partial.rename(self.bin)
        (self.bin / ".complete").write_text(release)
        shutil.rmtree(src, ignore_errors=True)
