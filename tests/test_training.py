"""The training engine: split, seeding, the step loop, best weights, resume."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from mmreg.training import BestEpoch, fit, seed_everything, split_items


def test_split_is_deterministic_and_disjoint():
    ids = [f"img{i:02d}" for i in range(20)]
    train, val = split_items(ids, 0.2, seed=3)
    assert (train, val) == split_items(list(reversed(ids)), 0.2, seed=3)
    assert not set(train) & set(val)
    assert sorted(train + val) == ids
    assert len(val) == 4
    assert split_items(ids, 0.2, seed=4) != (train, val)


@pytest.mark.parametrize("fraction", [0.01, 0.99])
def test_split_keeps_one_of_each(fraction):
    train, val = split_items(["a", "b"], fraction, seed=0)
    assert len(train) == 1 and len(val) == 1
    assert split_items(["a"], 0.5, seed=0) == (["a"], [])


def test_seeding_reproduces():
    def draw():
        gen = seed_everything(7)
        return (
            random.random(),
            float(np.random.rand()),
            float(torch.rand(1)),
            float(torch.rand(1, generator=gen)),
        )

    assert draw() == draw()


class _Run:
    """A tiny regression trained by ``fit``; ``scores`` fixes the validation scores."""

    def __init__(self, scores=None):
        self.gen = seed_everything(0)
        self.net = torch.nn.Linear(3, 1)
        self.opt = torch.optim.Adam(self.net.parameters(), lr=0.05)
        self.scores = scores
        self.calls = 0
        self.snapshots = []

    def step(self, step):
        x = torch.randn(16, 3, generator=self.gen)
        y = x.sum(1, keepdim=True) + 0.1 * torch.randn(16, 1)  # global RNG too
        loss = (self.net(x) - y).pow(2).mean()
        self.opt.zero_grad()
        loss.backward()
        self.opt.step()
        return {"loss": float(loss.detach())}

    def validate(self):
        self.snapshots.append(self.net.weight.detach().clone())
        score = (
            self.scores[self.calls] if self.scores else -float((self.net.weight - 1).abs().sum())
        )
        self.calls += 1
        return {"score": score}

    def fit(self, steps, state_path=None):
        return fit(
            self.net,
            self.opt,
            self.step,
            self.validate,
            steps=steps,
            validate_every=5,
            log_every=100,
            state_path=state_path,
            fingerprint={"run": 1},
            generator=self.gen,
        )


def test_resume_gives_the_same_weights(tmp_path):
    full = _Run()
    full.fit(20)
    state = tmp_path / "state.pt"
    first = _Run()
    first.fit(10, state_path=state)  # "interrupted" after the validation at step 10
    assert state.is_file()
    second = _Run()  # a fresh process: other weights and RNG states
    torch.manual_seed(123)
    best = second.fit(20, state_path=state)
    assert torch.equal(second.net.weight, full.net.weight)
    assert torch.equal(second.net.bias, full.net.bias)
    assert [h["epoch"] for h in best.history] == [5.0, 10.0, 15.0, 20.0]


def test_resume_ignores_a_foreign_state(tmp_path):
    state = tmp_path / "state.pt"
    run = _Run()
    run.fit(5, state_path=state)
    other = _Run()
    best = fit(
        other.net,
        other.opt,
        other.step,
        other.validate,
        steps=5,
        validate_every=5,
        state_path=state,
        fingerprint={"run": 2},
        generator=other.gen,
    )
    assert [h["epoch"] for h in best.history] == [5.0]
    assert other.calls == 1


def test_best_weights_are_those_of_the_best_validation():
    run = _Run(scores=[0.1, 0.9, 0.3, 0.2])
    best = run.fit(20)
    assert best.epoch == 10
    net = best.restore()
    assert torch.equal(net.weight, run.snapshots[1])


def test_best_epoch_keeps_the_first_of_ties():
    net = torch.nn.Linear(1, 1)
    best = BestEpoch(net)
    assert best.end_epoch({"epoch": 1.0}, score=1.0)
    assert not best.end_epoch({"epoch": 2.0}, score=1.0)
    assert best.epoch == 1
