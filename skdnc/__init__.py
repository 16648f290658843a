"""skdnc: AGOP feature learning (RFM, Deep RFM) and deep neural collapse measurement."""

from skdnc._rfm import RFMClassifier, RFMRegressor

__version__ = "0.1.0.dev0"

__all__ = [
    "RFMClassifier",
    "RFMRegressor",
    "__version__",
]
