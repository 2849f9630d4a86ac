"""A result folder a run has not finished writing is marked INCOMPLETE: a rerun stopped during
its export leaves the mark, and eval mode, the tools and a run starting from it refuse it by
name; a finished run leaves no mark."""
from __future__ import annotations

import signal

import pytest

import learners.run.outputs as outputs_module
from compression.artifacts import IncompleteResult, check_complete
from learners.launch import main
from nets import resnet_at_digits
from tests.conftest import digits_flag_values, tiny_digits_argv
from tools.common import ToolError, load_artifact
from utils.stopping import Stopped

pytest.importorskip("onnxruntime")


def test_a_rerun_stopped_during_export_leaves_the_folder_marked(tmp_path, monkeypatch, capsys):
    values = digits_flag_values(*tiny_digits_argv(tmp_path), "--export_format=onnx")
    main(resnet_at_digits.ModelHelper, values)
    eval_dir = tmp_path / "models_eval"
    assert not (eval_dir / "INCOMPLETE").exists() and (eval_dir / "report.json").exists()

    def stopped(*args, **kwargs):
        raise Stopped(signal.SIGTERM)

    monkeypatch.setattr(outputs_module, "deploy", stopped)
    with pytest.raises(SystemExit) as exit_info:
        main(resnet_at_digits.ModelHelper, values)
    assert exit_info.value.code == 143
    assert "stopped by SIGTERM during export" in capsys.readouterr().err
    assert (eval_dir / "INCOMPLETE").exists() and not (eval_dir / "report.json").exists()
    artifact = str(eval_dir / "model.ckpt")
    with pytest.raises(IncompleteResult, match="holds an unfinished result"):
        check_complete(artifact)
    with pytest.raises(ToolError, match="holds an unfinished result"):
        load_artifact(artifact)
    with pytest.raises(SystemExit) as exit_info:                        # --exec_mode=eval
        main(resnet_at_digits.ModelHelper, {**values, "exec_mode": "eval"})
    assert exit_info.value.code == 2 and "INCOMPLETE" in capsys.readouterr().err
    monkeypatch.undo()
    main(resnet_at_digits.ModelHelper, values)                           # redone: whole again
    assert not (eval_dir / "INCOMPLETE").exists() and (eval_dir / "report.json").exists()
