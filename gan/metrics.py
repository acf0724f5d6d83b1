"""Offline quality metrics for generated log-mels that need no downloaded weights.

Everything is measured against the store's own real data with the small classifier in
`gan.classifier`: accuracy of the intended class, Inception Score (classifier softmax),
Fréchet distance between classifier embeddings, NDB/K (number of statistically different
k-means bins, Richardson & Weiss 2018) and a within-class diversity ratio. A set of examples
(generated, real held-out, or real through Griffin-Lim) is scored by `score_set` against a
`QualityReference`, so the real and Griffin-Lim ceilings are computed exactly like the
generator's figures.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from statistics import NormalDist

import numpy as np
import torch
import torch.nn.functional as F
from scipy.cluster.vq import kmeans2, vq

FEATURE_SIDE = 32  # mel features for NDB/diversity are pooled to at most 32x32


def mel_features(x: torch.Tensor) -> np.ndarray:
    """Normalised mels (N, n_mels, frames) -> average-pooled, flattened float64 features.

    Pooling to at most 32x32 keeps k-means and pairwise distances cheap at 128x256 while
    keeping the coarse time-frequency layout that NDB and diversity are about.
    """
    if x.dim() == 3:
        x = x.unsqueeze(1)
    kh = max(1, math.ceil(x.shape[-2] / FEATURE_SIDE))
    kw = max(1, math.ceil(x.shape[-1] / FEATURE_SIDE))
    pooled = F.avg_pool2d(x.float(), (kh, kw), ceil_mode=True)
    return pooled.flatten(1).double().numpy()


def class_accuracy(probs: np.ndarray, labels: np.ndarray, n_classes: int
                   ) -> tuple[float, list[float]]:
    """Balanced accuracy (mean over classes present) and per-class accuracy (nan if absent)."""
    labels = np.asarray(labels)
    pred = probs.argmax(1) if len(probs) else np.zeros(0, dtype=np.int64)
    per = []
    for c in range(n_classes):
        m = labels == c
        per.append(float((pred[m] == c).mean()) if m.any() else float("nan"))
    present = [a for a in per if not math.isnan(a)]
    return (float(np.mean(present)) if present else float("nan")), per


def inception_score(probs: np.ndarray, eps: float = 1e-12) -> float:
    """exp(E_x KL(p(y|x) || p(y))): 1 (no information) .. n_classes (confident and balanced)."""
    if len(probs) == 0:
        return float("nan")
    p = np.clip(np.asarray(probs, dtype=np.float64), eps, 1.0)
    py = p.mean(0, keepdims=True)
    kl = (p * (np.log(p) - np.log(py))).sum(1)
    return float(np.exp(kl.mean()))


def _sqrt_psd(m: np.ndarray) -> np.ndarray:
    w, v = np.linalg.eigh((m + m.T) / 2)
    return (v * np.sqrt(np.clip(w, 0, None))) @ v.T


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Fréchet distance between Gaussians fitted to feature sets a (N, D) and b (M, D).

    tr(sqrt(S_a S_b)) is computed as the trace of sqrt(sqrt(S_a) S_b sqrt(S_a)), a symmetric
    PSD matrix, so no complex square roots appear even when N < D (singular covariances).
    """
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if len(a) < 2 or len(b) < 2:
        return float("nan")
    mu_a, mu_b = a.mean(0), b.mean(0)
    s_a, s_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    s_a, s_b = np.atleast_2d(s_a), np.atleast_2d(s_b)
    r = _sqrt_psd(s_a)
    cross = np.sqrt(np.clip(np.linalg.eigvalsh(r @ s_b @ r), 0, None)).sum()
    fd = float(((mu_a - mu_b) ** 2).sum() + np.trace(s_a) + np.trace(s_b) - 2 * cross)
    return max(fd, 0.0)


@dataclass
class NDBBins:
    """k-means bins on real features and the real proportion in each bin."""

    centroids: np.ndarray  # (K, D)
    proportions: np.ndarray  # (K,)
    n_real: int

    @property
    def k(self) -> int:
        return len(self.centroids)

    @classmethod
    def fit(cls, feats: np.ndarray, k: int = 10, seed: int = 0) -> NDBBins:
        feats = np.asarray(feats, np.float64)
        k = max(2, min(k, len(feats) // 5 or 2))
        rng = np.random.default_rng(seed)
        with warnings.catch_warnings():  # an empty cluster is handled below
            warnings.simplefilter("ignore")
            centroids, assign = kmeans2(feats, k, minit="++", rng=rng, iter=30)
        counts = np.bincount(assign, minlength=k)
        keep = counts > 0  # an empty bin carries no information
        centroids = centroids[keep]
        assign, _ = vq(feats, centroids)
        counts = np.bincount(assign, minlength=len(centroids))
        return cls(centroids, counts / len(feats), len(feats))

    def ndb_k(self, feats: np.ndarray, alpha: float = 0.05) -> float:
        """Fraction of bins whose proportion differs significantly (two-proportion z-test)."""
        if len(feats) == 0:
            return float("nan")
        assign, _ = vq(np.asarray(feats, np.float64), self.centroids)
        q = np.bincount(assign, minlength=self.k) / len(feats)
        n1, n2 = self.n_real, len(feats)
        pooled = (self.proportions * n1 + q * n2) / (n1 + n2)
        se = np.sqrt(pooled * (1 - pooled) * (1 / n1 + 1 / n2))
        with np.errstate(divide="ignore", invalid="ignore"):
            z = np.where(se > 0, (q - self.proportions) / se, 0.0)
        z_crit = NormalDist().inv_cdf(1 - alpha / 2)
        return float((np.abs(z) > z_crit).sum() / self.k)


def class_diversity(feats: np.ndarray, labels: np.ndarray, n_classes: int,
                    max_per_class: int = 200) -> np.ndarray:
    """Mean pairwise L2 distance within each class (nan for classes with < 2 examples)."""
    labels = np.asarray(labels)
    out = np.full(n_classes, np.nan)
    for c in range(n_classes):
        f = feats[labels == c][:max_per_class]
        if len(f) >= 2:
            out[c] = float(torch.pdist(torch.from_numpy(np.asarray(f, np.float64))).mean())
    return out


@dataclass
class QualityReference:
    """What a set of examples is compared with: built once per store (and classifier)."""

    n_classes: int
    ref_embeddings: np.ndarray  # classifier embeddings of held-out real rows (FD reference)
    bins: NDBBins  # k-means bins on real training-split features
    real_diversity: np.ndarray  # per-class diversity of the real training split

    @classmethod
    def build(cls, n_classes: int, ref_embeddings: np.ndarray, fit_feats: np.ndarray,
              fit_labels: np.ndarray, k: int = 10, seed: int = 0) -> QualityReference:
        return cls(n_classes, np.asarray(ref_embeddings, np.float64),
                   NDBBins.fit(fit_feats, k=k, seed=seed),
                   class_diversity(fit_feats, fit_labels, n_classes))


def score_set(probs: np.ndarray, embeddings: np.ndarray, feats: np.ndarray,
              labels: np.ndarray, ref: QualityReference) -> dict[str, float | list[float]]:
    """All metrics for one set of examples whose intended classes are `labels`.

    Keys: accuracy, per_class_accuracy (list), inception_score, frechet_distance, ndb_k,
    diversity (mean over classes of the set's within-class spread / the real data's;
    ~1 for real data, -> 0 under mode collapse).
    """
    acc, per = class_accuracy(probs, labels, ref.n_classes)
    div = class_diversity(feats, labels, ref.n_classes)
    ratio = div / ref.real_diversity
    ratio = ratio[np.isfinite(ratio)]
    return {
        "accuracy": acc,
        "per_class_accuracy": per,
        "inception_score": inception_score(probs),
        "frechet_distance": frechet_distance(embeddings, ref.ref_embeddings),
        "ndb_k": ref.bins.ndb_k(feats),
        "diversity": float(ratio.mean()) if len(ratio) else float("nan"),
    }
