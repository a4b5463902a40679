import torch

from imgclass.data.augment import BatchAugment


def batch():
    torch.manual_seed(0)
    return torch.rand(16, 3, 12, 12)


def test_none_is_identity():
    x = batch()
    assert torch.equal(BatchAugment("none")(x.clone(), torch.Generator().manual_seed(0)), x)


def test_shapes_ranges_and_per_sample_params():
    x = batch()
    for preset in ("light", "strong"):
        y = BatchAugment(preset)(x.clone(), torch.Generator().manual_seed(1))
        assert y.shape == x.shape and y.min() >= 0 and y.max() <= 1
        changed = [(not torch.allclose(y[i], x[i])) for i in range(len(x))]
        assert 0 < sum(changed)   # something moved
    # same generator seed -> same result (repeatable runs)
    a = BatchAugment("strong")(x.clone(), torch.Generator().manual_seed(5))
    b = BatchAugment("strong")(x.clone(), torch.Generator().manual_seed(5))
    assert torch.equal(a, b)


def test_light_translation_is_whole_pixels_and_flip_optional():
    x = batch()
    aug = BatchAugment("light", hflip=False)
    y = aug(x.clone(), torch.Generator().manual_seed(3))
    # with no flip, each output's interior is an exact shifted copy of the input
    for i in range(len(x)):
        found = any(torch.allclose(y[i, :, 2:10, 2:10], x[i, :, 2 + dy:10 + dy, 2 + dx:10 + dx], atol=1e-5)
                    for dy in range(-2, 3) for dx in range(-2, 3))
        assert found
