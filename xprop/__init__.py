"""xprop: the backpropagation derivation as running, checked code on NumPy or CuPy.

>>> import xprop
>>> net = xprop.MLP([4, 8, 3], activation="tanh", output="softmax", backend="numpy")
>>> out, cache = net.forward(X)          # cache: A0, Z1, A1, Z2, A2
>>> grads = net.backward(cache, y)       # dW1, db1, dW2, db2
"""

from .backend import BackendError, backends, get_xp, to_numpy
from .gradcheck import compare_backends, gradcheck
from .datasets import load_data, load_digits
from .io import ModelFileError, load
from .network import MLP
from .optim import SGD, Adam
from .train import History, TrainingDiverged, evaluate, fit
from .train.many import fit_many

from .version import __version__


def __getattr__(name):
    """``xprop.distributed`` on first use: ``import xprop`` does not load the MPI package."""
    if name == "distributed":
        import importlib  # noqa: PLC0415

        return importlib.import_module(".distributed", __name__)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

__all__ = [
    "Adam",
    "BackendError",
    "History",
    "MLP",
    "ModelFileError",
    "SGD",
    "TrainingDiverged",
    "evaluate",
    "fit",
    "fit_many",
    "load",
    "load_data",
    "load_digits",
    "backends",
    "compare_backends",
    "get_xp",
    "gradcheck",
    "to_numpy",
    "__version__",
]
