"""The CLI's start-up: --help and --version load no heavy library; --version names the versions."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from typer.testing import CliRunner

from attnprobe.cli.app import app

HEAVY = ("torch", "monai", "zarr", "matplotlib", "xarray")

# One fresh interpreter: `import attnprobe`, then every command's --help in-process.
_PROBE = """
import json, sys, time
t0 = time.process_time()
import attnprobe
after_import = sorted(m for m in {heavy} if m in sys.modules)
from typer.testing import CliRunner
from attnprobe.cli.app import app
runner = CliRunner()
codes = {{"": runner.invoke(app, ["--help"]).exit_code}}
for name in [c.name for c in app.registered_commands] + [g.name for g in app.registered_groups]:
    codes[name] = runner.invoke(app, [name, "--help"]).exit_code
print(json.dumps({{"after_import": after_import, "codes": codes,
                  "loaded": sorted(m for m in {heavy} if m in sys.modules),
                  "cpu_s": time.process_time() - t0}}))
"""


def test_import_and_every_help_load_no_heavy_library():
    root = Path(__file__).resolve().parents[2]
    out = subprocess.run([sys.executable, "-c", _PROBE.format(heavy=HEAVY)], capture_output=True, text=True,
                         cwd=root, check=True, env={"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin"})
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["after_import"] == []
    assert len(got["codes"]) > 5 and set(got["codes"].values()) == {0}, got["codes"]
    assert got["loaded"] == [], f"--help imported {got['loaded']}"
    assert got["cpu_s"] < 3.0  # ~0.3 s of CPU on an idle machine; generous for a busy one


def test_version_prints_the_three_versions():
    res = CliRunner().invoke(app, ["--version"])
    assert res.exit_code == 0
    words = res.output.split()
    assert words[0::2] == ["attnprobe", "torch", "monai"]
    assert words[3].split("+")[0] == __import__("torch").__version__.split("+")[0]
