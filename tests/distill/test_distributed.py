"""Accelerate with two CPU processes: the same recipe, launched by `accelerate launch`, trains one
student over twice the global batch."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

from tests.conftest import tiny_recipe_dict


def test_two_processes_share_the_distillation(tmp_path, tiny_teacher, tiny_data):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump(tiny_recipe_dict(tiny_teacher, tiny_data, distill={
        "max_steps": 6, "batch_size": 4, "lr": 5e-4, "checkpoint_every": 3, "log_every": 1,
        "losses": [{"name": "embedding_cosine"}, {"name": "hidden_mse", "layer_map": "uniform"}]})))
    accelerate = shutil.which("accelerate", path=str(Path(sys.executable).parent))
    cmd = [accelerate, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no",
           "--dynamo_backend", "no", "-m", "kd_edge", "distill", str(recipe), "--out", str(tmp_path / "run"), "-q"]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-3000:]
    assert p.stdout.count("[ 4/5] distill   done") == 1  # one process talks
    summary = json.loads((tmp_path / "run" / "train" / "summary.json").read_text())
    assert summary["steps"] == 6 and summary["samples_seen"] == 6 * 4 * 2
    assert (tmp_path / "run" / "student" / "model.safetensors").is_file()
    assert json.loads((tmp_path / "run" / "manifest.json").read_text())["stages"]["distill"]["processes"] == 2
