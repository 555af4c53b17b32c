"""Pruning that really shrinks a network: structured channel removal and unstructured sparsity.

Structured pruning works on Torch-Pruning's dependency graph (Fang et al., "DepGraph", CVPR
2023): a channel is removed from a convolution or dense layer together with everything coupled
to it (the next layer's input channels, batch-norm entries, PReLU slopes, learned thresholds,
residual sums), so the network stays valid and its tensors physically shrink: fewer parameters
in ``state_dict``, fewer MACs, a smaller ``.bsnn``. The pruned network is saved with its real
shapes (:mod:`bitsound.modelspec`) and reloads with :func:`bitsound.load_model`.

bitsound's quantized layers (:class:`~bitsound.nn.layers.QuantConv1d`, ``QuantConv2d``,
``QuantLinear`` and their binary configurations) have registered pruners
(:data:`LAYER_PRUNERS`): the dependency graph is traced through autograd, and a quantized
layer's forward (sign, scale, fake quantization) would look like several unknown operations, so
while the graph is built each one runs as the plain convolution or linear op it wraps
(:func:`float_forward`); its scales (XNOR-Net's alpha, int8 scales) are recomputed from the
remaining weights, so the latent weight and the bias are all a pruner cuts. Layers whose channel
mapping the graph cannot express are refused before anything is cut (:data:`PRUNE_RULES`: a
shortcut that zero-pads or averages channels).

Importance criteria (``importance=``), each giving one score per output channel, compared
across layers (``scope="global"``), or within each layer only (``scope="layer"``: every layer
loses the same fraction of its channels, its least important ones; seed 004's authors prune
each layer by the same amount with ``torch.nn.utils.prune.ln_structured``):

``"l1"``
    The L1 norm of each filter of the root layer, divided by the layer's mean (Li et al. 2017,
    "Pruning filters for efficient convnets"; seed 004's kernel ranking).
``"taylor"``
    Seed 001's first-order Taylor criterion on activations (Molchanov et al. 2017; seed 001
    eq. 1-4): per channel the mean over training examples of ``|mean over positions of Z *
    dC/dZ|``, each layer's scores divided by their L2 norm, ranked across all layers.
``"hybrid"``
    Seed 001's hybrid pruning: the trained model is first sparsified with the l0 norm (the
    smallest ``sparsify`` fraction of all weights set to zero, eq. 8), then ranked with
    ``"taylor"``; the sparsified weights are free to regrow while fine-tuning.

Unstructured magnitude pruning (:func:`apply_magnitude_masks`) zeroes the smallest weights
(globally or per layer) with :mod:`torch.nn.utils.prune` masks that stay in force while
fine-tuning, then :func:`fold_masks` writes them into the weights: the complexity report counts
the non-zero parameters under the DCASE 2020 rule (seed 003's 89 % pruning).

References
----------
- G. Fang, X. Ma, M. Song, M. B. Mi, X. Wang, "DepGraph: Towards Any Structural Pruning",
  CVPR 2023 (Torch-Pruning).
- P. Molchanov, S. Tyree, T. Karras, T. Aila, J. Kautz, "Pruning Convolutional Neural Networks
  for Resource Efficient Inference", ICLR 2017.
- H. Li, A. Kadav, I. Durdanovic, H. Samet, H. P. Graf, "Pruning Filters for Efficient
  ConvNets", ICLR 2017.
- Seed 001 (hybrid l0 + Taylor pruning of ACDNet); seed 003 (89 % magnitude pruning); seed 004
  (iterative L1 kernel pruning).
"""

from __future__ import annotations

import contextlib
import copy
import logging
import warnings
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import prune as torch_prune

from bitsound.errors import ConfigError
from bitsound.models.binary_cnn import ChannelShortcut
from bitsound.nn.layers import QuantConv1d, QuantConv2d, QuantLinear, _QuantMixin

log = logging.getLogger("bitsound.compress")

IMPORTANCES = ("l1", "taylor", "hybrid")
WEIGHT_LAYERS = (nn.Conv1d, nn.Conv2d, nn.Linear)


def _tp():
    try:
        import torch_pruning
    except ImportError:  # pragma: no cover - a dependency of bitsound
        raise ConfigError("structured pruning needs Torch-Pruning: pip install torch-pruning") from None
    return torch_pruning


# ---------------------------------------------------------------------------------------------
# registered pruners and refusal rules
# ---------------------------------------------------------------------------------------------
def _quant_pruner(base_name: str):
    """A Torch-Pruning pruner for a quantized layer: the base conv/linear pruner, after checking
    that no quantizer keeps per-channel state it would not cut."""
    tp = _tp()
    base = getattr(tp.pruner.function, base_name)

    class QuantLayerPruner(base):
        def _check(self, layer: nn.Module) -> None:
            for q in (layer.input_quantizer, layer.weight_quantizer):
                held = [n for n, t in [*q.named_parameters(), *q.named_buffers()] if t.numel() > 1]
                if held:
                    raise ConfigError(
                        f"{type(layer).__name__}'s quantizer {type(q).__name__} keeps per-channel "
                        f"tensors {held}, which the pruner cannot cut consistently; register a pruner "
                        f"for it in bitsound.compress.prune.LAYER_PRUNERS"
                    )

        def prune_out_channels(self, layer, idxs):
            self._check(layer)
            return super().prune_out_channels(layer, idxs)

        def prune_in_channels(self, layer, idxs):
            self._check(layer)
            return super().prune_in_channels(layer, idxs)

    QuantLayerPruner.__name__ = f"Quant{base_name}"
    return QuantLayerPruner()


#: Layer class -> name of the Torch-Pruning pruner its registered pruner extends; subclasses
#: (BinaryConv2d, ...) use their nearest registered base.
LAYER_PRUNERS: dict[type, str] = {
    QuantConv1d: "ConvPruner",
    QuantConv2d: "ConvPruner",
    QuantLinear: "LinearPruner",
}


def _shortcut_rule(m: ChannelShortcut) -> str | None:
    if m.kind in ("pad", "group_mean"):
        return (f"its {m.c_in} -> {m.c_out} channel shortcut ({m.kind!r}) ties channel i of the "
                f"input to channel i of the output, a mapping the dependency graph cannot keep; "
                f"build the model with shortcut=false or equal channels per stage to prune it")
    return None


#: Layer class -> rule returning why such a layer cannot be pruned (None: it can).
PRUNE_RULES: dict[type, Callable[[nn.Module], str | None]] = {ChannelShortcut: _shortcut_rule}


def register_pruner(cls: type, base: str) -> None:
    """Prune layers of ``cls`` with a pruner built on Torch-Pruning's ``base`` (e.g. ``"ConvPruner"``)."""
    LAYER_PRUNERS[cls] = base


def _customized_pruners(net: nn.Module) -> dict:
    out = {}
    for m in net.modules():
        for cls in type(m).__mro__:
            if cls in LAYER_PRUNERS:
                out.setdefault(type(m), _quant_pruner(LAYER_PRUNERS[cls]))
                break
    return out


def check_prunable(net: nn.Module) -> None:
    """Raise ConfigError naming every layer a rule of :data:`PRUNE_RULES` refuses."""
    problems = []
    for name, m in net.named_modules():
        for cls, rule in PRUNE_RULES.items():
            if isinstance(m, cls) and (reason := rule(m)):
                problems.append(f"'{name}': {reason}")
    if problems:
        raise ConfigError("this network cannot be pruned structurally: " + "; ".join(problems))


@contextlib.contextmanager
def float_forward(net: nn.Module) -> Iterator[nn.Module]:
    """Run each quantized layer as the plain op it wraps (for tracing the dependency graph only)."""
    patched = []
    for m in net.modules():
        if isinstance(m, _QuantMixin):
            if isinstance(m, nn.Linear):
                m.forward = lambda x, m=m: F.linear(x, m.weight, m.bias)
            else:
                m.forward = lambda x, m=m: m._conv_forward(x, m.weight, m.bias)
            patched.append(m)
    try:
        yield net
    finally:
        for m in patched:
            del m.forward


def _unwrapped_parameters(net: nn.Module) -> list[tuple[nn.Parameter, int]]:
    """Parameters not owned by a layer Torch-Pruning knows (e.g. a learned per-channel threshold
    ``(1, C, 1, 1)``): pruned along their one non-singleton axis."""
    known = (nn.modules.conv._ConvNd, nn.Linear, nn.modules.batchnorm._BatchNorm, nn.PReLU,
             nn.LayerNorm, nn.GroupNorm)
    owned = {id(p) for m in net.modules() if isinstance(m, known) for p in m.parameters(recurse=False)}
    out = []
    for name, p in net.named_parameters():
        if id(p) in owned:
            continue
        dims = [i for i, s in enumerate(p.shape) if s > 1]
        if not dims:
            continue  # one value for every channel: nothing to cut
        if len(dims) != 1:
            raise ConfigError(f"parameter '{name}' of shape {tuple(p.shape)} belongs to no layer the "
                              f"pruner knows and has no single channel axis; register a pruner for "
                              f"its module (bitsound.compress.prune.register_pruner)")
        out.append((p, dims[0]))
    return out


def output_layer(net: nn.Module, example_input: torch.Tensor) -> nn.Module:
    """The last conv/linear layer a forward pass runs: the classifier, whose outputs are classes."""
    order: list[nn.Module] = []
    hooks = [m.register_forward_hook(lambda m, i, o: order.append(m))
             for m in net.modules() if isinstance(m, WEIGHT_LAYERS)]
    try:
        with torch.no_grad():
            net(example_input)
    finally:
        for h in hooks:
            h.remove()
    if not order:
        raise ConfigError("the network has no convolution or dense layer to prune")
    return order[-1]


def dependency_graph(net: nn.Module, example_input: torch.Tensor):
    """Torch-Pruning's dependency graph of ``net`` (quantized layers traced as float ops)."""
    tp = _tp()
    check_prunable(net)
    was = net.training
    net.eval()
    try:
        with float_forward(net), warnings.catch_warnings(), torch.enable_grad():
            warnings.simplefilter("ignore")  # its notes on unwrapped parameters: we pass them
            graph = tp.DependencyGraph().build_dependency(
                net, example_inputs=example_input, customized_pruners=_customized_pruners(net),
                unwrapped_parameters=_unwrapped_parameters(net), verbose=False)
    finally:
        net.train(was)
    for node in graph.module2node.values():
        op = str(getattr(node.module, "_grad_fn", ""))
        if "constantpad" in op.lower():
            raise ConfigError(f"the network pads a tensor ({op}, near '{node.name}'); the dependency "
                              f"graph cannot map pruned channels through a padding")
    return graph


@dataclass
class ChannelGroup:
    """Channels removed together: a root layer's output channels and everything coupled to them."""

    name: str
    root: nn.Module
    channels: int
    group: object = field(repr=False)


def channel_groups(net: nn.Module, example_input: torch.Tensor, *, exclude: Iterable[str] = ()):
    """(dependency graph, prunable groups): every conv/linear output that can shrink, the
    classifier and the ``exclude`` layers (by module name) left out."""
    graph = dependency_graph(net, example_input)
    names = {m: n for n, m in net.named_modules()}
    by_name = dict(net.named_modules())
    unknown = [n for n in exclude if n not in by_name]
    if unknown:
        raise ConfigError(f"prune exclude: no layers named {unknown}; layers: "
                          + ", ".join(n for n, m in net.named_modules() if isinstance(m, WEIGHT_LAYERS)))
    ignored = [output_layer(net, example_input)] + [by_name[n] for n in exclude]
    groups = []
    for g in graph.get_all_groups(ignored_layers=ignored, root_module_types=list(WEIGHT_LAYERS)):
        root = g[0].dep.target.module
        groups.append(ChannelGroup(names.get(root, "?"), root, int(graph.get_out_channels(root)), g))
    return graph, groups


# ---------------------------------------------------------------------------------------------
# importance
# ---------------------------------------------------------------------------------------------
class L1Importance:
    """Seed 004 / Li et al.: L1 norm of each filter of the group's root layer over the layer's mean."""

    def __init__(self):
        self._imp = _tp().importance.GroupMagnitudeImportance(p=1, group_reduction="first",
                                                             normalizer="mean")

    def __call__(self, group: ChannelGroup) -> torch.Tensor:
        return self._imp(group.group).detach().double().cpu()


class TaylorImportance:
    """Seed 001 eq. 1-4 as Molchanov et al. compute them: per channel, the mean over examples of
    ``|mean over positions of Z * dC/dZ|`` of each layer's output ``Z`` (the absolute value per
    example, then averaged), normalised per layer by the L2 norm of its scores.

    Call :meth:`measure` with training batches before ranking (the scores belong to the network
    as it was measured; measure again after every pruning step).
    """

    def __init__(self):
        self.scores: dict[nn.Module, torch.Tensor] = {}

    def measure(self, net: nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
                loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> None:
        """Accumulate the criterion over ``batches`` of (features, labels), eval-mode statistics."""
        layers = [m for m in net.modules() if isinstance(m, WEIGHT_LAYERS)]
        sums: dict[nn.Module, torch.Tensor] = {}
        counts: dict[nn.Module, int] = {}
        outputs: dict[nn.Module, torch.Tensor] = {}

        def keep(m, inputs, out):
            out.retain_grad()
            outputs[m] = out

        hooks = [m.register_forward_hook(keep) for m in layers]
        was = net.training
        net.eval()
        try:
            for x, y in batches:
                outputs.clear()
                with torch.enable_grad():
                    loss = loss_fn(net(x), y)
                    net.zero_grad(set_to_none=True)
                    loss.backward()
                for m, z in outputs.items():
                    if z.grad is None:
                        continue
                    dims = [d for d in range(z.dim()) if d not in (0, _channel_dim(m, z))]
                    # per example: mean over positions of Z * dC/dZ, then |.| (Molchanov eq. 8)
                    per = (z.detach() * z.grad).mean(dim=dims) if dims else z.detach() * z.grad
                    per = per.abs().sum(dim=0).double().cpu()
                    sums[m] = sums.get(m, 0) + per
                    counts[m] = counts.get(m, 0) + z.shape[0]
        finally:
            for h in hooks:
                h.remove()
            net.zero_grad(set_to_none=True)
            net.train(was)
        self.scores = {}
        for m, s in sums.items():
            mean = s / counts[m]
            norm = torch.sqrt((mean ** 2).sum())
            self.scores[m] = mean / norm if norm > 0 else mean

    def __call__(self, group: ChannelGroup) -> torch.Tensor:
        if group.root not in self.scores:
            raise ConfigError(f"no Taylor scores for layer '{group.name}': measure() the network "
                              f"(with batches that reach it) before ranking")
        return self.scores[group.root]


def _channel_dim(m: nn.Module, z: torch.Tensor) -> int:
    return z.dim() - 1 if isinstance(m, nn.Linear) else 1


def sparsify(net: nn.Module, fraction: float) -> int:
    """Seed 001 eq. 8: set the ``fraction`` of all conv/linear weights smallest in magnitude to zero
    (one global threshold, in place, no mask). Returns how many weights were zeroed.

    Binary layers (``weight_bits == 1``) are left out, as by :func:`apply_magnitude_masks`: their
    weights are sign(latent) = ±1, never zero, and zeroing the latent weights would only reset
    their signs' history.
    """
    if not 0 <= fraction < 1:
        raise ConfigError(f"sparsify fraction must be in [0, 1), got {fraction}")
    weights = [m.weight for m in net.modules()
               if isinstance(m, WEIGHT_LAYERS) and getattr(m, "weight_bits", 32) != 1]
    if not weights or fraction == 0:
        return 0
    flat = torch.cat([w.detach().abs().flatten() for w in weights])
    k = int(fraction * flat.numel())
    if k == 0:
        return 0
    threshold = flat.kthvalue(k).values
    zeroed = 0
    with torch.no_grad():
        for w in weights:
            mask = w.abs() <= threshold
            zeroed += int(mask.sum())
            w.masked_fill_(mask, 0.0)
    return zeroed


# ---------------------------------------------------------------------------------------------
# structured removal
# ---------------------------------------------------------------------------------------------
@dataclass
class PruneStep:
    """What one structured step removed: channels per root layer (name -> count)."""

    removed: dict[str, int]

    @property
    def total(self) -> int:
        return sum(self.removed.values())


SCOPES = ("global", "layer")


def rank_channels(groups: list[ChannelGroup], importance, scope: str = "global"
                  ) -> list[tuple[float, int, int]]:
    """(score, group index, channel) of every prunable channel, least important first.

    ``scope="layer"``: the score is the channel's place in its own layer's order, as a fraction
    of the layer's channels ((rank + 1) / channels), so that the first ``n`` of the list take
    about the same fraction of every layer, each layer's least important first.
    """
    if scope not in SCOPES:
        raise ConfigError(f"prune scope must be one of {SCOPES}, got {scope!r}")
    ranked = []
    for gi, group in enumerate(groups):
        scores = importance(group)
        if len(scores) != group.channels:
            raise ConfigError(f"importance gave {len(scores)} scores for the {group.channels} channels "
                              f"of '{group.name}'")
        if scope == "layer":
            order = sorted(range(group.channels), key=lambda c: (float(scores[c]), c))
            ranked += [((place + 1) / group.channels, gi, c) for place, c in enumerate(order)]
        else:
            ranked += [(float(s), gi, c) for c, s in enumerate(scores)]
    ranked.sort(key=lambda r: (r[0], r[1], r[2]))
    return ranked


def remove_channels(graph, groups: list[ChannelGroup], ranked: list[tuple[float, int, int]],
                    n_remove: int, *, min_channels: int = 1) -> PruneStep:
    """Remove the ``n_remove`` least important channels, keeping ``min_channels`` per group."""
    left = {gi: g.channels for gi, g in enumerate(groups)}
    chosen: dict[int, list[int]] = {}
    for _, gi, c in ranked:
        if n_remove <= 0:
            break
        if left[gi] <= min_channels:
            continue
        chosen.setdefault(gi, []).append(c)
        left[gi] -= 1
        n_remove -= 1
    removed = {}
    for gi, idxs in chosen.items():
        root = groups[gi].root
        fn = graph.get_pruner_of_module(root).prune_out_channels
        graph.get_pruning_group(root, fn, sorted(idxs)).prune()
        removed[groups[gi].name] = len(idxs)
    return PruneStep(removed)


def prune_channels(net: nn.Module, example_input: torch.Tensor, n_remove: int, *, importance,
                   exclude: Iterable[str] = (), min_channels: int = 1, scope: str = "global") -> PruneStep:
    """Physically remove the ``n_remove`` least important output channels of ``net`` (ranked
    across layers, or within each layer with ``scope="layer"``: see :func:`rank_channels`).

    Parameters
    ----------
    net : nn.Module
        Modified in place; its layers' tensors shrink.
    example_input : Tensor [shape=(1, *feature_shape)]
    n_remove : int
    importance : L1Importance or TaylorImportance (measured) or a callable(group) -> scores
    exclude : layer names never pruned (the classifier always is)
    min_channels : int
        Channels every group keeps.

    Returns
    -------
    PruneStep
    """
    graph, groups = channel_groups(net, example_input, exclude=exclude)
    return remove_channels(graph, groups, rank_channels(groups, importance, scope), n_remove,
                           min_channels=min_channels)


def unprunable_groups(net: nn.Module, example_input: torch.Tensor, *,
                      exclude: Iterable[str] = ()) -> dict[str, str]:
    """Root layers whose channels cannot be removed: the network fails after removing one.

    The dependency graph follows autograd, and some channel mappings are invisible to it (e.g. a
    permute that makes a 1-D layer's channels the rows of a 2-D map, as ACDNet's SFEB -> TFEB).
    Each group is tried on a copy: one channel removed, one forward pass. Returns
    ``{layer name: the error}``; prune with those layers in ``exclude``.
    """
    _, groups = channel_groups(net, example_input, exclude=exclude)
    bad = {}
    for target in groups:
        if target.channels <= 1:
            continue
        trial = copy_network(net)

        def only(group, _name=target.name):
            return torch.tensor([0.0 if group.name == _name else 1.0] * group.channels, dtype=torch.float64)

        try:
            prune_channels(trial, example_input, 1, importance=only, exclude=exclude)
            with torch.no_grad():
                trial.eval()(example_input)
        except (RuntimeError, IndexError, ValueError) as err:
            bad[target.name] = f"{type(err).__name__}: {str(err).splitlines()[0][:160]}"
    return bad


@dataclass
class PrunePlan:
    """A ranking of every prunable channel of a network, replayable on a copy of it."""

    names: list[str]
    channels: list[int]
    ranked: list[tuple[float, int, int]]

    @property
    def total(self) -> int:
        return sum(self.channels)


def plan_pruning(net: nn.Module, example_input: torch.Tensor, *, importance,
                 exclude: Iterable[str] = (), scope: str = "global") -> PrunePlan:
    """Rank the channels of ``net`` (see :func:`prune_channels`) without removing any."""
    _, groups = channel_groups(net, example_input, exclude=exclude)
    return PrunePlan([g.name for g in groups], [g.channels for g in groups],
                     rank_channels(groups, importance, scope))


def apply_plan(net: nn.Module, example_input: torch.Tensor, plan: PrunePlan, n_remove: int, *,
               exclude: Iterable[str] = (), min_channels: int = 1) -> PruneStep:
    """Remove the ``n_remove`` first channels of ``plan`` from ``net`` (the network it was made
    for, or a deep copy of it)."""
    graph, groups = channel_groups(net, example_input, exclude=exclude)
    if [g.name for g in groups] != plan.names or [g.channels for g in groups] != plan.channels:
        raise ConfigError("the pruning plan was made for another network (its layers or channel counts "
                          "differ); plan again")
    return remove_channels(graph, groups, plan.ranked, n_remove, min_channels=min_channels)


def prunable_channels(net: nn.Module, example_input: torch.Tensor, *, exclude: Iterable[str] = ()) -> int:
    """How many output channels the pruner could rank (classifier and excluded layers left out)."""
    return sum(g.channels for g in channel_groups(net, example_input, exclude=exclude)[1])


# ---------------------------------------------------------------------------------------------
# unstructured magnitude pruning
# ---------------------------------------------------------------------------------------------
LAYER_SETS = ("conv", "linear", "all")


def select_layers(net: nn.Module, which: str) -> list[tuple[str, nn.Module]]:
    """Weight layers of ``net``: ``"conv"`` (convolutions), ``"linear"`` (dense) or ``"all"``."""
    if which not in LAYER_SETS:
        raise ConfigError(f"layers must be one of {LAYER_SETS}, got {which!r}")
    kinds = {"conv": (nn.Conv1d, nn.Conv2d), "linear": (nn.Linear,), "all": WEIGHT_LAYERS}[which]
    return [(n, m) for n, m in net.named_modules() if isinstance(m, kinds)]


def apply_magnitude_masks(net: nn.Module, amount: float, *, layers: str = "conv", scope: str = "global",
                          exclude: Iterable[str] = ()) -> int:
    """Mask the ``amount`` fraction of weights smallest in magnitude (torch.nn.utils.prune).

    The masks keep the pruned weights at zero while the network is fine-tuned (the forward
    multiplies ``weight_orig`` by ``weight_mask``); :func:`fold_masks` makes it permanent.
    Binary layers (1-bit weights are ±1, never zero) are skipped. ``scope="global"``: one
    threshold over all selected layers; ``"layer"``: ``amount`` of each layer. Returns the
    number of weights masked.
    """
    if not 0 <= amount < 1:
        raise ConfigError(f"unstructured prune amount must be in [0, 1), got {amount}")
    if scope not in ("global", "layer"):
        raise ConfigError(f"unstructured prune scope must be 'global' or 'layer', got {scope!r}")
    skip = set(exclude)
    chosen = [(n, m) for n, m in select_layers(net, layers)
              if n not in skip and getattr(m, "weight_bits", 32) != 1]
    if not chosen:
        raise ConfigError(f"no {layers} layers with multi-bit weights to prune")
    params = [(m, "weight") for _, m in chosen]
    if scope == "global":
        torch_prune.global_unstructured(params, pruning_method=torch_prune.L1Unstructured, amount=amount)
    else:
        for m, name in params:
            torch_prune.l1_unstructured(m, name, amount=amount)
    return sum(int((m.weight_mask == 0).sum()) for m, _ in params)


def fold_masks(net: nn.Module) -> int:
    """Write every pruning mask into its weight (zeros stay zeros) and drop the mask; returns the
    number of layers folded."""
    n = 0
    for m in net.modules():
        for hook in list(m._forward_pre_hooks.values()):
            if isinstance(hook, torch_prune.BasePruningMethod):
                torch_prune.remove(m, hook._tensor_name)
                n += 1
    return n


def copy_network(net: nn.Module) -> nn.Module:
    """A deep copy of ``net``, pruning masks included.

    A masked layer's ``weight`` is recomputed from ``weight_orig * weight_mask`` before every
    forward; the value left from the last one may carry autograd history, which ``deepcopy``
    refuses, so it is detached first (the next forward recomputes it anyway).
    """
    for m in net.modules():
        for hook in m._forward_pre_hooks.values():
            if isinstance(hook, torch_prune.BasePruningMethod):
                with torch.no_grad():
                    setattr(m, hook._tensor_name, hook.apply_mask(m).detach())
    return copy.deepcopy(net)


def has_masks(net: nn.Module) -> bool:
    return any(isinstance(h, torch_prune.BasePruningMethod)
               for m in net.modules() for h in m._forward_pre_hooks.values())


__all__ = ["IMPORTANCES", "L1Importance", "LAYER_PRUNERS", "PRUNE_RULES", "PrunePlan", "PruneStep",
           "TaylorImportance", "apply_magnitude_masks", "apply_plan", "channel_groups", "check_prunable",
           "copy_network",
           "dependency_graph", "float_forward", "fold_masks", "has_masks", "output_layer", "plan_pruning",
           "prunable_channels", "prune_channels", "rank_channels", "register_pruner", "remove_channels",
           "select_layers", "sparsify", "unprunable_groups"]
