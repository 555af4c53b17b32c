"""Published results of the seed papers, found by system name, for comparison plots.

A recipe names the seed systems it reproduces or competes with in ``references`` (e.g.
``references: [seed001-acdnet]``); ``bitsound report`` then draws those systems' published points
beside the runs' own. Every number below is copied from the seed text in ``../shared/seeds/``,
with the table it comes from; sizes a paper does not state are derived only where the paper gives
what they follow from (the derivation is written in ``note``), otherwise left ``None`` (the point
is then listed but not drawn on that axis).

Units: ``accuracy`` is a fraction in [0, 1]; ``kb`` is 1024 bytes; ``macs`` counts one FLOP as one
multiply-accumulate, as seed 001's tables do, so XNOR-Net rows carry seed 001's XNOR FLOPs
``a + (x - (a + b)) / 64 + b`` there.
"""

from __future__ import annotations

from dataclasses import dataclass

from bitsound.registry import Registry


@dataclass(frozen=True)
class PublishedPoint:
    """One published model: its accuracy and cost on the data set it was measured on."""

    name: str
    accuracy: float
    data: str
    kb: float | None = None
    macs: float | None = None
    params: float | None = None
    note: str = ""


@dataclass(frozen=True)
class PublishedSystem:
    """A seed paper's family of models, with where its numbers come from."""

    seed: str
    title: str
    source: str
    points: tuple[PublishedPoint, ...]


PUBLISHED: Registry[PublishedSystem] = Registry("published system")


def _add(name: str, system: PublishedSystem) -> None:
    PUBLISHED.add(name, system, description=f"seed {system.seed}: {system.title}")


_ESC10 = "ESC-10, 5-fold CV"
_add("seed000-thesis", PublishedSystem(
    seed="000", title="XNOR-Net bird presence on 32x32 binary mel images",
    source="seed 000 abstract (optimised one-binary-layer XNOR-Net)",
    points=(PublishedPoint("thesis XNOR-Net", 0.9408, "Xeno-canto + UrbanSound8K, 1-s segments, "
                           "validation", note="size and MACs not reported"),)))
_add("seed001-acdnet", PublishedSystem(
    seed="001", title="ACDNet family: pruning + 8-bit PTQ vs XNOR-Net, raw audio",
    source="seed 001 tables 1, 2, 4 and 5 (ESC-10 rows)",
    points=(
        PublishedPoint("ACDNet", 0.9675, _ESC10, kb=18498, macs=544e6, params=4.74e6),
        PublishedPoint("Micro-ACDNet", 0.9625, _ESC10, kb=514, macs=14.82e6, params=0.31e6),
        PublishedPoint("QMicro-ACDNet (8-bit)", 0.9275, _ESC10, kb=128.5, macs=14.82e6, params=0.31e6),
        PublishedPoint("XACDNet (XNOR)", 0.9125, _ESC10, kb=578, macs=8.88e6, params=4.74e6,
                       note="MACs column: seed 001's XNOR FLOPs"),
        PublishedPoint("Mini-ACDNet", 0.9675, _ESC10, kb=4096, macs=112e6, params=1.05e6),
        PublishedPoint("XMini-ACDNet (XNOR)", 0.8225, _ESC10, kb=128.5, macs=1.86e6, params=1.05e6,
                       note="MACs column: seed 001's XNOR FLOPs"),
    )))
_add("seed002-mcdonnell", PublishedSystem(
    seed="002", title="McDonnell: 1-bit-per-weight ResNet, DCASE2020 task 1b (3 classes)",
    source="seed 002 section 2 (3,987,000 one-bit weights) and table 1 (overall accuracy)",
    points=(PublishedPoint("McDonnell 1-bit ResNet", 0.971, "TAU 2020 3-class, official validation "
                           "split", kb=3_987_000 / 8 / 1024, params=3.987e6,
                           note="KB: 3,987,000 weights x 1 bit; MACs not reported"),)))
_add("seed003-bcresnet", PublishedSystem(
    seed="003", title="BC-ResNet-ASC with Residual Normalization, DCASE2021 task 1a (10 classes)",
    source="seed 003 table 3 (+ ResNorm rows)",
    points=(
        PublishedPoint("BC-ResNet-ASC-1 + ResNorm", 0.658, "TAU 2020 Mobile, development split",
                       kb=8.1e3 * 4 / 1024, params=8.1e3, note="KB: #Param x 32 bit"),
        PublishedPoint("BC-ResNet-ASC-8 + ResNorm", 0.752, "TAU 2020 Mobile, development split",
                       kb=315e3 * 4 / 1024, params=315e3, note="KB: #Param x 32 bit"),
    )))
_TAU3 = "TAU 2020 3-class, development test split"
_add("seed004-wavecnn", PublishedSystem(
    seed="004", title="1D CNNs on raw binaural waveforms, DCASE2020 task 1b (3 classes)",
    source="seed 004 table 1 (fp16, batch-norm excluded from the size)",
    points=(
        PublishedPoint("wave CNN model A", 0.876, _TAU3, kb=23.8, params=13632),
        PublishedPoint("wave CNN model B", 0.909, _TAU3, kb=58.4, params=30080),
        PublishedPoint("wave CNN model C", 0.876, _TAU3, kb=255.3, params=398400),
        PublishedPoint("wave CNN model D", 0.912, _TAU3, kb=466.6, params=373696),
    )))


def get_published(name: str) -> PublishedSystem:
    """The published system registered as ``name`` (an error lists the valid names)."""
    return PUBLISHED.get(name)


__all__ = ["PUBLISHED", "PublishedPoint", "PublishedSystem", "get_published"]
