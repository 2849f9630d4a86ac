"""A deployment file that fails its parity check fails the run: every output and report.json
are written first, the report's ``parity`` says which file and by how much, the entry script
exits with status 3 and the Python API raises, unless ``--allow_parity_failure``."""
from __future__ import annotations

import json
import os

import pytest

import deployment.pipeline as pipeline
from deployment.verify import ParityFailure, verify_artifact
from learners.launch import main
from nets import resnet_at_digits
from tests.conftest import digits_flag_values, tiny_digits_argv

pytest.importorskip("onnxruntime")


@pytest.fixture
def strict_tolerance(monkeypatch):
    """Every fp32 file fails: a negative tolerance no difference can meet."""
    def verify(path, model, batches, kind="fp32", **kwargs):
        return verify_artifact(path, model, batches, kind, atol=-1.0, **kwargs)

    monkeypatch.setattr(pipeline, "verify_artifact", verify)


def test_a_failed_parity_check_fails_the_run_after_writing_everything(tmp_path, strict_tolerance,
                                                                     capsys):
    values = digits_flag_values(*tiny_digits_argv(tmp_path), "--export_format=onnx")
    with pytest.raises(SystemExit) as exit_info:
        main(resnet_at_digits.ModelHelper, values)
    assert exit_info.value.code == 3
    stderr = capsys.readouterr().err
    assert stderr.startswith("error: 1 deployment file(s) do not reproduce the model: ")
    assert "--allow_parity_failure" in stderr
    eval_dir = tmp_path / "models_eval"
    report = json.loads((eval_dir / "report.json").read_text())
    assert os.path.isfile(eval_dir / "model.ckpt") and os.path.isfile(eval_dir / "model.onnx")
    (failed,) = report["parity"]["failed"]
    assert report["parity"]["ok"] is False and failed["check"] == "onnx_fp32"
    assert failed["file"] == str(eval_dir / "model.onnx") and failed["max_abs_diff"] >= 0
    assert failed["reason"] in stderr and report["onnx"]["parity_ok"] is False


def test_allow_parity_failure_keeps_exit_status_0_and_the_report_says_so(tmp_path, strict_tolerance):
    values = digits_flag_values(*tiny_digits_argv(tmp_path), "--export_format=onnx",
                                "--allow_parity_failure")
    main(resnet_at_digits.ModelHelper, values)
    report = json.loads((tmp_path / "models_eval" / "report.json").read_text())
    assert report["parity"]["ok"] is False and len(report["parity"]["failed"]) == 1


def test_the_python_api_raises_with_the_report(tmp_path, strict_tolerance):
    import pocketflow_torch as pf

    helper = resnet_at_digits.ModelHelper(resnet_at_digits.Config(image_size=8, nb_epochs_rat=0.005,
                                                                  batch_size=32))
    with pytest.raises(ParityFailure) as err:
        pf.compress(helper, learner="full-prec", out_dir=str(tmp_path / "api"),
                    export_format="onnx", report_latency=False)
    assert err.value.report["parity"]["failed"][0]["check"] == "onnx_fp32"


def test_a_run_whose_files_pass_has_a_parity_section_that_says_ok(tmp_path):
    values = digits_flag_values(*tiny_digits_argv(tmp_path), "--export_format=onnx")
    main(resnet_at_digits.ModelHelper, values)
    report = json.loads((tmp_path / "models_eval" / "report.json").read_text())
    assert report["parity"] == {"ok": True, "failed": []}
