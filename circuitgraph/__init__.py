"""circuitgraph: causal-graph circuit discovery for TransformerLens models.

g = Graph.from_model(model)
attribute(model, g, task, method="eap-ig")
c = minimal_circuit(model, g, task, target=0.9)
c.save("circuit.json"); Circuit.load("circuit.json", model)
"""

import warnings

# transformer-lens 3.x warns on every HookedTransformer construction that 4.x will remove it; we
# pin 3.x deliberately (see pyproject.toml), so the warning is noise for our users.
warnings.filterwarnings("ignore", message="HookedTransformer is deprecated", category=DeprecationWarning)

from circuitgraph.attribution import METHODS, attribute, feature_graph, top_neurons  # noqa: E402
from circuitgraph.circuit import (  # noqa: E402
    Circuit,
    acdc,
    learn_edge_masks,
    learned_circuit,
    minimal_circuit,
    prune,
    threshold,
    top_n,
)
from circuitgraph.engine import Ablation  # noqa: E402
from circuitgraph.errors import CircuitGraphError  # noqa: E402
from circuitgraph.evaluation import evaluate, faithfulness, faithfulness_curve, stability  # noqa: E402
from circuitgraph.export import write_html  # noqa: E402
from circuitgraph.graph import Graph, PositionalGraph  # noqa: E402
from circuitgraph.hypothesis import Correspondence, Hypothesis, Interpretation, minimal_hypothesis, scrub  # noqa: E402
from circuitgraph.tasks import Task, load_task  # noqa: E402

__version__ = "0.1.0"
__all__ = [
    "Graph",
    "PositionalGraph",
    "feature_graph",
    "top_neurons",
    "CircuitGraphError",
    "Task",
    "write_html",
    "Hypothesis",
    "Interpretation",
    "Correspondence",
    "scrub",
    "minimal_hypothesis",
    "load_task",
    "attribute",
    "METHODS",
    "Ablation",
    "Circuit",
    "minimal_circuit",
    "acdc",
    "learned_circuit",
    "learn_edge_masks",
    "top_n",
    "threshold",
    "prune",
    "evaluate",
    "faithfulness",
    "faithfulness_curve",
    "stability",
]
