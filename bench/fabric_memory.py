"""Resident memory of the local Fabric network: the 7 processes the stack started (3 orderers,
2 peers, 2 chaincode servers), read from /proc/PID/status (VmRSS now, VmHWM the peak since
start), their pids from the stack's pid files. Issue 20 asks for the whole network to stay
under 600 MB resident: the bound is on the sum of VmRSS. That sum counts the pages of a
binary the three orderers share three times; PSS (/proc/PID/smaps_rollup, each shared page
divided among its sharers) is printed beside it as the machine's real cost. The Go runtime
settings that keep it there (GOGC, GOMEMLIMIT) are devstack/fabric/parts.py's `go_memory`.

    .venv/bin/python bench/fabric_memory.py            # after the tests' or the bench's load
    .venv/bin/python bench/fabric_memory.py --check    # exit 1 when the sum is over the bound
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from devstack import Stack
from devstack.fabric import PART_NAMES
from devstack.settings import StackSettings

BOUND_MB = 600


def status_kb(pid: int, field: str) -> int:
    """A `field:  N kB` line of /proc/PID/status, in kB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    raise KeyError(f"/proc/{pid}/status has no {field}")


def pss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith("Pss:"):
            return int(line.split()[1])
    raise KeyError(f"/proc/{pid}/smaps_rollup has no Pss")


def network_memory(settings: StackSettings | None = None) -> dict[str, tuple[int, int, int]]:
    """Part name -> (resident kB, peak resident kB, proportional kB) of each running Fabric
    part; a part that is not running is left out."""
    stack = Stack(settings or StackSettings(fabric=True), say=lambda _msg: None)
    found = {}
    for name in PART_NAMES:
        pid = stack.part(name).process.pid()
        if pid is not None:
            found[name] = (status_kb(pid, "VmRSS"), status_kb(pid, "VmHWM"), pss_kb(pid))
    return found


def main(check: bool) -> int:
    memory = network_memory()
    for name in PART_NAMES:
        if name in memory:
            rss, peak, pss = memory[name]
            print(f"  {name:<24} {rss / 1024:7.1f} MB resident   (peak {peak / 1024:7.1f} MB, "
                  f"PSS {pss / 1024:7.1f} MB)")
        else:
            print(f"  {name:<24} not running")
    total, peak, pss = (sum(m[i] for m in memory.values()) / 1024 for i in (0, 1, 2))
    print(f"  {'whole network':<24} {total:7.1f} MB resident   (sum of peaks {peak:7.1f} MB, PSS {pss:7.1f} MB; "
          f"bound {BOUND_MB} MB; {len(memory)}/{len(PART_NAMES)} processes)")
    return 1 if check and (total >= BOUND_MB or len(memory) != len(PART_NAMES)) else 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help=f"exit 1 unless all 7 run under {BOUND_MB} MB in all")
    sys.exit(main(parser.parse_args().check))
