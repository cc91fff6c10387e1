"""Distillation: the loss it adds, that it teaches, and that it leaves the teacher alone."""

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fxprune
from fxprune.errors import FxPruneError
from fxprune.training import Distillation, Trainer


def _net(width: int = 8) -> nn.Module:
    return nn.Sequential(nn.Linear(4, width), nn.BatchNorm1d(width), nn.ReLU(), nn.Linear(width, 3))


def test_loss_is_the_softened_kl_times_t_squared():
    torch.manual_seed(0)
    student, teacher = torch.randn(5, 3), torch.randn(5, 3)
    kd = Distillation(nn.Identity(), temperature=3.0, weight=1.0)
    p = F.softmax(teacher / 3, dim=1)
    expected = (p * (p.log() - F.log_softmax(student / 3, dim=1))).sum(1).mean() * 9
    torch.testing.assert_close(kd.loss(student, teacher), expected)
    assert float(kd.loss(teacher, teacher)) == pytest.approx(0.0, abs=1e-6)


def test_combine_mixes_task_and_distillation_by_weight():
    torch.manual_seed(0)
    teacher = nn.Linear(4, 3)
    x, student_out = torch.randn(6, 4), torch.randn(6, 3)
    task = torch.tensor(2.0)
    kd = Distillation(teacher, temperature=2.0, weight=0.25)
    term = Distillation(teacher, temperature=2.0, weight=1.0).loss(student_out, teacher(x))
    torch.testing.assert_close(kd.combine(task, x, student_out), 0.75 * task + 0.25 * term)
    assert float(Distillation(teacher, weight=0.0).combine(task, x, student_out)) == 2.0


def test_trainer_fits_the_student_to_the_teacher_and_leaves_the_teacher_alone():
    torch.manual_seed(0)
    teacher = _net(16).train()
    before = copy.deepcopy(teacher.state_dict())
    student = _net(4)
    x = torch.randn(256, 4)
    data = [(x[i:i + 32], torch.randint(0, 3, (32,))) for i in range(0, 256, 32)]  # labels are noise

    def gap() -> float:
        student.eval()
        with torch.no_grad():
            teacher.eval()
            t = F.softmax(teacher(x), 1)
            teacher.train()
            return float((F.softmax(student(x), 1) - t).abs().mean())

    start = gap()
    kd = Distillation(teacher, temperature=1.0, weight=1.0)  # labels count for nothing: only the teacher teaches
    Trainer(student, torch.optim.Adam(student.parameters(), lr=0.02), distill=kd, progress=False).fit(data, None, 30)
    assert gap() < 0.5 * start
    assert teacher.training  # its mode is given back
    for name, value in teacher.state_dict().items():  # eval mode: its BatchNorm statistics did not move
        assert torch.equal(value, before[name]), name
    assert all(p.grad is None for p in teacher.parameters())


def test_fine_tunes_a_finalized_model_from_its_dense_teacher():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                          nn.Flatten(), nn.Linear(8, 4))
    x = torch.randn(2, 3, 8, 8)
    pm = fxprune.prepare(model, x)
    fxprune.prune_by_importance(pm, 0.5)
    small = fxprune.finalize(pm)
    data = [(torch.randn(8, 3, 8, 8), torch.randint(0, 4, (8,))) for _ in range(2)]
    history = Trainer(small, torch.optim.SGD(small.parameters(), lr=0.01), distill=Distillation(model),
                      progress=False).fit(data, None, 1)
    assert torch.isfinite(torch.tensor(history[-1]["train_loss"]))


@pytest.mark.parametrize("kwargs, words", [({"temperature": 0.0}, "temperature"), ({"weight": 1.5}, "weight")])
def test_bad_settings_are_refused(kwargs, words):
    with pytest.raises(FxPruneError, match=words):
        Distillation(nn.Identity(), **kwargs)


def test_a_teacher_of_another_task_is_refused():
    kd = Distillation(nn.Linear(4, 5))
    with pytest.raises(FxPruneError, match=r"\(2, 3\).*\(2, 5\)"):
        kd.combine(torch.tensor(1.0), torch.randn(2, 4), torch.randn(2, 3))
