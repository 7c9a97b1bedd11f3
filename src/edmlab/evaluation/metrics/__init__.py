"""Sample-quality metrics: FID/KID/IS with Inception-v3 (torch-fidelity), a digits-classifier metric for the
embedded 8×8 digits, and distances to known low-dimensional distributions."""
from edmlab.evaluation.metrics.digits import (
    DigitsMetric,
    DigitsScores,
    class_balance,
    load_digits_classifier,
    manifold_precision_recall,
)
from edmlab.evaluation.metrics.frechet import (
    feature_statistics,
    frechet_distance,
    frechet_distance_to_features,
    load_statistics,
    save_statistics,
)
from edmlab.evaluation.metrics.inception import (
    InceptionWeightsError,
    fid_from_features,
    inception_features,
    inception_outputs,
    inception_score_from_logits,
    kid_from_features,
)
from edmlab.evaluation.metrics.mixture import mmd, sliced_wasserstein

__all__ = [
    "feature_statistics", "frechet_distance", "frechet_distance_to_features", "save_statistics", "load_statistics",
    "InceptionWeightsError", "inception_features", "inception_outputs", "fid_from_features",
    "kid_from_features", "inception_score_from_logits",
    "DigitsMetric", "DigitsScores", "load_digits_classifier", "manifold_precision_recall", "class_balance",
    "sliced_wasserstein", "mmd",
]
