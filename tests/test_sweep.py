"""Sweeps on a real cache of real SST-2 rows: the grid, the held-out slice, stacks, the report, resume."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from killed_job import kill_then_resume

from ytune import HeadSpec, TrainConfig, UserError, open_cache, sweep, train
from ytune.train.checkpoint import load_head
from ytune.train.config import SETTINGS, parse_grid, parse_layers
from ytune.train.stream import batches, holdout_rows
from ytune.train.sweep import expand

CLI = [sys.executable, "-m", "ytune.cli"]
SMALL = {"width": 32, "heads": 2, "dropout": 0.0}


def quick(**kw) -> TrainConfig:
    return TrainConfig(**{"epochs": 2, "batch_size": 16, "buffer_size": 64, **kw})


def test_the_grid_is_the_product_of_its_values_named_after_them():
    grid = parse_grid(["lr=2e-4,5e-4", "width=256,384", "layers=-1:-1,-4:-1"])
    heads = expand([HeadSpec("ytuning", config={"blocks": 2})], grid)
    assert len(heads) == 8
    spec, settings = heads[-1]
    assert spec.name == "lr=5e-4,width=384,layers=-4:-1"
    assert settings == {"lr": "5e-4", "width": "384", "layers": "-4:-1"}
    assert spec.lr == 5e-4 and spec.layers == [-4, -3, -2, -1] and spec.config == {"blocks": 2, "width": 384}
    assert [s.name for s, _ in expand([HeadSpec("a"), HeadSpec("b")], parse_grid(["lr=1e-3"]))] == [
        "a,lr=1e-3",
        "b,lr=1e-3",
    ]
    assert parse_layers("0+3+6") == [0, 3, 6] and parse_layers("-2:-1") == [-2, -1]


def test_every_head_setting_is_a_flag_and_a_key_of_the_train_command():
    import subprocess
    import sys

    from ytune.cli import build_parser

    train_help = subprocess.run(
        [sys.executable, "-m", "ytune.cli", "train", "--help"], capture_output=True, text=True
    ).stdout
    flags = {a.dest for a in build_parser()._subparsers._group_actions[0].choices["train"]._actions}
    for key in SETTINGS:
        assert key in flags or key == "name", key  # every setting a flag (the name comes with --head)
        assert key in " ".join(train_help.split()), key  # and named in the keys --head and --sweep take
    assert "--label-init {random,names}" in train_help


@pytest.mark.parametrize(
    "items,words",
    [
        (["colour=red"], "unknown head setting 'colour'"),
        (["lr=fast"], "is not a number"),
        (["width=3.5"], "is not an integer"),
        (["layers=-1:2"], "both ends of one sign"),
        (["lr"], "KEY=V1,V2"),
        (["lr="], "KEY=V1,V2"),
        (["lr=1e-3", "lr=2e-3"], "given twice"),
        (["lr=1e-3,1e-3"], "lists a value twice"),
        (["name=a,b"], "cannot sweep names"),
    ],
)
def test_a_bad_grid_is_one_sentence(items, words):
    with pytest.raises(UserError, match=words):
        parse_grid(items)


def test_the_held_out_slice_is_disjoint_from_training_and_the_same_on_every_rerun(sst2):
    reader = open_cache(sst2).split("train")
    held = holdout_rows(len(reader), seed=0)
    assert np.array_equal(held, holdout_rows(len(reader), seed=0))
    assert not np.array_equal(held, holdout_rows(len(reader), seed=1))
    assert len(held) == 60  # 300 rows: a fifth at most, so small splits keep most rows to learn from
    assert len(holdout_rows(20000, 0)) == 2000 and len(holdout_rows(2490, 0)) == 300
    keep = np.ones(len(reader), dtype=bool)
    keep[held] = False
    cfg = quick()
    for epoch in (0, 1):
        rows = np.concatenate(
            [b.rows.numpy() for b in batches(reader, cfg, [], [0], shuffle=True, epoch=epoch, keep=keep)]
        )
        assert len(rows) == len(reader) - len(held) and not set(rows) & set(held)
    rows = np.concatenate([b.rows.numpy() for b in batches(reader, cfg, [], [0], shuffle=False, keep=~keep)])
    assert sorted(rows) == list(held)


def test_stacked_heads_train_as_they_would_one_at_a_time(sst2, tmp_path):
    """Three heads of one shape in one stack (lr and weight decay differ) against three runs alone."""
    specs = [
        HeadSpec(f"h{i}", config=SMALL, lr=lr, weight_decay=wd)
        for i, (lr, wd) in enumerate([(1e-3, 0.01), (3e-3, 0.0), (5e-4, 0.1)])
    ]
    cfg = quick(select_on="holdout")
    batch = next(iter(batches(open_cache(sst2).split("validation"), cfg, [], [0, 1], shuffle=False)))
    features, mask = batch.features, batch.mask
    together = train(sst2, specs, cfg, tmp_path / "together")
    for spec in specs:
        alone = train(sst2, [spec], cfg, tmp_path / spec.name)
        for k, v in alone[spec.name].items():
            assert together[spec.name][k] == pytest.approx(v, abs=0.011)  # 200 rows: at most 2 answers apart
        # The same function learned: class probabilities agree (parameters that softmax ignores, such
        # as a key bias, get float-noise gradients that Adam turns into steps, so weights are not compared).
        (a, _), (b, _) = (
            load_head(tmp_path / spec.name / spec.name),
            load_head(tmp_path / "together" / spec.name),
        )
        with torch.no_grad():
            torch.testing.assert_close(
                b(features, mask).softmax(-1), a(features, mask).softmax(-1), atol=2e-3, rtol=0
            )


def test_a_sweep_of_two_shapes_reports_every_head_and_names_an_honest_winner(sst2, tmp_path):
    grid = parse_grid(["width=32,64", "lr=1e-3,3e-3"])
    base = [HeadSpec("ytuning", config={"heads": 2, "dropout": 0.0})]
    winner = sweep(sst2, base, grid, quick(), tmp_path)  # holdout by default
    report = json.loads((tmp_path / "sweep.json").read_text())
    assert report["selected_on"] == "holdout" and report["metric"] == "accuracy"
    assert [h["name"] for h in report["heads"]] == [
        "width=32,lr=1e-3",
        "width=32,lr=3e-3",
        "width=64,lr=1e-3",
        "width=64,lr=3e-3",
    ]
    best = max(report["heads"], key=lambda h: h["selection"])
    assert report["winner"] == winner["winner"] == best["name"]
    assert winner["settings"] == best["settings"] and winner["validation"]["accuracy"] == best["evaluation"]
    assert len({h["parameters"] for h in report["heads"]}) == 2  # two widths
    for h in report["heads"]:
        m = json.loads((tmp_path / h["name"] / "metrics.json").read_text())
        assert m["selected_on"] == "holdout" and all("holdout_accuracy" in e for e in m["history"])
        assert not any(
            "validation_accuracy" in e for e in m["history"]
        )  # validation is read once, at the end
    assert (tmp_path / "sweep.png").stat().st_size > 1000
    # The sweep's folder stands for its winner in eval.
    ev = subprocess.run(
        [*CLI, "eval", "--head", str(tmp_path), "--cache", str(sst2)], capture_output=True, text=True
    )
    assert ev.returncode == 0, ev.stderr
    assert json.loads(ev.stdout.splitlines()[-1]) == winner["validation"]


SWEEP_ARGS = [
    "--epochs",
    "6",
    "--batch-size",
    "8",
    "--heads",
    "2",
    "--sweep",
    "width=16,32",
    "--sweep",
    "lr=1e-3,2e-3",
]


def test_a_killed_sweep_resumes_to_the_same_table(sst2, tmp_path):
    args = [*CLI, "train", "--cache", str(sst2), *SWEEP_ARGS]
    full = subprocess.run([*args, "--out", str(tmp_path / "full")], capture_output=True, text=True)
    assert full.returncode == 0, full.stderr
    last = json.loads(full.stdout.splitlines()[-1])
    assert last["selected_on"] == "holdout" and set(last) == {
        "winner",
        "settings",
        "selected_on",
        "selection",
        "validation",
    }
    assert "<- winner" in full.stderr
    resumed = kill_then_resume(args, tmp_path / "cut", epochs=6)
    assert json.loads(resumed.stdout.splitlines()[-1]) == last

    def table(folder):
        return [
            {k: v for k, v in h.items() if k != "seconds"}
            for h in json.loads((folder / "sweep.json").read_text())["heads"]
        ]

    assert table(tmp_path / "cut") == table(tmp_path / "full")


def test_bad_sweeps_on_the_command_line_are_one_sentence(sst2, tmp_path):
    for bad, words in (
        (["--sweep", "lr=fast"], "is not a number"),
        (["--sweep", "depth=2"], "unknown head setting"),
    ):
        out = subprocess.run(
            [*CLI, "train", "--cache", str(sst2), "--out", str(tmp_path), *bad],
            capture_output=True,
            text=True,
        )
        assert out.returncode == 2 and words in out.stderr and "Traceback" not in out.stderr
        assert len(out.stderr.strip().splitlines()) == 1
    assert not any(tmp_path.iterdir())  # nothing written
