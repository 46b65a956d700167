"""Layer-parallel SigProp (specs/sigprop.md §11, §13.9): two gloo worker processes produce
exactly the weights of the sequential loop of train.py, because every layer emits its outputs
before its own step and learns from its own loss only."""

from __future__ import annotations

import torch

from bioprop.pipeline import PipelineJob, balance, build_job_rule, run_pipeline, synthetic_batches


def test_balance_minimises_slowest_stage():
    assert balance([1.0, 1.0, 1.0, 3.0], 2) == [range(0, 3), range(3, 4)]
    assert balance([2.0, 1.0, 1.0, 1.0, 1.0], 2) == [range(0, 2), range(2, 5)]
    assert balance([1.0, 1.0, 1.0], 3) == [range(0, 1), range(1, 2), range(2, 3)]


def test_two_stage_pipeline_equals_sequential_weights():
    """5 batches, dropout 0.2 and random tie-breaking: bit-identical weights (and the weights
    did move, so the comparison is not between two untouched copies)."""
    job = PipelineJob(
        model_args={"width": 32, "depth": 3, "dropout": 0.2},
        rule_args={"loss": "max_rand"},
        batch_size=16,
        batches=5,
        lr=1e-2,
    )
    # Same thread count as the workers (job.threads): float reductions split over a different
    # number of threads sum in another order, and "exactly" would then fail in the last bits.
    threads = torch.get_num_threads()
    torch.set_num_threads(job.threads)
    rule = build_job_rule(job)
    start = {k: v.clone() for k, v in rule.state_dict().items()}
    opt = torch.optim.Adam(rule.model.parameters(), lr=job.lr)
    rule.train()
    for x, y in synthetic_batches(job):  # the loop of train.py
        opt.zero_grad(set_to_none=True)
        rule.step(x, y)
        opt.step()
    torch.set_num_threads(threads)
    seq = {k: v for k, v in rule.state_dict().items() if k.startswith("model.")}
    pipe = run_pipeline(job, 2, [range(0, 2), range(2, rule.num_layers)])["state"]
    assert pipe.keys() == seq.keys()
    assert all(torch.equal(pipe[k], seq[k]) for k in seq)
    assert not torch.equal(seq["model.blocks.3.op.weight"], start["model.blocks.3.op.weight"])
