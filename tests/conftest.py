"""Shared fixtures: tiny random models of several architectures and matching tasks."""

import pytest
import torch

from circuitgraph.tasks import Task

try:  # transformer-lens 4.x has no HookedTransformer: only the bridge tests run there (make test-tl4)
    from transformer_lens import HookedTransformer, HookedTransformerConfig
except ImportError:
    HookedTransformer = HookedTransformerConfig = None

torch.set_num_threads(1)
NO_HOOKED_TRANSFORMER = "transformer-lens 4.x removed HookedTransformer; this test needs it"
needs_hooked_transformer = pytest.mark.skipif(HookedTransformer is None, reason=NO_HOOKED_TRANSFORMER)


def tiny_model(seed: int = 0, **overrides) -> HookedTransformer:
    cfg = dict(
        n_layers=2,
        d_model=16,
        n_ctx=12,
        d_head=4,
        n_heads=3,
        d_vocab=23,
        act_fn="gelu",
        d_mlp=32,
        seed=seed,
        normalization_type="LN",
        device="cpu",
    )
    cfg.update(overrides)
    if HookedTransformer is None:
        pytest.skip(NO_HOOKED_TRANSFORMER)
    model = HookedTransformer(HookedTransformerConfig(**cfg))
    # Random init leaves LN weights at 1 and biases at 0; perturb them so the tests exercise them.
    with torch.no_grad():
        g = torch.Generator().manual_seed(seed + 1)
        for name, p in model.named_parameters():
            if name.endswith(("ln1.w", "ln2.w", "ln_final.w")):
                p.add_(0.3 * torch.randn(p.shape, generator=g))
            elif name.endswith(("ln1.b", "ln2.b", "ln_final.b", "b_Q", "b_K", "b_V", "b_in", "b_out", "b_O")):
                p.add_(0.1 * torch.randn(p.shape, generator=g))
    model.eval()
    return model


def tiny_task(model, n: int = 6, seq: int = 7, seed: int = 0, metric: str = "logit_diff") -> Task:
    g = torch.Generator().manual_seed(seed)
    V = model.cfg.d_vocab
    clean = torch.randint(0, V, (n, seq), generator=g)
    corrupted = torch.randint(0, V, (n, seq), generator=g)
    answer = torch.randint(0, V, (n,), generator=g)
    wrong = (answer + 1) % V
    return Task(clean=clean, corrupted=corrupted, answer=answer, wrong=wrong, metric=metric, name="tiny")


@pytest.fixture
def model():
    return tiny_model()


@pytest.fixture
def task(model):
    return tiny_task(model)


@pytest.fixture(scope="session")
def hf_folder(tmp_path_factory):
    """``hf_folder(family, **sizes)``: a tiny random HF model folder with a word-level tokenizer
    (:mod:`circuitgraph.models.tiny`), written once per test session. Folder names avoid family
    names: TransformerLens's HookedTransformer loader guesses the architecture from the path."""
    from circuitgraph.models.tiny import save_tiny_hf

    made: dict = {}

    def get(family: str, **sizes):
        key = (family, tuple(sorted(sizes.items())))
        if key not in made:
            made[key] = save_tiny_hf(family, tmp_path_factory.mktemp("hf") / f"m{len(made)}", **sizes)
        return made[key]

    return get
