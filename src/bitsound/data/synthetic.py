"""``synthetic`` - procedurally generated sound events, for tests, demos and quick experiments.

Spec: ``synthetic`` or ``synthetic:key=value,key=value``. Keys:

=============  =======  =========================================================================
key            default  meaning
=============  =======  =========================================================================
n_per_class    80       clips per class
n_classes      8        use the first n of :data:`CLASSES` (2 ... 8)
n_locations    8        recording locations (groups), each with its own background and acoustics
seed           0        everything (locations, clips) follows from it
duration       1.0      clip length in seconds
snr_low        0.0      lowest event-to-background ratio in dB (whole-clip energies)
snr_high       20.0     highest event-to-background ratio in dB
home_share     0.5      share of each class's clips recorded at its two home locations
=============  =======  =========================================================================

The default set (8 classes x 80 clips of 1 s at 16 kHz, 640 clips) generates in a few seconds
and a small CNN trains on it in about a minute on two CPU cores.

How a clip is made
------------------
1. **Event** of the clip's class, with random timing and parameters within the class ranges
   (:data:`CLASSES`: FM bird chirps, bird trills, harmonic bark bursts, sirens, amplitude-
   modulated engine hum, rain, wind gusts, knocks).
2. **Location.** Each class has two home locations that record ``home_share`` of its clips;
   the rest are spread over all locations, so every location hears every class but some far
   more often (engines at the street, birds in the park). A model can therefore take the
   background as a shortcut for the class, which works on a random split and fails on an
   unseen location, as with real recording sites. Each location also has an *accent*: per
   class, where in the class's parameter ranges its events lie (a dog breed, a siren model, a
   bird dialect), so clips of one class from one location resemble each other more than clips
   from elsewhere.
3. **Room.** The event is convolved with the location's reverberation (exponentially decaying
   noise, RT60 0.05-0.6 s).
4. **Background** of the location at a random SNR (``snr_low`` ... ``snr_high``): coloured noise
   (white ... brown), optionally mains hum, babble-like voices, a ventilation band, and faint
   distractor events of other classes 12-25 dB below the event.
5. **Device**: a recording-device response from :data:`DEVICES` (low/high cut + a resonance,
   one with soft clipping, one with self-noise); each location mostly uses one device.
6. Random overall level (-35 ... -15 dBFS RMS).

Clips are generated on the fly in :meth:`SyntheticDataset.load`: nothing is written to disk,
and the same seed gives bit-identical audio. ``group`` is the location, ``device`` the device.
"""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields

import numpy as np

from bitsound.data.records import Clip, Dataset
from bitsound.data.registry import register_dataset
from bitsound.errors import ConfigError, DataError

#: Bump whenever a change to this module changes the generated audio (invalidates caches).
GENERATOR_VERSION = 1
#: Rate the audio is generated at; :meth:`SyntheticDataset.load` resamples to other rates.
NATIVE_RATE = 16000

# Seed-sequence tags, so the random streams of clips, locations and accents never coincide.
_TAG_CLIP, _TAG_LOCATION, _TAG_ACCENT, _TAG_HOMES = 1, 2, 3, 4


@dataclass(frozen=True)
class SyntheticParams:
    """Settings of the generator; see the module docstring for their meaning."""

    n_per_class: int = 80
    n_classes: int = 8
    n_locations: int = 8
    seed: int = 0
    duration: float = 1.0
    snr_low: float = 0.0
    snr_high: float = 20.0
    home_share: float = 0.5

    def __post_init__(self) -> None:
        rules = [
            (self.n_per_class >= 1, "n_per_class must be >= 1"),
            (2 <= self.n_classes <= len(CLASSES), f"n_classes must be in 2..{len(CLASSES)}"),
            (self.n_locations >= 1, "n_locations must be >= 1"),
            (self.seed >= 0, "seed must be >= 0"),
            (0.1 <= self.duration <= 60, "duration must be in 0.1..60 seconds"),
            (self.snr_low <= self.snr_high, "snr_low must be <= snr_high"),
            (0.0 <= self.home_share <= 1.0, "home_share must be in 0..1"),
        ]
        broken = [rule for ok, rule in rules if not ok]
        if broken:
            raise ConfigError(f"synthetic dataset settings {asdict(self)}: {'; '.join(broken)}")

    @classmethod
    def from_spec(cls, text: str) -> SyntheticParams:
        """Parse ``"key=value,key=value"`` (the part after ``synthetic:``).

        Raises
        ------
        ConfigError
            Unknown key, malformed item or a value of the wrong type.
        """
        types = {f.name: f.type for f in fields(cls)}
        values: dict[str, int | float] = {}
        for item in filter(None, (part.strip() for part in text.split(","))):
            key, sep, raw = (s.strip() for s in item.partition("="))
            if not sep or key not in types:
                raise ConfigError(
                    f"synthetic spec item {item!r} is not key=value with a known key; valid keys: "
                    f"{', '.join(types)} (e.g. synthetic:n_per_class=20,seed=1)"
                )
            values[key] = _parse_number(key, raw, integer=types[key] in (int, "int"))
        return cls(**values)

    def canonical(self, *, audio_only: bool = False) -> str:
        """The settings as sorted JSON.

        With ``audio_only`` it leaves out ``n_per_class``, which decides how many clips there
        are but not what any clip sounds like, so small and large sets share cache entries.
        """
        settings = asdict(self)
        if audio_only:
            del settings["n_per_class"]
        return json.dumps(settings, sort_keys=True, separators=(",", ":"))


def _parse_number(key: str, raw: str, *, integer: bool) -> int | float:
    try:
        return int(raw) if integer else float(raw)
    except ValueError:
        kind = "an integer" if integer else "a number"
        raise ConfigError(f"synthetic spec: {key}={raw!r} must be {kind}") from None


# ==================================================================== event classes
class _Draw:
    """Random parameters of one event, biased towards the location's accent.

    ``accent`` holds one centre in [0, 1] per parameter (drawn per location and class).
    ``uniform(lo, hi)`` draws around the next centre with a spread of +-``spread``/2, reflected
    back into [0, 1], so each location covers only part of each class range.
    """

    spread = 0.4

    def __init__(self, rng: np.random.Generator, accent: np.ndarray) -> None:
        self.rng = rng
        self._accent = accent
        self._next = 0

    def uniform(self, lo: float, hi: float) -> float:
        centre = self._accent[self._next % len(self._accent)]
        self._next += 1
        u = centre + self.spread * (self.rng.random() - 0.5)
        u = abs(u) if u < 0 else (2 - u if u > 1 else u)  # reflect into [0, 1]
        return lo + (hi - lo) * u

    def integer(self, lo: int, hi: int) -> int:
        """An integer in lo..hi inclusive."""
        return min(int(self.uniform(lo, hi + 1)), hi)


def _hann_burst(n: int) -> np.ndarray:
    return np.sin(np.pi * (np.arange(n) + 0.5) / n) ** 2


def _place(out: np.ndarray, event: np.ndarray, start: int) -> None:
    """Add ``event`` into ``out`` at sample ``start``, cutting what falls outside."""
    if start >= len(out) or start + len(event) <= 0:
        return
    lo, hi = max(start, 0), min(start + len(event), len(out))
    out[lo:hi] += event[lo - start : hi - start]


def _harmonics(
    phase: np.ndarray, f_max: float, sr: int, amps: Callable[[int], float], *,
    limit_hz: float | None = None,
) -> np.ndarray:
    """Sum of ``amps(k) * sin(k * phase)`` over harmonics whose top frequency stays below
    ``limit_hz`` (default 0.45 sr), by the Chebyshev recursion (no ``sin`` per harmonic)."""
    limit = 0.45 * sr if limit_hz is None else limit_hz
    two_cos = 2 * np.cos(phase)
    previous, current = np.zeros_like(phase), np.sin(phase)
    out = np.zeros_like(phase)
    k = 1
    while k * f_max < limit:
        out += amps(k) * current
        previous, current = current, two_cos * current - previous  # sin((k+1) phase)
        k += 1
    return out


def _phase(freq: np.ndarray, sr: int, rng: np.random.Generator) -> np.ndarray:
    return 2 * np.pi * np.cumsum(freq) / sr + rng.uniform(0, 2 * np.pi)


def _butterworth_gain(n: int, sr: int, lo: float | None, hi: float | None,
                      order: int) -> np.ndarray:
    """Magnitude of a Butterworth band/low/high-pass on the ``rfft`` bins of ``n`` samples."""
    f = np.maximum(np.fft.rfftfreq(n, 1 / sr), 1e-3)
    gain = np.ones_like(f)
    if hi is not None:
        gain /= np.sqrt(1 + (f / hi) ** (2 * order))
    if lo is not None:
        gain /= np.sqrt(1 + (lo / f) ** (2 * order))
    return gain


def _filter(x: np.ndarray, sr: int, lo: float | None, hi: float | None,
            order: int = 4) -> np.ndarray:
    """Zero-phase Butterworth-magnitude filtering in the frequency domain (fast for one-offs)."""
    return np.fft.irfft(np.fft.rfft(x) * _butterworth_gain(len(x), sr, lo, hi, order), len(x))


def _bandnoise(rng: np.random.Generator, n: int, lo: float | None, hi: float | None, sr: int,
               order: int = 4) -> np.ndarray:
    return _filter(rng.standard_normal(n), sr, lo, hi, order)


def _convolve(x: np.ndarray, h: np.ndarray) -> np.ndarray:
    """``x`` convolved with ``h`` by FFT, cut to the length of ``x``."""
    size = 1 << (len(x) + len(h) - 2).bit_length()
    return np.fft.irfft(np.fft.rfft(x, size) * np.fft.rfft(h, size), size)[: len(x)]


def _smooth_walk(rng: np.random.Generator, n: int, rate_hz: float, sr: int) -> np.ndarray:
    """A slowly varying random curve around 0 (std ~1) with changes at about ``rate_hz``."""
    knots = max(int(n / sr * rate_hz) + 3, 4)
    values = rng.standard_normal(knots)
    return np.interp(np.linspace(0, knots - 1, n), np.arange(knots), values)


def _chirps(d: _Draw, n: int, sr: int) -> np.ndarray:
    """Bird-like FM chirps: 2-7 fast sweeps in 1.5-7.5 kHz, each 30-120 ms."""
    out = np.zeros(n)
    count, f_start = d.integer(2, 7), d.uniform(2000, 6500)
    sweep, length, gap = d.uniform(-3000, 3000), d.uniform(0.03, 0.12), d.uniform(0.03, 0.15)
    shape = d.uniform(0.4, 2.5)
    m = int(length * sr)
    tau = np.arange(m) / m
    pos = int(d.rng.uniform(0, 0.4) * n)
    for _ in range(count):
        f = np.clip(f_start + sweep * tau**shape * d.rng.uniform(0.85, 1.15), 1500, 7500)
        ph = _phase(f, sr, d.rng)
        chirp = (np.sin(ph) + 0.2 * np.sin(2 * ph) * (2 * f.max() < 0.45 * sr)) * _hann_burst(m)
        _place(out, chirp * d.rng.uniform(0.6, 1.0), pos)
        pos += m + int(gap * sr * d.rng.uniform(0.7, 1.3))
    return out


def _trill(d: _Draw, n: int, sr: int) -> np.ndarray:
    """Bird trill: a train of short notes at 10-30 notes/s, each a small downward sweep."""
    rate, carrier, duty = d.uniform(10, 30), d.uniform(2500, 6000), d.uniform(0.3, 0.7)
    fm, total = d.uniform(0, 1500), d.uniform(0.3, 0.8)
    t = np.arange(n) / sr
    cycle = (t * rate) % 1.0
    ph = _phase(carrier - fm * cycle, sr, d.rng)
    note = np.where(cycle < duty, np.sin(np.pi * np.minimum(cycle / duty, 1.0)) ** 2, 0.0)
    start = d.rng.uniform(0, max(n / sr - total, 0.01))
    gate = ((t >= start) & (t < start + total)).astype(float)
    return np.sin(ph) * note * gate


def _bark(d: _Draw, n: int, sr: int) -> np.ndarray:
    """Bark-like bursts: 1-4 harmonic, noisy, falling-pitch bursts of 60-250 ms."""
    out = np.zeros(n)
    count, f0, length = d.integer(1, 4), d.uniform(250, 700), d.uniform(0.06, 0.25)
    drop, noise, gap = d.uniform(0.6, 1.0), d.uniform(0.1, 0.5), d.uniform(0.08, 0.3)
    formant = d.uniform(600, 2500)
    pos = int(d.rng.uniform(0, 0.3) * n)
    for _ in range(count):
        m = int(length * sr * d.rng.uniform(0.8, 1.2))
        f = f0 * d.rng.uniform(0.9, 1.1) * np.linspace(1.0, drop, m)
        tone = _harmonics(_phase(f, sr, d.rng), f.max(), sr, lambda k: 1.0 / k)
        body = tone + noise * 3 * d.rng.standard_normal(m)
        env = np.minimum(np.arange(m) / (0.005 * sr), 1.0) * np.exp(-np.arange(m) / (0.35 * m))
        _place(out, _filter(body, sr, formant * 0.5, formant * 2, order=2) * env, pos)
        pos += m + int(gap * sr * d.rng.uniform(0.7, 1.3))
    return out


def _siren(d: _Draw, n: int, sr: int) -> np.ndarray:
    """Siren: a harmonic tone whose pitch swings slowly (0.5-4 Hz) by 15-50 %."""
    f0, depth, rate = d.uniform(500, 1300), d.uniform(0.15, 0.5), d.uniform(0.5, 4.0)
    square_ish, rolloff = d.uniform(0, 1), d.uniform(1.0, 3.0)
    t = np.arange(n) / sr
    lfo = np.sin(2 * np.pi * rate * t + d.rng.uniform(0, 2 * np.pi))
    lfo = np.tanh(3 * square_ish * lfo) / np.tanh(3 * square_ish) if square_ish > 0.05 else lfo
    f = f0 * (1 + depth * lfo)
    return _harmonics(_phase(f, sr, d.rng), f.max(), sr, lambda k: k**-rolloff)


def _engine(d: _Draw, n: int, sr: int) -> np.ndarray:
    """Engine hum: 25-90 Hz harmonic series, amplitude-modulated at 2-12 Hz, plus rumble."""
    f0, tilt, am_rate = d.uniform(25, 90), d.uniform(0.5, 1.5), d.uniform(2, 12)
    am_depth, rumble = d.uniform(0.2, 0.8), d.uniform(0.1, 0.6)
    t = np.arange(n) / sr
    f = f0 * (1 + 0.03 * _smooth_walk(d.rng, n, 2.0, sr))
    ph = _phase(f, sr, d.rng)
    tone = _harmonics(ph, f.max(), sr, lambda k: k**-tilt, limit_hz=2000)
    am = 1 + am_depth * np.sin(2 * np.pi * am_rate * t + d.rng.uniform(0, 2 * np.pi))
    noise = _bandnoise(d.rng, n, None, d.uniform(300, 1000), sr)
    return (tone / np.std(tone) + rumble * noise / np.std(noise)) * am


def _rain(d: _Draw, n: int, sr: int) -> np.ndarray:
    """Rain: band-limited hiss plus 30-200 droplets/s (tiny decaying pings at 1-5 kHz)."""
    lo, hi, rate = d.uniform(400, 2500), d.uniform(5000, 7600), d.uniform(30, 200)
    drops = d.uniform(0.2, 1.0)
    hiss = _bandnoise(d.rng, n, lo, hi, sr)
    hiss /= np.std(hiss)
    tau = np.arange(int(0.005 * sr)) / sr
    pings = np.zeros(n)
    for _ in range(3):  # three droplet sizes, each an impulse train through its own ping
        train = np.zeros(n)
        hits = d.rng.integers(0, n, d.rng.poisson(rate * n / sr / 3))
        np.add.at(train, hits, d.rng.uniform(0.5, 3.0, len(hits)))
        ping = np.sin(2 * np.pi * d.rng.uniform(1000, 5000) * tau) * np.exp(-tau / 0.0012)
        pings += _convolve(train, ping)
    return hiss + drops * pings / max(np.std(pings), 1e-9)


def _wind(d: _Draw, n: int, sr: int) -> np.ndarray:
    """Wind: low-passed noise (150-900 Hz) in slow gusts, sometimes with a whistle."""
    cutoff, gust_rate, gustiness = d.uniform(150, 900), d.uniform(0.3, 2.0), d.uniform(0.3, 0.9)
    whistle = d.uniform(0, 1)
    x = _bandnoise(d.rng, n, None, cutoff, sr)
    x /= np.std(x)
    if whistle > 0.6:
        centre = d.rng.uniform(300, 1500)
        tone = _bandnoise(d.rng, n, centre * 0.97, centre * 1.03, sr, order=2)
        x += (whistle - 0.6) * 2 * tone / np.std(tone)
    gust = np.exp(gustiness * _smooth_walk(d.rng, n, gust_rate, sr))
    return x * gust


def _knock(d: _Draw, n: int, sr: int) -> np.ndarray:
    """Knocks: 2-8 impulses through a damped two-mode resonator (150-2500 Hz, 5-50 ms decay)."""
    count, f, decay = d.integer(2, 8), d.uniform(150, 2500), d.uniform(0.005, 0.05)
    ratio, interval = d.uniform(1.5, 2.8), d.uniform(0.05, 0.2)
    m = min(int(6 * decay * sr), n)
    tau = np.arange(m) / sr
    ring = np.exp(-tau / decay) * (
        np.sin(2 * np.pi * f * tau) + 0.5 * np.sin(2 * np.pi * min(f * ratio, 0.45 * sr) * tau)
    )
    click = d.rng.standard_normal(int(0.001 * sr) + 1)
    knock = np.convolve(click, ring)[:m]
    out = np.zeros(n)
    pos = int(d.rng.uniform(0, 0.3) * n)
    for _ in range(count):
        _place(out, knock * d.rng.uniform(0.5, 1.0), pos)
        pos += int(interval * sr * d.rng.uniform(0.6, 1.4))
    return out


#: Event classes in target order: (label, generator).
CLASSES: tuple[tuple[str, Callable[[_Draw, int, int], np.ndarray]], ...] = (
    ("bird_chirp", _chirps),
    ("bird_trill", _trill),
    ("bark", _bark),
    ("siren", _siren),
    ("engine", _engine),
    ("rain", _rain),
    ("wind", _wind),
    ("knock", _knock),
)
#: The most parameters any class draws; each location has one accent centre per parameter.
_N_ACCENT = 8


# ==================================================================== devices and locations
@dataclass(frozen=True)
class Device:
    """A recording device's response: band limits, one resonance, optional clipping/self-noise."""

    name: str
    highpass: float
    lowpass: float
    peak_hz: float
    peak_db: float
    peak_q: float
    soft_clip: bool = False
    self_noise_db: float | None = None


DEVICES: tuple[Device, ...] = (
    Device("dev_a", highpass=60, lowpass=7500, peak_hz=3000, peak_db=6, peak_q=2.0),
    Device("dev_b", highpass=300, lowpass=3800, peak_hz=1200, peak_db=5, peak_q=1.5,
           soft_clip=True),  # phone-like
    Device("dev_c", highpass=120, lowpass=6000, peak_hz=5000, peak_db=9, peak_q=3.0),
    Device("dev_d", highpass=40, lowpass=7000, peak_hz=700, peak_db=4, peak_q=1.0,
           self_noise_db=-50),
)


@functools.lru_cache(maxsize=32)
def _device_filters(device: Device, sr: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Band-limiting sections and the resonance biquad (b, a) of ``device`` at ``sr``."""
    from scipy import signal  # lazy: importing scipy.signal takes seconds

    sos = np.vstack([
        signal.butter(2, device.highpass, "highpass", fs=sr, output="sos"),
        signal.butter(4, device.lowpass, "lowpass", fs=sr, output="sos"),
    ])
    b, a = signal.iirpeak(device.peak_hz, device.peak_q, fs=sr)
    return sos, b, a


def _apply_device(x: np.ndarray, device: Device, rng: np.random.Generator, sr: int) -> np.ndarray:
    """Causal IIR filtering, like real hardware (phase shifts included)."""
    from scipy import signal

    sos, b, a = _device_filters(device, sr)
    y = signal.sosfilt(sos, x)
    y = y + (10 ** (device.peak_db / 20) - 1) * signal.lfilter(b, a, y)
    if device.soft_clip:
        y = np.tanh(2.5 * y / (np.max(np.abs(y)) + 1e-12)) / 2.5
    if device.self_noise_db is not None:
        y = y + np.std(y) * 10 ** (device.self_noise_db / 20) * rng.standard_normal(len(y))
    return y


@dataclass(frozen=True, eq=False)
class Location:
    """A recording site: background character, room acoustics and usual device."""

    name: str
    noise_colour: float  # spectral slope exponent: 0 white, 1 pink, 2 brown
    hum_hz: float | None  # mains hum, 50 or 60 Hz
    hum_db: float
    babble_db: float | None
    vent_hz: float | None  # ventilation band centre
    rt60: float
    distractor_rate: float  # chance of a faint event of another class
    device: int  # index into DEVICES of the usual device
    accents: np.ndarray  # (len(CLASSES), _N_ACCENT) parameter centres in [0, 1], read-only


@functools.lru_cache(maxsize=256)
def make_location(seed: int, index: int) -> Location:
    """The ``index``-th location of generator ``seed``."""
    rng = np.random.default_rng([seed, _TAG_LOCATION, index])
    accents = np.random.default_rng([seed, _TAG_ACCENT, index]).random((len(CLASSES), _N_ACCENT))
    accents.flags.writeable = False  # shared by every clip through the cache
    return Location(
        name=f"loc{index}",
        noise_colour=float(rng.uniform(0.0, 2.2)),
        hum_hz=float(rng.choice([50.0, 60.0])) if rng.random() < 0.5 else None,
        hum_db=float(rng.uniform(-12, 0)),
        babble_db=float(rng.uniform(-10, 0)) if rng.random() < 0.4 else None,
        vent_hz=float(rng.uniform(200, 3000)) if rng.random() < 0.4 else None,
        rt60=float(rng.uniform(0.05, 0.6)),
        distractor_rate=float(rng.uniform(0.0, 0.5)),
        device=int(rng.integers(len(DEVICES))),
        accents=accents,
    )


def _coloured_noise(rng: np.random.Generator, n: int, colour: float) -> np.ndarray:
    spectrum = np.fft.rfft(rng.standard_normal(n))
    f = np.fft.rfftfreq(n, 1 / NATIVE_RATE)
    spectrum *= np.maximum(f, 20.0) ** (-colour / 2)
    x = np.fft.irfft(spectrum, n)
    return x / np.std(x)


def _babble(rng: np.random.Generator, n: int, sr: int) -> np.ndarray:
    """Babble-like voices: 3-6 pulse-train 'speakers' (90-250 Hz) with a 3-6 Hz syllable
    rhythm, through one formant band."""
    t = np.arange(n) / sr
    voices = np.zeros(n)
    for _ in range(int(rng.integers(3, 7))):
        f = rng.uniform(90, 250) * (1 + 0.08 * _smooth_walk(rng, n, 4.0, sr))
        # A glottal-like pulse train (one impulse per period) is all harmonics at once.
        pulses = np.diff(np.floor(_phase(f, sr, rng) / (2 * np.pi)), prepend=0.0)
        rhythm = np.sin(2 * np.pi * rng.uniform(3, 6) * t + rng.uniform(0, 6))
        voices += pulses * np.maximum(rhythm, 0)
    formant = rng.uniform(400, 1200)
    out = _filter(voices, sr, formant * 0.6, formant * 2.5, order=2)
    return out / max(np.std(out), 1e-12)


def _background(loc: Location, rng: np.random.Generator, n: int, sr: int) -> np.ndarray:
    colour = loc.noise_colour + rng.normal(0, 0.15)
    bg = _coloured_noise(rng, n, colour) * np.exp(0.3 * _smooth_walk(rng, n, 1.0, sr))
    t = np.arange(n) / sr
    if loc.hum_hz is not None:
        hum = _harmonics(2 * np.pi * loc.hum_hz * t + rng.uniform(0, 6), loc.hum_hz, sr,
                         lambda k: 1.0 / k, limit_hz=8 * loc.hum_hz)
        bg += 10 ** (loc.hum_db / 20) * hum / np.std(hum)
    if loc.babble_db is not None:
        bg += 10 ** (loc.babble_db / 20) * _babble(rng, n, sr)
    if loc.vent_hz is not None:
        vent = _bandnoise(rng, n, loc.vent_hz * 0.8, loc.vent_hz * 1.25, sr, order=2)
        bg += 0.5 * vent / np.std(vent)
    return bg / np.std(bg)


def _reverb(x: np.ndarray, rt60: float, rng: np.random.Generator, sr: int) -> np.ndarray:
    m = int(rt60 * sr)
    tau = np.arange(m) / sr
    ir = rng.standard_normal(m) * 10 ** (-3 * tau / rt60)  # -60 dB at rt60
    ir[0] = 0.0
    ir *= 0.3 / np.sqrt(np.sum(ir**2))
    ir[0] = 1.0  # direct sound
    return _convolve(x, ir)


# ==================================================================== clip generation
def _rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(x**2))) + 1e-12


def _event(
    class_index: int, loc: Location, rng: np.random.Generator, n: int, sr: int
) -> np.ndarray:
    generator = CLASSES[class_index][1]
    return generator(_Draw(rng, loc.accents[class_index]), n, sr)


def location_of(params: SyntheticParams, class_index: int, take: int) -> int:
    """Where clip ``take`` of a class was recorded.

    A share ``home_share`` of each class's clips comes from the class's two home locations
    (alternately), the rest cycle through all locations. Spreading the ``take`` values evenly
    (Bresenham-style) keeps the counts exact for any ``n_per_class``.
    """
    h, n_loc = params.home_share, params.n_locations
    homes_before = math.floor(take * h)
    if math.floor((take + 1) * h) > homes_before:  # this take is a home take
        return _home_locations(params.seed, n_loc)[class_index][homes_before % 2]
    return (take - homes_before) % n_loc


@functools.lru_cache(maxsize=64)
def _home_locations(seed: int, n_locations: int) -> tuple[tuple[int, int], ...]:
    """Two home locations per class; with 8 locations each is home to two classes."""
    order = np.random.default_rng([seed, _TAG_HOMES]).permutation(n_locations).tolist()
    return tuple(
        (order[(2 * c) % n_locations], order[(2 * c + 1) % n_locations])
        for c in range(len(CLASSES))
    )


def _clip_setup(params: SyntheticParams, class_index: int,
                take: int) -> tuple[np.random.Generator, Location, Device]:
    """The clip's random stream, its location and its device (70 % the location's usual one)."""
    rng = np.random.default_rng([params.seed, _TAG_CLIP, class_index, take])
    loc = make_location(params.seed, location_of(params, class_index, take))
    usual = rng.random() < 0.7
    device = DEVICES[loc.device] if usual else DEVICES[int(rng.integers(len(DEVICES)))]
    return rng, loc, device


def generate_clip(
    params: SyntheticParams, class_index: int, take: int
) -> tuple[np.ndarray, str, str]:
    """Generate one clip at :data:`NATIVE_RATE`.

    Parameters
    ----------
    params : SyntheticParams
    class_index : int
        Index into :data:`CLASSES`.
    take : int
        Clip number within the class (0-based); decides the location (:func:`location_of`) and
        seeds the clip's random stream.

    Returns
    -------
    audio : np.ndarray [shape=(samples,), dtype=float32]
    location : str
    device : str
    """
    sr = NATIVE_RATE
    n = round(params.duration * sr)
    rng, loc, device = _clip_setup(params, class_index, take)

    event = _reverb(_event(class_index, loc, rng, n, sr), loc.rt60, rng, sr)
    event /= _rms(event)
    if rng.random() < loc.distractor_rate:
        other = (class_index + 1 + int(rng.integers(params.n_classes - 1))) % params.n_classes
        distractor = _event(other, loc, rng, n, sr)
        event += 10 ** (-rng.uniform(12, 25) / 20) * distractor / _rms(distractor)
    snr_db = rng.uniform(params.snr_low, params.snr_high)
    mix = event * 10 ** (snr_db / 20) + _background(loc, rng, n, sr)
    mix = _apply_device(mix, device, rng, sr)
    mix *= 10 ** (rng.uniform(-35, -15) / 20) / _rms(mix)
    return np.clip(mix, -1.0, 1.0).astype(np.float32), loc.name, device.name


class SyntheticDataset(Dataset):
    """Generated clips (see the module docstring); audio is computed in :meth:`load`."""

    generated = True
    native_rate = NATIVE_RATE

    def __init__(self, params: SyntheticParams) -> None:
        self.params = params
        labels = sorted(name for name, _ in CLASSES[: params.n_classes])
        clips = [
            self._make_clip(c, take) for c in range(params.n_classes)
            for take in range(params.n_per_class)
        ]
        super().__init__(kind="synthetic", root=f"synthetic:{params.canonical()}", clips=clips,
                         labels=labels)

    def _make_clip(self, class_index: int, take: int) -> Clip:
        p = self.params
        _, loc, device = _clip_setup(p, class_index, take)
        label = CLASSES[class_index][0]
        return Clip(
            path=f"synthetic://seed={p.seed}/{label}/{take:05d}",
            label=label,
            group=loc.name,
            device=device.name,
            meta={"class_index": class_index, "take": take},
        )

    def load(self, clip: Clip, *, sample_rate: int | None = None,
             channels: str | int | None = None) -> np.ndarray:
        """Generate the clip's audio; see :meth:`Dataset.load` for the parameters."""
        from bitsound.audio.io import resample, select_channels

        class_index, take = self._locate(clip)
        audio, _, _ = generate_clip(self.params, class_index, take)
        x = audio[np.newaxis]
        if clip.start is not None or clip.end is not None:
            start = round((clip.start or 0.0) * NATIVE_RATE)
            end = len(audio) if clip.end is None else round(clip.end * NATIVE_RATE)
            x = x[:, start:end]
        x = select_channels(x, channels, path=clip.path)
        if sample_rate is not None and sample_rate != NATIVE_RATE:
            x = resample(x, NATIVE_RATE, sample_rate).astype(np.float32)
        return np.ascontiguousarray(x)

    def identity(self, clip: Clip) -> str:
        """Generator version + settings + clip position: changes exactly when the audio does."""
        class_index, take = self._locate(clip)
        return (f"synthetic:v{GENERATOR_VERSION}|{self.params.canonical(audio_only=True)}"
                f"|class={class_index}|take={take}")

    def _locate(self, clip: Clip) -> tuple[int, int]:
        try:
            return int(clip.meta["class_index"]), int(clip.meta["take"])
        except (KeyError, TypeError, ValueError):
            raise DataError(
                f"clip '{clip.path}' was not made by the synthetic generator (its meta lacks "
                "class_index/take); take clips from the SyntheticDataset itself"
            ) from None


@register_dataset("synthetic", path_required=False,
                  description="generated events (8 classes, locations, devices); "
                              "synthetic[:n_per_class=80,seed=0,...]")
def open_synthetic(path: str) -> SyntheticDataset:
    """Open the generator with the settings of a spec (``""`` for the defaults)."""
    return SyntheticDataset(SyntheticParams.from_spec(path))

