"""Losses against a straightforward loop computation on hand-built tensors."""

from __future__ import annotations

import math

import pytest

torch = pytest.importorskip("torch")

from avcurate.trainer.losses import LossConfig, group_advantages, policy_loss  # noqa: E402


def _loop_advantages(rewards, G, eps=1e-4):
    out = []
    for g in range(0, len(rewards), G):
        grp = rewards[g:g + G]
        mean = sum(grp) / G
        std = math.sqrt(sum((r - mean) ** 2 for r in grp) / G)
        out += [0.0 if std <= 1e-6 else (r - mean) / (std + eps) for r in grp]
    return out


def test_group_advantages_match_the_formula_and_handle_zero_std():
    rewards = [1.0, 0.0, 0.5, 0.5, 2.0, 2.0, 2.0, 2.0]
    adv = group_advantages(torch.tensor(rewards), 4)
    assert torch.allclose(adv, torch.tensor(_loop_advantages(rewards, 4)), atol=1e-6)
    assert torch.equal(adv[4:], torch.zeros(4))  # identical rewards: exactly zero, no NaN
    tiny = group_advantages(torch.tensor([1.0, 1.0 + 1e-9, 1.0, 1.0]), 4)
    assert torch.isfinite(tiny).all() and tiny.abs().max() < 1e-3  # no blow-up from a tiny std
    batch = group_advantages(torch.tensor(rewards), 4, "batch")
    centred = torch.tensor(rewards).view(2, 4)
    centred = (centred - centred.mean(1, keepdim=True)).view(-1)
    assert torch.allclose(batch, centred / (torch.tensor(rewards).std(unbiased=False) + 1e-4))
    assert torch.allclose(group_advantages(torch.tensor(rewards), 4, "none"), centred)
    with pytest.raises(ValueError, match="groups of 4"):
        group_advantages(torch.tensor(rewards[:6]), 4)


def _case():
    torch.manual_seed(0)
    B, T = 4, 5
    old = torch.randn(B, T) * 0.1 - 2
    logp = old + torch.randn(B, T) * 0.3
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0], [1, 1, 1, 1, 0]],
                        dtype=torch.float32)
    adv = torch.tensor([1.0, -1.0, 0.5, -0.5])
    return logp, old, adv, mask


def _loop_grpo(logp, old, adv, mask, lo, hi, agg):
    per_seq, total, count = [], 0.0, 0
    for b in range(len(logp)):
        terms = []
        for t in range(len(logp[b])):
            if mask[b][t]:
                r = math.exp(logp[b][t] - old[b][t])
                c = min(max(r, 1 - lo), 1 + hi)
                terms.append(-min(r * adv[b], c * adv[b]))
        per_seq.append(sum(terms) / len(terms))
        total += sum(terms)
        count += len(terms)
    return sum(per_seq) / len(per_seq) if agg == "seq_mean_token_mean" else total / count


def _loop_gspo(logp, old, adv, mask, lo, hi):
    out = []
    for b in range(len(logp)):
        ts = [t for t in range(len(logp[b])) if mask[b][t]]
        s = math.exp(sum(logp[b][t] - old[b][t] for t in ts) / len(ts))
        c = min(max(s, 1 - lo), 1 + hi)
        out.append(-min(s * adv[b], c * adv[b]))
    return sum(out) / len(out)


@pytest.mark.parametrize("agg", ["seq_mean_token_mean", "token_mean"])
def test_grpo_matches_loop(agg):
    logp, old, adv, mask = _case()
    out = policy_loss(logp, old, adv, mask, LossConfig("grpo", aggregation=agg))
    expected = _loop_grpo(logp.tolist(), old.tolist(), adv.tolist(), mask.tolist(), 0.2, 0.2, agg)
    assert float(out.loss) == pytest.approx(expected, rel=1e-5)
    assert 0 < out.clip_fraction < 1  # some tokens are clipped (ratio moves up to ~exp(0.9))


def test_dr_grpo_uses_a_constant_normaliser():
    logp, old, adv, mask = _case()
    cfg = LossConfig("grpo", aggregation="dr_grpo", dr_grpo_length=10)
    tok = LossConfig("grpo", aggregation="token_mean")
    ratio = float(policy_loss(logp, old, adv, mask, cfg).loss) / float(
        policy_loss(logp, old, adv, mask, tok).loss)
    assert ratio == pytest.approx(mask.sum().item() / (4 * 10), rel=1e-5)


@pytest.mark.parametrize(("lo", "hi"), [(3e-4, 4e-4), (0.5, 0.5)])
def test_gspo_matches_loop_with_clipping_active_and_inactive(lo, hi):
    logp, old, adv, mask = _case()
    cfg = LossConfig("gspo", eps_low=lo, eps_high=hi)
    out = policy_loss(logp, old, adv, mask, cfg)
    assert float(out.loss) == pytest.approx(_loop_gspo(logp.tolist(), old.tolist(), adv.tolist(),
                                                       mask.tolist(), lo, hi), rel=1e-5)
    assert (out.clip_fraction > 0) == (lo < 0.01)


def test_gspo_token_equals_gspo_when_advantages_are_per_sequence():
    """The GSPO paper's property: with one advantage per sequence, GSPO-token has the same
    objective value and the same gradient as GSPO (it differs only with per-token advantages)."""
    logp, old, adv, mask = _case()
    a = logp.clone().requires_grad_(True)
    b = logp.clone().requires_grad_(True)
    seq = policy_loss(a, old, adv, mask, LossConfig("gspo", eps_low=0.5, eps_high=0.5))
    tok = policy_loss(b, old, adv, mask, LossConfig("gspo_token", eps_low=0.5, eps_high=0.5))
    assert seq.loss.item() == pytest.approx(tok.loss.item(), rel=1e-6)
    seq.loss.backward()
    tok.loss.backward()
    assert torch.allclose(a.grad * mask, a.grad)  # padding gets no gradient
    assert torch.allclose(a.grad, b.grad, atol=1e-7)


def test_on_policy_gradient_direction():
    """Ratio 1: the update raises log-probs of positive-advantage sequences, lowers negative ones."""
    _, old, adv, mask = _case()
    for algo in ("grpo", "gspo", "gspo_token"):
        logp = old.clone().requires_grad_(True)
        policy_loss(logp, old, adv, mask, LossConfig(algo)).loss.backward()
        step = -logp.grad  # gradient descent direction
        for b in range(4):
            moved = float((step[b] * mask[b]).sum())
            assert (moved > 0) == (adv[b] > 0), (algo, b)
        assert torch.all(logp.grad[mask == 0] == 0)


def test_kl_k3_matches_formula_and_extreme_ratios_stay_finite():
    logp, old, adv, mask = _case()
    ref = logp - 0.1
    out = policy_loss(logp, old, adv, mask, LossConfig("grpo", beta=0.03), ref_logp=ref)
    d = ref - logp
    k3 = (torch.exp(d) - d - 1)
    assert out.kl == pytest.approx(float((k3 * mask).sum() / mask.sum()), rel=1e-5)
    base = policy_loss(logp, old, adv, mask, LossConfig("grpo", beta=0.0))
    assert float(out.loss) > float(base.loss)
    wild = policy_loss(logp + 500, old, adv, mask, LossConfig("grpo", beta=0.03), ref_logp=ref)
    assert torch.isfinite(wild.loss)
    half = policy_loss(logp.bfloat16(), old.bfloat16(), adv, mask, LossConfig("gspo"))
    assert half.loss.dtype == torch.float32


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_chunked_logprobs_equal_the_full_log_softmax(dtype):
    """Chunk sizes that do not divide the length, values and gradients, bf16 logits too."""
    from avcurate.trainer.rollout import chosen_logprobs

    torch.manual_seed(0)
    logits = (3 * torch.randn(3, 41, 101)).to(dtype).requires_grad_(True)
    target = torch.randint(0, 101, (3, 40))
    full = torch.log_softmax(logits[:, :-1].float(), -1).gather(-1, target.unsqueeze(-1))[..., 0]
    (want,) = torch.autograd.grad((full * torch.arange(40)).sum(), logits)
    for chunk in (1, 7, 40, 4096):
        got = chosen_logprobs(logits, target, chunk=chunk)
        assert got.dtype == torch.float32 and got.shape == (3, 40)
        assert torch.allclose(got, full, atol=1e-5)
        (grad,) = torch.autograd.grad((got * torch.arange(40)).sum(), logits)
        assert torch.allclose(grad.float(), want.float(), atol=1e-2 if dtype == torch.bfloat16
                              else 1e-6)
