"""The model families behind one interface, and each family's exact arithmetic on plain arrays.

Every family is a scikit-learn classifier of one shape, which is what ``trainedmodel.pkl`` holds
(so a fresh interpreter with only the libraries loads it, and the classic functions get a
classifier with ``predict`` and ``predict_proba``)::

    FixedThresholdClassifier(Pipeline([("log_counts", log1p), ("scale", StandardScaler()),
                                       ..., ("classifier", <the family's classifier>)]))

- ``linear``: a logistic regression on the standardised log counts (the classic model, unchanged);
- ``additive``: a cubic spline per feature on the standardised log counts, then a logistic
  regression, so each feature's effect is a smooth curve that can be drawn;
- ``boosted``: gradient-boosted trees (LightGBM), early-stopped on a tenth of the rows.

A ``RiskModel`` wraps the fitted classifier with the family's own arithmetic: probabilities
without scikit-learn's per-call validation (the API's fast path), and each row's log-odds split
into per-feature contributions relative to one reference client, the average training client
(every standardised log count 0), whose log-odds is the baseline. The contributions are the
exact Shapley values of the log-odds function against that client: for the linear and additive
families each feature's own term, for the trees the eight evaluations of three features, so
``baseline_log_odds + contributions.sum(axis=1)`` is the log-odds of the probability served,
for every family, to rounding. ``risk_model_for`` recognises a loaded classifier's family and
checks the arithmetic against the classifier's own ``predict_proba`` on probe rows before it is
trusted; a classifier of any other shape has no ``RiskModel`` (it serves, but is not explained).

For the API's one-record requests, ``one_row_scorer`` gives the linear family's arithmetic on one row in
Python floats, checked on probe rows to give ``score``'s numbers bit for bit.
"""

from __future__ import annotations

import copy
import itertools
import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

import numpy as np
from scipy.special import expit

from riskwatch.core.config import MODEL_FAMILIES, ModelSettings
from riskwatch.core.errors import PipelineError
from riskwatch.core.imports import sklearn_without_pandas
from riskwatch.core.schema import FEATURES

with sklearn_without_pandas():
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import precision_recall_curve
    from sklearn.model_selection import FixedThresholdClassifier
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import FunctionTransformer, SplineTransformer, StandardScaler

LINEAR, ADDITIVE, BOOSTED = MODEL_FAMILIES  # simplest first: a tie goes to the earlier one

SPLINE_KNOTS = 10
SPLINE_C = 10.0  # the spline coefficients' penalty is light: ten knots per feature need little smoothing
BOOSTED_PARAMETERS: dict[str, Any] = {
    "learning_rate": 0.1,
    "num_leaves": 15,
    "min_child_samples": 40,
    "n_estimators": 1000,  # an upper bound: early stopping picks the number of trees
    "subsample_for_bin": 200_000,
    "verbose": -1,
    "random_state": 0,
}
EARLY_STOPPING_ROUNDS = 30
VALIDATION_SHARE = 0.1
PROBE_ROWS = np.array(
    [[0, 0, 1], [1, 10, 2], [37, 412, 18], [250, 3000, 90], [5000, 60000, 800], [0, 120000, 4000], [44507, 0, 1]],
    dtype=np.float64,
)
# Random rows of counts up to ten million on which the one-row arithmetic must equal numpy's: fused and plain
# multiply-adds give different sums for about two rows in five.
RANDOM_PROBE_ROWS = 256
# Dekker's product: a float times 2**27 + 1 splits it into two halves whose products are exact, when neither factor
# is so large that this overflows nor their product so small that its error falls below the smallest float.
VELTKAMP_SPLITTER = 2.0**27 + 1
EXACT_SPLIT_LOW, EXACT_SPLIT_HIGH = 2.0**-400, 2.0**400


@dataclass(frozen=True)
class FamilyDescription:
    """What ``trainedmodel.json`` says about the fitted family: its name, in words, and its parameters."""

    family: str
    text: str
    coefficients: dict[str, float] | None  # the linear family's, per feature
    intercept: float | None
    trees: int | None  # the boosted family's, after early stopping


class RiskModel(Protocol):
    """A fitted model of one family: probabilities, labels and the log-odds split per feature."""

    family: ClassVar[str]
    estimator: Any  # the fitted scikit-learn classifier (what trainedmodel.pkl holds)
    threshold: float

    @classmethod
    def fit(
        cls,
        features: np.ndarray,
        labels: np.ndarray,
        settings: ModelSettings,
        sample_weight: np.ndarray | None = None,
    ) -> RiskModel: ...

    @property
    def baseline_log_odds(self) -> float: ...

    @property
    def typical_counts(self) -> np.ndarray: ...

    def standardise(self, features: np.ndarray) -> np.ndarray: ...

    def log_odds(self, features: np.ndarray) -> np.ndarray: ...

    def contributions(self, features: np.ndarray) -> np.ndarray: ...

    def score(self, features: np.ndarray) -> tuple[np.ndarray, np.ndarray]: ...

    def predict_proba(self, features: np.ndarray) -> np.ndarray: ...

    def predict(self, features: np.ndarray) -> np.ndarray: ...

    def describe(self) -> FamilyDescription: ...


class FittedModel:
    """What every family shares: the log1p-and-standardise step, the threshold, and probabilities from log-odds."""

    family: ClassVar[str] = ""

    def __init__(self, estimator: Any, mean: np.ndarray, scale: np.ndarray, threshold: float):
        """The arithmetic of ``estimator``, a fitted classifier of this family's shape; see ``risk_model_for``."""
        self.estimator: Any = estimator
        self.mean: np.ndarray = np.asarray(mean, dtype=np.float64)
        self.scale: np.ndarray = np.asarray(scale, dtype=np.float64)
        self.threshold = threshold

    @classmethod
    def fit(
        cls,
        features: np.ndarray,
        labels: np.ndarray,
        settings: ModelSettings,
        sample_weight: np.ndarray | None = None,
    ) -> RiskModel:
        """This family fitted on these rows (each weighted by ``sample_weight``, if given), with its threshold."""
        return fit_risk_model(cls.family, features, labels, settings, sample_weight)

    @property
    def typical_counts(self) -> np.ndarray:
        """The counts of the average training client, back from the log scale: ``expm1`` of the scaler's mean."""
        return np.asarray(np.expm1(self.mean), dtype=np.float64)

    def standardise(self, features: np.ndarray) -> np.ndarray:
        """The standardised log1p counts (a new array): 0 is the average training client."""
        scaled = np.log1p(features)
        scaled -= self.mean
        scaled /= self.scale
        return np.asarray(scaled, dtype=np.float64)

    @property
    def baseline_log_odds(self) -> float:
        """The log-odds of exit of the average training client (every standardised count 0)."""
        return float(self.standardised_log_odds(np.zeros((1, len(FEATURES))))[0])

    def standardised_log_odds(self, standardised: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def log_odds(self, features: np.ndarray) -> np.ndarray:
        """Each row's log-odds of exit."""
        return self.standardised_log_odds(self.standardise(features))

    def contributions(self, features: np.ndarray) -> np.ndarray:
        """Each feature's share of each row's log-odds relative to the average training client (rows x features).

        ``baseline_log_odds`` plus a row's contributions is its log-odds, ``log(p / (1 - p))``.
        """
        return shapley_contributions(self.standardised_log_odds, self.standardise(features))

    def score(self, features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(exit probabilities, labels 0/1) for float64 features, one row per client."""
        probabilities = expit(self.log_odds(features))
        return probabilities, (probabilities >= self.threshold).astype(np.int64)

    def predict_proba(self, features: np.ndarray) -> np.ndarray:
        """scikit-learn's shape: one column per class, exit second."""
        probabilities = expit(self.log_odds(np.asarray(features, dtype=np.float64)))
        return np.column_stack([1 - probabilities, probabilities])

    def predict(self, features: np.ndarray) -> np.ndarray:
        return self.score(np.asarray(features, dtype=np.float64))[1]

    def describe(self) -> FamilyDescription:
        raise NotImplementedError


class LinearRiskModel(FittedModel):
    """log1p, standardise, logistic regression: each contribution is a coefficient times a standardised count.

    scikit-learn's ``predict_proba`` spends most of its time on input validation; for one row
    that is ~20 times the arithmetic. The same operations in the same order give identical
    numbers, which ``risk_model_for`` checks on probe rows.
    """

    family = LINEAR

    def __init__(self, estimator: Any, mean: np.ndarray, scale: np.ndarray, threshold: float):
        super().__init__(estimator, mean, scale, threshold)
        classifier = estimator.estimator.named_steps["classifier"]
        self.coef_t: np.ndarray = np.asarray(classifier.coef_.T)
        self.intercept: np.ndarray = np.asarray(classifier.intercept_)

    @property
    def baseline_log_odds(self) -> float:
        return float(self.intercept[0])

    def contributions(self, features: np.ndarray) -> np.ndarray:
        return np.asarray(self.standardise(features) * self.coef_t.reshape(-1), dtype=np.float64)

    def log_odds(self, features: np.ndarray) -> np.ndarray:
        return np.asarray(self.baseline_log_odds + self.contributions(features).sum(axis=1), dtype=np.float64)

    def standardised_log_odds(self, standardised: np.ndarray) -> np.ndarray:
        return np.asarray(
            self.baseline_log_odds + (standardised * self.coef_t.reshape(-1)).sum(axis=1), dtype=np.float64
        )

    def score(self, features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        # The pipeline's own order of operations, so the numbers equal predict_proba's exactly; in place where it
        # can be, as numpy's cost per call is most of the time for the API's one-row requests.
        scaled = np.log1p(features)
        scaled -= self.mean
        scaled /= self.scale
        scores = scaled @ self.coef_t
        scores += self.intercept
        probabilities = expit(scores, out=scores).reshape(-1)
        return probabilities, (probabilities >= self.threshold).astype(np.int64)

    def predict_proba(self, features: np.ndarray) -> np.ndarray:
        probabilities = self.score(np.asarray(features, dtype=np.float64))[0]
        return np.column_stack([1 - probabilities, probabilities])

    def describe(self) -> FamilyDescription:
        return FamilyDescription(
            family=LINEAR,
            text="LogisticRegression on log1p-scaled, standardised counts",
            coefficients=dict(zip(FEATURES, np.round(self.coef_t.reshape(-1), 6).tolist(), strict=True)),
            intercept=round(self.baseline_log_odds, 6),
            trees=None,
        )


def fused_multiply_add(x: float, y: float, z: float) -> float:
    """``x * y + z`` rounded once, as a fused multiply-add instruction computes it (Python 3.11 has no ``math.fma``),
    for a finite ``z``: the product split exactly into two floats (Dekker's product), the three summed with one
    rounding by ``math.fsum``; outside the range where that split is exact, the exact value in integers (a float's
    ratio has a power of two below) and one correctly rounded division. ValueError for a NaN, OverflowError past
    the floats."""
    if EXACT_SPLIT_LOW <= abs(x) <= EXACT_SPLIT_HIGH and EXACT_SPLIT_LOW <= abs(y) <= EXACT_SPLIT_HIGH:
        product = x * y
        x_high = VELTKAMP_SPLITTER * x
        x_high -= x_high - x
        y_high = VELTKAMP_SPLITTER * y
        y_high -= y_high - y
        x_low, y_low = x - x_high, y - y_high
        # product + error is x * y exactly
        error = ((x_high * y_high - product) + x_high * y_low + x_low * y_high) + x_low * y_low
        return math.fsum((product, error, z))
    x_top, x_bottom = x.as_integer_ratio()
    y_top, y_bottom = y.as_integer_ratio()
    z_top, z_bottom = z.as_integer_ratio()
    top = x_top * y_top * z_bottom + z_top * x_bottom * y_bottom
    if top == 0:  # an exact zero, whose sign the float sum gives (-0 when both terms are -0)
        return x * y + z
    return top / (x_bottom * y_bottom * z_bottom)


@dataclass(frozen=True)
class OneRowScorer:
    """The linear family's arithmetic on one row in Python floats: the numbers ``LinearRiskModel.score`` gives a
    one-row array, bit for bit, for a fraction of the cost of its numpy calls (each costs a few microseconds inside
    a server, the whole request's arithmetic being a dozen operations on three numbers).

    The log counts are numpy's own (its vectorised ``log1p`` differs from ``math.log1p`` in the last bit for some
    counts); the standardising, the intercept and the logistic function are the same IEEE operations in Python;
    the dot product is what the BLAS behind numpy's one-row matmul computes: a chain of fused multiply-adds
    (``fused``), or of plain ones on a machine without them. ``one_row_scorer`` finds out which on probe rows.
    """

    mean: tuple[float, ...]
    scale: tuple[float, ...]
    coefficients: tuple[float, ...]
    intercept: float
    threshold: float
    fused: bool

    def score(self, features: np.ndarray) -> tuple[float, int] | None:
        """(exit probability, label 0/1) of a one-row float64 array; None for any other array, or when a value is
        not finite on the way (the numpy arithmetic then answers as before)."""
        if features.dtype != np.float64:
            return None
        total = 0.0  # numpy's dot product starts from zero
        try:
            [log_counts] = np.log1p(features).tolist()  # one row, else ValueError
            for log_count, mean, scale, coefficient in zip(
                log_counts, self.mean, self.scale, self.coefficients, strict=True
            ):
                standardised = (log_count - mean) / scale
                if self.fused:
                    total = fused_multiply_add(standardised, coefficient, total)
                else:
                    total += standardised * coefficient
            probability = 1.0 / (1.0 + math.exp(-((0.0 + total) + self.intercept)))  # scipy's expit
        except (OverflowError, ValueError):
            return None
        return probability, int(probability >= self.threshold)


def one_row_probes() -> np.ndarray:
    """``PROBE_ROWS`` and ``RANDOM_PROBE_ROWS`` rows of counts of every size up to ten million (always the same)."""
    generator = np.random.default_rng(0)
    size = (RANDOM_PROBE_ROWS, len(FEATURES))
    counts = np.floor(generator.random(size) * 10.0 ** generator.uniform(0, 7, size))
    return np.concatenate([PROBE_ROWS, counts])


def one_row_scorer(model: RiskModel) -> OneRowScorer | None:
    """The Python arithmetic for one row of a linear model, with the multiply-adds (fused or plain) that give
    ``model.score``'s numbers on every probe row bit for bit; None for the other families, or when neither does."""
    if not isinstance(model, LinearRiskModel):
        return None
    probes = one_row_probes()
    expected = []
    for row in range(len(probes)):
        probabilities, labels = model.score(probes[row : row + 1])
        expected.append((float(probabilities[0]), int(labels[0])))
    for fused in (True, False):
        scorer = OneRowScorer(
            mean=tuple(model.mean.tolist()),
            scale=tuple(model.scale.tolist()),
            coefficients=tuple(model.coef_t.reshape(-1).tolist()),
            intercept=float(model.intercept[0]),
            threshold=float(model.threshold),
            fused=fused,
        )
        if all(scorer.score(probes[row : row + 1]) == expected[row] for row in range(len(probes))):
            return scorer
    return None


class AdditiveRiskModel(FittedModel):
    """A cubic spline per standardised log count, then a logistic regression: the log-odds is the intercept
    plus one smooth curve per feature, so each feature's contribution is its curve's height against the
    curve's height at the average training client."""

    family = ADDITIVE

    def __init__(self, estimator: Any, mean: np.ndarray, scale: np.ndarray, threshold: float):
        from scipy.interpolate import BSpline

        super().__init__(estimator, mean, scale, threshold)
        steps = estimator.estimator.named_steps
        splines, classifier = steps["splines"], steps["classifier"]
        width = splines.n_features_out_ // len(FEATURES)
        coef = classifier.coef_.reshape(-1)
        self.intercept = float(classifier.intercept_[0])
        self.curves = [
            BSpline(basis.t, coef[j * width : (j + 1) * width], basis.k, extrapolate=False)
            for j, basis in enumerate(splines.bsplines_)
        ]
        # Outside the range the splines were fitted on, each curve stays at its edge (constant extrapolation).
        self.low = np.array([basis.t[basis.k] for basis in splines.bsplines_])
        self.high = np.array([basis.t[-basis.k - 1] for basis in splines.bsplines_])
        self.centre = self.curve_heights(np.zeros((1, len(FEATURES))))[0]

    def curve_heights(self, standardised: np.ndarray) -> np.ndarray:
        """Each feature's curve at each row's standardised count (rows x features), before centring."""
        clipped = np.clip(standardised, self.low, self.high)
        return np.column_stack([curve(clipped[:, j]) for j, curve in enumerate(self.curves)])

    @property
    def baseline_log_odds(self) -> float:
        return self.intercept + float(self.centre.sum())

    def standardised_log_odds(self, standardised: np.ndarray) -> np.ndarray:
        return np.asarray(self.intercept + self.curve_heights(standardised).sum(axis=1), dtype=np.float64)

    def contributions(self, features: np.ndarray) -> np.ndarray:
        return np.asarray(self.curve_heights(self.standardise(features)) - self.centre, dtype=np.float64)

    def describe(self) -> FamilyDescription:
        return FamilyDescription(
            family=ADDITIVE,
            text=f"LogisticRegression on a cubic spline ({SPLINE_KNOTS} knots) per log1p-scaled, standardised count",
            coefficients=None,
            intercept=None,
            trees=None,
        )


class BoostedRiskModel(FittedModel):
    """Gradient-boosted trees (LightGBM) on the standardised log counts; contributions are the exact Shapley
    values of the trees' log-odds against the average training client (2^3 evaluations a row)."""

    family = BOOSTED

    def __init__(self, estimator: Any, mean: np.ndarray, scale: np.ndarray, threshold: float):
        super().__init__(estimator, mean, scale, threshold)
        self.booster = estimator.estimator.named_steps["classifier"].booster_

    def standardised_log_odds(self, standardised: np.ndarray) -> np.ndarray:
        return np.asarray(self.booster.predict(standardised, raw_score=True, num_threads=1), dtype=np.float64)

    def describe(self) -> FamilyDescription:
        trees = int(self.booster.num_trees())
        return FamilyDescription(
            family=BOOSTED,
            text=f"LightGBM gradient-boosted trees ({trees} trees) on log1p-scaled, standardised counts",
            coefficients=None,
            intercept=None,
            trees=trees,
        )


def shapley_contributions(log_odds: Any, standardised: np.ndarray) -> np.ndarray:
    """The exact Shapley values of ``log_odds`` (standardised rows -> log-odds) for each row against the
    reference row of zeros: feature j's average gain over every order in which the features are added.

    One call of ``log_odds`` on all 2^d substitutions of every row; they add up to
    ``log_odds(row) - log_odds(zeros)``.
    """
    rows, width = standardised.shape
    subsets = list(itertools.product((0, 1), repeat=width))
    stacked = np.zeros((len(subsets) * rows, width))
    for index, subset in enumerate(subsets):
        block = stacked[index * rows : (index + 1) * rows]
        for j, present in enumerate(subset):
            if present:
                block[:, j] = standardised[:, j]
    values = np.asarray(log_odds(stacked), dtype=np.float64).reshape(len(subsets), rows)
    position = {subset: index for index, subset in enumerate(subsets)}
    result = np.zeros((rows, width))
    for subset, index in position.items():
        size = sum(subset)
        for j in range(width):
            if subset[j]:
                continue
            weight = math.factorial(size) * math.factorial(width - size - 1) / math.factorial(width)
            added = subset[:j] + (1,) + subset[j + 1 :]
            result[:, j] += weight * (values[position[added]] - values[index])
    return result


FAMILY_CLASSES: dict[str, type[FittedModel]] = {
    LINEAR: LinearRiskModel,
    ADDITIVE: AdditiveRiskModel,
    BOOSTED: BoostedRiskModel,
}


# ---------------------------------------------------------------- fitting


def choose_threshold(labels: np.ndarray, probabilities: np.ndarray, sample_weight: np.ndarray | None = None) -> float:
    """The probability threshold with the highest (weighted) F1 on these labels."""
    precision, recall, thresholds = precision_recall_curve(labels, probabilities, sample_weight=sample_weight)
    precision, recall = precision[:-1], recall[:-1]
    with np.errstate(invalid="ignore", divide="ignore"):
        f1 = np.where(precision + recall > 0, 2 * precision * recall / (precision + recall), 0.0)
    return float(thresholds[int(np.argmax(f1))])


def scaling_steps() -> list[tuple[str, Any]]:
    return [
        ("log_counts", FunctionTransformer(np.log1p, feature_names_out="one-to-one")),
        ("scale", StandardScaler()),
    ]


def linear_pipeline(settings: ModelSettings) -> Pipeline:
    """log1p -> standardise -> logistic regression: the classic model."""
    classifier = LogisticRegression(C=settings.C, max_iter=settings.max_iter, class_weight=settings.class_weight)
    return Pipeline([*scaling_steps(), ("classifier", classifier)])


def additive_pipeline(settings: ModelSettings) -> Pipeline:
    """log1p -> standardise -> a cubic spline per feature -> logistic regression."""
    splines = SplineTransformer(n_knots=SPLINE_KNOTS, degree=3, knots="quantile", extrapolation="constant")
    classifier = LogisticRegression(
        C=SPLINE_C, max_iter=max(settings.max_iter, 3000), class_weight=settings.class_weight
    )
    return Pipeline([*scaling_steps(), ("splines", splines), ("classifier", classifier)])


def fit_pipeline(
    family: str,
    features: np.ndarray,
    labels: np.ndarray,
    settings: ModelSettings,
    sample_weight: np.ndarray | None,
    threads: int = 1,
) -> Pipeline:
    """The family's pipeline fitted on these rows (each weighted by ``sample_weight``, if given); ``threads``:
    how many the trees may use."""
    if family == BOOSTED:
        return fit_boosted_pipeline(features, labels, settings, sample_weight, threads)
    pipeline = linear_pipeline(settings) if family == LINEAR else additive_pipeline(settings)
    weights = (
        {}
        if sample_weight is None
        else {"scale__sample_weight": sample_weight, "classifier__sample_weight": sample_weight}
    )
    if sample_weight is not None and family == ADDITIVE:
        weights["splines__sample_weight"] = sample_weight
    return pipeline.fit(features, labels, **weights)


def import_family_libraries(families: Iterable[str]) -> None:
    """Import what these families fit with, before fits run on threads: a library one thread imports while
    another fits is half there for the other (LightGBM imports pandas, which scikit-learn's checks then find
    in ``sys.modules`` without its classes)."""
    if BOOSTED in families:
        import lightgbm  # noqa: F401


def fit_boosted_pipeline(
    features: np.ndarray, labels: np.ndarray, settings: ModelSettings, sample_weight: np.ndarray | None, threads: int
) -> Pipeline:
    """Trees on the standardised log counts, the number of trees chosen by early stopping on a tenth of the rows."""
    import lightgbm

    scaling = Pipeline(scaling_steps()).fit(features, labels, scale__sample_weight=sample_weight)
    scaled = scaling.transform(features)
    validation = np.random.default_rng(0).random(labels.size) < VALIDATION_SHARE
    if np.unique(labels[validation]).size < 2 or np.unique(labels[~validation]).size < 2:
        validation[:] = False
    fit = ~validation
    classifier = lightgbm.LGBMClassifier(**BOOSTED_PARAMETERS, n_jobs=threads, class_weight=settings.class_weight)
    weights = None if sample_weight is None else sample_weight[fit]
    if validation.any():
        classifier.fit(
            scaled[fit],
            labels[fit],
            sample_weight=weights,
            eval_X=(scaled[validation],),
            eval_y=(labels[validation],),
            eval_sample_weight=None if sample_weight is None else [sample_weight[validation]],
            callbacks=[lightgbm.early_stopping(EARLY_STOPPING_ROUNDS, verbose=False)],
        )
    else:
        classifier.set_params(n_estimators=100).fit(scaled, labels, sample_weight=sample_weight)
    return Pipeline([*scaling.steps, ("classifier", classifier)])


def fit_risk_model(
    family: str,
    features: np.ndarray,
    labels: np.ndarray,
    settings: ModelSettings,
    sample_weight: np.ndarray | None = None,
    threads: int = 1,
) -> RiskModel:
    """Fit one family with its decision threshold (the F1-best on these rows, or the configured number)."""
    classes = np.unique(labels)
    if classes.size < 2:
        raise PipelineError(f"the training data holds only exited={classes[0]}; both classes are needed to train")
    if family != LINEAR and labels.size > settings.max_fit_rows:
        rows = np.sort(np.random.default_rng(0).choice(labels.size, settings.max_fit_rows, replace=False))
        features, labels = features[rows], labels[rows]
        sample_weight = None if sample_weight is None else sample_weight[rows]
    pipeline = fit_pipeline(family, features, labels, settings, sample_weight, threads)
    wrapped = FixedThresholdClassifier(pipeline, threshold=0.5, response_method="predict_proba")
    model = wrap(family, wrapped)
    if settings.decision_threshold == "f1":
        threshold = choose_threshold(labels, model.score(features)[0], sample_weight)
    else:
        threshold = float(settings.decision_threshold)
    # The wrapper takes the fitted pipeline as it is; fitting the wrapper would fit it again.
    model.estimator = FixedThresholdClassifier(pipeline, threshold=threshold, response_method="predict_proba")
    model.threshold = threshold
    return model


RECALIBRATED_FAMILIES = (LINEAR, ADDITIVE)  # their log-odds end in a logistic regression, which takes a refit


def recalibrated_model(family: str, estimator: Any, intercept: float, slope: float) -> FittedModel:
    """A copy of a fitted model of a ``RECALIBRATED_FAMILIES`` family whose log-odds are ``intercept + slope ×``
    its own: its final logistic regression's coefficients times ``slope``, its intercept moved to match. The
    result is a model of the same family and shape, served and explained as any other (same threshold)."""
    pipeline = copy.deepcopy(estimator.estimator)
    classifier = pipeline.named_steps["classifier"]
    classifier.coef_ = classifier.coef_ * slope
    classifier.intercept_ = intercept + slope * classifier.intercept_
    threshold = float(estimator.threshold)
    return wrap(family, FixedThresholdClassifier(pipeline, threshold=threshold, response_method="predict_proba"))


def with_threshold(model: FittedModel, threshold: float) -> FittedModel:
    """The same fitted model deciding "at risk" from ``threshold`` on."""
    pipeline = model.estimator.estimator
    estimator = FixedThresholdClassifier(pipeline, threshold=threshold, response_method="predict_proba")
    return wrap(model.family, estimator)


def wrap(family: str, estimator: Any) -> FittedModel:
    """The family's arithmetic around a fitted classifier of its shape (unchecked: see ``risk_model_for``)."""
    scaler = estimator.estimator.named_steps["scale"]
    width = len(FEATURES)
    mean = scaler.mean_ if scaler.with_mean else np.zeros(width)
    scale = scaler.scale_ if scaler.with_std else np.ones(width)
    return FAMILY_CLASSES[family](estimator, mean, scale, float(estimator.threshold))


# ---------------------------------------------------------------- recognising a loaded classifier


def family_of(estimator: Any) -> str | None:
    """The family a fitted classifier is of, by its shape; None for any other shape."""
    try:
        steps = estimator.estimator.named_steps
        if steps["log_counts"].func is not np.log1p or getattr(estimator, "response_method", "") != "predict_proba":
            return None
        names, classifier = list(steps), steps["classifier"]
        if list(classifier.classes_) != [0, 1]:
            return None
    except (AttributeError, KeyError, TypeError):
        return None
    kind = type(classifier).__name__
    if names == ["log_counts", "scale", "classifier"] and kind == "LogisticRegression":
        return LINEAR if classifier.coef_.shape[0] == 1 else None
    if names == ["log_counts", "scale", "splines", "classifier"] and kind == "LogisticRegression":
        splines = steps["splines"]
        return ADDITIVE if splines.extrapolation == "constant" and splines.include_bias else None
    if names == ["log_counts", "scale", "classifier"] and kind == "LGBMClassifier":
        return BOOSTED
    return None


def risk_model_for(estimator: Any) -> RiskModel | None:
    """The family's arithmetic for a loaded classifier, if it is of a family's shape and the arithmetic agrees
    with its own ``predict_proba`` and ``predict`` on probe rows; else None (it cannot be explained exactly)."""
    family = family_of(estimator)
    if family is None:
        return None
    try:
        model = wrap(family, estimator)
        probabilities, labels = model.score(PROBE_ROWS)
        expected = estimator.predict_proba(PROBE_ROWS)[:, 1]
        contributions = model.contributions(PROBE_ROWS)
    except (AttributeError, KeyError, TypeError, IndexError, ValueError):
        return None
    exact = (
        np.array_equal(probabilities, expected)
        if family == LINEAR
        else np.allclose(probabilities, expected, rtol=0, atol=1e-12)
    )
    adds_up = np.allclose(
        model.baseline_log_odds + contributions.sum(axis=1), model.log_odds(PROBE_ROWS), rtol=0, atol=1e-9
    )
    if exact and adds_up and np.array_equal(labels, estimator.predict(PROBE_ROWS)):
        return model
    return None


def equal_count_calibration_error(labels: np.ndarray, probabilities: np.ndarray, bins: int = 10) -> float:
    """Expected calibration error over ``bins`` bins of equal row counts: the row-weighted gap between the
    mean predicted probability and the observed exit rate in each bin."""
    order = np.argsort(probabilities, kind="stable")
    gaps = [
        abs(float(probabilities[part].mean()) - float(labels[part].mean())) * part.size
        for part in np.array_split(order, bins)
        if part.size
    ]
    return float(sum(gaps) / max(labels.size, 1))
