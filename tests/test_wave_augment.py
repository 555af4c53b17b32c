"""Waveform training ingredients: crops (train and multi-crop test), gain, seed 004's temporal
mask, FIR filters and noise, CutMix, between-class learning with its KL loss, the plateau
schedule, and the refusal of augmentations on input kinds they do not support."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import signal
from torch import nn

from bitsound.audio import wave_augment as W
from bitsound.audio.augment import FeatureAugment, check_supported
from bitsound.audio.io import crop_windows, to_model_windows
from bitsound.audio.wave_mix import (
    BetweenClassMixer,
    CutMixer,
    a_weighting_db,
    bc_mix,
    clip_gain_db,
    partners_of_other_class,
)
from bitsound.config import AudioConfig, AugmentConfig, TrainConfig, parse_recipe
from bitsound.errors import ConfigError
from bitsound.train.schedules import EpochScheduler
from bitsound.train.tasks import ClassificationTask


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _ramp(batch: int = 3, channels: int = 2, samples: int = 50) -> torch.Tensor:
    """Distinct non-zero values: every sample tells where it came from."""
    return (torch.arange(batch * channels * samples, dtype=torch.float32) + 1).view(
        batch, channels, samples)


# ==================================================================== crops
def _reference_crop(clip: np.ndarray, start: int, length: int, first: int, stop: int):
    out = np.zeros((clip.shape[0], length), dtype=clip.dtype)
    for j in range(length):
        if first <= start + j < stop:
            out[:, j] = clip[:, start + j]
    return out


def test_random_crop_is_a_window_of_the_padded_clip_and_covers_every_start():
    x = _ramp(batch=1, samples=20)
    length, pad = 8, 4
    starts = set()
    for seed in range(400):
        out = W.crop(x, length=length, pad=pad, trim_zeros=False, starts="random",
                     generator=_gen(seed))
        assert out.shape == (1, 2, length)
        row = out[0, 0].numpy()
        real = np.flatnonzero(row)
        start = int(row[real[0]]) - 1 - real[0]  # sample index of the window's first slot
        np.testing.assert_array_equal(out[0].numpy(),
                                      _reference_crop(x[0].numpy(), start, length, 0, 20))
        starts.add(start)
    # the padded span is 28 long: starts -4 .. 16, all drawn
    assert starts == set(range(-pad, 20 + pad - length + 1))


def test_trimmed_crops_only_see_the_non_zero_span():
    x = torch.zeros(2, 1, 100)
    x[0, 0, 30:40] = 1.0
    x[1, 0, 5:95] = torch.linspace(1, 2, 90)
    x[0, 0, 20:30] = 1e-6  # below one 16-bit step: silence after lossy decoding
    first, stop = W.nonzero_span(x)
    assert first.tolist() == [30, 5] and stop.tolist() == [40, 95]
    centre = W.crop(x, length=16, pad=8, trim_zeros=True, starts="center")
    # example 0: span 10 + 2 * 8 padding = 26, centred window starts 5 before the span
    np.testing.assert_array_equal(centre[0, 0].numpy(),
                                  _reference_crop(x[0].numpy(), 30 - 8 + 5, 16, 30, 40)[0])
    numpy_centre, _ = crop_windows(x[0].numpy(), length=16, pad=8, trim_zeros=True, n_crops=1)
    np.testing.assert_array_equal(numpy_centre[0], centre[0].numpy())
    # nothing outside the span leaks in, whatever the draw
    for seed in range(50):
        out = W.crop(x, length=16, pad=8, trim_zeros=True, starts="random", generator=_gen(seed))
        assert out[0].sum() > 0 and out.shape == (2, 1, 16)


def test_multi_crop_windows_are_evenly_spaced_and_centre_crop_matches_training():
    rng = np.random.default_rng(0)
    clip = rng.standard_normal((2, 100)).astype(np.float32)
    clip[:, :10] = 0  # leading silence, trimmed
    windows, starts = crop_windows(clip, length=30, pad=15, trim_zeros=True, n_crops=5)
    # span [10, 100) padded by 15: 120 long, stride (120 - 30) // 4 = 22 from 10 - 15
    assert starts.tolist() == [-5, 17, 39, 61, 83]
    for window, start in zip(windows, starts, strict=True):
        np.testing.assert_array_equal(window, _reference_crop(clip, start, 30, 10, 100))
    (single,), _ = crop_windows(clip, length=30, pad=15, trim_zeros=True, n_crops=1)
    torch_centre = W.crop(torch.from_numpy(clip)[None], length=30, pad=15, trim_zeros=True,
                          starts="center")
    np.testing.assert_array_equal(single, torch_centre[0].numpy())


def test_to_model_windows_gives_the_test_crops_of_audio_crop():
    cfg = AudioConfig(sample_rate=100, clip_seconds=0.3,
                      crop={"source_seconds": 1.0, "pad": 0.5, "test_crops": 4})
    x = np.ones((1, 180), dtype=np.float32)  # longer than the stored second: centre-cropped
    segments = to_model_windows(x, 100, cfg)
    assert segments.windows.shape == (4, 1, 30)
    # stored clip = samples 40..140; padded span 130, stride (130 - 30) // 3 = 33
    np.testing.assert_allclose(segments.starts, (np.array([-15, 18, 51, 84]) + 40) / 100)
    assert segments.windows[0, 0, :15].sum() == 0 and segments.windows[1].min() == 1


# ==================================================================== gain, mask, filters, noise
def test_random_gain_scales_each_example_within_the_range():
    x = torch.ones(64, 1, 10)
    out = W.random_gain(x, 6.0, _gen())
    db = 20 * torch.log10(out[:, 0, 0])
    assert db.abs().max() <= 6.0 + 1e-5 and db.std() > 1
    assert torch.allclose(out, out[:, :, :1].expand_as(out))  # one factor per example


def test_temporal_mask_keeps_one_window_of_the_drawn_length():
    x = torch.ones(200, 1, 1000)
    out = W.temporal_mask(x, sample_rate=100, mean_seconds=4.0, std_seconds=1.0, positions=1000,
                          p=1.0, generator=_gen(1))
    assert out.shape == x.shape
    kept = out[:, 0]
    for row in kept:
        on = torch.nonzero(row).flatten()
        assert on.numel() > 0 and (on[-1] - on[0] + 1) == on.numel()  # one contiguous window
    lengths = kept.sum(dim=1) / 100
    assert abs(float(lengths.mean()) - 4.0) < 0.25 and 0.6 < float(lengths.std()) < 1.4
    untouched = W.temporal_mask(x, sample_rate=100, mean_seconds=4.0, std_seconds=1.0,
                                positions=1000, p=0.0, generator=_gen(1))
    assert torch.equal(untouched, x)


def test_fir_filter_bank_is_seed_004s_eight_filters():
    sr = 16000
    bank = W.FirFilterBank(sample_rate=sr, numtaps=201, p=1.0)
    assert bank.taps.shape == (8, 201)
    for taps, (kind, cut) in zip(bank.taps.numpy(), W.SEED004_FILTERS, strict=True):
        expected = signal.firwin(201, cut, pass_zero=kind, fs=sr)
        np.testing.assert_allclose(taps, expected, rtol=1e-6, atol=1e-7)
        freqs, response = signal.freqz(taps, worN=4096, fs=sr)

        def at(f, freqs=freqs, gain=np.abs(response)):
            return gain[np.argmin(np.abs(freqs - f))]

        if kind == "lowpass":
            assert at(cut / 3) > 0.95 and at(cut * 2.5) < 0.05
        elif kind == "highpass":
            assert at(cut / 3) < 0.05 and at(min(cut * 2.5, 7000)) > 0.95
        else:
            lo, hi = cut
            assert at((lo + hi) / 2) > 0.95 and at(lo / 3) < 0.05 and at(hi * 1.8) < 0.05


def test_fir_filters_change_each_example_by_one_of_the_filters():
    sr = 8000
    bank = W.FirFilterBank(sample_rate=sr, numtaps=101, p=1.0)
    x = torch.randn(16, 2, 800, generator=_gen(2))
    out = bank(x, _gen(3))
    # the same draws as inside: first the p mask, then the filter index
    g = _gen(3)
    torch.rand(16, generator=g)
    which = torch.randint(0, 8, (16,), generator=g)
    for b in range(16):
        taps = bank.taps[which[b]].view(1, 1, -1)
        expected = F.conv1d(x[b].view(2, 1, -1), taps, padding=50).view(2, -1)
        torch.testing.assert_close(out[b], expected)
    with pytest.raises(ConfigError, match="needs audio.sample_rate above 6800 Hz"):
        W.FirFilterBank(sample_rate=6000)


def test_noise_lands_at_the_drawn_snr():
    x = torch.randn(200, 1, 20000, generator=_gen(4)) * 0.1
    out = W.add_noise(x, snr_db=(6, 32), p=1.0, generator=_gen(5))
    noise = out - x
    snr = 10 * torch.log10(x.pow(2).mean(dim=(1, 2)) / noise.pow(2).mean(dim=(1, 2)))
    g = _gen(5)
    torch.rand(200, generator=g)
    drawn = torch.randint(6, 33, (200,), generator=g).double()
    torch.testing.assert_close(snr.double(), drawn, atol=0.15, rtol=0)
    assert drawn.min() == 6 and drawn.max() == 32
    silent = torch.zeros(2, 1, 100)
    assert torch.equal(W.add_noise(silent, snr_db=(6, 32), p=1.0, generator=_gen()), silent)


# ==================================================================== mixers and losses
def test_cutmix_pastes_one_segment_and_weights_by_the_kept_share():
    x = _ramp(batch=8, channels=1, samples=100)
    y = torch.arange(8)
    mixed, lam, partner = CutMixer(alpha=1.0, p=1.0)(x, y, _gen(7))
    changed = (mixed != x)[:, 0]
    columns = torch.nonzero(changed.any(dim=0)).flatten()
    lo, hi = int(columns.min()), int(columns.max()) + 1
    assert lam == pytest.approx(1 - (hi - lo) / 100)
    torch.testing.assert_close(mixed[:, :, lo:hi], x[partner, :, lo:hi])
    torch.testing.assert_close(mixed[:, :, :lo], x[:, :, :lo])
    unmixed = CutMixer(alpha=1.0, p=0.0)(x, y, _gen(7))
    assert unmixed[1] == 1.0 and unmixed[2] is None and unmixed[0] is x


def test_a_weighting_curve_matches_its_published_values():
    # IEC 61672: 0 dB at 1 kHz, -19.1 dB at 100 Hz, +1.2 dB at 2.5 kHz, -9.3 dB at 16 kHz
    values = a_weighting_db(np.array([100.0, 1000.0, 2500.0, 16000.0]))
    np.testing.assert_allclose(values, [-19.1, 0.0, 1.3, -6.6], atol=0.15)


def test_bc_gain_follows_level_and_the_mixture_compensates_it():
    sr = 16000
    t = torch.arange(sr) / sr
    tone = torch.sin(2 * torch.pi * 1000 * t).view(1, 1, -1)
    g_quiet = clip_gain_db(0.01 * tone, sample_rate=sr)
    g_loud = clip_gain_db(0.1 * tone, sample_rate=sr)
    torch.testing.assert_close(g_loud - g_quiet, torch.tensor([20.0], dtype=torch.float64))
    g_rms = clip_gain_db(0.1 * tone, sample_rate=sr, mode="rms")
    # a full-scale 0.1 sine has mean power 0.005 (the frames' windows are rectangular here)
    torch.testing.assert_close(g_rms, torch.tensor([10 * np.log10(0.005)], dtype=torch.float64),
                               atol=1e-4, rtol=0)
    # equal gains: the mixture weights are r and 1 - r, normalised to keep the power
    r = torch.tensor([0.3])
    a, b = torch.randn(1, 1, 50), torch.randn(1, 1, 50)
    same = bc_mix(a, b, r, g_quiet, g_quiet)
    norm = np.sqrt(0.3 ** 2 + 0.7 ** 2)
    torch.testing.assert_close(same, (0.3 * a + 0.7 * b) / norm)
    # one clip 20 dB louder: p / (1 - p) = r / (1 - r) / 10, so the amplitudes mix as r : 1 - r
    p = 1 / (1 + 10 ** (20 / 20) * 0.7 / 0.3)
    loud = bc_mix(a, b, r, g_loud, g_quiet)
    pn = np.sqrt(p ** 2 + (1 - p) ** 2)
    torch.testing.assert_close(loud, (p * a + (1 - p) * b) / pn)
    assert (p * 10) / (1 - p) == pytest.approx(0.3 / 0.7)
    assert torch.isfinite(bc_mix(a, b, torch.tensor([0.0]), g_loud, g_quiet)).all()


def test_between_class_partners_have_other_labels_and_targets_are_mixed():
    y = torch.tensor([0, 0, 1, 2, 2, 2, 1, 0])
    for seed in range(20):
        partner = partners_of_other_class(y, _gen(seed))
        assert (y[partner] != y).all()
    alone = partners_of_other_class(torch.tensor([4, 4, 4]), _gen())
    assert alone.tolist() == [0, 1, 2]
    x = torch.randn(8, 1, 4000, generator=_gen(8))
    mixed, r, partner = BetweenClassMixer(sample_rate=16000)(x, y, _gen(9))
    assert mixed.shape == x.shape and r.shape == (8,) and (y[partner] != y).all()
    gains = clip_gain_db(x, sample_rate=16000)
    torch.testing.assert_close(mixed, bc_mix(x, x[partner], r.double(), gains, gains[partner]))
    task = ClassificationTask(mixer=BetweenClassMixer(sample_rate=16000), loss="kl_divergence")
    target = task.targets(y, n_classes=3, lam=r, perm=partner)
    torch.testing.assert_close(target.sum(dim=1), torch.ones(8))
    torch.testing.assert_close(target[torch.arange(8), y], r)


def test_kl_loss_is_kl_divergence_and_shares_cross_entropys_gradient():
    net = nn.Linear(5, 3)
    x, y = torch.randn(6, 5), torch.tensor([0, 1, 2, 0, 1, 2])
    lam, perm = torch.rand(6, generator=_gen(10)), torch.tensor([1, 2, 0, 4, 5, 3])
    kl_task, ce_task = ClassificationTask(loss="kl_divergence"), ClassificationTask()
    target = kl_task.targets(y, n_classes=3, lam=lam, perm=perm)
    logits = net(x)
    kl = kl_task.loss_on(logits, y, x=x, lam=lam, perm=perm)
    expected = F.kl_div(F.log_softmax(logits, -1), target, reduction="batchmean")
    torch.testing.assert_close(kl, expected)
    ce = ce_task.loss_on(logits, y, x=x, lam=lam, perm=perm)
    entropy = -torch.special.xlogy(target, target).sum(-1).mean()
    torch.testing.assert_close(ce - kl, entropy)
    g_kl = torch.autograd.grad(kl, net.weight)[0]
    g_ce = torch.autograd.grad(ce_task.loss_on(net(x), y, x=x, lam=lam, perm=perm), net.weight)[0]
    torch.testing.assert_close(g_kl, g_ce)
    # plain labels: KL to a one-hot target is the cross-entropy
    torch.testing.assert_close(kl_task.loss_on(logits, y, x=x, lam=1.0, perm=None),
                               F.cross_entropy(logits, y))


def test_mixers_refuse_features():
    feats = torch.randn(4, 1, 8, 8)
    y = torch.tensor([0, 1, 0, 1])
    with pytest.raises(ConfigError, match="use augment.mixup_alpha"):
        BetweenClassMixer(sample_rate=16000)(feats, y, _gen())
    with pytest.raises(ConfigError, match="waveform"):
        CutMixer()(feats, y, _gen())
    with pytest.raises(ConfigError, match="choose one"):
        ClassificationTask(mixup_alpha=0.2, mixer=CutMixer())


# ==================================================================== schedule
def test_plateau_halves_the_rate_after_patience_epochs_without_improvement():
    cfg = TrainConfig(optimizer={"name": "adam", "lr": 1e-3},
                      schedule={"name": "plateau", "gamma": 0.5, "patience": 5,
                                "monitor": "val_log_loss"})
    optimizer = torch.optim.Adam([nn.Parameter(torch.zeros(1))], lr=1e-3)
    from bitsound.train.loop import schedule_monitor

    assert schedule_monitor(cfg) == ("val_log_loss", "min")
    scheduler = EpochScheduler(optimizer, cfg.schedule, epochs=30, mode="min")
    rates = []
    for loss in [1.0, 0.9] + [0.95] * 7:
        scheduler.step(loss)
        rates.append(optimizer.param_groups[0]["lr"])
    # best at epoch 2; epochs 3..8 are six in a row without improvement: halved after the 6th
    assert rates[:7] == [1e-3] * 7 and rates[7] == pytest.approx(5e-4)


# ==================================================================== configuration
def _raw_recipe(**augment) -> dict:
    return {"name": "t", "model": {"name": "m"}, "frontend": {"kind": "raw"},
            "audio": {"sample_rate": 16000, "clip_seconds": 0.5,
                      "crop": {"source_seconds": 2.0}}, "augment": augment}


def test_recipes_refuse_augmentations_their_front_end_does_not_support():
    with pytest.raises(ConfigError, match=r"augment.time_masks works on logmel input only; "
                                          r"augment.temporal_mask masks waveforms"):
        parse_recipe(_raw_recipe(time_masks=2))
    logmel = {"name": "t", "model": {"name": "m"}, "frontend": {"kind": "logmel"}}
    with pytest.raises(ConfigError, match="augment.fir_filters works on waveform input only"):
        parse_recipe({**logmel, "augment": {"fir_filters": {}}})
    with pytest.raises(ConfigError, match="augment.between_class works on waveform"):
        parse_recipe({**logmel, "augment": {"between_class": {}}})
    image = {"name": "t", "model": {"name": "m"}, "frontend": {"kind": "binary_image"}}
    with pytest.raises(ConfigError, match="augment.gain_db works on waveform / logmel"):
        parse_recipe({**image, "augment": {"gain_db": 3}})
    with pytest.raises(ConfigError, match="audio.crop crops waveforms"):
        parse_recipe({**logmel, "audio": {"crop": {"source_seconds": 2}}})
    with pytest.raises(ConfigError, match="mixup_alpha and between_class"):
        parse_recipe(_raw_recipe(mixup_alpha=0.2, between_class={}))
    with pytest.raises(ConfigError, match="unknown key"):
        parse_recipe(_raw_recipe(noise={"snr": [6, 32]}))
    with pytest.raises(ConfigError, match="random_crop needs audio.crop"):
        parse_recipe({**_raw_recipe(random_crop=True), "audio": {"clip_seconds": 0.5}})
    ok = parse_recipe(_raw_recipe(random_crop=True, gain_db=6, temporal_mask={}, fir_filters={},
                                  noise={}, between_class={}))
    assert ok.augment.noise.snr_db == (6, 32)


def test_feature_augment_refuses_batches_of_another_kind():
    aug = FeatureAugment(AugmentConfig(time_masks=2, freq_masks=2), input_kind="logmel")
    with pytest.raises(ConfigError, match="set up for logmel batches"):
        aug(torch.randn(4, 1, 100), _gen())
    inferred = FeatureAugment(AugmentConfig(time_masks=2))
    with pytest.raises(ConfigError, match="gives waveform input"):
        inferred(torch.randn(4, 1, 100), _gen())
    with pytest.raises(ConfigError, match="needs the audio config"):
        FeatureAugment(AugmentConfig(noise={}), input_kind="waveform")
    check_supported(AugmentConfig(time_shift=0.1, mixup_alpha=0.2), input_kind="binary_image")


def test_waveform_pipeline_crops_and_augments_reproducibly():
    recipe = parse_recipe(_raw_recipe(random_crop=True, gain_db=6, temporal_mask={"p": 1.0,
                          "mean_seconds": 0.2}, fir_filters={"p": 1.0}, noise={"p": 1.0}))
    aug = FeatureAugment(recipe.augment, input_kind="waveform", audio=recipe.audio)
    x = torch.randn(4, 1, 32000, generator=_gen(11))
    a, b = aug(x, _gen(12)), aug(x, _gen(12))
    assert a.shape == (4, 1, 8000) and torch.equal(a, b)
    assert not torch.equal(a, aug(x, _gen(13)))
