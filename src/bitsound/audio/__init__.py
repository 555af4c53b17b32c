"""Audio in: decoding, resampling, channel policy, segmentation and the model front ends."""

from bitsound.audio.features import (
    BinaryImage,
    LogMel,
    RawWaveform,
    build_frontend,
    mel_filterbank,
    otsu_threshold,
)
from bitsound.audio.io import (
    AudioInfo,
    Segments,
    audio_info,
    fix_length,
    load_audio,
    resample,
    segment,
    select_channels,
    to_model_windows,
)

__all__ = [
    "AudioInfo",
    "BinaryImage",
    "LogMel",
    "RawWaveform",
    "Segments",
    "audio_info",
    "build_frontend",
    "fix_length",
    "load_audio",
    "mel_filterbank",
    "otsu_threshold",
    "resample",
    "segment",
    "select_channels",
    "to_model_windows",
]
