"""Bad input gets a clear error naming the problem and the fix."""

import pytest
import torch
from conftest import tiny_model, tiny_task

from circuitgraph import Graph, Task, attribute, load_task


def test_mismatched_clean_corrupted_lengths():
    with pytest.raises(ValueError, match="pair up example by example"):
        Task(
            clean=torch.zeros(3, 5, dtype=torch.long),
            corrupted=torch.zeros(3, 6, dtype=torch.long),
            answer=torch.zeros(3, dtype=torch.long),
        )


def test_empty_task():
    with pytest.raises(ValueError, match="empty"):
        Task(clean=torch.zeros(0, 5, dtype=torch.long), corrupted=torch.zeros(0, 5, dtype=torch.long))


def test_float_tokens():
    with pytest.raises(TypeError, match="integer token ids"):
        Task(clean=torch.zeros(2, 5), corrupted=torch.zeros(2, 5), answer=torch.zeros(2, dtype=torch.long))


def test_answer_out_of_vocab():
    model = tiny_model()
    t = tiny_task(model)
    t.answer[0] = model.cfg.d_vocab + 5
    with pytest.raises(ValueError, match="answer ids must be output-vocabulary indices"):
        attribute(model, Graph.from_model(model), t, progress=False)


def test_nan_metric():
    model = tiny_model()
    t = tiny_task(model)
    t.metric = lambda logits, task: logits[:, -1, 0] * float("nan")
    t.__post_init__()
    with pytest.raises(ValueError, match="NaN"):
        attribute(model, Graph.from_model(model), t, progress=False)


def test_non_scalar_metric():
    model = tiny_model()
    t = tiny_task(model)
    t.metric = lambda logits, task: logits[:, -1]
    t.__post_init__()
    with pytest.raises(ValueError, match="one value per example"):
        attribute(model, Graph.from_model(model), t, progress=False)


def test_unknown_method_and_ablation():
    model = tiny_model()
    t = tiny_task(model)
    g = Graph.from_model(model)
    with pytest.raises(ValueError, match="unknown attribution method 'eap2'"):
        attribute(model, g, t, method="eap2")
    with pytest.raises(ValueError, match="unknown ablation"):
        attribute(model, g, t, ablation="gaussian")


def test_graph_from_other_model():
    a, b = tiny_model(), tiny_model(n_heads=2)
    with pytest.raises(ValueError, match="different model"):
        attribute(a, Graph.from_model(b), tiny_task(a), progress=False)


def test_device_mismatch_is_explained(monkeypatch):
    """A model on another device (simulated: CI has no GPU) gets an error with the fix."""
    import circuitgraph.tasks.task as task_mod

    model = tiny_model()
    monkeypatch.setattr(task_mod, "_model_device", lambda m: torch.device("cuda", 0))
    with pytest.raises(ValueError, match=r"task = task.to\('cuda:0'\)"):
        tiny_task(model).check_model(model)


def test_prompts_longer_than_context():
    model = tiny_model(n_ctx=4)
    with pytest.raises(ValueError, match="context"):
        tiny_task(model, seq=7).check_model(model)


def test_task_file_errors(tmp_path):
    p = tmp_path / "t.jsonl"
    p.write_text('{"clean": [1,2,3], "corrupted": [1,2]}\n')
    with pytest.raises(ValueError, match="same length"):
        load_task(p)
    p.write_text('{"clean": [1,2,3]\n')
    with pytest.raises(ValueError, match="not valid JSON"):
        load_task(p)
    p.write_text('{"prompt": [1,2,3]}\n')
    with pytest.raises(ValueError, match="lacks column"):
        load_task(p)
    q = tmp_path / "t.csv"
    q.write_text('clean,corrupted,answer,wrong\n"[1,2,3]","[3,2,1]",4,5\n')
    t = load_task(q)
    assert t.clean.tolist() == [[1, 2, 3]] and t.answer.tolist() == [4]


def test_padded_prompts_read_at_their_own_last_token():
    clean = torch.tensor([[1, 2, 3, 0], [4, 5, 6, 7]])
    t = Task(
        clean=clean,
        corrupted=clean.flip(1),
        answer=torch.tensor([1, 2]),
        wrong=torch.tensor([3, 4]),
        attention_mask=torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]]),
    )
    assert t.read_mask.nonzero().tolist() == [[0, 2], [1, 3]]
