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


def shifts_found(x, y, r, margin):
    """For each image, the whole-pixel shift (dy, dx) within +-r that maps x's interior onto y's, or None."""
    side = x.shape[-1]
    found = []
    for i in range(len(x)):
        hit = None
        for dy in range(-r, r + 1):
            for dx in range(-r, r + 1):
                a = y[i, :, margin:side - margin, margin:side - margin]
                b = x[i, :, margin + dy:side - margin + dy, margin + dx:side - margin + dx]
                if torch.allclose(a, b, atol=1e-5):
                    hit = (dy, dx)
        found.append(hit)
    return found


def test_translate_option_bounds_the_shift():
    torch.manual_seed(0)
    x = torch.rand(32, 3, 32, 32)
    small = BatchAugment("light", hflip=False, translate=1 / 16)(x.clone(), torch.Generator().manual_seed(3))
    shifts = shifts_found(x, small, 4, 4)
    assert all(s is not None and max(map(abs, s)) <= 2 for s in shifts)   # 1/16 of 32 px: at most 2 px
    assert any(max(map(abs, s)) == 2 for s in shifts)
    default = BatchAugment("light", hflip=False)(x.clone(), torch.Generator().manual_seed(3))
    assert any(max(map(abs, s)) > 2 for s in shifts_found(x, default, 4, 4))  # the preset's 1/8: up to 4 px
