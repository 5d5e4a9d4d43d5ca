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

__version__ = "0.1.0"

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
