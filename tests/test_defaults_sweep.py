"""bench/defaults_sweep.py's first-run criterion (issue 24 item 7): the table it prints judges
each run on the means over the seeds against FIRST_RUN_MAX_ERROR and pure PyTorch's mean with the
same optimizer, and a stopped or missing run misses it."""
import importlib.util
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "bench" / "defaults_sweep.py"


def _sweep():
    spec = importlib.util.spec_from_file_location("defaults_sweep", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _run(text, seed, err, stopped=None):
    return dict(run=text, seed=seed, val_error=[] if err is None else [err], stopped=stopped, config={})


def test_first_run_table_judges_the_means_over_the_seeds():
    sweep = _sweep()
    assert sweep.FIRST_RUN_MAX_ERROR == 8.0
    assert sorted(sweep.FIRST_RUN_DEFAULTS) == sorted(["optimizer=sgd", "optimizer=adam", "optimizer=sgd,variant=modern",
                                                       "optimizer=adam,variant=modern"])
    base = [dict(optimizer="adam", seed=0, val_error=[7.0]), dict(optimizer="adam", seed=1, val_error=[6.0]),
            dict(optimizer="sgd", seed=0, val_error=[9.0]), dict(optimizer="sgd", seed=1, val_error=[9.0])]
    runs = [_run("optimizer=adam", 0, 6.0), _run("optimizer=adam", 1, 6.8),        # mean 6.4 <= 6.5, loses seed 1
            _run("optimizer=adam,lr=0.01", 0, 7.0), _run("optimizer=adam,lr=0.01", 1, 6.2),  # mean 6.6 > 6.5
            _run("optimizer=sgd", 0, 8.5), _run("optimizer=sgd", 1, 7.4),          # mean 7.95 <= 8, 8.5 alone > 8
            _run("optimizer=sgd,lr=0.1", 0, 7.0), _run("optimizer=sgd,lr=0.1", 1, None, stopped="diverged"),
            _run("optimizer=sgd,momentum=0.5", 0, 8.2), _run("optimizer=sgd,momentum=0.5", 1, 8.0)]  # 8.1 > 8 (8.0 alone is <= 8)
    rows = {line.split(" | ")[0][2:]: line for line in sweep.first_run_table(base + runs, [0, 1]).splitlines()[2:]}
    assert rows["optimizer=adam"].endswith("| 6.40% / 6.50% | met (met at 1 of 2 seeds alone) |")
    assert rows["optimizer=adam,lr=0.01"].endswith("| 6.60% / 6.50% | missed (met at 1 of 2 seeds alone) |")
    assert rows["optimizer=sgd"].endswith("| 7.95% / 9.00% | met (met at 1 of 2 seeds alone) |")
    assert "missed (a run stopped or is missing)" in rows["optimizer=sgd,lr=0.1"]
    assert rows["optimizer=sgd,momentum=0.5"].endswith("| 8.10% / 9.00% | missed (met at 1 of 2 seeds alone) |")
    # a seed without its pure PyTorch run cannot be judged
    assert "missing" in sweep.first_run_table(base[:1] + runs[:2], [0, 1]).splitlines()[2]
