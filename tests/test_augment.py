import pytest
import torch

from bitsound.audio.augment import FeatureAugment, mask_axis, time_shift
from bitsound.config import AugmentConfig
from bitsound.errors import ConfigError


def test_time_shift_is_a_circular_roll_per_example():
    x = torch.arange(2 * 10, dtype=torch.float32).view(2, 1, 1, 10)
    out = time_shift(x, 0.5, torch.Generator().manual_seed(0))
    for i in range(2):
        row = out[i, 0, 0].tolist()
        shift = row.index(x[i, 0, 0, 0].item())
        assert torch.equal(out[i], torch.roll(x[i], shift, dims=-1))


def test_masks_cover_whole_bands_with_the_mean():
    x = torch.randn(4, 1, 20, 30)
    out = mask_axis(x, axis=2, count=1, max_fraction=0.2, generator=torch.Generator().manual_seed(1))
    changed = (out != x).any(dim=-1)[:, 0]  # (batch, freq): which bands were masked
    for b in range(4):
        rows = changed[b].nonzero().flatten().tolist()
        assert len(rows) <= 4
        if rows:
            assert rows == list(range(rows[0], rows[0] + len(rows)))  # one contiguous band
            torch.testing.assert_close(out[b, 0, rows[0]], x[b].mean().expand(30))


def test_augment_is_reproducible_and_refuses_other_input_kinds():
    aug = FeatureAugment(AugmentConfig(time_shift=0.1, time_masks=2, freq_masks=2, gain_db=6))
    x = torch.randn(8, 1, 40, 50)
    a = aug(x, torch.Generator().manual_seed(3))
    b = aug(x, torch.Generator().manual_seed(3))
    assert torch.equal(a, b) and not torch.equal(a, x)
    wave = torch.randn(8, 1, 32)  # a waveform batch: SpecAugment masks are refused, not skipped
    with pytest.raises(ConfigError, match="time_masks works on logmel input only"):
        aug(wave, torch.Generator())
    image = FeatureAugment(AugmentConfig(time_shift=0.1), input_kind="binary_image")
    binary = (torch.rand(4, 1, 32, 32) > 0.5).float()
    shifted = image(binary, torch.Generator().manual_seed(0))
    assert set(shifted.unique().tolist()) <= {0.0, 1.0}


def test_warp_with_no_stretch_is_identity_and_stretch_moves_content_up():
    from bitsound.audio.augment import warp

    x = torch.zeros(1, 1, 40, 20)
    x[0, 0, 10] = 1.0  # one lit band
    same = warp(x, freq=0.0, time=0.0, generator=torch.Generator())
    torch.testing.assert_close(same, x)
    # freq=0.5 draws a factor in [0.5, 1.5]; find the lit band's new centre.
    out = warp(x, freq=0.5, time=0.0, generator=torch.Generator().manual_seed(0))
    profile = out[0, 0].mean(dim=1)
    centre = float((profile * torch.arange(40)).sum() / profile.sum())
    scale = 1 + (torch.rand(1, generator=torch.Generator().manual_seed(0)) * 2 - 1) * 0.5
    # Row 10 (centre 10.5 in pixel units) maps to 10.5 * scale about the low edge.
    assert abs(centre + 0.5 - 10.5 * float(scale)) < 0.6
