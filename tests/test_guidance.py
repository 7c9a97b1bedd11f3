"""Guidance (CFG / autoguidance): D_w = D_guide + w·(D − D_guide) inside the σ interval, for every solver."""
import pytest
import torch

import edmlab
from edmlab import GaussianMixture
from edmlab.design.guidance import GuidedDenoiser

NET = GaussianMixture(means=[[1.0, 0.0], [-1.0, 0.5]], stds=0.3)
GUIDE = GaussianMixture(means=[[0.8, 0.1], [-0.7, 0.4]], stds=0.6)  # a "bad version": blurrier, shifted modes
INTERVAL = (0.28, 5.42)  # EDM2-S's guidance interval (Kynkäänniemi et al. 2024)


@pytest.mark.parametrize("w", [0.0, 0.5, 2.0, 3.0])
def test_guided_denoiser_is_the_formula_inside_the_interval(w):
    x = torch.randn(5, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    guided = GuidedDenoiser(NET, GUIDE, w, INTERVAL)
    for sigma in (0.28, 1.0, 5.42):
        s = torch.full([5], sigma, dtype=torch.float64)
        expected = GUIDE(x, s) + w * (NET(x, s) - GUIDE(x, s))
        torch.testing.assert_close(guided(x, s), expected, rtol=1e-12, atol=1e-14)
    assert guided.calls == {"denoiser": 3, "guide": 3}
    for sigma in (0.002, 0.27, 5.5, 80.0):
        s = torch.full([5], sigma, dtype=torch.float64)
        assert torch.equal(guided(x, s), NET(x, s))
    assert guided.calls == {"denoiser": 7, "guide": 3}


@pytest.mark.parametrize("solver", ["euler", "heun", "dpmpp_2m"])
def test_w_1_is_the_unguided_sample(solver):
    latents = torch.randn(64, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    plain = edmlab.sample(NET, latents, solver=solver, num_steps=12)
    guided = edmlab.sample(NET, latents, solver=solver, num_steps=12, guide=GUIDE, guidance=1.0)
    assert torch.equal(plain, guided)
    stronger = edmlab.sample(NET, latents, solver=solver, num_steps=12, guide=GUIDE, guidance=2.0)
    assert (stronger - plain).abs().max() > 1e-2


def test_guidance_counts_both_networks_calls():
    """Heun's N-step walk calls D at σ_0…σ_{N−1} and again at σ_1…σ_{N−1}: the guide only where σ is inside."""
    sigmas = edmlab.sigma_steps(18).tolist()
    calls_at = sigmas[:18] + sigmas[1:18]
    guided = GuidedDenoiser(NET, GUIDE, 2.0, INTERVAL)
    edmlab.sample(guided, torch.randn(8, 2, dtype=torch.float64), solver="heun", num_steps=18)
    inside = sum(INTERVAL[0] <= s <= INTERVAL[1] for s in calls_at)
    assert guided.calls == {"denoiser": edmlab.nfe("heun", 18), "guide": inside}
    assert guided.calls["denoiser"] == 35 and 0 < inside < 35
    full = GuidedDenoiser(NET, GUIDE, 2.0)
    edmlab.sample(full, torch.randn(8, 2, dtype=torch.float64), solver="heun", num_steps=18)
    assert full.calls == {"denoiser": 35, "guide": 35}


class Labelled(torch.nn.Module):
    """A stub network that records the class labels it was called with."""

    def __init__(self, label_dim, shape=(1, 8, 8)):
        super().__init__()
        self.label_dim, self.model_spec, self.seen = label_dim, {"shape": list(shape)}, []

    def forward(self, x, sigma, class_labels=None):
        self.seen.append(class_labels)
        return torch.zeros_like(x) if class_labels is None else x * class_labels[:, :1, None, None]


def test_classifier_free_guide_is_called_without_labels():
    net, unconditional = Labelled(10), Labelled(0)
    labels = torch.eye(10)[[3, 0]]
    x = torch.randn(2, 1, 8, 8)
    out = GuidedDenoiser(net, unconditional, 3.0)(x, torch.ones(2), class_labels=labels)
    assert unconditional.seen == [None] and net.seen[0] is labels
    torch.testing.assert_close(out, 3.0 * x * labels[:, :1, None, None], rtol=0, atol=0)


def test_bad_guidance_is_refused():
    with pytest.raises(ValueError, match=r"guidance=-0.5 must be a number >= 0"):
        GuidedDenoiser(NET, GUIDE, -0.5)
    with pytest.raises(ValueError, match=r"guidance_interval=\(5.0, 1.0\) must satisfy 0 <= sigma_lo < sigma_hi"):
        GuidedDenoiser(NET, GUIDE, 2.0, (5.0, 1.0))
    with pytest.raises(ValueError, match=r"guidance=2.0, guidance_interval=None need a guide network"):
        edmlab.sample(NET, torch.randn(2, 2, dtype=torch.float64), guidance=2.0)
    with pytest.raises(ValueError, match=r"the guide network denoises shape \[3, 32, 32\] .* the network \[1, 8, 8\]"):
        GuidedDenoiser(Labelled(0), Labelled(0, (3, 32, 32)), 2.0)
    with pytest.raises(ValueError, match=r"the guide takes 5 class labels, the network 10"):
        GuidedDenoiser(Labelled(10), Labelled(5), 2.0)


# ---------------------------------------------------------------- guidance interval by step (the released rule)

def released_rule(net, guide, latents, w, interval, num_steps, S_churn=0.0, generator=None, log=None):
    """An independent transcription of the guided-step rule of Kynkäänniemi et al.'s released sampler
    (kynkaat/guidance-interval, sampling/edm_sampler.py, ``edm_sampler``), written from that rule, not from edmlab:
    EDM's 2nd-order sampler over N levels σ_k = (80^(1/7) + k/(N−1)·(0.002^(1/7) − 80^(1/7)))^7, then σ_N = 0, with
    γ = min(S_churn/N, √2 − 1) churn noise drawn at every step; step i = 0 … N−1 evaluates
    D_guide + w·(D − D_guide) at both of its points (x̂ at σ̂_i and the trial point at σ_{i+1}) iff
    interval[0] ≤ i ≤ interval[1], D otherwise; the last step, i = N−1, is one Euler evaluation. ``log`` receives
    (σ, guided) per evaluation."""
    hi, lo, rho = 80.0 ** (1 / 7.0), 0.002 ** (1 / 7.0), 7.0
    levels = [(hi + k / (num_steps - 1) * (lo - hi)) ** rho for k in range(num_steps)] + [0.0]
    x = latents.to(torch.float64) * levels[0]
    for i in range(num_steps):
        use_guide = interval is not None and interval[0] <= i <= interval[1]

        def evaluate(point, sigma):
            s = torch.full([point.shape[0]], sigma, dtype=torch.float64)
            if log is not None:
                log.append((sigma, use_guide))
            if not use_guide:
                return net(point, s)
            return guide(point, s) + w * (net(point, s) - guide(point, s))

        gamma = min(S_churn / num_steps, 2 ** 0.5 - 1)
        sigma, sigma_next = levels[i], levels[i + 1]
        sigma_hat = sigma * (1 + gamma)
        if S_churn > 0:
            noise = torch.randn(x.shape, generator=generator, dtype=torch.float64)
            x = x + (sigma_hat ** 2 - sigma ** 2) ** 0.5 * noise
        slope = (x - evaluate(x, sigma_hat)) / sigma_hat
        trial = x + (sigma_next - sigma_hat) * slope
        if i == num_steps - 1:
            x = trial
        else:
            slope_next = (trial - evaluate(trial, sigma_next)) / sigma_next
            x = x + (sigma_next - sigma_hat) * (slope + slope_next) / 2
    return x


class Reveal:
    """Records (σ, whether the output differs from NET's, i.e. was guided) for every call of ``denoiser``;
    attributes are forwarded, as ``CountingDenoiser`` does."""

    def __init__(self, denoiser):
        self.denoiser, self.log = denoiser, []

    def __getattr__(self, name):
        return getattr(self.__dict__["denoiser"], name)

    def __call__(self, x, sigma, **kwargs):
        out = self.denoiser(x, sigma, **kwargs)
        self.log.append((float(sigma[0]), not torch.equal(out, NET(x, sigma))))
        return out


def close_calls(ours, theirs):
    assert len(ours) == len(theirs)
    for (s, g), (t, h) in zip(ours, theirs):
        assert g == h and s == pytest.approx(t, rel=1e-12), (s, g, t, h)


@pytest.mark.parametrize("interval, num_steps, churn", [((17, 22), 32, 0.0), ((0, 3), 8, 0.0), ((5, 7), 8, 0.0),
                                                        ((2, 2), 6, 0.0), ((17, 22), 32, 40.0)])
def test_step_interval_is_the_released_rule_call_by_call(interval, num_steps, churn):
    """Both Heun calls of a guided step are guided, the corrector at σ_{i+1} too, and the last step (one Euler call)
    is step N−1; churn leaves the index alone. The samples equal the transcription's to rounding."""
    latents = torch.randn(64, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    theirs_log, ours = [], Reveal(GuidedDenoiser(NET, GUIDE, 2.0, interval, by="step"))
    theirs = released_rule(NET, GUIDE, latents, 2.0, interval, num_steps, S_churn=churn,
                           generator=torch.Generator().manual_seed(3), log=theirs_log)
    x = edmlab.sample(ours, latents, solver="heun", num_steps=num_steps, S_churn=churn,
                      generator=torch.Generator().manual_seed(3))
    close_calls(ours.log, theirs_log)
    guided_steps = {i for i in range(num_steps) if interval[0] <= i <= interval[1]}
    assert sum(g for _, g in ours.log) == sum(2 - (i == num_steps - 1) for i in guided_steps)
    assert (x - theirs).abs().max() < 1e-12
    assert ours.denoiser.step is None  # reset once the walk is over
    unguided = edmlab.sample(NET, latents, solver="heun", num_steps=num_steps, S_churn=churn,
                             generator=torch.Generator().manual_seed(3))
    assert (x - unguided).abs().max() > 1e-3


def test_no_sigma_interval_gives_the_released_step_range():
    """[17, 22] of 32 steps: the corrector of step 22 and the first call of step 23 are both at σ_23, and only the
    first is guided; a σ interval decides both alike."""
    log = []
    released_rule(NET, GUIDE, torch.zeros(1, 2, dtype=torch.float64), 2.0, (17, 22), 32, log=log)
    at = [g for s, g in log if s == pytest.approx(log[2 * 23][0], rel=1e-12)]
    assert at == [True, False]


@pytest.mark.parametrize("solver, final_step", [("euler", "euler"), ("dpmpp_2m", "denoise"), ("heun", "none"),
                                                ("heun", "denoise")])
def test_step_interval_other_solvers_one_index_per_step(solver, final_step):
    """Call k of a one-call-per-step solver is step k; the final call at σ_{N−1} (final_step euler/denoise) is
    step N−1, and final_step=none never reaches it."""
    num_steps, interval = 10, (3, 9)
    ours = Reveal(GuidedDenoiser(NET, GUIDE, 2.0, interval, by="step"))
    steps = []
    edmlab.sample(ours, torch.randn(16, 2, dtype=torch.float64), solver=solver, num_steps=num_steps,
                  final_step=final_step, callback=lambda info: steps.append(info["i"]))
    per_step, inside = 2 if solver == "heun" else 1, lambda i: interval[0] <= i <= interval[1]
    expected = [inside(i) for i in range(num_steps - 1) for _ in range(per_step)]
    expected += [inside(num_steps - 1)] if final_step != "none" else []
    assert [g for _, g in ours.log] == expected
    assert steps == list(range(num_steps - (final_step == "none")))


@pytest.mark.parametrize("interval, message", [
    ((22, 17), r"guidance_interval=\[22, 17\] \(guidance_interval_by=step\) must be two step indices 0 <= first"),
    ((-1, 3), r"guidance_interval=\[-1, 3\] \(guidance_interval_by=step\) must be two step indices"),
    ((1.5, 3), r"guidance_interval=\[1.5, 3\] \(guidance_interval_by=step\) must be two step indices"),
    ((17, 32), r"guidance_interval=\[17, 32\] \(guidance_interval_by=step\) goes beyond the last step, 31, of "
               r"num_steps=32"),
])
def test_bad_step_interval_is_refused(interval, message):
    with pytest.raises(ValueError, match=message):
        edmlab.sample(NET, torch.randn(2, 2, dtype=torch.float64), num_steps=32, guide=GUIDE, guidance=2.0,
                      guidance_interval=interval, guidance_interval_by="step")


def test_step_interval_needs_a_fixed_grid_and_the_sampler():
    with pytest.raises(ValueError, match=r"guidance_interval_by='steps': choose sigma"):
        GuidedDenoiser(NET, GUIDE, 2.0, (1, 2), by="steps")
    with pytest.raises(ValueError, match=r"guidance_interval_by=step .* solver='adaptive'"):
        edmlab.sample(NET, torch.randn(2, 2, dtype=torch.float64), solver="adaptive", guide=GUIDE, guidance=2.0,
                      guidance_interval=(1, 2), guidance_interval_by="step")
    with pytest.raises(ValueError, match=r"guidance_interval_by=step needs the sampler's step index"):
        GuidedDenoiser(NET, GUIDE, 2.0, (1, 2), by="step")(torch.zeros(2, 2), torch.ones(2))


def test_eval_refuses_a_bad_step_interval_before_loading_anything(tmp_path):
    """src/eval.py guidance_interval_by=step: the range is checked with the config, before any network is read."""
    from conftest import compose
    from edmlab.evaluation.config import check_config

    base = ["ckpt=bench:ring8", "guide=/nowhere/guide.pt", "guidance=2.0", "guidance_interval_by=step"]
    check_config(compose("eval", base + ["guidance_interval=[17,22]"], tmp_path))
    with pytest.raises(ValueError, match=r"guidance_interval=\[5, 3\] \(guidance_interval_by=step\) must be two"):
        check_config(compose("eval", base + ["guidance_interval=[5,3]"], tmp_path))
    with pytest.raises(ValueError, match=r"guidance_interval_by='index': choose sigma"):
        check_config(compose("eval", base[:-1] + ["guidance_interval_by=index"], tmp_path))
