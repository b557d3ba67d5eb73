import subprocess
import sys

import pytest

from tests.conftest import ROOT
from ulr_spark.cli import main, parser
from ulr_spark.pipeline import STAGES


@pytest.mark.parametrize("stage", list(STAGES) + ["run", "compare"])
def test_every_sub_command_has_help_with_an_example(stage, capsys):
    with pytest.raises(SystemExit) as exit_info:
        parser().parse_args([stage, "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "examples:" in out and out.count(f"ulr-spark {stage} ") >= 2 and "--run-id" in out
    job = "run" if stage == "run" else stage.replace("-", "_")
    assert f"jobs/{job}.py" in out and "spark-submit" in out and "writes:" in out


def test_a_bad_config_fails_at_start_up_naming_the_key(tmp_path, capsys):
    config = tmp_path / "bad.yaml"
    config.write_text("train:\n  epochs: 2\n  lerning_rate: 0.1\n")
    assert main(["train", "--config", str(config)]) == 2
    assert "unknown config key 'train.lerning_rate'" in capsys.readouterr().err


def test_jobs_are_thin_entry_points():
    for stage in list(STAGES) + ["run", "compare"]:
        path = f"{ROOT}/jobs/{stage.replace('-', '_')}.py"
        source = open(path).read()
        assert f'main(["{stage}"] + sys.argv[1:])' in source
        assert len([line for line in source.splitlines() if line.strip()]) < 15


def test_console_script_is_installed():
    out = subprocess.run([sys.executable, "-m", "ulr_spark.cli", "--help"], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0 and "build-examples" in out.stdout
