"""Causal-scrubbing hypotheses: write them in Python, test them by resampling, save them as data.

    from circuitgraph.hypothesis import Interpretation as I, Correspondence, Hypothesis, scrub
    from circuitgraph.hypothesis import token_at, answer_label, next_after_previous_occurrence

    prev = I("prev", token_at(-1), [I("emb", token_at(0))])      # a0.h1 copies the previous token
    ind = I("induction", next_after_previous_occurrence(),
            [I("cur", token_at(0)), prev, I("copied", token_at(0))])
    hyp = Hypothesis(I("output", answer_label(), [ind]),
                     Correspondence({"output": "logits", "induction": "a1.h3", "cur": "input",
                                     "prev": "a0.h1", "emb": "input", "copied": "input"},
                                    restrict={"cur": "q", "prev": "k", "copied": "v", "emb": "v"}),
                     model=model, name="induction")
    result = scrub(model, hyp, task)          # ScrubResult: loss_recovered, ci, losses
    hyp.save("induction.json"); Hypothesis.load("induction.json", model=model)
    hyp.to_html("induction.html")

See ``docs/causal-scrubbing.md`` for the sampling algorithm.
"""

from circuitgraph.errors import HypothesisError
from circuitgraph.hypothesis.features import (
    BUILTIN_FEATURES,
    Example,
    Feature,
    FeatureData,
    UnknownFeatureError,
    answer_label,
    constant,
    feature,
    next_after_previous_occurrence,
    register_feature,
    registered_features,
    seq_length,
    token_at,
    unregister_feature,
    whole_input,
)
from circuitgraph.hypothesis.interpretation import Correspondence, Hypothesis, Interpretation
from circuitgraph.hypothesis.nodes import ModelNode, parse_node
from circuitgraph.hypothesis.pruning import PrunedHypothesis, minimal_hypothesis
from circuitgraph.hypothesis.scrubbing import Draw, ScrubResult, VacuousHypothesisWarning, scrub
from circuitgraph.hypothesis.serialize import SCHEMA, HypothesisFileError

__all__ = [
    "Interpretation",
    "Correspondence",
    "Hypothesis",
    "scrub",
    "minimal_hypothesis",
    "PrunedHypothesis",
    "ScrubResult",
    "Draw",
    "Feature",
    "feature",
    "register_feature",
    "unregister_feature",
    "registered_features",
    "Example",
    "FeatureData",
    "whole_input",
    "constant",
    "token_at",
    "answer_label",
    "next_after_previous_occurrence",
    "seq_length",
    "BUILTIN_FEATURES",
    "HypothesisError",
    "HypothesisFileError",
    "UnknownFeatureError",
    "VacuousHypothesisWarning",
    "ModelNode",
    "parse_node",
    "SCHEMA",
]
