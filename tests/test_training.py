"""The training engine: split, seeding, the step loop, best weights, resume."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from mmreg.training import (
    BestEpoch,
    digest,
    epoch_steps,
    fit,
    fit_epochs,
    seed_everything,
    split_items,
    state_file,
)


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


def test_split_with_two_on_each_side():
    assert split_items(range(4), 0.1, seed=0, min_each=2) == ([1, 3], [0, 2])
    assert split_items(range(3), 0.5, seed=0, min_each=2) == ([0, 1, 2], [])
    train, val = split_items(range(5), 0.9, seed=1, min_each=2)
    assert (len(train), len(val)) == (2, 3)


def test_epoch_steps_and_state_file():
    assert epoch_steps(10, 4) == 2 and epoch_steps(10, 4, drop_last=False) == 3
    assert epoch_steps(3, 8) == 1
    with pytest.raises(ValueError):
        epoch_steps(0, 4)
    assert state_file("out/model.pt").name == "model.pt.state"


def test_digest_sees_values_shapes_and_keys():
    a = {"w": torch.zeros(2, 2), "b": torch.ones(2)}
    assert digest(a) == digest({"b": torch.ones(2), "w": torch.zeros(2, 2)})
    assert digest(a) != digest({"w": torch.zeros(4), "b": torch.ones(2)})
    assert digest(np.arange(3)) != digest(np.arange(3) + 1)


class _EpochRun:
    """A regression on 10 items trained by ``fit_epochs`` (batches of 4, rest kept)."""

    def __init__(self):
        self.gen = seed_everything(0)
        self.x = torch.linspace(-1, 1, 10)[:, None]
        self.net = torch.nn.Linear(1, 1)
        self.opt = torch.optim.SGD(self.net.parameters(), lr=0.1)
        self.batches = []

    def step(self, step, batch):
        self.batches.append(batch)
        x = self.x[batch] + 0.01 * torch.randn(len(batch), 1, generator=self.gen)
        loss = (self.net(x) - 3 * x).pow(2).mean()
        self.opt.zero_grad()
        loss.backward()
        self.opt.step()
        return {"loss": float(loss.detach())}

    def validate(self):
        return {"val_error": float((self.net(self.x) - 3 * self.x).abs().mean())}

    def fit(self, epochs, state_path=None, on_epoch=None):
        return fit_epochs(
            self.net,
            self.opt,
            self.step,
            self.validate,
            epochs=epochs,
            items=10,
            batch_size=4,
            drop_last=False,
            generator=self.gen,
            score=lambda record: (-round(record["val_error"], 1), -record["train_loss"]),
            state_path=state_path,
            fingerprint={"run": 1},
            on_epoch=on_epoch,
        )


def test_fit_epochs_shuffles_each_epoch_like_a_hand_written_loop():
    run = _EpochRun()
    best = run.fit(3)
    gen = seed_everything(0)
    expected = []
    for _ in range(3):
        order = torch.randperm(10, generator=gen).tolist()
        expected += [order[0:4], order[4:8], order[8:10]]
        for batch in expected[-3:]:
            torch.randn(len(batch), 1, generator=gen)  # the step's own draws
    assert run.batches == expected
    assert [h["epoch"] for h in best.history] == [1.0, 2.0, 3.0]
    assert set(best.history[0]) == {"epoch", "train_loss", "val_error"}
    assert best.epoch in (1, 2, 3) and isinstance(best.score, tuple)


def test_fit_epochs_resumes_at_an_epoch_boundary(tmp_path):
    full = _EpochRun()
    full.fit(4)
    state = tmp_path / "state.pt"

    def interrupt(record):
        if record["epoch"] == 3:
            raise KeyboardInterrupt

    first = _EpochRun()
    with pytest.raises(KeyboardInterrupt):
        first.fit(4, state_path=state, on_epoch=interrupt)
    second = _EpochRun()
    best = second.fit(4, state_path=state)
    assert second.batches == full.batches[2 * 3 :]  # epochs 3 and 4 only
    assert torch.equal(second.net.weight, full.net.weight)
    assert [h["epoch"] for h in best.history] == [1.0, 2.0, 3.0, 4.0]
