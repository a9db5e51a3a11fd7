"""A non-editable install of the core package, in a fresh virtual environment
without torch, runs `memplan estimate`: the estimator is torch-free and the
profiles (and the app) ship with the package."""
import json
import os
import subprocess
import venv
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_core_install_without_torch(tmp_path):
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    py = env_dir / "bin" / "python"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    subprocess.run([py, "-m", "pip", "install", "-q", str(ROOT)], check=True, env=env, cwd=tmp_path,
                   capture_output=True)
    check = subprocess.run(
        [py, "-c", "import importlib.util as u; print(u.find_spec('torch') is None)"],
        capture_output=True, text=True, env=env, cwd=tmp_path, check=True)
    assert check.stdout.strip() == "True", "torch must not be a core dependency"
    out = subprocess.run([env_dir / "bin" / "memplan", "estimate", "--model", "llama-7b", "--method", "golore",
                          "--rank", "128", "--gpu", "rtx-4090", "--json"],
                         capture_output=True, text=True, env=env, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert data["parameter_count"] == 6_738_415_616
    assert data["fit"]["gpu"] == "rtx-4090"
    # installed files, not the source tree: profiles and the dashboard ship in the package
    files = subprocess.run(
        [py, "-c", "import memplan, importlib.resources as r; "
                   "print(memplan.__file__); "
                   "print(len(list(r.files('memplan.profile_data').joinpath('models').iterdir()))); "
                   "print(r.files('memplan.profile_data').joinpath('gpus.toml').is_file()); "
                   "print(r.files('memplan.app').joinpath('dashboard.py').is_file())"],
        capture_output=True, text=True, env=env, cwd=tmp_path, check=True).stdout.split()
    assert str(env_dir) in files[0]
    assert int(files[1]) >= 14
    assert files[2] == "True"
    assert files[3] == "True"
