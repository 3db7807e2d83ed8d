"""The Helm chart validates without a cluster: `helm lint`, `helm template` for a minimal and a full
value set, and every rendered object (and every example manifest) decoded strictly into its Go type.

helm v4.3.2 and the validator (deploy/helm/validate: k8s.io/api + sigs.k8s.io/yaml UnmarshalStrict)
are built with `go` once into the stack's cache (~/.cache/streamledger/helm/) and reused; a cold
helm build takes a few minutes of CPU (README, Running on a cluster). No server is needed.
"""

from __future__ import annotations

import fcntl
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from devstack.part import content_key
from streamledger.settings import local_stack_home

pytestmark = pytest.mark.timeout(1200)  # a cold build of helm on a loaded 2-core machine

ROOT = Path(__file__).resolve().parents[2]
HELM_DIR = ROOT / "deploy" / "helm"
CHART = HELM_DIR / "streamledger"
EXAMPLES = HELM_DIR / "examples"
MODULE = HELM_DIR / "validate"
VALUE_SETS = {"minimal": CHART / "ci" / "minimal-values.yaml", "full": CHART / "ci" / "full-values.yaml"}


def helm_version() -> str:
    found = re.search(r"^\s*helm\.sh/helm/v4 (v\S+)", (MODULE / "go.mod").read_text(), re.MULTILINE)
    assert found, f"{MODULE / 'go.mod'} does not require helm.sh/helm/v4"
    return found.group(1)


def go_build(package: str, target: Path) -> None:
    """`go build` `package` of the validator's module into `target`, once (a lock for concurrent runs)."""
    if target.exists():
        return
    if shutil.which("go") is None:
        pytest.fail("Go (`go`) is needed to build helm and the chart validator")
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.parent / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if target.exists():
            return
        partial = target.with_name(target.name + ".partial")
        started = time.monotonic()
        result = subprocess.run(["go", "build", "-o", str(partial), package], cwd=MODULE, capture_output=True,
                                text=True, env={**os.environ, "GOFLAGS": "-buildvcs=false"})
        assert result.returncode == 0, f"go build {package} failed:\n{result.stdout}{result.stderr}"
        partial.rename(target)
        print(f"built {package} in {time.monotonic() - started:.0f} s: {target}")


@pytest.fixture(scope="module")
def helm() -> Path:
    binary = local_stack_home() / "helm" / helm_version() / "helm"
    go_build("helm.sh/helm/v4/cmd/helm", binary)
    return binary


@pytest.fixture(scope="module")
def validator() -> Path:
    sources = sorted(MODULE.glob("*.go"))
    binary = local_stack_home() / "helm" / f"validate-{content_key(MODULE / 'go.mod', MODULE / 'go.sum', *sources)}" / "validate"
    go_build(".", binary)
    return binary


def run(argv: list, stdin: str | None = None) -> subprocess.CompletedProcess:
    # helm keeps no state for lint and template; its cache and config go to a scratch HOME.
    env = {**os.environ, "HELM_CACHE_HOME": "/tmp/streamledger-helm/cache",
           "HELM_CONFIG_HOME": "/tmp/streamledger-helm/config", "HELM_DATA_HOME": "/tmp/streamledger-helm/data"}
    return subprocess.run([str(a) for a in argv], input=stdin, capture_output=True, text=True, env=env, timeout=120)


def render(helm: Path, *args: str) -> str:
    result = run([helm, "template", "sl", CHART, *args])
    assert result.returncode == 0, f"helm template {' '.join(args)} failed:\n{result.stderr}"
    return result.stdout


def validate(validator: Path, manifests: str) -> subprocess.CompletedProcess:
    return run([validator, "-"], stdin=manifests)


def decoded_kinds(output: str) -> dict[str, int]:
    """{'Deployment': 9, ...} from the validator's summary line."""
    summary = re.search(r"^decoded strictly: \d+ of \d+ objects \((.*)\)$", output, re.MULTILINE)
    assert summary, output
    return {kind: int(count) for kind, count in re.findall(r"(\w+) x(\d+)", summary.group(1))}


@pytest.mark.parametrize("value_set", [None, *VALUE_SETS])
def test_the_chart_lints(helm: Path, value_set: str | None) -> None:
    args = ["-f", VALUE_SETS[value_set]] if value_set else []
    result = run([helm, "lint", "--strict", CHART, *args])
    assert result.returncode == 0, f"helm lint {value_set or 'defaults'} failed:\n{result.stdout}{result.stderr}"


def test_minimal_values_render_valid_objects(helm: Path, validator: Path) -> None:
    result = validate(validator, render(helm, "-f", str(VALUE_SETS["minimal"])))
    assert result.returncode == 0, result.stdout + result.stderr
    # The data path without the ledger: six services, no autoscaling, policies or monitors.
    assert decoded_kinds(result.stdout) == {"Deployment": 6, "Service": 6, "Secret": 3}


def test_full_values_render_valid_objects(helm: Path, validator: Path) -> None:
    result = validate(validator, render(helm, "-f", str(VALUE_SETS["full"])))
    assert result.returncode == 0, result.stdout + result.stderr
    kinds = decoded_kinds(result.stdout)
    assert kinds["Deployment"] == 9 and kinds["Service"] == 9
    assert kinds["HorizontalPodAutoscaler"] == 2  # ingestion and inference
    assert kinds["NetworkPolicy"] == 9 and kinds["ServiceMonitor"] == 9
    assert kinds["PodDisruptionBudget"] == 7  # every service with more than one replica (both ledger loops too)
    assert kinds["ConfigMap"] == 1  # the models file


def test_the_default_values_render_valid_objects(helm: Path, validator: Path) -> None:
    result = validate(validator, render(helm))
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_example_manifests_decode_strictly(validator: Path) -> None:
    result = run([validator, *sorted(EXAMPLES.glob("*.yaml"))])
    assert result.returncode == 0, result.stdout + result.stderr
    kinds = decoded_kinds(result.stdout)
    assert kinds["Kafka"] == 1 and kinds["KafkaNodePool"] == 1 and kinds["MongoDBCommunity"] == 1
    assert kinds["KafkaUser"] == 8 and kinds["KafkaTopic"] >= 9


def test_a_value_of_the_wrong_type_fails_validation(helm: Path, validator: Path) -> None:
    manifests = render(helm, "-f", str(VALUE_SETS["minimal"]), "--set-string", "services.ingestion.replicas=two")
    result = validate(validator, manifests)
    assert result.returncode == 1, result.stdout
    assert re.search(r"INVALID Deployment sl-streamledger-ingestion .*replicas", result.stdout), result.stdout


def test_an_unknown_field_fails_validation(helm: Path, validator: Path) -> None:
    manifests = render(helm, "-f", str(VALUE_SETS["minimal"]))
    misspelt = manifests.replace("\n  replicas: 1\n", "\n  replica: 1\n", 1)
    assert misspelt != manifests
    result = validate(validator, misspelt)
    assert result.returncode == 1, result.stdout
    assert re.search(r'INVALID Deployment sl-streamledger-\w+ .*unknown field "replica"', result.stdout), result.stdout


def test_an_unknown_kind_fails_validation(validator: Path) -> None:
    result = validate(validator, "apiVersion: apps/v1\nkind: StatefulSett\nmetadata: {name: x}\n")
    assert result.returncode == 1 and "no Go type for apps/v1 StatefulSett" in result.stdout, result.stdout


def test_learning_runs_as_replicas_that_share_the_models(helm: Path, validator: Path) -> None:
    manifests = render(helm, "-f", str(VALUE_SETS["minimal"]), "--set", "services.learning.replicas=3")
    assert validate(validator, manifests).returncode == 0
    learning = next(doc for doc in manifests.split("\n---\n")
                    if "kind: Deployment" in doc and "name: sl-streamledger-learning\n" in doc)
    assert "replicas: 3" in learning and "type: RollingUpdate" in learning, learning


def test_the_ledger_loops_take_replicas_rolled_over_one_at_a_time(helm: Path) -> None:
    """Anchoring and settlement replicas share their topics' partitions (README, Ledger service)."""
    manifests = render(helm, "--set", "services.ledgerAnchoring.replicas=2", "--set", "services.ledgerSettlement.replicas=2")
    for loop in ("ledger-anchoring", "ledger-settlement"):
        deployment = re.search(rf"kind: Deployment\nmetadata:\n  name: sl-streamledger-{loop}\n(?:.*\n)*?spec:\n"
                               rf"  replicas: (\d+)\n(?:.*\n)*?    type: (\w+)", manifests)
        assert deployment and deployment.groups() == ("2", "RollingUpdate"), loop
        assert re.search(rf"kind: PodDisruptionBudget\nmetadata:\n  name: sl-streamledger-{loop}\n", manifests), loop
