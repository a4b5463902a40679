import pytest
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


def mid_batch(n=64, side=16):
    """Pixels away from 0 and 1, so no clamp hides a factor."""
    torch.manual_seed(1)
    return 0.3 + 0.3 * torch.rand(n, 3, side, side)


@pytest.mark.parametrize("option,value", [("rotate", 30.0), ("zoom", 0.2), ("shear", 15.0), ("brightness", 0.3),
                                          ("contrast", 0.4)])
def test_each_option_stays_within_its_range_and_is_off_at_zero(option, value):
    x = mid_batch()
    aug = BatchAugment("none", **{option: value})
    y = aug(x.clone(), torch.Generator().manual_seed(2))
    drawn = aug.last[option]
    assert drawn.abs().max() <= value + 1e-6 and drawn.abs().max() > value / 2    # within, and using, the range
    assert not torch.allclose(y, x)
    if option == "brightness":   # brightness alone: every pixel scaled by its image's factor
        assert torch.allclose(y, x * (1 + drawn).view(-1, 1, 1, 1), atol=1e-6)
    if option == "contrast":     # contrast alone: deviations from the image mean scaled by the factor
        mean = x.mean(dim=(1, 2, 3), keepdim=True)
        assert torch.allclose(y - mean, (x - mean) * (1 + drawn).view(-1, 1, 1, 1), atol=1e-6)
    zero = BatchAugment("none", **{option: 0.0})
    assert torch.equal(zero(x.clone(), torch.Generator().manual_seed(2)), x)       # 0: not at all


def test_vflip_and_composition_with_a_preset():
    x = mid_batch()
    aug = BatchAugment("none", vflip=True)
    y = aug(x.clone(), torch.Generator().manual_seed(4))
    flipped = aug.last["vflip"]
    assert 0 < int(flipped.sum()) < len(x)
    for i in range(len(x)):
        assert torch.equal(y[i], x[i].flip(1) if flipped[i] else x[i])
    strong = BatchAugment("strong", rotate=25.0)                  # the option replaces the preset's 10 degrees
    assert strong.p["rotate"] == 25.0 and strong.p["zoom"] == 0.15
    strong(x.clone(), torch.Generator().manual_seed(4))
    assert strong.last["rotate"].abs().max() > 10


@pytest.mark.parametrize("preset,total", [("light", 5519.323125034571), ("strong", 5194.571021273732)])
def test_presets_draw_as_before_the_options(preset, total):
    """The options draw only when switched on, so a preset does exactly what it did before they existed: the
    totals are those of the implementation before the options (commit 1d2e672), same batch and seed."""
    x = mid_batch(16)
    y = BatchAugment(preset)(x.clone(), torch.Generator().manual_seed(9))
    assert float(y.double().sum()) == pytest.approx(total, abs=1e-3)
    assert torch.equal(y, BatchAugment(preset, vflip=False, shear=0.0)(x.clone(), torch.Generator().manual_seed(9)))


def test_config_refuses_out_of_range_options():
    from imgclass.training import config
    from imgclass.core.errors import UserError
    with pytest.raises(UserError, match=r"rotate must be in \[0, 180\)"):
        config.resolve(rotate=200)
    with pytest.raises(UserError, match=r"zoom must be in \[0, 1\)"):
        config.resolve(zoom=-0.1)


def test_mixup_mixes_images_and_labels_alike():
    from imgclass.data.augment import batch_mix
    x, y = mid_batch(8), torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
    torch.manual_seed(3)
    mixed, target = batch_mix(0.4, None, 3)(x.clone(), y)
    assert torch.allclose(target.sum(1), torch.ones(8))
    lam = target[torch.arange(8), y]                       # the weight of each image's own label
    partner = x.roll(1, 0)                                 # torchvision mixes each image with its neighbour
    assert torch.allclose(mixed, lam.view(-1, 1, 1, 1) * x + (1 - lam.view(-1, 1, 1, 1)) * partner, atol=1e-5)
    assert ((lam >= 0) & (lam <= 1)).all() and not torch.allclose(mixed, x)
    assert batch_mix(None, None, 3) is None                # off: nothing mixes


def test_cutmix_pastes_a_patch_weighted_by_its_area():
    from imgclass.data.augment import batch_mix
    x, y = mid_batch(8), torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
    torch.manual_seed(5)
    mixed, target = batch_mix(None, 1.0, 3)(x.clone(), y)
    partner = x.roll(1, 0)
    from_partner = (mixed == partner).all(1) & ~(mixed == x).all(1)     # pixels taken from the neighbour
    share = from_partner.float().mean(dim=(1, 2))
    own = target[torch.arange(8), y]
    assert torch.allclose(own, 1 - share, atol=1e-6)       # the label weight is the area kept
    assert ((mixed == x) | (mixed == partner)).all()       # every pixel is one image's or the other's


def test_mixup_and_cutmix_train(tmp_path, monkeypatch):
    import math
    import imgclass
    from helpers import FAST, make_class_folders
    data = make_class_folders(tmp_path / "data", per_class=10)
    from imgclass.training import build as run_mod
    seen = []

    def spy(*args, **kwargs):  # the loop's mix: every training batch goes through it, its soft targets into the loss
        mix = real_mix(*args, **kwargs)
        return lambda x, y: seen.append(mix(x, y)) or seen[-1]
    real_mix = run_mod.batch_mix
    monkeypatch.setattr(run_mod, "batch_mix", spy)
    run = imgclass.train(data, out=str(tmp_path / "m"), **dict(FAST, epochs=3, mixup=0.2, cutmix=1.0, lr=0.01))
    assert all(math.isfinite(r["train_loss"]) for r in run.history)
    assert len(seen) >= 3 and all(t.shape[1] == 3 and torch.allclose(t.sum(1), torch.ones(len(t))) for _, t in seen)
    assert any((t.max(1).values < 1).any() for _, t in seen)      # targets really were mixed
    from imgclass.core.errors import UserError
    with pytest.raises(UserError, match="mixup takes a Beta"):
        imgclass.train(data, out=str(tmp_path / "bad"), **dict(FAST, mixup=0))


def test_rand_augment_per_image_and_repeatable():
    x = mid_batch(16)
    aug = BatchAugment("rand", hflip=False, translate=0.0)
    assert aug.p["rand"] and aug.active
    a = aug(x.clone(), torch.Generator().manual_seed(7))
    b = aug(x.clone(), torch.Generator().manual_seed(7))
    assert torch.equal(a, b) and a.shape == x.shape and a.min() >= 0 and a.max() <= 1     # repeatable
    quantised = (x * 255).round() / 255
    changed = [not torch.allclose(a[i], quantised[i], atol=1.5 / 255) for i in range(len(x))]
    assert sum(changed) >= len(x) // 2                      # most images changed by their two operations
    deltas = {round(float((a[i] - quantised[i]).abs().mean()), 4) for i in range(len(x))}
    assert len(deltas) > 4                                  # each image its own operations
    assert torch.equal(BatchAugment("light")(x.clone(), torch.Generator().manual_seed(9)),
                       BatchAugment("light", vflip=False)(x.clone(), torch.Generator().manual_seed(9)))


def test_mixup_and_cutmix_mix_tag_rows_as_they_mix_the_images():
    """Several tags per image: the 0/1 tag rows are mixed with the weights the images were (lambda for an image,
    1 - lambda for its neighbour in the batch; CutMix's lambda is the kept area)."""
    from imgclass.data.augment import batch_mix
    torch.manual_seed(0)
    x = torch.rand(6, 3, 8, 8)
    y = torch.tensor([[1, 0, 0, 1], [0, 1, 0, 0], [1, 1, 1, 0], [0, 0, 0, 0], [0, 0, 1, 1], [1, 0, 1, 0]])
    mixed, target = batch_mix(0.4, None, 4, targets="tags")(x.clone(), y)
    other = x.roll(1, 0)
    lam = float(((mixed - other) / (x - other))[(x - other).abs() > 0.1].median())
    assert torch.allclose(mixed, lam * x + (1 - lam) * other, atol=1e-5)
    assert torch.allclose(target, lam * y.float() + (1 - lam) * y.roll(1, 0).float(), atol=1e-6)
    mixed, target = batch_mix(None, 1.0, 4, targets="tags")(x.clone(), y)
    kept = float((mixed == x).all(1).float().mean())                     # the share of pixels not pasted over
    assert torch.allclose(target, kept * y.float() + (1 - kept) * y.roll(1, 0).float(), atol=1e-6)


def test_cutout_blanks_one_square_per_image_inside_it():
    x = torch.rand(6, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    aug = BatchAugment("none", cutout=0.375)                      # 12 px of 32, airbench96's
    y = aug(x.clone(), torch.Generator().manual_seed(2))
    fill = x.mean(dim=(0, 2, 3))
    corners = aug.last["cutout"]
    assert ((corners >= 0) & (corners <= 32 - 12)).all() and len({tuple(c) for c in corners.tolist()}) > 1
    for img, (top, left), orig in zip(y, corners.tolist(), x):
        inside = torch.zeros(32, 32, dtype=torch.bool)
        inside[top:top + 12, left:left + 12] = True
        assert torch.allclose(img[:, inside], fill.view(3, 1).expand(3, 144))
        assert torch.equal(img[:, ~inside], orig[:, ~inside])     # nothing else moves
    # drawn last: with the same seed, flips and shifts are those drawn without cutout, outside each square
    a = BatchAugment("light")(x.clone(), torch.Generator().manual_seed(3))
    both = BatchAugment("light", cutout=0.375)
    b = both(x.clone(), torch.Generator().manual_seed(3))
    for img_a, img_b, (top, left) in zip(a, b, both.last["cutout"].tolist()):
        outside = torch.ones(32, 32, dtype=torch.bool)
        outside[top:top + 12, left:left + 12] = False
        assert torch.equal(img_a[:, outside], img_b[:, outside]) and not torch.equal(img_a, img_b)
    from imgclass.training import config
    from imgclass.core.errors import UserError
    with pytest.raises(UserError, match=r"cutout must be in \[0, 1\)"):
        config.resolve(cutout=1.5)
