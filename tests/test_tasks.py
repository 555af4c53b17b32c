import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from bitsound.train.tasks import ClassificationTask, DistillationTask


def test_distillation_loss_matches_the_formula():
    torch.manual_seed(0)
    student, teacher = nn.Linear(4, 3), nn.Linear(4, 3)
    x, y = torch.randn(8, 4), torch.randint(0, 3, (8,))
    task = DistillationTask(teacher, temperature=2.0, alpha=0.7)
    loss = task.training_loss(student, x, y, torch.Generator())
    s, t = student(x), teacher(x)
    p_t = F.softmax(t / 2, dim=-1)
    kl = (p_t * (p_t.log() - F.log_softmax(s / 2, dim=-1))).sum(-1).mean() * 4
    expected = 0.7 * kl + 0.3 * F.cross_entropy(s, y)
    torch.testing.assert_close(loss, expected)
    loss.backward()
    assert all(p.grad is None for p in teacher.parameters())  # the teacher is frozen


def test_distilling_from_itself_leaves_only_the_label_term():
    net = nn.Linear(4, 3)
    x, y = torch.randn(8, 4), torch.randint(0, 3, (8,))
    task = DistillationTask(net, alpha=0.5)
    loss = task.training_loss(net, x, y, torch.Generator())
    torch.testing.assert_close(loss, 0.5 * F.cross_entropy(net(x), y))


def test_mixup_loss_is_the_mixed_cross_entropy():
    net = nn.Linear(4, 3)
    x, y = torch.randn(8, 4), torch.randint(0, 3, (8,))
    task = ClassificationTask(mixup_alpha=0.4)
    loss = task.training_loss(net, x, y, torch.Generator().manual_seed(5))
    mixed, lam, perm = task.mix(x, torch.Generator().manual_seed(5))
    assert 0 < lam < 1 and not math.isnan(lam)
    logits = net(mixed)
    expected = lam * F.cross_entropy(logits, y) + (1 - lam) * F.cross_entropy(logits, y[perm])
    torch.testing.assert_close(loss, expected)


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_plain_classification_is_cross_entropy(smoothing):
    net = nn.Linear(4, 3)
    x, y = torch.randn(8, 4), torch.randint(0, 3, (8,))
    loss = ClassificationTask(label_smoothing=smoothing).training_loss(net, x, y, torch.Generator())
    torch.testing.assert_close(loss, F.cross_entropy(net(x), y, label_smoothing=smoothing))


def test_split_placeholder_names_each_folds_own_teacher_and_start():
    from bitsound.experiment import for_split
    from bitsound.recipes import load_recipe

    recipe = load_recipe("digits-xnor", overrides=[
        "train.task=distillation", "train.distill={teacher: 'runs/t/cv-{split}/model.pt'}",
        "train.init_from=runs/s/cv-{split}/model.pt"])
    fold = for_split(recipe, "george")
    assert fold.train.distill.teacher == "runs/t/cv-george/model.pt"
    assert fold.train.init_from == "runs/s/cv-george/model.pt"
    assert recipe.train.distill.teacher == "runs/t/cv-{split}/model.pt"  # the recipe is unchanged
    plain = load_recipe("digits-xnor")
    assert for_split(plain, "george") is plain
