import json

import pytest
import torch

from ytune import UserError
from ytune.train.config import HeadConfig
from ytune.train.model import (
    HeadBank,
    LayerMix,
    LinearProbe,
    YTuningHead,
    build_head,
    count_parameters,
    head_state,
    load_head_state,
    stack_heads,
)
from ytune.train.optim import StackedAdamW

H, D = 24, 16  # small encoder and head widths keep the tests fast


@pytest.fixture(autouse=True)
def one_thread():
    """The tensors here are tiny: one thread is as fast, and does not stall when the CPUs are shared."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def small_cfg(**kw) -> HeadConfig:
    base = dict(hidden_in=H, width=D, heads=4, dropout=0.0, members=1)
    base.update(kw)
    return HeadConfig(**base)


def make_batch(b=4, t=7, layers=1, h=H, seed=0):
    g = torch.Generator().manual_seed(seed)
    features = torch.randn(b, t, layers, h, generator=g)
    lengths = torch.tensor([t, 1, 3, t - 2][:b] + [t] * max(0, b - 4))
    mask = torch.arange(t)[None, :] < lengths[:, None]
    features[~mask] = 0.0
    return features, mask


def randomise(module: torch.nn.Module, seed=1) -> None:
    """Move every parameter off its init (LayerNorm 1/0, zero mix logits) so nothing is trivially exact."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=g))


SHAPE_CASES = (
    [
        dict(
            head_type="ytuning",
            kind="classification",
            num_labels=n,
            blocks=bl,
            layer_mix=mix,
            num_layers_in=3,
        )
        for n in (2, 3)
        for bl in (1, 2)
        for mix in ("softmax", "ladder", "last")
    ]
    + [
        dict(head_type="ytuning", kind="regression", blocks=bl, layer_mix=mix, num_layers_in=3)
        for bl in (1, 2)
        for mix in ("softmax", "ladder", "last")
    ]
    + [dict(head_type="ytuning", blocks=2, layer_mix=mix, num_layers_in=1) for mix in ("softmax", "ladder")]
    + [
        dict(head_type="probe", kind=kind, num_labels=n, pool=pool, layer_mix=mix, num_layers_in=3)
        for kind, n in (("classification", 2), ("classification", 3), ("regression", 1))
        for pool in ("mean", "first")
        for mix in ("softmax", "last")
    ]
    + [dict(head_type="probe", num_layers_in=1)]
)


@pytest.mark.parametrize("kw", SHAPE_CASES, ids=lambda kw: "-".join(str(v) for v in kw.values()))
def test_output_shapes(kw):
    cfg = small_cfg(**kw)
    head = build_head(cfg)
    assert isinstance(head, LinearProbe if cfg.head_type == "probe" else YTuningHead)
    features, mask = make_batch(layers=cfg.num_layers_in)
    out = head(features, mask)
    expected = (1, 4) if cfg.kind == "regression" else (1, 4, cfg.num_labels)  # [K heads, B, ...]
    assert out.shape == expected
    assert out.dtype == torch.float32
    assert torch.isfinite(out).all()


def test_regression_forces_one_label():
    assert HeadConfig(kind="regression").num_labels == 1
    assert YTuningHead(small_cfg(kind="regression")).queries.shape == (1, 1, D)


HEAD_VARIANTS = [
    ("ytuning-softmax-factored", dict(num_layers_in=3, blocks=2), "factored"),
    ("ytuning-softmax-direct", dict(num_layers_in=3, blocks=2), "direct"),
    ("ytuning-ladder", dict(num_layers_in=2, blocks=2, layer_mix="ladder", num_labels=3), "auto"),
    ("ytuning-last-identity", dict(num_layers_in=2, layer_mix="last", hidden_in=D), "factored"),
    ("ytuning-regression", dict(num_layers_in=1, kind="regression"), "direct"),
    ("probe-mean", dict(head_type="probe", num_layers_in=3), None),
    ("probe-first", dict(head_type="probe", num_layers_in=3, pool="first"), None),
]


def variant_head(kw, attention):
    torch.manual_seed(0)
    head = build_head(small_cfg(**kw))
    randomise(head)
    if attention is not None:
        head.attention = attention
    return head.eval()


@pytest.mark.parametrize("name,kw,attention", HEAD_VARIANTS, ids=[v[0] for v in HEAD_VARIANTS])
def test_padding_changes_nothing(name, kw, attention):
    head = variant_head(kw, attention)
    features, mask = make_batch(layers=head.cfg.num_layers_in, h=head.cfg.hidden_in)
    with torch.no_grad():
        out = head(features, mask)
        # more padding: zero-feature tokens with mask False
        extra = torch.zeros(4, 5, *features.shape[2:])
        padded = head(
            torch.cat([features, extra], 1), torch.cat([mask, torch.zeros(4, 5, dtype=torch.bool)], 1)
        )
        torch.testing.assert_close(padded, out, atol=1e-5, rtol=0)
        # each example alone, with no padding at all
        for i in range(4):
            n = int(mask[i].sum())
            alone = head(features[i : i + 1, :n], mask[i : i + 1, :n])
            torch.testing.assert_close(alone, out[:, i : i + 1], atol=1e-5, rtol=0)


@pytest.mark.parametrize("name,kw,attention", HEAD_VARIANTS, ids=[v[0] for v in HEAD_VARIANTS])
def test_masked_token_changes_nothing_real_token_does(name, kw, attention):
    head = variant_head(kw, attention)
    features, mask = make_batch(layers=head.cfg.num_layers_in, h=head.cfg.hidden_in)
    with torch.no_grad():
        out = head(features, mask)
        garbage = features.clone()
        garbage[2, 5] = 3.0 * torch.randn(garbage.shape[2:])  # example 2 has 3 real tokens
        torch.testing.assert_close(head(garbage, mask), out, atol=1e-5, rtol=0)
        changed = features.clone()
        pos = 0 if head.cfg.pool == "first" and head.cfg.head_type == "probe" else 1
        changed[2, pos] = 3.0 * torch.randn(changed.shape[2:])
        diff = (head(changed, mask) - out).abs()[0]
        assert diff[2].max() > 1e-3
        assert diff[[0, 1, 3]].max() == 0  # the other examples do not see it


def test_factored_and_direct_attention_agree_with_gradients():
    for kw in (
        dict(num_layers_in=3, blocks=2, num_labels=3),
        dict(num_layers_in=2, blocks=2, layer_mix="ladder"),
        dict(hidden_in=D, kind="regression"),
    ):
        head = variant_head(kw, None)
        features, mask = make_batch(layers=head.cfg.num_layers_in, h=head.cfg.hidden_in)
        outs, grads = {}, {}
        for mode in ("direct", "factored"):
            head.attention = mode
            head.zero_grad()
            out = head(features, mask)
            out.pow(2).sum().backward()
            outs[mode] = out.detach()
            grads[mode] = {n: p.grad.clone() for n, p in head.named_parameters() if p.grad is not None}
        torch.testing.assert_close(outs["factored"], outs["direct"], atol=1e-5, rtol=1e-5)
        for n, g in grads["direct"].items():
            other = grads["factored"].get(n, torch.zeros_like(g))
            torch.testing.assert_close(other, g, atol=1e-4, rtol=1e-4, msg=n)


def test_auto_attention_picks_factored_for_big_batches_only():
    head = YTuningHead(HeadConfig(width=256, heads=4, blocks=1))  # H = 384, d = 256, 2 labels
    assert head._use_factored(32 * 64)
    assert not head._use_factored(4)


def test_low_precision_features_are_cast():
    head = variant_head(dict(num_layers_in=2), None)
    features, mask = make_batch(layers=2)
    with torch.no_grad():
        ref = head(features.half().float(), mask)
        out = head(features.half(), mask)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    assert head(features.bfloat16(), mask).dtype == torch.float32


def test_a_stack_trains_under_bfloat16_autocast_as_on_a_gpu():
    """The stacked linear map's own backward keeps autocast's dtypes: bfloat16 products, float32 gradients."""
    torch.manual_seed(0)
    stack = stack_heads([build_head(small_cfg(num_layers_in=2)) for _ in range(2)])
    features, mask = make_batch(layers=2)
    with torch.autocast("cpu", torch.bfloat16):
        out = stack(features, mask)
    assert out.dtype == torch.bfloat16
    out.float().pow(2).sum().backward()
    grads = [p.grad for p in stack.parameters() if p.grad is not None]
    assert grads and all(g.dtype == torch.float32 and torch.isfinite(g).all() for g in grads)
    with torch.no_grad():
        reference = stack(features, mask)
    torch.testing.assert_close(out.float(), reference, atol=0.1, rtol=0.05)


def test_layer_mix_is_each_heads_softmax_weighted_sum_with_its_gradient():
    mix = LayerMix(2, 3)  # two heads, three layers
    with torch.no_grad():
        mix.logits.copy_(torch.tensor([[0.3, -0.2, 0.5], [-1.0, 0.0, 2.0]]))
    layers = torch.randn(3, 2, 5, 6).half().float()  # [L, B, T, H]
    target = torch.randn(2, 2, 5, 6)
    (mix(layers) * target).sum().backward()
    logits = mix.logits.detach().clone().requires_grad_(True)
    ref = torch.einsum("lbth,kl->kbth", layers, torch.softmax(logits, -1))
    (ref * target).sum().backward()
    torch.testing.assert_close(mix.logits.grad, logits.grad)
    torch.testing.assert_close(mix(layers), ref.detach())
    assert LayerMix(2, 3, "last")(layers).shape == (1, 2, 5, 6)  # one layer for every head: shared


def fit(head, features, mask, labels, steps=150):
    opt = torch.optim.Adam(head.parameters(), lr=1e-2)
    for _ in range(steps):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(head(features, mask)[0], labels).backward()
        opt.step()
    head.eval()
    with torch.no_grad():
        return (head(features, mask)[0].argmax(-1) == labels).float().mean().item()


def test_head_can_fit_a_token_level_task():
    """Label = whether a hidden direction was planted in one random token: attention must find it."""
    torch.manual_seed(0)
    n, t, h = 128, 8, 16
    features = torch.randn(n, t, 1, h)
    direction = torch.nn.functional.normalize(torch.randn(h), dim=0)
    labels = torch.arange(n) % 2
    where = torch.randint(0, t, (n,))
    features[labels == 1, where[labels == 1], 0] += 4.0 * direction
    mask = torch.ones(n, t, dtype=torch.bool)
    head = build_head(HeadConfig(hidden_in=h, width=32, heads=4, dropout=0.0))
    start = head.queries.detach().clone()
    assert fit(head, features, mask, labels) > 0.95
    assert not torch.equal(head.queries.detach(), start)  # gradients reached the label queries
    # Mean pooling dilutes the one planted token: the probe, trained the same way, cannot fit it.
    probe = build_head(HeadConfig(head_type="probe", hidden_in=h))
    assert fit(probe, features, mask, labels) < 0.9


def test_config_round_trip_and_validation():
    cfg = HeadConfig(
        head_type="probe", num_labels=3, num_layers_in=4, hidden_in=1536, pool="first", dropout=0.2
    )
    d = cfg.to_dict()
    assert d["pool"] == "first" and d["hidden_in"] == 1536
    assert HeadConfig.from_dict(json.loads(json.dumps(d))) == cfg
    # A head saved before ensembles and weight averages were defaults is one plain head.
    assert HeadConfig.from_dict({"width": 64, "heads": 4}) == HeadConfig(width=64, heads=4, members=1, ema=0)
    assert (HeadConfig().members, HeadConfig().ema) == (3, 1.0)  # today's Y-Tuning default
    assert (HeadConfig(head_type="probe").members, HeadConfig(head_type="probe").ema) == (1, 0.0)
    with pytest.raises(UserError, match="Unknown head config field"):
        HeadConfig.from_dict({**d, "bogus": 1})
    for bad in (
        dict(head_type="lora"),
        dict(layer_mix="max"),
        dict(pool="cls"),
        dict(width=30, heads=4),
        dict(num_labels=1),
        dict(blocks=0),
        dict(head_type="probe", layer_mix="ladder"),
        dict(members=0),
        dict(ema=-1.0),
    ):
        with pytest.raises(UserError):
            HeadConfig(**bad)


def test_count_parameters_probe_by_hand():
    cfg = HeadConfig(head_type="probe", num_labels=3, num_layers_in=4, hidden_in=H)
    # 4 layer-mix logits + LayerNorm (2H) + Linear (H*3 + 3)
    assert count_parameters(build_head(cfg)) == 4 + 2 * H + H * 3 + 3
    cfg = HeadConfig(head_type="probe", kind="regression", num_layers_in=1, hidden_in=H)
    assert count_parameters(build_head(cfg)) == 2 * H + H + 1  # one layer: no mix weights
    probe = build_head(cfg)
    probe.norm.weight.requires_grad_(False)
    assert count_parameters(probe) == H + H + 1  # frozen parameters do not count


def test_count_parameters_ytuning_by_hand():
    h, d, k = 384, 256, 2
    attention = 4 * d * d + 4 * d  # q, k, v, out with biases
    ffn = d * 2 * d + 2 * d + 2 * d * d + d
    block = 3 * 2 * d + 2 * attention + ffn
    expected = 2 * h + (h * d + d) + k * d + block + 2 * d + (d + 1)
    one_block = {"width": d, "heads": 4, "blocks": 1}
    assert count_parameters(YTuningHead(HeadConfig(hidden_in=h, **one_block))) == expected == 891393
    # identity projection when the widths match
    assert (
        count_parameters(YTuningHead(HeadConfig(hidden_in=d, **one_block)))
        == expected - 2 * h - (h * d + d) + 2 * d
    )


def test_init_queries():
    head = YTuningHead(small_cfg(num_labels=3))
    vectors = torch.randn(3, D)
    head.init_queries(vectors)
    torch.testing.assert_close(head.queries.detach()[0], vectors)
    encoder_space = torch.randn(3, H)
    head.init_queries(encoder_space)
    with torch.no_grad():
        torch.testing.assert_close(head.queries, head.proj(head.norms_in[0](encoder_space[None])))
    with pytest.raises(UserError, match="Label query vectors"):
        head.init_queries(torch.randn(2, D))


def test_a_labels_queries_score_as_their_mean_and_duplicates_change_nothing():
    """Each label's queries attend on their own and their scores are averaged: with every query of a
    label a copy of one, the head computes what a head of one query per label computes (the labels'
    self-attention weighs copies evenly), so the extra queries only add what they learn apart."""
    torch.manual_seed(0)
    features, mask = make_batch(layers=1)
    one = YTuningHead(small_cfg(num_labels=3)).eval()
    two = YTuningHead(small_cfg(num_labels=3, queries=2)).eval()
    state = one.state_dict()
    two.load_state_dict({**state, "queries": state["queries"].repeat_interleave(2, 1)})
    with torch.no_grad():
        torch.testing.assert_close(two(features, mask), one(features, mask))
        two.queries[:, 1::2] += torch.randn_like(two.queries[:, 1::2])
        assert not torch.allclose(two(features, mask), one(features, mask))
    two.init_queries(torch.randn(3, D))  # label names: every query of a label starts there
    assert torch.equal(two.queries[0, 0], two.queries[0, 1]) and not torch.equal(
        two.queries[0, 1], two.queries[0, 2]
    )
    with pytest.raises(UserError, match="queries"):
        HeadConfig(head_type="probe", queries=2)


def test_wrong_layer_count_is_an_error():
    head = build_head(small_cfg(num_layers_in=2))
    features, mask = make_batch(layers=3)
    with pytest.raises(ValueError, match="expects 2 cached layer"):
        head(features, mask)
    with pytest.raises(ValueError, match="float tensor"):
        head(features[:, :, :2].to(torch.int16), mask)
    with pytest.raises(ValueError, match="mask shape"):
        head(features[:, :, :2], mask[:, :3])


def test_head_bank_matches_heads_alone():
    torch.manual_seed(0)
    features, mask = make_batch(layers=4)
    heads = {
        "mix02": (build_head(small_cfg(num_layers_in=2, num_labels=3)), (0, 2)),  # gathered
        "last": (build_head(small_cfg(num_layers_in=1)), (3,)),  # a slice
        "probe123": (build_head(small_cfg(head_type="probe", num_layers_in=3)), (1, 2, 3)),
        "reg20": (
            build_head(small_cfg(num_layers_in=2, kind="regression", layer_mix="ladder", blocks=2)),
            (2, 0),
        ),
    }
    for head, _ in heads.values():
        randomise(head)
    bank = HeadBank(heads).eval()
    assert len(bank.stacks) == 4  # four shapes: nothing to stack
    with torch.no_grad():
        outs = bank(features, mask)
        assert set(outs) == set(heads)
        for name, (head, layers) in heads.items():
            alone = head(features[:, :, list(layers)], mask)[0]
            torch.testing.assert_close(outs[name], alone, atol=0, rtol=0)
    assert count_parameters(bank) == sum(count_parameters(h) for h, _ in heads.values())
    with pytest.raises(UserError, match="expects 2 layer"):
        HeadBank({"other": (build_head(small_cfg(num_layers_in=2)), (0,))})
    bad = HeadBank({"x": (build_head(small_cfg()), (7,))})
    with pytest.raises(ValueError, match="select layers"):
        bad(features, mask)


STACKABLE = [
    dict(num_layers_in=3, blocks=2, num_labels=3),
    dict(num_layers_in=3, blocks=2, layer_mix="last"),
    dict(num_layers_in=2, blocks=2, layer_mix="ladder"),
    dict(num_layers_in=2, hidden_in=D, kind="regression"),
    dict(head_type="probe", num_layers_in=3),
]


@pytest.mark.parametrize("kw", STACKABLE, ids=lambda kw: "-".join(str(v) for v in kw.values()))
@pytest.mark.parametrize("attention", ["factored", "direct"])
def test_a_stack_computes_what_its_heads_compute_alone_gradients_included(kw, attention):
    singles = []
    for seed in range(3):
        torch.manual_seed(seed)
        head = build_head(small_cfg(**kw))
        randomise(head, seed=seed + 10)  # each head its own parameters
        singles.append(head)
    stack = stack_heads(singles)
    assert stack.size == 3 and count_parameters(stack) == 3 * count_parameters(singles[0])
    for head in [stack, *singles]:
        head.attention = attention
    features, mask = make_batch(layers=singles[0].cfg.num_layers_in, h=singles[0].cfg.hidden_in)
    out = stack(features, mask)
    out.pow(2).sum().backward()
    for i, head in enumerate(singles):
        alone = head(features, mask)
        alone.pow(2).sum().backward()
        torch.testing.assert_close(out[i], alone[0], atol=1e-5, rtol=1e-5)
        grads = {n: p.grad for n, p in head.named_parameters() if p.grad is not None}
        for n, p in stack.named_parameters():
            if n in grads:
                torch.testing.assert_close(p.grad[i], grads[n][0], atol=1e-5, rtol=1e-4, msg=n)
        state = head_state(stack, i)  # the checkpoint form: a head of its own, without the head axis
        assert all(torch.equal(state[n], p[0]) for n, p in head.state_dict().items())
        fresh = build_head(head.cfg)
        load_head_state(fresh, state)
        assert all(torch.equal(fresh.state_dict()[n], p) for n, p in head.state_dict().items())


def test_heads_of_other_shapes_do_not_stack():
    with pytest.raises(ValueError, match="one shape"):
        stack_heads([build_head(small_cfg(width=16)), build_head(small_cfg(width=32))])
    # label_init only decides where the queries start: such heads stack
    stack_heads([build_head(small_cfg()), build_head(small_cfg(label_init="names"))])


def test_stacked_adamw_steps_each_head_as_torch_adamw_steps_it_alone():
    """Per-head learning rates, weight decays and gradient clipping (one head clipped, one not)."""
    torch.manual_seed(0)
    singles = [build_head(small_cfg(num_layers_in=2)) for _ in range(2)]
    stack = stack_heads(singles)
    lrs, wds = [1e-2, 3e-3], [0.0, 0.1]
    mine = StackedAdamW(stack, lrs, wds)
    theirs = [
        torch.optim.AdamW(h.parameters(), lr=lr, weight_decay=wd)
        for h, lr, wd in zip(singles, lrs, wds, strict=True)
    ]
    features, mask = make_batch(layers=2)
    for step in range(3):
        factor = 0.5 + step / 4
        scale = torch.tensor([100.0, 0.01]).view(2, 1)  # head 0's gradient is clipped, head 1's is not
        (stack(features, mask).sum(-1) * scale).pow(2).sum().backward()
        mine.step(factor, [True, True], max_norm=1.0)
        mine.zero_grad()
        for i, (head, opt) in enumerate(zip(singles, theirs, strict=True)):
            (head(features, mask).sum(-1) * scale[i]).pow(2).sum().backward()
            torch.nn.utils.clip_grad_norm_(head.parameters(), 1.0)
            for group in opt.param_groups:
                group["lr"] = lrs[i] * factor
            opt.step()
            opt.zero_grad()
    for i, head in enumerate(singles):
        for n, p in head.state_dict().items():
            if n.endswith(
                "attn.k.bias"
            ):  # softmax ignores it: its gradient is float noise, Adam's step its sign
                continue
            torch.testing.assert_close(head_state(stack, i)[n], p[0], atol=1e-5, rtol=1e-4, msg=n)
    before = head_state(stack, 1)
    (stack(features, mask)).pow(2).sum().backward()
    mine.step(1.0, [True, False])  # head 1 has stopped: it does not move
    assert all(torch.equal(head_state(stack, 1)[n], p) for n, p in before.items())


def test_a_pooled_skip_adds_exactly_a_probe_to_the_label_scores():
    torch.manual_seed(0)
    shape = {"num_layers_in": 2, "hidden_in": 16, "num_labels": 3}
    head = build_head(HeadConfig(width=8, heads=2, blocks=1, skip="pooled", members=1, **shape), k=2)
    probe = build_head(HeadConfig(head_type="probe", **shape), k=2)
    features, mask = torch.randn(4, 5, 2, 16), torch.ones(4, 5, dtype=torch.bool)
    mask[0, 3:] = False
    with torch.no_grad():
        for p in head.skip.parameters():
            p.normal_()  # away from the initial values, so that copying them is what makes outputs equal
        for mine, theirs in zip(head.skip, (probe.mix, probe.norm, probe.linear), strict=True):
            theirs.load_state_dict(mine.state_dict())
        attended = head(features, mask) - probe(features, mask)
        head.score.weight.zero_()
        head.score.bias.zero_()  # no label-query scores: only the skip is left
        torch.testing.assert_close(head(features, mask), probe(features, mask))
    assert attended.abs().min() > 0  # with the scores on, the label queries add their own part
