"""Write tests/data/legacy_checkpoint.npz and legacy_expected.npz (run once, from xprop 0.1.0 at
commit 9484dd7, before the training loop became a package).

The checkpoint is fit's after 3 of 6 epochs of a small softmax net with Adam, a validation
fraction, shuffling and early stopping (patience 3): it holds epoch 2's best weights and one
epoch without improvement, so the resumed run trains epochs 4 and 5, stops there and restores
the best weights from the file. The expected file holds the data, the weights and the history of the
same run made without interruption. tests/test_train.py resumes the checkpoint with today's
code and compares, bit for bit.
"""

import json
import shutil
import sys
from pathlib import Path

import numpy as np

import xprop

HERE = Path(__file__).parent


def settings():
    rng = np.random.default_rng(20261203)
    X = rng.standard_normal((60, 5)).astype(np.float32)
    y = (X[:, 0] + 0.5 * X[:, 1] > 0).astype(np.int64) + (X[:, 2] > 1).astype(np.int64)
    kwargs = dict(batch_size=16, validation=0.25, shuffle=True, seed=7, progress=False, patience=3)
    return X, y, kwargs


def make_net():
    return xprop.MLP([5, 6, 3], activation="tanh", output="softmax", backend="numpy", dtype="float32", seed=3)


def main(out=HERE):
    X, y, kwargs = settings()
    whole = make_net()
    h = xprop.fit(whole, X, y, epochs=6, optimizer=xprop.Adam(lr=0.05), **kwargs)
    ckpt = Path(out) / "legacy_checkpoint.npz"
    part = make_net()
    xprop.fit(part, X, y, epochs=3, optimizer=xprop.Adam(lr=0.05), checkpoint=ckpt, **kwargs)
    np.savez(Path(out) / "legacy_expected.npz", X=X, y=y,
             history=np.array(json.dumps({k: getattr(h, k) for k in
                                          ("loss", "accuracy", "val_loss", "val_accuracy",
                                           "best_epoch", "stopped_early")})),
             **{f"param.{k}": v for k, v in whole.params.items()})
    print(h.loss, h.best_epoch, h.stopped_early)


if __name__ == "__main__":
    main(*sys.argv[1:])
