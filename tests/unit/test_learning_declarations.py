"""Model declarations: TOML -> River objects through the allow-list, with errors naming the key."""

from __future__ import annotations

import pytest
from river import compose, linear_model, optim, preprocessing

from streamledger.core.models import (
    ALLOWED,
    DeclarationError,
    parse_declaration,
    parse_declarations,
)
from streamledger.declarations import load_declarations
from streamledger.settings import DEFAULT_MODELS_FILE


def table(**overrides):
    base = {
        "id": "m1",
        "task": "binary",
        "metrics": ["Accuracy"],
        "pipeline": [{"class": "preprocessing.StandardScaler"}, {"class": "linear_model.LogisticRegression"}],
    }
    base.update(overrides)
    return base


def test_default_declarations_build_every_model():
    declarations = load_declarations(DEFAULT_MODELS_FILE)
    assert {d.task.name for d in declarations} == {"binary", "anomaly", "regression"}
    for declaration in declarations:
        assert declaration.build_model() is not declaration.build_model()  # fresh objects each time


def test_pipeline_with_nested_optimizer_is_built():
    declaration = parse_declaration(table(pipeline=[
        {"class": "preprocessing.StandardScaler"},
        {"class": "linear_model.LogisticRegression",
         "params": {"l2": 0.01, "optimizer": {"class": "optim.SGD", "params": {"lr": 0.05}}}},
    ]))
    model = declaration.build_model()
    assert isinstance(model, compose.Pipeline)
    assert isinstance(model["StandardScaler"], preprocessing.StandardScaler)
    final = model["LogisticRegression"]
    assert isinstance(final, linear_model.LogisticRegression) and final.l2 == 0.01
    assert isinstance(final.optimizer, optim.SGD) and final.optimizer.learning_rate == 0.05


@pytest.mark.parametrize("name", ["os.system", "builtins.eval", "river.linear_model.LogisticRegression",
                                  "compose.FuncTransformer", "__import__"])
def test_a_class_outside_the_allow_list_is_refused_by_name(name):
    with pytest.raises(DeclarationError, match=f"class '{name}' is not in the allow-list"):
        parse_declaration(table(pipeline=[{"class": name}]))


def test_an_unknown_parameter_is_named():
    with pytest.raises(DeclarationError, match=r"pipeline\[1\]: linear_model.LogisticRegression has no parameter 'learning_rate'"):
        parse_declaration(table(pipeline=[{"class": "preprocessing.StandardScaler"},
                                          {"class": "linear_model.LogisticRegression", "params": {"learning_rate": 1}}]))


def test_a_parameter_value_river_refuses_is_reported():
    with pytest.raises(DeclarationError, match=r"drift.detector: drift.ADWIN\(delta=.high.\) was refused by River"):
        parse_declaration(table(drift={"detector": {"class": "drift.ADWIN", "params": {"delta": "high"}}}))


def test_task_and_final_step_must_agree():
    with pytest.raises(DeclarationError, match="task 'regression' needs a final step that is a Regressor"):
        parse_declaration(table(task="regression", metrics=["MAE"]))


def test_a_metric_that_does_not_fit_the_task_is_refused():
    with pytest.raises(DeclarationError, match="metric MAE does not work with a binary model"):
        parse_declaration(table(metrics=["MAE"]))
    with pytest.raises(DeclarationError, match="metric 'Bogus' is not allowed"):
        parse_declaration(table(metrics=["Bogus"]))


@pytest.mark.parametrize("overrides, message", [
    ({"task": "clustering"}, "'task' must be one of"),
    ({"id": ""}, "'id' must be a non-empty string"),
    ({"pipeline": []}, "'pipeline' must be a non-empty list"),
    ({"pipeline": ["linear_model.LogisticRegression"]}, r"pipeline\[0\]: must be a table with a 'class' key"),
    ({"drift": {"response": "panic"}}, "'response' must be one of log, reset, background"),
    ({"drift": {"when": "now"}}, r"unknown keys \['when'\]"),
    ({"colour": "blue"}, r"unknown keys \['colour'\]"),
    ({"task": "regression", "metrics": ["MAE"], "drift": {"detector": {"class": "drift.binary.DDM"}},
      "pipeline": [{"class": "linear_model.LinearRegression"}]}, "DDM watches 0/1 errors"),
    ({"batch_size": 0}, "'batch_size' must be a positive integer"),
])
def test_malformed_declarations_name_the_key(overrides, message):
    with pytest.raises(DeclarationError, match=message):
        parse_declaration(table(**overrides))


def test_duplicate_ids_and_empty_files_are_refused(tmp_path):
    with pytest.raises(DeclarationError, match=r"model ids declared twice: \['m1'\]"):
        parse_declarations({"model": [table(), table()]})
    empty = tmp_path / "models.toml"
    empty.write_text("")
    with pytest.raises(DeclarationError, match="declares no model"):
        load_declarations(empty)
    broken = tmp_path / "broken.toml"
    broken.write_text("[[model]\n")
    with pytest.raises(DeclarationError, match="not valid TOML"):
        load_declarations(broken)


def test_events_are_selected_by_tenant_and_source_globs():
    declaration = parse_declaration(table(tenant="acme", source="phish*"))
    assert declaration.takes("acme", "phishing")
    assert not declaration.takes("acme", "trump_approval")
    assert not declaration.takes("other", "phishing")


def test_fingerprint_changes_with_the_pipeline_only():
    a = parse_declaration(table())
    b = parse_declaration(table(source="elsewhere"))
    c = parse_declaration(table(pipeline=[{"class": "linear_model.LogisticRegression"}]))
    assert a.fingerprint() == b.fingerprint() != c.fingerprint()


def test_bad_declarations_refuse_the_services_start_in_one_line_naming_the_key(tmp_path):
    import os
    import subprocess
    import sys

    bad = tmp_path / "models.toml"
    bad.write_text('[[model]]\nid = "m"\ntask = "binary"\nmetrics = ["Accuracy"]\npipeline = [ { class = "os.system" } ]\n')
    env = {**os.environ, "STREAMLEDGER_LEARNING_MODELS_FILE": str(bad), "STREAMLEDGER_KAFKA_BOOTSTRAP": "127.0.0.1:1"}
    done = subprocess.run([sys.executable, "-c", "from services.learning.app import main; main()"], env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert done.stderr.splitlines() == [
        f"learning: cannot start: STREAMLEDGER_LEARNING_MODELS_FILE={bad}: model 'm': pipeline[0]: "
        f"class 'os.system' is not in the allow-list; allowed: {', '.join(sorted(ALLOWED))}"]
