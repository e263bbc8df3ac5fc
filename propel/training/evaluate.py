"""Shared evaluation: classification metrics, gains tables, uplift curves and the plots logged to MLflow."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: plots are files (MLflow artifacts), never windows
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from sklearn.calibration import calibration_curve  # noqa: E402
from sklearn.metrics import (average_precision_score, brier_score_loss, log_loss, precision_recall_curve,  # noqa: E402
                             roc_auc_score, roc_curve)


def gains_table(y: np.ndarray, score: np.ndarray, bins: int = 10) -> pd.DataFrame:
    """Decile table: decile 1 = highest scores. Lift = decile positive rate / overall rate."""
    order = np.argsort(-score, kind="stable")
    y_sorted = np.asarray(y)[order]
    deciles = np.minimum(np.arange(len(y_sorted)) * bins // max(len(y_sorted), 1) + 1, bins)
    df = pd.DataFrame({"decile": deciles, "y": y_sorted, "score": np.asarray(score)[order]})
    table = df.groupby("decile").agg(customers=("y", "size"), positives=("y", "sum"), min_score=("score", "min"),
                                     max_score=("score", "max"))
    base = max(y_sorted.mean(), 1e-12)
    table["rate"] = table["positives"] / table["customers"]
    table["lift"] = table["rate"] / base
    table["captured_share"] = table["positives"].cumsum() / max(table["positives"].sum(), 1)
    return table.reset_index()


def top_share(y: np.ndarray, score: np.ndarray, share: float) -> tuple[float, float]:
    """(lift, captured share of positives) when targeting the top `share` of scores."""
    n = max(1, int(round(len(y) * share)))
    top = np.asarray(y)[np.argsort(-score, kind="stable")[:n]]
    base = max(np.mean(y), 1e-12)
    return float(top.mean() / base), float(top.sum() / max(np.sum(y), 1))


def classification_metrics(y: np.ndarray, p: np.ndarray) -> dict[str, float]:
    y, p = np.asarray(y), np.clip(np.asarray(p, dtype=float), 1e-7, 1 - 1e-7)
    out = {"roc_auc": roc_auc_score(y, p), "pr_auc": average_precision_score(y, p), "log_loss": log_loss(y, p, labels=[0, 1]),
           "brier": brier_score_loss(y, p)}
    for share in (0.1, 0.2):
        lift, captured = top_share(y, p, share)
        out[f"lift_top{int(share * 100)}"] = lift
        out[f"captured_top{int(share * 100)}"] = captured
    return {k: float(v) for k, v in out.items()}


def qini_curve(y: np.ndarray, treated: np.ndarray, uplift: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Qini curve: incremental positives when targeting the top-k by predicted uplift (Radcliffe)."""
    order = np.argsort(-uplift, kind="stable")
    y, t = np.asarray(y)[order], np.asarray(treated)[order].astype(bool)
    n_t, n_c = np.cumsum(t), np.cumsum(~t)
    y_t, y_c = np.cumsum(y * t), np.cumsum(y * ~t)
    gain = y_t - np.divide(y_c * n_t, n_c, out=np.zeros(len(y), dtype=float), where=n_c > 0)
    x = np.arange(1, len(y) + 1) / len(y)
    return np.concatenate([[0], x]), np.concatenate([[0], gain])


def qini_coefficient(y: np.ndarray, treated: np.ndarray, uplift: np.ndarray) -> float:
    """Area between the model's Qini curve and random targeting, normalised by the number of rows (x 100):
    Propel's original figure, on a scale of its own; `qini_auc` is the comparable one."""
    x, gain = qini_curve(y, treated, uplift)
    random = x * gain[-1]
    return float(np.trapezoid(gain - random, x) / max(len(y), 1) * 100)


def _threshold_curve(y: np.ndarray, treated: np.ndarray, uplift: np.ndarray, kind: str) -> tuple[np.ndarray, np.ndarray]:
    """scikit-uplift's `qini_curve` / `uplift_curve`: rows targeted (x) and the gain at each distinct predicted
    uplift (ties enter together, so a constant score is the straight random line), from (0, 0)."""
    order = np.argsort(uplift, kind="mergesort")[::-1]
    y, t, u = np.asarray(y, float)[order], np.asarray(treated).astype(bool)[order], np.asarray(uplift, float)[order]
    cut = np.r_[np.flatnonzero(np.diff(u)), len(u) - 1]
    n_t, y_t, y_c = np.cumsum(t)[cut], np.cumsum(y * t)[cut], np.cumsum(y * ~t)[cut]
    n, n_c = cut + 1.0, cut + 1.0 - np.cumsum(t)[cut]
    zeros = np.zeros(len(cut))
    if kind == "qini":
        gain = y_t - y_c * np.divide(n_t, n_c, out=zeros.copy(), where=n_c > 0)
    else:
        gain = (np.divide(y_t, n_t, out=zeros.copy(), where=n_t > 0) - np.divide(y_c, n_c, out=zeros.copy(), where=n_c > 0)) * n
    return np.r_[0.0, n], np.r_[0.0, gain]


def _normalised_area(y: np.ndarray, treated: np.ndarray, uplift: np.ndarray, kind: str) -> float:
    """(area of the model's curve - random's) / (area of the perfect ranking's curve - random's)."""
    y, t = np.asarray(y, float), np.asarray(treated).astype(float)
    if kind == "qini":  # perfect: treated responders first, control responders last (negative effects allowed)
        perfect = y * t - y * (1 - t)
    else:  # scikit-uplift's perfect_uplift_curve
        summand = y if np.sum((y == 1) & (t == 0)) > np.sum((y == 0) & (t == 1)) else t
        perfect = 2 * (y == t) + summand
    x_p, g_p = _threshold_curve(y, t, perfect, kind)
    random = np.trapezoid([0, g_p[-1]], [0, x_p[-1]])
    best = np.trapezoid(g_p, x_p) - random
    x, g = _threshold_curve(y, t, uplift, kind)
    return float((np.trapezoid(g, x) - random) / best) if best else float("nan")


def qini_auc(y: np.ndarray, treated: np.ndarray, uplift: np.ndarray) -> float:
    """Normalised Qini coefficient (scikit-uplift's `qini_auc_score`): 0 = random targeting, 1 = perfect."""
    return _normalised_area(y, treated, uplift, "qini")


def auuc(y: np.ndarray, treated: np.ndarray, uplift: np.ndarray) -> float:
    """Normalised area under the uplift curve (scikit-uplift's `uplift_auc_score`): 0 = random, 1 = perfect."""
    return _normalised_area(y, treated, uplift, "uplift")


def uplift_at(y: np.ndarray, treated: np.ndarray, uplift: np.ndarray, share: float) -> float:
    """Observed response rate difference (treated - control) among the top `share` by predicted uplift."""
    n = max(2, int(round(len(y) * share)))
    top = np.argsort(-uplift, kind="stable")[:n]
    t, yy = np.asarray(treated)[top].astype(bool), np.asarray(y)[top]
    if t.all() or (~t).all():
        return float("nan")
    return float(yy[t].mean() - yy[~t].mean())


# ---- plots -------------------------------------------------------------------------------------
def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_curves(y: np.ndarray, scores: dict[str, np.ndarray], out: Path) -> list[Path]:
    """ROC, precision-recall, cumulative gains and calibration, each comparing the given scorers."""
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    fig, ax = plt.subplots(figsize=(5, 4))
    for name, s in scores.items():
        fpr, tpr, _ = roc_curve(y, s)
        ax.plot(fpr, tpr, label=f"{name} (AUC {roc_auc_score(y, s):.3f})")
    ax.plot([0, 1], [0, 1], "k:", lw=1)
    ax.set(xlabel="false positive rate", ylabel="true positive rate", title="ROC")
    ax.legend(fontsize=8)
    paths.append(_save(fig, out / "roc.png"))
    fig, ax = plt.subplots(figsize=(5, 4))
    for name, s in scores.items():
        prec, rec, _ = precision_recall_curve(y, s)
        ax.plot(rec, prec, label=f"{name} (AP {average_precision_score(y, s):.3f})")
    ax.set(xlabel="recall", ylabel="precision", title="Precision-recall")
    ax.legend(fontsize=8)
    paths.append(_save(fig, out / "pr.png"))
    fig, ax = plt.subplots(figsize=(5, 4))
    for name, s in scores.items():
        order = np.argsort(-s, kind="stable")
        ax.plot(np.arange(1, len(y) + 1) / len(y), np.cumsum(np.asarray(y)[order]) / max(np.sum(y), 1), label=name)
    ax.plot([0, 1], [0, 1], "k:", lw=1)
    ax.set(xlabel="share targeted", ylabel="share of positives captured", title="Cumulative gains")
    ax.legend(fontsize=8)
    paths.append(_save(fig, out / "gains.png"))
    fig, ax = plt.subplots(figsize=(5, 4))
    for name, s in scores.items():
        frac, mean = calibration_curve(y, np.clip(s, 0, 1), n_bins=10, strategy="quantile")
        ax.plot(mean, frac, marker="o", ms=3, label=name)
    ax.plot([0, 1], [0, 1], "k:", lw=1)
    ax.set(xlabel="predicted probability", ylabel="observed rate", title="Calibration")
    ax.legend(fontsize=8)
    paths.append(_save(fig, out / "calibration.png"))
    return paths


def plot_importance(importance: pd.Series, out: Path, top: int = 25) -> Path:
    imp = importance.sort_values().tail(top)
    fig, ax = plt.subplots(figsize=(6, 0.25 * len(imp) + 1))
    ax.barh(imp.index, imp.values)
    ax.set(xlabel="mean |SHAP| (log-odds)", title="Feature importance")
    return _save(fig, out / "importance.png")


def plot_qini(y: np.ndarray, treated: np.ndarray, uplifts: dict[str, np.ndarray], out: Path) -> Path:
    fig, ax = plt.subplots(figsize=(5, 4))
    for name, u in uplifts.items():
        x, gain = qini_curve(y, treated, u)
        ax.plot(x, gain, label=f"{name} (normalised Qini {qini_auc(y, treated, u):.3f})")
    ax.plot([0, 1], [0, gain[-1]], "k:", lw=1, label="random")
    ax.set(xlabel="share targeted", ylabel="incremental conversions", title="Qini curve")
    ax.legend(fontsize=8)
    return _save(fig, out / "qini.png")
