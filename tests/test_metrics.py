"""Digits-classifier metrics (real floor vs degraded data, determinism, cache) and distances to known distributions."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.stats import norm, wasserstein_distance

from edmlab.data.digits import digits_arrays
from edmlab.evaluation.metrics import digits
from edmlab.evaluation.metrics.digits import DigitsMetric, class_balance, load_digits_classifier, manifold_precision_recall
from edmlab.evaluation.metrics.mixture import mmd, sliced_wasserstein

# ---------------------------------------------------------------------------------------------- digits metric


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("edmlab_cache")


@pytest.fixture(scope="module")
def metric(cache_dir):
    return DigitsMetric(cache_dir=cache_dir)


@pytest.fixture(scope="module")
def held_out():
    return digits_arrays("test")[0]


def box_blur(x):
    return F.avg_pool2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), 3, stride=1)


def test_classifier_is_accurate_on_held_out_digits(metric):
    assert metric.accuracy("test") >= 0.97


def test_real_floor_beats_noise_and_blur(metric, held_out):
    n = len(held_out)
    floor = metric.real_floor(n)
    noise = torch.randn(n, 1, 8, 8, generator=torch.Generator().manual_seed(0)).clamp(-1, 1)
    noisy, blurred = metric(noise), metric(box_blur(digits_arrays("train")[0][:n]))
    assert floor.fd < 0.1 * noisy.fd
    assert floor.fd < 0.1 * blurred.fd
    assert floor.precision > 0.8 and floor.recall > 0.8
    assert noisy.precision < 0.5 * floor.precision and noisy.recall < 0.2
    assert floor.class_kl < 0.05 < noisy.class_kl
    assert sum(floor.class_histogram) == pytest.approx(1.0)
    assert set(floor.scalars()) == {"num_images", "fd", "precision", "recall", "class_kl", "class_entropy",
                                    "train_nn_distance", "near_copy_fraction"}


def test_samples_are_scored_against_the_held_out_split(metric, held_out):
    """The reference is the held-out split: its own images score FD 0 and precision = recall = 1 (each point lies
    in its own k-NN ball); the FD of any set is the Fréchet distance of its features' statistics to the held-out
    ones, written here from the definitions."""
    itself = metric(held_out)
    # FD(x, x) is 0 up to float64 rounding of tr Σ + tr Σ − 2 tr √(ΣΣ): measured |FD| / tr Σ = 3.2e-13 (AVX512
    # kernels) and 9.5e-13 (ATEN_CPU_CAPABILITY=default, whose digits classifier also differs: tr Σ 1078 vs 1074).
    trace = np.trace(np.cov(metric.features(held_out).double().numpy(), rowvar=False))
    assert abs(itself.fd) < 1e-11 * trace and (itself.precision, itself.recall) == (1.0, 1.0)
    train = digits_arrays("train")[0][:200]
    x = metric.features(train).double().numpy()
    y = metric.features(held_out).double().numpy()
    mu_x, mu_y = x.mean(0), y.mean(0)
    s_x, s_y = np.cov(x, rowvar=False), np.cov(y, rowvar=False)
    w, v = np.linalg.eigh(s_x)
    root_x = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    tr_covmean = np.sqrt(np.clip(np.linalg.eigvalsh(root_x @ s_y @ root_x), 0, None)).sum()
    expected = ((mu_x - mu_y) ** 2).sum() + np.trace(s_x) + np.trace(s_y) - 2 * tr_covmean
    assert metric(train).fd == pytest.approx(expected, rel=1e-6)  # Schur sqrtm vs eigh: ~4e-8 apart here


def test_the_floor_is_training_images_at_the_samples_count(metric):
    """floor(n) scores the first n training images; FD and recall depend on n, so the floor is measured at n."""
    train = digits_arrays("train")[0]
    for n in (100, 297, 1000):
        floor, direct = metric.real_floor(n), metric(train[:n])
        assert floor.num_images == n
        assert (floor.fd, floor.precision, floor.recall) == (direct.fd, direct.precision, direct.recall)
    assert metric.real_floor(100).fd > metric.real_floor(1000).fd
    assert metric.real_floor(5000).num_images == len(train) == 1500


def test_near_copy_fraction_known_answers():
    """d₁ < d₂/3 is a near copy: at 1 from 0 (d₂ = 9 from 10) yes; at 4 (d₂ = 6) no; at 2.4 (d₂ = 7.6) yes."""
    train = torch.tensor([[0.0], [10.0], [30.0]])
    median, fraction = digits.nearest_training_distances(torch.tensor([[1.0], [4.0], [2.4], [30.0]]), train)
    assert fraction == 0.75 and median == pytest.approx(1.0)  # d₁ = 1, 4, 2.4, 0: torch's median is the lower middle


def test_copies_of_the_training_set_show_as_near_copies_not_as_a_better_fd(metric, held_out):
    """Copying the training set no longer beats the floor: the first 297 training images ARE the floor's set; they
    are found as near copies (all but exact duplicates within the training set, where d₂ = d₁ = 0), held-out
    digits are not."""
    train = digits_arrays("train")[0]
    copies = metric(train[: len(held_out)])
    floor = metric.real_floor(len(held_out))
    assert copies.fd == floor.fd and copies.train_nn_distance == 0.0
    duplicated = (torch.cdist(train[:297].flatten(1), train.flatten(1)) == 0).sum(1) > 1
    assert copies.near_copy_fraction == pytest.approx(1 - duplicated.double().mean().item(), abs=1e-12)
    assert copies.near_copy_fraction > 0.95
    assert floor.train_nn_distance > 1.0 and floor.near_copy_fraction < 0.05


def test_training_is_deterministic(metric, cache_dir, tmp_path):
    load_digits_classifier(cache_dir)
    first = torch.load(cache_dir / digits.CACHE_FILE, weights_only=True)
    load_digits_classifier(tmp_path)
    second = torch.load(tmp_path / digits.CACHE_FILE, weights_only=True)
    assert first["recipe_hash"] == second["recipe_hash"] == digits.recipe_hash()
    for name, tensor in first["state_dict"].items():
        assert torch.equal(tensor, second["state_dict"][name]), name


def test_cache_is_reused_retrained_on_recipe_change_and_on_corruption(metric, cache_dir, tmp_path, monkeypatch):
    trained = []

    def fake_training(recipe=None):
        trained.append(recipe)
        return digits.DigitsClassifier().eval()

    monkeypatch.setattr(digits, "train_digits_classifier", fake_training)
    load_digits_classifier(cache_dir)  # the module's real classifier, already cached
    assert trained == []

    cache = tmp_path / digits.CACHE_FILE
    cache.write_bytes(b"\x00 definitely not a checkpoint")
    with pytest.warns(RuntimeWarning, match="unreadable"):
        load_digits_classifier(tmp_path)
    assert len(trained) == 1 and torch.load(cache, weights_only=True)["recipe_hash"] == digits.recipe_hash()

    monkeypatch.setattr(digits, "RECIPE", dict(digits.RECIPE, epochs=1))
    load_digits_classifier(tmp_path)
    assert len(trained) == 2 and trained[-1]["epochs"] == 1
    assert torch.load(cache, weights_only=True)["recipe"]["epochs"] == 1


def test_cache_dir_defaults_to_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("EDMLAB_CACHE", str(tmp_path))
    assert digits.default_cache_dir() == str(tmp_path)


def test_bad_inputs_are_rejected(metric):
    with pytest.raises(ValueError, match=r"digits metrics take a tensor \[N, 1, 8, 8\] in \[-1, 1\], got \(10, 3, 8, 8\)"):
        metric(torch.zeros(10, 3, 8, 8))
    with pytest.raises(ValueError, match="generated digits contain NaN or inf; the sampler diverged"):
        metric(torch.full((10, 1, 8, 8), float("nan")))


def test_precision_recall_known_answers():
    real = torch.arange(10.0)[:, None]  # k=1 balls of radius 1 around 0..9
    fake = torch.tensor([[0.5], [100.0]])
    precision, _ = manifold_precision_recall(real, fake, k=1)
    assert precision == 0.5
    same = torch.randn(50, 4, generator=torch.Generator().manual_seed(1))
    assert manifold_precision_recall(same, same, k=3) == (1.0, 1.0)
    assert manifold_precision_recall(same, same + 1000.0, k=3) == (0.0, 0.0)


def test_class_balance_known_answers():
    hist, kl, entropy = class_balance(torch.arange(100) % 10)
    assert hist == pytest.approx((0.1,) * 10) and kl == pytest.approx(0.0, abs=1e-12)
    hist, kl, entropy = class_balance(torch.full((30,), 7))
    assert hist[7] == 1.0 and kl == pytest.approx(math.log(10)) and entropy == 0.0
    _, kl, entropy = class_balance(torch.tensor([0, 1]))
    assert entropy == pytest.approx(math.log(2)) and kl == pytest.approx(math.log(5))


# ---------------------------------------------------------------------------------------------- mixtures


def normal_quantiles(n):
    """Deterministic 'samples' of N(0, 1): Φ⁻¹((i − ½)/n)."""
    return torch.from_numpy(norm.ppf((np.arange(n) + 0.5) / n))


def test_sliced_wasserstein_in_1d_is_the_closed_form_w1_w2():
    """N(0,1) vs N(0,s²): W₂ = |1 − s| and W₁ = |1 − s|·E|Z| = |1 − s|·√(2/π)."""
    q, s = normal_quantiles(4000), 2.5
    assert sliced_wasserstein(q, s * q, p=2) == pytest.approx(abs(1 - s), rel=1e-3)
    assert sliced_wasserstein(q, s * q, p=1) == pytest.approx(abs(1 - s) * math.sqrt(2 / math.pi), rel=1e-3)
    assert sliced_wasserstein(q, q + 0.7, p=2) == pytest.approx(0.7, rel=1e-12)


def test_1d_wasserstein_matches_scipy_for_unequal_sample_sizes():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=301), 1.5 * rng.normal(size=170) + 0.3
    assert sliced_wasserstein(torch.from_numpy(a), torch.from_numpy(b), p=1) == pytest.approx(
        wasserstein_distance(a, b), rel=1e-10
    )


def test_sliced_wasserstein_of_shifted_gaussians_in_2d():
    """y = x + Δ: each projection is shifted by θᵀΔ, so SW₂² = E_θ(θᵀΔ)² = ‖Δ‖²/D, up to the Monte-Carlo error
    of the directions: (θᵀΔ)² = 9cos²φ has std 9/√8, so 4096 directions give a standard error of 0.05."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(500, 2, generator=g, dtype=torch.float64)
    delta = torch.tensor([3.0, 0.0], dtype=torch.float64)
    sw2 = sliced_wasserstein(x, x + delta, num_projections=4096, generator=g)
    assert sw2**2 == pytest.approx(9.0 / 2, abs=4 * 9 / math.sqrt(8) / math.sqrt(4096))


def test_sliced_wasserstein_of_identical_distributions_is_small_and_symmetric():
    """E W₁(F_n, G_m) = ∫ E|F_n − G_m| dx ≤ √(1/n + 1/m) ∫ √(Φ(1 − Φ)) dx for each 1-D projection of N(0, I)."""
    n = 2000
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(n, 3, generator=g), torch.randn(n, 3, generator=g)
    grid = np.linspace(-10, 10, 20001)
    bound = math.sqrt(2 / n) * np.sqrt(norm.cdf(grid) * norm.sf(grid)).sum() * (grid[1] - grid[0])
    sw1 = sliced_wasserstein(x, y, p=1, generator=torch.Generator().manual_seed(1))
    assert sw1 < 3 * bound
    assert sliced_wasserstein(x, x + 0.5, p=1, generator=torch.Generator().manual_seed(1)) > 3 * bound
    assert sw1 == pytest.approx(sliced_wasserstein(y, x, p=1, generator=torch.Generator().manual_seed(1)), rel=1e-12)


def gaussian_mmd2(delta, h):
    """MMD² of N(0,1) vs N(δ,1) with k = exp(−(a−b)²/(2h²)):
    E k(X,X') = E k(Y,Y') = h/√(h²+2) and E k(X,Y) = h/√(h²+2)·exp(−δ²/(2(h²+2))).
    """
    return 2 * h / math.sqrt(h * h + 2) * (1 - math.exp(-(delta**2) / (2 * (h * h + 2))))


def test_mmd_of_identical_distributions_is_within_the_null_bound():
    """Under H₀ MMD²_u is a degenerate U-statistic with |h| ≤ 2 (0 ≤ k ≤ 1): std ≤ √(2·4/(n(n−1))) ≈ 2.83/n."""
    n = 1000
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(n, 2, generator=g), torch.randn(n, 2, generator=g)
    assert abs(mmd(x, y)) < 6 * math.sqrt(8 / (n * (n - 1)))


def test_mmd_matches_closed_form_grows_with_shift_and_is_symmetric():
    """Mean of 8 independent MMD²_u estimates within 4 standard errors of the closed form."""
    g = torch.Generator().manual_seed(0)
    n, h = 1000, 1.0
    means = []
    for delta in (0.25, 0.5, 1.0, 2.0):
        estimates = [
            mmd(torch.randn(n, 1, generator=g), torch.randn(n, 1, generator=g) + delta, bandwidths=(h,)) for _ in range(8)
        ]
        mean, se = np.mean(estimates), np.std(estimates, ddof=1) / math.sqrt(len(estimates))
        assert abs(mean - gaussian_mmd2(delta, h)) < 4 * se + 1e-3
        means.append(mean)
    assert means == sorted(means)
    x, y = torch.randn(300, 2, generator=g), torch.randn(300, 2, generator=g) + 0.3
    assert mmd(x, y) == pytest.approx(mmd(y, x), rel=1e-12)


def test_mixture_metric_inputs_are_checked():
    with pytest.raises(ValueError, match="x and y must have the same dimension D, got 2 and 3"):
        mmd(torch.zeros(5, 2), torch.zeros(5, 3))
    with pytest.raises(ValueError, match=r"bandwidths must be a non-empty list of positive numbers, got \(0.0,\)"):
        mmd(torch.zeros(5, 2), torch.zeros(5, 2), bandwidths=(0.0,))
    with pytest.raises(ValueError, match="num_projections must be ≥ 1, got 0"):
        sliced_wasserstein(torch.zeros(5, 2), torch.zeros(5, 2), num_projections=0)


def test_mixture_floor_is_measured_at_the_samples_count():
    """Exact draws against exact draws, N each: the finite-sample distance shrinks like 1/√N, so a floor measured
    at 2,000 points and used for 100 would be ~4.5× too optimistic; floor(N) is measured at N."""
    from edmlab.evaluation.metrics.for_dataset import MixtureScore
    from edmlab.data.mixture import GaussianMixture

    score = MixtureScore(GaussianMixture(torch.tensor([[-1.0, 0.0], [1.0, 0.0]]), torch.tensor([0.3, 0.3])))
    small, large = score.floor(100), score.floor(2000)
    assert (small["mixture_floor_num_samples"], large["mixture_floor_num_samples"]) == (100, 2000)
    assert small["mixture_floor_sliced_wasserstein"] > 2.5 * large["mixture_floor_sliced_wasserstein"]
    points = score.mixture.sample(100, torch.Generator().manual_seed(7))
    assert set(score(points)) == {"mixture_sliced_wasserstein", "mixture_mmd"}
