"""The output kinds (xprop.heads): what a prediction, a correct answer and a target are."""

import numpy as np
import pytest

import xprop
from xprop.heads import get_head


def test_classes_head_counts_argmax_agreements():
    A = np.array([[0.1, 0.7, 0.2], [0.5, 0.3, 0.2], [0.2, 0.2, 0.6]])
    Y = np.eye(3)[[1, 2, 2]]                      # right, wrong, right
    head = get_head("softmax")
    assert int(head.correct(np, A, Y)) == 2
    assert head.predict(np, A).tolist() == [1, 0, 2]
    assert head.outputs_per_example(3) == 1 and head.takes_labels and head.counts


def test_binary_head_counts_every_output_at_one_half():
    A = np.array([[0.9, 0.2], [0.4, 0.6]])
    Y = np.array([[1.0, 1.0], [0.0, 1.0]])        # 3 of the 4 decisions right: 0.2 is a "no"
    head = get_head("sigmoid")
    assert int(head.correct(np, A, Y)) == 3
    assert int(head.correct(np, A, np.array([[1.0, 0.0], [0.0, 1.0]]))) == 4
    assert head.predict(np, A).tolist() == [[1, 0], [0, 1]]
    assert head.outputs_per_example(2) == 2 and not head.takes_labels


@pytest.mark.parametrize("output", ["identity", "tanh", "relu"])
def test_value_heads_have_no_accuracy(output):
    head = get_head(output)
    A = np.ones((2, 2))
    assert head.correct(np, A, A) is None and not head.counts
    assert head.predict(np, A) is A


@pytest.mark.parametrize("output, sizes", [("softmax", [3, 4, 3]), ("sigmoid", [3, 4, 2]),
                                           ("identity", [3, 4, 2])])
def test_fit_accuracy_and_predict_follow_the_head(output, sizes):
    rng = np.random.default_rng(0)
    net = xprop.MLP(sizes, output=output, backend="numpy", dtype="float64", seed=0)
    X = rng.standard_normal((20, 3))
    Y = net.head.example_targets(rng, 20, sizes[-1])
    h = xprop.fit(net, X, Y, epochs=1, batch_size=20, optimizer="sgd", shuffle=False, progress=False)
    A, _ = net.forward(X)
    assert np.array_equal(net.predict(X), net.head.predict(np, A))
    if not net.head.counts:
        assert h.accuracy == [None]
    else:
        # after the one step: accuracy of the weights *before* it, so compare on a second pass
        r = xprop.evaluate(net, X, Y)
        rows = np.eye(sizes[-1])[Y] if Y.ndim == 1 else Y
        expected = int(net.head.correct(np, A, rows)) / (20 * net.head.outputs_per_example(sizes[-1]))
        assert r["accuracy"] == expected
