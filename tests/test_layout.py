"""The package layout holds: production code never imports the simulator or the experiment
harness, and modules stay small enough to read."""

import glob
import json
import os
import subprocess
import sys

from tests.conftest import ROOT

PRODUCTION = [
    "ulr_spark.cli",
    "ulr_spark.config",
    "ulr_spark.examples.slates",
    "ulr_spark.training.driver",
    "ulr_spark.training.worker",
    "ulr_spark.scoring",
    "ulr_spark.evaluation",
    "ulr_spark.pipeline",
    "ulr_spark.diagnostics",
    "ulr_spark.notebook",
    "ulr_spark.serving",
]
NOT_PRODUCTION = ("ulr_spark.simulation", "ulr_spark.experiments")


def imported_modules(code: str) -> list[str]:
    """The ulr_spark modules loaded after running ``code`` in a fresh interpreter."""
    probe = code + "\nimport json, sys\nprint(json.dumps(sorted(m for m in sys.modules if m.startswith('ulr_spark'))))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=ROOT, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_production_stages_import_no_simulation_or_experiments_module():
    loaded = imported_modules("\n".join(f"import {m}" for m in PRODUCTION))
    assert set(PRODUCTION) <= set(loaded)
    leaked = [m for m in loaded if m.startswith(NOT_PRODUCTION)]
    assert leaked == [], f"production imports {leaked}"


def test_a_config_without_simulate_or_compare_sections_loads_no_simulation_code():
    loaded = imported_modules(
        "from ulr_spark.config import config_from_dict\n"
        "c = config_from_dict({'train': {'epochs': 2}})\n"
        "assert c.simulate is None and c.compare is None"
    )
    assert not [m for m in loaded if m.startswith(NOT_PRODUCTION)]


def test_the_probe_sees_an_import_of_the_simulator():
    """The check above can fail: importing the simulator does show up."""
    loaded = imported_modules("import ulr_spark.simulation.simulator")
    assert "ulr_spark.simulation.simulator" in loaded


def test_no_module_is_over_350_lines():
    long = {}
    for path in glob.glob(os.path.join(ROOT, "ulr_spark", "**", "*.py"), recursive=True):
        with open(path) as handle:
            lines = sum(1 for _ in handle)
        if lines > 350:
            long[os.path.relpath(path, ROOT)] = lines
    assert long == {}


def test_a_simulate_section_loads_only_its_settings_model():
    """The loader validates a ``simulate:`` section with the simulator's settings model (and
    only that): the simulator itself is not imported by reading a config."""
    loaded = imported_modules(
        "from ulr_spark.config import load_config\n"
        "c = load_config('conf/demo.yaml')\n"
        "assert c.simulate.num_requests == 100000"
    )
    assert [m for m in loaded if m.startswith(NOT_PRODUCTION)] == ["ulr_spark.simulation", "ulr_spark.simulation.settings"]
