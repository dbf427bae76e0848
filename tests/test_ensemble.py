"""Heads that learn past one draw: ensembles in one head, moving averages of weights, each head's
own seed, and sweeps that choose settings by their mean over seeds."""

import dataclasses
import json

import torch
from safetensors import safe_open
from safetensors.torch import load_file

from ytune import HeadSpec, TrainConfig, evaluate, train
from ytune.train.average import WeightAverage
from ytune.train.config import HeadConfig
from ytune.train.model import build_head, head_state, load_head_state
from ytune.train.sweep import winner_of

SMALL = {"width": 32, "heads": 2, "blocks": 1, "members": 1, "ema": 0.0}  # one plain head


def quick(**kw) -> TrainConfig:
    return TrainConfig(**{"epochs": 2, "batch_size": 16, "lr": 2e-3, "buffer_size": 64, **kw})


def members_alone(ensemble, cfg: HeadConfig, features, mask) -> list[torch.Tensor]:
    """Each member of a one-head ensemble run as a head of its own, from its slice of the weights."""
    out = []
    for j in range(cfg.members):
        one = build_head(dataclasses.replace(cfg, members=1)).eval()
        load_head_state(one, {k: v[j] for k, v in head_state(ensemble, 0).items()})
        out.append(one(features, mask)[0])
    return out


def test_an_ensemble_answers_with_its_members_mean_probability_or_score():
    torch.manual_seed(0)
    features, mask = torch.randn(4, 7, 2, 48), torch.rand(4, 7) > 0.3
    mask[:, 0] = True
    for kind, labels in (("classification", 3), ("regression", 1)):
        cfg = HeadConfig(
            kind=kind, num_labels=labels, num_layers_in=2, hidden_in=48, **{**SMALL, "members": 3}
        )
        ensemble = build_head(cfg).eval()
        assert (ensemble.size, ensemble.rows) == (1, 3)
        with torch.no_grad():
            answer = ensemble(features, mask)[0]
            alone = members_alone(ensemble, cfg, features, mask)
        assert not torch.allclose(alone[0], alone[1])  # members start from their own weights
        if kind == "regression":
            torch.testing.assert_close(answer, torch.stack(alone).mean(0))
        else:
            mean = torch.stack([torch.softmax(a, -1) for a in alone]).mean(0)
            torch.testing.assert_close(torch.softmax(answer, -1), mean)


def test_an_ensemble_trains_in_one_pass_and_is_one_head_everywhere(sst2, tmp_path):
    specs = [HeadSpec("one", config=SMALL), HeadSpec("three", config={**SMALL, "members": 3}, lr=1e-3)]
    results = train(sst2, specs, quick(), tmp_path)
    one, three = (json.loads((tmp_path / n / "metrics.json").read_text()) for n in ("one", "three"))
    assert three["tunable_parameters"] == 3 * one["tunable_parameters"]  # counted whole
    assert three["lr"] == 1e-3 and one["lr"] == 2e-3  # each head its own settings, members their head's
    saved = load_file(tmp_path / "three" / "head.safetensors")
    assert saved["queries"].shape[0] == 3 and not torch.equal(saved["queries"][0], saved["queries"][1])
    assert load_file(tmp_path / "one" / "head.safetensors")["queries"].dim() == 2  # no member axis
    # What was scored while training is what the saved ensemble scores now.
    assert evaluate([tmp_path / "three"], sst2, "validation") == {"three": results["three"]}


def test_a_weight_average_spans_its_horizon_in_epochs_and_swaps_in_whole():
    stack = build_head(HeadConfig(head_type="probe", hidden_in=8), k=2)
    average = WeightAverage(stack, epochs=[0, 1], batches_per_epoch=4)  # decays 0 and 1 - 1/4
    before = stack.linear.weight.detach().clone()
    with torch.no_grad():
        stack.linear.weight.add_(1.0)
    average.update(step=1000)  # past the early cap
    after = stack.linear.weight.detach().clone()
    with average.swapped():
        torch.testing.assert_close(stack.linear.weight[0], after[0])  # no horizon: its weights
        torch.testing.assert_close(stack.linear.weight[1], 0.75 * before[1] + 0.25 * after[1])
    assert torch.equal(stack.linear.weight, after)  # the weights back, to learn on


def test_a_head_keeps_and_is_scored_on_its_weight_average(sst2, tmp_path):
    """Two heads from the same first weights on the same batches (no dropout), one keeping an
    average: the same raw weights, but the average is what the second is scored and saved on."""
    config = {**SMALL, "dropout": 0.0}
    specs = [HeadSpec("raw", config=config), HeadSpec("avg", config={**config, "ema": 0.5})]
    results = train(sst2, specs, quick(epochs=1), tmp_path)
    with safe_open(tmp_path / "state.safetensors", "pt") as f:
        raw = f.get_tensor("stacks.0.queries")  # one stack: ema does not change a head's shape
        averaged = f.get_tensor("averages.0." + str(averages_index(f, "queries")))
    saved = {n: load_file(tmp_path / n / "head.safetensors")["queries"] for n in ("raw", "avg")}
    assert torch.equal(saved["raw"], raw[0]) and torch.equal(raw[0], raw[1])
    assert torch.equal(saved["avg"], averaged[1]) and not torch.equal(averaged[1], raw[1])
    assert evaluate([tmp_path / "avg"], sst2, "validation") == {"avg": results["avg"]}


def averages_index(f, name: str) -> int:
    """Position of parameter `name` among stack 0's trainable parameters, as averages are saved."""
    names = [k.removeprefix("stacks.0.") for k in f.keys() if k.startswith("stacks.0.")]  # noqa: SIM118
    head = build_head(HeadConfig(hidden_in=384, **SMALL))
    order = [n for n, p in head.named_parameters() if p.requires_grad]
    assert set(order) <= set(names)
    return order.index(name)


def test_a_head_seed_draws_its_first_weights_and_dropout_as_the_run_seed_would(sst2, tmp_path):
    base = HeadSpec("h", config=SMALL)
    plain = train(sst2, [base], quick(seed=0), tmp_path / "plain")
    seeded = train(
        sst2,
        [dataclasses.replace(base, seed=0), dataclasses.replace(base, name="h1", seed=1)],
        quick(seed=0),
        tmp_path / "seeded",
    )
    assert seeded["h"] == plain["h"]
    a, b = (load_file(tmp_path / "seeded" / n / "head.safetensors")["queries"] for n in ("h", "h1"))
    # Equal up to the float order of a stack of two against a head alone (train/optim.py).
    torch.testing.assert_close(a, load_file(tmp_path / "plain" / "h" / "head.safetensors")["queries"])
    assert not torch.allclose(a, b, atol=0.1)


def test_a_sweep_over_seeds_chooses_the_settings_of_the_best_mean():
    def row(settings, score):
        return {"head": {"settings": settings, "selection": score}}

    rows = [
        row({"lr": "1e-3", "seed": "0"}, 0.90),  # the best single draw, of the worse settings
        row({"lr": "1e-3", "seed": "1"}, 0.50),
        row({"lr": "5e-4", "seed": "0"}, 0.80),
        row({"lr": "5e-4", "seed": "1"}, 0.85),
    ]
    assert winner_of(rows)["head"]["settings"] == {"lr": "5e-4", "seed": "1"}
    assert winner_of(rows[:1] + rows[2:3])["head"]["settings"]["lr"] == "1e-3"  # one seed: the best head
