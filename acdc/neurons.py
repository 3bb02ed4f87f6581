"""MLP neurons as graph nodes: every hidden unit of every MLP is a source (the units OpenAI's
Transformer Debugger inspects).

    g = acdc.Graph.from_model(model, mlp_units="neurons")     # m3.n17 -> a5.h2<q>, a0.h1 -> m3, ...
    p = acdc.Patcher(model, clean, corrupt, graph=g)
    logits = p.logits(["m0.n5->logits", "m1.n3->a2.h0<v>"])   # those neuron edges ablated

Neuron ``i`` of layer ``L`` (``m{L}.n{i}``) outputs ``a_i(x) * W_out[i]``: its activation on the
MLP's input ``x`` times its row of the output matrix. Its ablation value is the same with the
ablated activation (the corrupt run's for resample, its mean over the corrupt batch per position
for mean, zero for zero). All neurons of a layer read one input, the MLP's (``m{L}``, a
destination as in the plain graph). The MLP's output bias ``b_out`` belongs to no neuron: like
attention's ``b_O`` it is never ablated.

Neurons are stored *factored*: an activation per token, times a weight row the model already
has, never a [batch, pos, d_model] tensor per neuron, so a GPT-2-small graph with all 36,864
neurons fits in a few hundred MB. This file is the whole of the node kind: the kind, how a layer's
MLP becomes neurons in the graph, how the engine runs them, and how a plain forward edits and scans
one (`NeuronSite`); importing it registers them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from torch import Tensor

from .blocks import MLP_ENGINES
from .graph import KINDS, MLP, MLP_UNITS, Destination, Graph, Node, NodeKind
from .model import Transformer
from .sites import SITES, Edits, SiteContext, UnitSite
from .transcoders import FeatureDictionary, Transcoder

__all__ = ["NEURON", "NeuronSite", "Neurons"]

NEURON = NodeKind("neuron", slots=(), component=True, order=1, shape="circle", pattern="m{layer}.n{index}", unit=True,
                  editable=True)


def _neuron_units(graph: Graph, layer: int) -> tuple[list[Node], list[Destination]]:
    """A layer's MLP as its neurons: ``d_mlp`` sources that share one input, the MLP's."""
    assert graph.d_mlp is not None
    return [Node(layer, NEURON, i) for i in range(graph.d_mlp)], [Destination(Node(layer, MLP))]


class Neurons:
    """The engine's side: each neuron's activation and its row of W_out (never a d_model tensor per neuron)."""

    def __init__(self, d_mlp: int):
        self.d_mlp = d_mlp

    def layer_units(self, layer: int) -> int:
        """Every source of a layer's MLP is a neuron."""
        return self.d_mlp

    def extras(self, tf: Transformer, layer: int, x: Tensor, acts: Tensor) -> None:
        """Neurons leave nothing of the MLP outside them but ``b_out``."""
        return None

    def activations(self, tf: Transformer, layer: int, x: Tensor) -> Tensor:
        """[..., d_mlp] the hidden activations of MLP ``layer`` on its input x [..., d_model]."""
        return tf.mlp_hidden(layer, x)

    def rows(self, tf: Transformer, layer: int) -> Tensor:
        """[d_mlp, d_model] W_out: what each neuron writes per unit of activation."""
        return tf.mlp_out_rows(layer)

    def bias(self, tf: Transformer, layer: int) -> Tensor:
        """[d_model] b_out, outside every neuron."""
        return tf.mlp_bias(layer)


KINDS["neuron"] = NEURON
MLP_UNITS["neurons"] = _neuron_units
def _neurons_of(graph: Graph, tf: Transformer, transcoders: FeatureDictionary | None) -> Neurons:
    tf.require_neurons()  # a mixture of experts has none: one line before any run
    return Neurons(int(graph.d_mlp or 0))


MLP_ENGINES["neurons"] = _neurons_of


class NeuronSite(UnitSite):
    """A neuron in the plain forward (`acdc.sites`): its hidden activation is edited (the MLP's output moves by
    the change times its row of W_out) and is what it fires as; it writes along its row of W_out."""

    kind = NEURON
    mlp_order = 0
    measure = "the neuron's hidden activation (what multiplies its row of W_out)"

    def check(self, node: Node, ctx: SiteContext) -> None:
        super().check(node, ctx)
        if not 0 <= node.head < ctx.tf.arch.d_mlp:
            raise ValueError(f"{node.name}: neuron {node.head} does not exist; MLPs have neurons 0-{ctx.tf.arch.d_mlp - 1}")

    def edit_mlp(self, run: Edits, layer: int, xn: Tensor, out: Tensor | None, items: Sequence[tuple[Node, object]]) -> Tensor:
        tf = run.tf
        hidden = tf.mlp_hidden_normed(layer, xn)
        new = hidden.clone()
        for node, it in items:
            i = node.head
            new[..., i] = run.apply(new[..., i], it, lambda c, i=i: tf.mlp_hidden(layer, c.resid_mid[layer])[..., i])
        if out is None:  # the first edit of the layer: the MLP's output from the edited hidden units, computed once
            return new @ tf.mlp_out_rows(layer) + tf.mlp_bias(layer)
        return out + (new - hidden) @ tf.mlp_out_rows(layer)

    def layer_activations(self, tf: Transformer, layer: int, mlp_in: Tensor, transcoders: Mapping[int, Transcoder]) -> Tensor:
        return tf.mlp_hidden(layer, mlp_in)

    def direction(self, tf: Transformer, node: Node, outs: list[Tensor], transcoders: Mapping[int, Transcoder]) -> Tensor:
        return tf.mlp_out_rows(node.layer)[node.head].float()


SITES[NEURON] = NeuronSite()
