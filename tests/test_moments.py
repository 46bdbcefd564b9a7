import torch

from finetrace.adl.moments import RunningMoments, load_moments, save_moments


def test_streaming_moments_match_torch_over_the_stacked_batch(tmp_path):
    torch.manual_seed(0)
    values = torch.randn(50, 3, 4, 8) * 5 + 2  # (samples, layers, positions, d)
    mask = (torch.rand(50, 3, 4) > 0.2).long()
    moments = RunningMoments.zeros((3, 4), 8)
    for start in range(0, 50, 7):
        moments.add(values[start : start + 7], mask[start : start + 7])
    weights = mask.double().unsqueeze(-1)
    n = weights.sum(0)
    expected_mean = (values.double() * weights).sum(0) / n
    expected_var = ((values.double() - expected_mean) ** 2 * weights).sum(0) / (n - 1)
    assert torch.allclose(moments.mean, expected_mean, atol=1e-10)
    assert torch.allclose(moments.variance, expected_var, atol=1e-8)
    assert torch.allclose(moments.standard_error, (expected_var / n).sqrt(), atol=1e-8)


def test_merged_halves_equal_the_whole_and_survive_saving(tmp_path):
    values, mask = torch.randn(20, 2, 5), torch.ones(20, 2, dtype=torch.long)
    whole, first, second = (RunningMoments.zeros((2,), 5) for _ in range(3))
    whole.add(values, mask)
    first.add(values[:9], mask[:9])
    second.add(values[9:], mask[9:])
    merged = first.merge(second)
    save_moments(tmp_path / "m.safetensors", {"x": merged}, {"note": "test"})
    moments, metadata = load_moments(tmp_path / "m.safetensors", ["x"])
    loaded = moments["x"]
    assert metadata == {"note": "test"}
    assert torch.equal(loaded.count, whole.count)
    assert torch.allclose(loaded.mean, whole.mean, atol=1e-12)
