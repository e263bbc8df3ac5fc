"""The models Propel logs to MLflow: calibrated LightGBM classifiers and a two-model uplift estimator.

They are MLflow pyfunc models, so `mlflow.pyfunc.load_model("models:/churn@champion")` is all that
serving and batch scoring need: the feature list, category levels and calibration travel inside.
`explain()` gives per-row reason codes from LightGBM's exact tree SHAP contributions.
"""

from __future__ import annotations

import lightgbm as lgb
import mlflow
import numpy as np
import pandas as pd
from sklearn.isotonic import IsotonicRegression


def prepare(df: pd.DataFrame, features: list[str], categories: dict[str, list[str]]) -> pd.DataFrame:
    """Model input from any frame holding the features: fixed column order, known category levels
    (unseen values become missing), everything else numeric."""
    missing = [f for f in features if f not in df.columns]
    if missing:
        raise KeyError(f"input lacks feature(s) {missing[:5]}{'...' if len(missing) > 5 else ''}")
    out = pd.DataFrame(index=df.index)
    for f in features:
        if f in categories:
            out[f] = pd.Categorical(df[f].astype("string").astype(object).where(df[f].notna(), None), categories=categories[f])
        else:
            out[f] = pd.to_numeric(df[f], errors="coerce").astype("float64")
    return out


def model_input(df: pd.DataFrame, features: list[str], categorical) -> pd.DataFrame:
    """The logged models' input contract (their MLflow signature): numeric features as doubles (an
    online int with a gap arrives as a float), categoricals as plain strings. Callers of the pyfunc
    convert with this; `m = loaded.unwrap_python_model(); model_input(df, m.features, m.categories)`."""
    return df[features].astype({f: (object if f in categorical else "float64") for f in features})


class PropelClassifier(mlflow.pyfunc.PythonModel):
    """LightGBM + isotonic calibration. predict() -> DataFrame with `score` (a calibrated probability)."""

    def __init__(self, booster: lgb.Booster, calibrator: IsotonicRegression | None, features: list[str],
                 categories: dict[str, list[str]], task: str, feature_service: str):
        self.booster_text = booster.model_to_string()
        self.calibrator, self.features, self.categories = calibrator, features, categories
        self.task, self.feature_service = task, feature_service
        self._booster = booster

    @property
    def booster(self) -> lgb.Booster:
        if getattr(self, "_booster", None) is None:
            self._booster = lgb.Booster(model_str=self.booster_text)
        return self._booster

    def __getstate__(self):  # the booster travels as text, which is portable across LightGBM builds
        return {k: v for k, v in self.__dict__.items() if k != "_booster"}

    def raw_score(self, df: pd.DataFrame) -> np.ndarray:
        return self.booster.predict(prepare(df, self.features, self.categories))

    def score(self, df: pd.DataFrame) -> np.ndarray:
        p = self.raw_score(df)
        return self.calibrator.predict(p) if self.calibrator is not None else p

    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        return pd.DataFrame({"score": self.score(model_input)}, index=model_input.index)

    def explain(self, df: pd.DataFrame, top: int = 3) -> list[list[tuple[str, float]]]:
        """Top features pushing each row's score up (SHAP, log-odds), largest first."""
        contrib = self.booster.predict(prepare(df, self.features, self.categories), pred_contrib=True)[:, :-1]
        order = np.argsort(-contrib, axis=1)[:, :top]
        return [[(self.features[j], float(contrib[i, j])) for j in row if contrib[i, j] > 0] for i, row in enumerate(order)]


class PropelUplift(mlflow.pyfunc.PythonModel):
    """T-learner: separate response models for treated and control; uplift = p(treated) - p(control)."""

    def __init__(self, treated: PropelClassifier, control: PropelClassifier, feature_service: str):
        self.treated, self.control, self.feature_service = treated, control, feature_service
        self.task, self.features = "uplift", treated.features

    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        pt, pc = self.treated.score(model_input), self.control.score(model_input)
        return pd.DataFrame({"score": pt - pc, "p_treated": pt, "p_control": pc}, index=model_input.index)

    def explain(self, df: pd.DataFrame, top: int = 3) -> list[list[tuple[str, float]]]:
        """Features that raise the treated response more than the control response (log-odds)."""
        x = prepare(df, self.features, self.treated.categories)
        diff = (self.treated.booster.predict(x, pred_contrib=True) - self.control.booster.predict(x, pred_contrib=True))[:, :-1]
        order = np.argsort(-diff, axis=1)[:, :top]
        return [[(self.features[j], float(diff[i, j])) for j in row if diff[i, j] > 0] for i, row in enumerate(order)]
