"""OS errors on writes are the user's to fix: one ``error:`` line naming the path and the
cause, exit status 2, no temp file left, earlier files intact."""
from __future__ import annotations

import os
import resource
import subprocess
import sys

from tests.conftest import REPO, tiny_digits_argv


def entry(*args: str, limit_bytes: int | None = None) -> subprocess.CompletedProcess:
    def limit() -> None:
        if limit_bytes is not None:
            resource.setrlimit(resource.RLIMIT_FSIZE, (limit_bytes, limit_bytes))

    env = {**os.environ, "PYTHONPATH": str(REPO), "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, str(REPO / "nets" / "resnet_at_digits_run.py"), *args],
                          capture_output=True, text=True, timeout=300, env=env, cwd=REPO,
                          preexec_fn=limit)


def test_an_output_path_under_a_regular_file_is_one_error_line(tmp_path):
    (tmp_path / "blocker").write_text("a file, not a folder")
    argv = tiny_digits_argv(tmp_path / "blocker" / "run")
    proc = entry(*argv)
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = proc.stderr.strip().splitlines()
    assert lines[-1].startswith(f"error: cannot write {tmp_path / 'blocker'}")
    assert "a file stands where a folder of this path should be" in lines[-1]
    assert "Traceback" not in proc.stderr


def test_a_full_disk_while_saving_names_the_file_and_leaves_no_temp_file(tmp_path):
    proc = entry(*tiny_digits_argv(tmp_path), limit_bytes=200_000)   # the model is ~1.1 MB
    assert proc.returncode == 2, proc.stderr[-2000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: cannot write {tmp_path}") and "File too large (EFBIG" in last, last
    assert "Traceback" not in proc.stderr
    leftovers = [name for _, _, files in os.walk(tmp_path) for name in files
                 if name.startswith(".tmp") or ".pocketflow.lock" in name]
    assert leftovers == []
