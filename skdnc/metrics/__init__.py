"""Neural-collapse metrics (NC1 to NC5, CDNV, GNC2, UNC3, Gram/label correlation)
and scorers.

The functions compute in float64 on features of any float dtype (NumPy, pandas,
torch) and labels of any type; :class:`NeuralCollapseScorer` measures them inside
a pipeline, and :func:`make_collapse_scorer` turns them into ``scoring=``
callables for cross-validation; :class:`VocabularyAccumulator` streams them at
vocabulary scale (token-level collapse of language models). :data:`STAGES` and
:data:`METRIC_NAMES` are the one vocabulary of stage and metric names that every
output of skdnc uses.
"""

from skdnc.metrics._collapse import (
    METRIC_NAMES,
    STAGES,
    ClassStatistics,
    cdnv_score,
    class_statistics,
    gram_label_correlation,
    nc1_score,
    nc2_score,
    neural_collapse_report,
)
from skdnc.metrics._frame import history_to_frame
from skdnc.metrics._readout import nc3_score, nc4_score
from skdnc.metrics._scorer import (
    NeuralCollapseScorer,
    gram_label_correlation_scorer,
    make_collapse_scorer,
    neg_cdnv_scorer,
    neg_nc1_pinv_scorer,
    neg_nc1_scorer,
    neg_nc2_scorer,
    neg_nc3_scorer,
    neg_nc4_scorer,
)
from skdnc.metrics._streaming import CollapseAccumulator
from skdnc.metrics._vocab import VocabularyAccumulator, token_samples

__all__ = [
    "METRIC_NAMES",
    "STAGES",
    "ClassStatistics",
    "CollapseAccumulator",
    "NeuralCollapseScorer",
    "VocabularyAccumulator",
    "cdnv_score",
    "class_statistics",
    "gram_label_correlation",
    "gram_label_correlation_scorer",
    "history_to_frame",
    "make_collapse_scorer",
    "nc1_score",
    "nc2_score",
    "nc3_score",
    "nc4_score",
    "neg_cdnv_scorer",
    "neg_nc1_pinv_scorer",
    "neg_nc1_scorer",
    "neg_nc2_scorer",
    "neg_nc3_scorer",
    "neg_nc4_scorer",
    "neural_collapse_report",
    "token_samples",
]
