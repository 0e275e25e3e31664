"""Graph compiler: edge counts, naming, networkx view, refusal of unsupported models."""

import pytest
import torch
from conftest import tiny_model
from transformer_lens import HookedTransformer, HookedTransformerConfig

from circuitgraph import Graph
from circuitgraph.graph import UnsupportedModelError


@pytest.fixture(scope="module")
def gpt2_shape():
    cfg = HookedTransformerConfig(
        n_layers=12,
        d_model=768,
        n_heads=12,
        d_head=64,
        d_mlp=3072,
        n_ctx=64,
        d_vocab=50257,
        act_fn="gelu_new",
        normalization_type="LN",
        device="cpu",
    )
    return HookedTransformer(cfg)


def test_gpt2_small_edge_counts(gpt2_shape):
    split = Graph.from_model(gpt2_shape)
    assert (split.n_src, split.n_dst, split.n_edges) == (157, 445, 32491)
    assert Graph.from_model(gpt2_shape, split_qkv=False).n_edges == 11611


def test_reading_rules():
    g = Graph.from_model(tiny_model())
    assert g.has_edge("input", "a0.h0.q")
    assert g.has_edge("a0.h1", "m0")  # an MLP reads its own layer's heads
    assert not g.has_edge("a0.h1", "a0.h2.k")  # heads of a layer do not read each other
    assert not g.has_edge("m0", "a0.h0.v")
    assert g.has_edge("m1", "logits") and g.has_edge("a1.h2", "m1")
    assert g.edge("a0.h1->a1.h2.k") == (g.src("a0.h1"), g.dst("a1.h2.k"))


def test_unknown_names_are_explained():
    g = Graph.from_model(tiny_model())
    with pytest.raises(KeyError, match="unknown source node 'a0.h9'"):
        g.src("a0.h9")
    with pytest.raises(KeyError, match="Did you mean"):
        g.dst("a1.h2.kk")
    with pytest.raises(KeyError, match="no edge m1->a0.h0.q"):
        g.edge("m1->a0.h0.q")
    with pytest.raises(KeyError, match="src->dst"):
        g.edge("a0.h1")


def test_to_networkx_folds_qkv():
    model = tiny_model()
    g = Graph.from_model(model)
    g.scores = torch.arange(g.valid.numel(), dtype=torch.float).view(g.valid.shape) * g.valid
    nxg = g.to_networkx()
    e = nxg.edges["input", "a1.h0"]
    assert e["qkv"] == "qkv"
    assert e["score"] == pytest.approx(sum(float(g.scores[0, g.dst(f"a1.h0.{x}")]) for x in "qkv"))
    assert nxg.number_of_nodes() == g.n_src + 1


def test_refuses_non_transformerlens_model():
    with pytest.raises(UnsupportedModelError, match="HookedTransformer"):
        Graph.from_model(torch.nn.Linear(3, 3))


def test_parallel_attn_mlp_reads_with_the_heads():
    """In a parallel block the MLP reads its layer's input, like the heads: not its layer's heads."""
    model = tiny_model(parallel_attn_mlp=True)
    g = Graph.from_model(model)
    assert g.arch.parallel_attn_mlp and not g.has_edge("a0.h0", "m0") and g.has_edge("a0.h0", "m1")
    assert g.has_edge("m0", "a1.h2.k") and g.has_edge("input", "m0") and not g.has_edge("m0", "m0")
    seq = Graph.from_model(tiny_model())
    assert seq.has_edge("a0.h0", "m0") and g.n_edges == seq.n_edges - 2 * model.cfg.n_heads
    again = Graph.from_spec(g.spec())
    assert again.arch == g.arch and torch.equal(again.valid, g.valid)
    assert Graph.from_spec({**g.spec(), "parallel_attn_mlp": False}).has_edge("a0.h0", "m0")  # older files: sequential


def test_unsupported_architectures_are_named():
    with pytest.raises(UnsupportedModelError, match="shortformer"):
        Graph.from_model(tiny_model(positional_embedding_type="shortformer"))
    with pytest.raises(UnsupportedModelError, match="SoLU-LN MLPs are not split"):
        Graph.from_model(tiny_model(act_fn="solu_ln"), neurons=True)
    with pytest.raises(UnsupportedModelError, match="HookedTransformer.*, got HookedEncoderDecoder"):
        from transformer_lens import HookedEncoderDecoder, HookedTransformerConfig

        cfg = HookedTransformerConfig(
            n_layers=1,
            d_model=8,
            n_heads=2,
            d_head=4,
            d_mlp=16,
            d_vocab=10,
            n_ctx=8,
            act_fn="relu",
            original_architecture="T5ForConditionalGeneration",
            positional_embedding_type="relative_positional_bias",
            relative_attention_num_buckets=4,
            relative_attention_max_distance=8,
            normalization_type="RMS",
        )
        Graph.from_model(HookedEncoderDecoder(cfg))


def test_grouped_query_attention_is_ungrouped():
    model = tiny_model(n_heads=4, n_key_value_heads=2)
    g = Graph.from_model(model)
    assert model.cfg.ungroup_grouped_query_attention
    assert g.has_edge("input", "a0.h3.k")


def test_model_missing_hooks_is_explained():
    model = tiny_model()
    del model.hook_dict["blocks.1.attn.hook_z"]
    with pytest.raises(UnsupportedModelError, match="lacks hook points.*blocks.1.attn.hook_z.*use_hook_mlp_in"):
        Graph.from_model(model)
