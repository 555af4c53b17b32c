import numpy as np
import pytest
from sklearn import metrics as sk

from bitsound.metrics import classification_report


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_metrics_match_scikit_learn(seed):
    rng = np.random.default_rng(seed)
    n, k = 200, 5
    y = rng.integers(0, k, n)
    logits = rng.normal(size=(n, k)) + 2 * np.eye(k)[y]
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    pred = probs.argmax(1)
    report = classification_report(y, probs, labels=list("abcde"))
    assert report["n"] == n
    assert report["accuracy"] == pytest.approx(sk.accuracy_score(y, pred))
    assert report["balanced_accuracy"] == pytest.approx(sk.balanced_accuracy_score(y, pred))
    assert report["macro_f1"] == pytest.approx(sk.f1_score(y, pred, average="macro"))
    assert report["log_loss"] == pytest.approx(sk.log_loss(y, probs, labels=range(k)), rel=1e-6)
    np.testing.assert_array_equal(report["confusion_matrix"],
                                  sk.confusion_matrix(y, pred, labels=range(k)))
    recalls = sk.recall_score(y, pred, average=None, labels=range(k))
    assert list(report["per_class_recall"].values()) == pytest.approx(list(recalls))


def test_subset_of_labels_ignores_absent_classes():
    # Only classes 0 and 1 occur; class 2 is a label of the model but absent from the data.
    y = np.array([0, 0, 1, 1])
    probs = np.array([[.9, .05, .05], [.1, .1, .8], [.2, .7, .1], [.1, .8, .1]])
    report = classification_report(y, probs, labels=["a", "b", "c"])
    assert report["accuracy"] == 0.75
    assert report["balanced_accuracy"] == pytest.approx((0.5 + 1.0) / 2)
    assert report["per_class_recall"]["c"] is None
