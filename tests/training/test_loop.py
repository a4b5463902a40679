"""The loop against a clock (issue 28, item 3): on a machine slower or faster than the budget planned, a budget
run ends with its schedule annealed and records no phantom epoch. The clock is a fake one the steps advance, so
the test is exact and takes no time."""
import pytest
import torch

from imgclass.data.augment import BatchAugment
from imgclass.data.images import ImageTensors
from imgclass.data.preprocess import Preprocessing
from imgclass.models import create_model
from imgclass.training.loop import fit as loop_module
from imgclass.training.loop.fit import Callback, Trainer

STEPS_PER_EPOCH, PLANNED_EPOCHS = 4, 10


class FakeTime:
    """time.perf_counter for the loop: it moves only when the fake work below moves it."""

    def __init__(self):
        self.now = 1000.0

    def perf_counter(self):
        return self.now


class Work(Callback):
    """Each step costs `step` seconds, each epoch's validation and checkpoints `between` seconds; records the
    share of the schedule (done) and the learning rate of every step."""

    def __init__(self, clock, step, between):
        self.clock, self.step, self.between, self.steps = clock, step, between, []

    def after_step(self, t):
        self.clock.now += self.step
        self.steps.append((t.done, t.optimizer.param_groups[0]["lr"]))

    def before_validate(self, t):
        self.clock.now += self.between


def trainer(callbacks, deadline, schedule):
    torch.manual_seed(0)
    model = create_model("mlp", num_classes=2, img_size=4, width=4, depth=1, norm=False)
    n = 8 * STEPS_PER_EPOCH
    images = torch.randint(0, 256, (n, 3, 4, 4), dtype=torch.uint8)
    data = ImageTensors(images, torch.arange(n) % 2, [""] * n)
    return Trainer(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.1), train_data=data,
                   val_data=ImageTensors(images[:8], torch.arange(8) % 2, [""] * 8),
                   pre=Preprocessing(img_size=4, mean=(0, 0, 0), std=(1, 1, 1)), augment=BatchAugment("none"),
                   epochs=PLANNED_EPOCHS, batch_size=8, peak_lr=0.1, warmup_epochs=0, label_smoothing=0, seed=0,
                   device=torch.device("cpu"), callbacks=callbacks, deadline=deadline, schedule=schedule)


@pytest.mark.parametrize("schedule", ["cosine", "onecycle"])
@pytest.mark.parametrize("speed", [0.6, 1.0, 1.08, 1.3, 2.0])
def test_a_budget_run_lands_its_schedule_at_any_speed(monkeypatch, schedule, speed):
    """The budget planned 10 epochs of 4 one-second steps and 1.5 s of validation each; the machine runs the
    steps `speed` times as long. Whatever the speed: the last step is at the end of the schedule (its learning
    rate the schedule's final value), every recorded epoch has steps, the plan recorded is what ran, and the run
    ends within 3% of its deadline (issue 41: slower, the plan is cut to the steps that fit, its last epoch
    partial; faster, it grows, up to GROWTH_LIMIT times the planned epochs)."""
    clock = FakeTime()
    monkeypatch.setattr(loop_module, "time", clock)
    work = Work(clock, step=1.0 * speed, between=1.5)
    budget = PLANNED_EPOCHS * (STEPS_PER_EPOCH * 1.0 + 1.5)
    t = trainer([work], deadline=clock.now + budget, schedule=schedule)
    t.fit()
    last_done, last_lr = work.steps[-1]
    steps = t.total_steps                                     # the schedule's steps, as (re)planned
    assert t.step == steps == len(work.steps)
    assert last_done >= (steps - 1) / steps - 1e-9, (speed, last_done)   # the last step is the schedule's last
    assert last_lr == pytest.approx(loop_module.lr_at(last_done, 0.0, 0.1, schedule))
    assert [row["epoch"] for row in t.history] == list(range(1, t.epoch + 1))
    assert all(row["train_loss"] > 0 for row in t.history)                    # no phantom epoch
    used = clock.now - 1000.0
    assert 0.97 * budget <= used <= budget + speed, (speed, used, budget)      # within 3% of the deadline
    assert t.plan.get("epochs", PLANNED_EPOCHS) == t.epochs == t.epoch
    if speed > 1.0:                                                             # slower: the plan was cut to fit
        assert t.epoch <= PLANNED_EPOCHS and t.stop_reason.startswith("time budget: ")
        assert t.plan["epochs_planned"] == PLANNED_EPOCHS and steps < PLANNED_EPOCHS * STEPS_PER_EPOCH
    elif speed < 1.0:                                                           # faster: it grew
        assert PLANNED_EPOCHS < t.epoch <= loop_module.GROWTH_LIMIT * PLANNED_EPOCHS
    else:
        assert t.epoch == PLANNED_EPOCHS and "steps" not in t.plan


def test_a_slowdown_no_longer_shortens_the_run_for_good(monkeypatch):
    """issue 41, item 4: three epochs slowed to half speed by another process cut the plan, and the plan stayed cut
    (a CIFAR run ended 2.5 minutes early). Now the plan grows back once the epochs are fast again, and the run ends
    within 3% of its deadline with its schedule annealed."""
    clock = FakeTime()
    monkeypatch.setattr(loop_module, "time", clock)

    class Slowed(Work):
        def after_step(self, t):
            self.step = 2.0 if 1 <= t.epoch <= 3 else 1.0
            super().after_step(t)
    work = Slowed(clock, step=1.0, between=1.5)
    budget = PLANNED_EPOCHS * (STEPS_PER_EPOCH * 1.0 + 1.5)
    t = trainer([work], deadline=clock.now + budget, schedule="cosine")
    cuts = []
    real = t._fit_plan_to_clock

    def replanned() -> bool:
        changed = real()
        if changed:
            cuts.append(t.total_steps)
        return changed
    monkeypatch.setattr(t, "_fit_plan_to_clock", replanned)
    t.fit()
    assert cuts and min(cuts) < max(cuts) and cuts[-1] > min(cuts)        # cut while slow, grown back after
    assert 0.97 * budget <= clock.now - 1000.0 <= budget + 1.0
    assert t.step == t.total_steps and work.steps[-1][0] >= (t.step - 1) / t.step - 1e-9


@pytest.mark.parametrize("cached_inputs", [False, True])
def test_a_slower_validation_than_planned_moves_the_deadline_earlier(monkeypatch, cached_inputs):
    """issue 41, item 3: the final scoring's reserve re-measured from validation passes. Reserved 2 s, at 3 s of
    scoring per second of validation: validation passes of 1 s (from the second on: the first pays one-off costs)
    need 3 s, then 2 s passes need 6 s, so the deadline moves 4 s earlier in all and the run ends there; faster
    passes after the first timed one never move it later; the top stage (validation on cached activations) keeps
    its deadline."""
    clock = FakeTime()
    monkeypatch.setattr(loop_module, "time", clock)
    work = Work(clock, step=1.0, between=0.0)
    budget = PLANNED_EPOCHS * (STEPS_PER_EPOCH * 1.0 + 1.0)
    t = trainer([work], deadline=clock.now + budget, schedule="cosine")
    t.scoring, t.cached_inputs = (2.0, 3.0), cached_inputs
    passes = iter([5.0, 1.0, 1.0, 0.5, 2.0] + [0.5] * 50)  # the first (one-off costs) must not count

    def validate():
        clock.now += next(passes)
        return 0.5, 0.5
    monkeypatch.setattr(t, "validate", validate)
    t.fit()
    used, moved = clock.now - 1000.0, 0.0 if cached_inputs else 4.0
    assert t.scoring == ((2.0, 3.0) if cached_inputs else (6.0, 3.0))
    assert t.deadline == pytest.approx(1000.0 + budget - moved)
    assert 0.97 * (budget - moved) <= used <= budget - moved + 2.0, (used, budget, moved)  # (2 s: one validation)


def test_a_faster_first_timed_validation_gives_the_reserve_back_to_training(monkeypatch):
    """The first timed validation pass replaces the plan's reserve either way: reserved 2 s, at 3 s of scoring per
    second of validation, passes of 0.5 s need 1.5 s, so the deadline moves 0.5 s later and the run trains up to it
    (a mall run kept 53-62 s and ended 42 s before its 5-minute budget when the reserve could only grow)."""
    clock = FakeTime()
    monkeypatch.setattr(loop_module, "time", clock)
    work = Work(clock, step=1.0, between=0.0)
    budget = PLANNED_EPOCHS * (STEPS_PER_EPOCH * 1.0 + 1.0)
    t = trainer([work], deadline=clock.now + budget, schedule="cosine")
    t.scoring = (2.0, 3.0)
    passes = iter([5.0] + [0.5] * 50)

    def validate():
        clock.now += next(passes)
        return 0.5, 0.5
    monkeypatch.setattr(t, "validate", validate)
    t.fit()
    assert t.scoring == (1.5, 3.0)
    assert t.deadline == pytest.approx(1000.0 + budget + 0.5)
    assert t.time_allowed == pytest.approx(budget + 0.5)


def test_long_recipe_only_when_the_budget_fits_it_and_the_user_left_augmentation_alone():
    from imgclass.models import get_spec
    from imgclass.training.stages.budget import long_recipe
    fast = get_spec("fast")
    assert long_recipe(fast, 45, frozenset()) == {"translate": 1 / 8, "cutout": 0.375}
    assert long_recipe(fast, 39, frozenset()) == {}                      # the 10-epoch recipe's regime (measured)
    assert long_recipe(fast, 45, frozenset({"translate"})) == {}         # the user's augmentation stands whole
    assert long_recipe(get_spec("cnn"), 45, frozenset()) == {}           # no long recipe registered
