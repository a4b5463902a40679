"""The lookahead callback against its definition (airbench94's LookaheadState)."""
from types import SimpleNamespace

import torch
import torch.nn as nn

from imgclass.training.loop.callbacks import Lookahead


def test_lookahead_pulls_to_the_average_and_ends_on_it():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    t = SimpleNamespace(model=model, extra_state={}, step=0, done=0.0, last_epoch=False)
    la = Lookahead(every=5)
    la.before_fit(t)
    assert "lookahead.1.num_batches_tracked" not in t.extra_state      # integers are not averaged
    start = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():                                               # what some optimizer steps did
        for v in model.state_dict().values():
            if v.is_floating_point():
                v.add_(torch.randn_like(v))
    moved = {k: v.clone() for k, v in model.state_dict().items()}
    t.step, t.done = 4, 0.5
    la.after_step(t)                                                    # not a multiple of 5: nothing
    assert all(torch.equal(model.state_dict()[k], moved[k]) for k in moved)
    t.step = 5
    la.after_step(t)
    decay = 0.95 ** 5 * 0.5 ** 3
    for key, value in model.state_dict().items():
        if value.is_floating_point():
            expected = start[key] + (1 - decay) * (moved[key] - start[key])
            assert torch.allclose(value, expected, atol=1e-6)
            assert torch.equal(value, t.extra_state[f"lookahead.{key}"])   # live weights reset to the average
    average = {k: v.clone() for k, v in t.extra_state.items()}
    with torch.no_grad():
        model[0].weight.add_(1.0)
    la.before_validate(t)                                               # not the last epoch: nothing
    assert not torch.equal(model[0].weight, average["lookahead.0.weight"])
    t.last_epoch = True
    la.before_validate(t)                                               # the last epoch ends on the average
    assert torch.equal(model[0].weight, average["lookahead.0.weight"])


def test_lookahead_resumes_from_saved_average():
    model = nn.Linear(2, 2)
    saved = {"lookahead.weight": torch.full((2, 2), 7.0), "lookahead.bias": torch.zeros(2)}
    t = SimpleNamespace(model=model, extra_state=dict(saved), step=5, done=1.0, last_epoch=False)
    Lookahead().before_fit(t)                                           # keeps the checkpoint's average
    assert torch.equal(t.extra_state["lookahead.weight"], saved["lookahead.weight"])
    before = model.weight.detach().clone()
    Lookahead().after_step(t)
    assert torch.allclose(model.weight, 7.0 + (1 - 0.95 ** 5) * (before - 7.0), atol=1e-6)


def test_callbacks_declare_their_events():
    """issue 15: every callback subclasses Callback (events are its methods, named by the Event enum);
    anything else is refused when the loop is built, not when an event first reaches it."""
    import pytest
    from imgclass.training.loop.fit import Callback, Event, Trainer
    assert [e.value for e in Event] == ["before_fit", "before_epoch", "after_step", "before_validate",
                                        "after_epoch", "after_fit", "after_run", "run_failed"]
    assert all(callable(getattr(Callback, e.value)) for e in Event)

    class Strings:  # the old contract: a callable dispatching on event names
        def __call__(self, event, trainer):
            pass
    with pytest.raises(TypeError, match="must subclass .*Callback: Strings"):
        Trainer(model=None, optimizer=None, train_data=None, val_data=None, pre=None, augment=None, epochs=1,
                batch_size=1, peak_lr=0.1, warmup_epochs=0, label_smoothing=0, seed=0, device=None,
                callbacks=[Strings()])


def test_plateau_replay_cuts_after_patience_epochs_without_improvement():
    from imgclass.training.loop.callbacks import ReduceOnPlateau
    cb = ReduceOnPlateau(patience=2, factor=0.5)
    rows = lambda losses: [{"val_loss": v} for v in losses]  # noqa: E731
    assert cb.replay(rows([1.0, 0.9, 0.95])) == 1.0                 # one epoch without improvement: not yet
    assert cb.replay(rows([1.0, 0.9, 0.95, 0.96])) == 0.5           # two: cut
    assert cb.replay(rows([1.0, 0.9, 0.95, 0.96, 0.97, 0.98])) == 0.25  # the count starts again after a cut
    assert cb.replay(rows([1.0, 0.9, 0.95, 0.96, 0.97, 0.8, 0.81])) == 0.5
    assert cb.replay(rows([1.0, float("nan"), 1.0, 1.0])) == 0.5     # epochs without validation are skipped


def test_plateau_schedule_lowers_the_rate_in_training(tmp_path, monkeypatch):
    import imgclass
    from imgclass.training.loop.fit import Trainer
    from helpers import FAST, make_class_folders
    scripted = iter([1.0, 1.1, 1.2, 0.5, 0.6, 0.7, 0.8])
    monkeypatch.setattr(Trainer, "validate", lambda self: (next(scripted), 0.5))
    data = make_class_folders(tmp_path / "data", per_class=8)
    run = imgclass.train(data, out=str(tmp_path / "p"), **dict(FAST, epochs=7, schedule="plateau", warmup_epochs=0,
                                                                 lr=0.01, plateau_patience=2, plateau_factor=0.5))
    assert [round(r["lr"], 6) for r in run.history] == [0.01] * 3 + [0.005] * 3 + [0.0025]
    import pytest
    from imgclass.core.errors import UserError
    with pytest.raises(UserError, match="needs a validation split"):
        imgclass.train(data, out=str(tmp_path / "q"), **dict(FAST, schedule="plateau", val_split=0.0))


def test_ema_weights_are_the_average_they_claim(tmp_path):
    import imgclass
    from imgclass.training.loop.fit import Callback
    from safetensors.torch import load_file
    from helpers import FAST, make_class_folders

    class Record(Callback):
        order = -5  # sees the live weights before EMA swaps anything
        def __init__(self):
            self.start, self.steps = None, []
        def before_fit(self, t):
            self.start = {k: v.detach().clone() for k, v in t.model.state_dict().items() if v.is_floating_point()}
        def after_step(self, t):
            self.steps.append((t.step, {k: v.detach().clone() for k, v in t.model.state_dict().items()
                                        if v.is_floating_point()}))
    rec = Record()
    data = make_class_folders(tmp_path / "data", per_class=10)
    run = imgclass.train(data, out=str(tmp_path / "e"), callbacks=[rec], **dict(FAST, epochs=3, ema=0.8, lr=0.01))
    expected = {k: v.clone() for k, v in rec.start.items()}
    for step, live in rec.steps:
        decay = min(0.8, (1 + step) / (10 + step))
        for k in expected:
            expected[k] = expected[k] * decay + live[k] * (1 - decay)
    saved = load_file(str(run.dir / "checkpoints" / "last.safetensors"))
    keys = [k for k in expected if f"model.{k}" in saved]
    assert len(keys) == len(expected) >= 8                                 # weights, biases, BN statistics
    for k in keys:
        assert torch.allclose(saved[f"model.{k}"], expected[k], atol=1e-5), k   # the checkpoint holds the average
    assert not all(torch.allclose(saved[f"model.{k}"], rec.steps[-1][1][k], atol=1e-5) for k in keys)  # not live
    assert all(torch.equal(saved[f"extra.ema_live.{k}"], rec.steps[-1][1][k]) for k in keys)  # live kept to resume


def test_ema_replaces_a_recipes_lookahead_but_not_the_users(tmp_path):
    import pytest
    from imgclass.core.errors import UserError
    from imgclass.training.plan import plan_run
    from helpers import make_class_folders
    data = make_class_folders(tmp_path / "data", per_class=6)
    assert plan_run(data, model="fast").cfg.lookahead is True               # the fast recipe's own
    plan = plan_run(data, model="fast", ema=0.99)
    assert plan.cfg.lookahead is False and any("replaces" in n for n in plan.notes)
    with pytest.raises(UserError, match="--ema and --lookahead both average"):
        plan_run(data, model="fast", ema=0.99, lookahead=True)


def test_tensorboard_events_never_load_tensorflow(tmp_path):
    """The tflite extra installs TensorFlow; TensorBoard's writer would import it in every training process
    (seconds, a gigabyte, and a crash when PyTorch's Triton loads after it). Checked in a fresh process."""
    import subprocess
    import sys
    code = ("import sys; from pathlib import Path; from imgclass.training.loop.callbacks import TensorBoard; "
            "tb = TensorBoard(Path(sys.argv[1])); tb.before_fit(None); tb.writer.add_scalar('loss', 1.5, 1); "
            "tb.after_fit(None); print('tensorflow' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "False"
    # read back in another process: TensorBoard's reader imports TensorFlow where it is installed, which then stayed
    # in this test process (the Core ML test, which asserts TensorFlow's absence, caught it in `make test-other-cpu`)
    read = ("import sys; from tensorboard.backend.event_processing.event_accumulator import EventAccumulator; "
            "e = EventAccumulator(sys.argv[1]); e.Reload(); print([(s.step, s.value) for s in e.Scalars('loss')])")
    done = subprocess.run([sys.executable, "-c", read, str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "[(1, 1.5)]"
