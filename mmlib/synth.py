"""The synthetic paired cohort: mammography + ultrasound + age with a known ground truth.

No public collection pairs mammograms and ultrasound images of the same patients, so the project's
default cohort is generated. It is written to disk exactly as a user's cohort would be (a manifest in
the format of :mod:`mmlib.schema` plus image files), and the generating truth is written beside it,
outside the manifest, so that it can never become a model input.

Generative model (label first, then the evidence of each source, all independent given the label)
    1. ``y ~ Bernoulli(prevalence)`` with exact class counts: ``round(n * prevalence)`` malignant
       patients, placed in a seeded random order.
    2. For each evidence source ``s`` in (ultrasound, mammography, age) a latent score
       ``z_s | y ~ Normal(d_s * y, 1)``, where ``d_s`` (:attr:`SynthConfig.informativeness`) is the
       source's informativeness as a Cohen's d.
    3. Age in years is ``age_mean_benign + age_sd * z_age``, clipped to [25, 90] and rounded to 0.1.
    4. The images render the latent score of their modality through several large, smooth and
       monotonic visual cues (:func:`render_ultrasound`, :func:`render_mammogram`), with nuisance
       variation (position, size, rotation, background tissue, gain) drawn independently of ``z``.
    5. Missing modalities are missing completely at random: each is dropped independently with its
       rate in :attr:`SynthConfig.missing`; a patient left with nothing gets one modality back (chosen
       with weights ``1 - rate``), so the realised rate of a modality is below its nominal rate by at
       most the product of the three rates.
    6. A stratified ``round(test_fraction * n_class)`` patients of each class are marked ``split=test``.

Because the sources are conditionally independent Gaussians with unit variance, the Bayes log-odds
given every latent is ``sum_s (d_s z_s - d_s**2 / 2) + log(prevalence / (1 - prevalence))``
(``latent_risk`` in ``truth.csv``). Its AUC on the generated cohort is the *oracle AUC*: no model of
the images and age can do better in expectation. A single source has the theoretical AUC
``Phi(d_s / sqrt(2))`` and all three together ``Phi(sqrt(sum_s d_s**2) / sqrt(2))``.

Files written by :func:`generate_cohort` into ``out_dir``
    ``manifest.csv``   the cohort (``patient_id``, ``label``, ``age``, ``mammography``, ``ultrasound``,
                       ``split``, ``mammography_bbox``, ``ultrasound_bbox``)
    ``truth.csv``      ``patient_id``, ``label``, ``latent_risk``, ``z_ultrasound``, ``z_mammography``,
                       ``z_age`` (never a model input)
    ``cohort.json``    the configuration, oracle AUCs, the sources' order of importance, the generator
                       version and a note that the data are synthetic
    ``images/ultrasound/SYN0001.png``, ``images/mammography/SYN0001_CC.dcm`` (and ``_MLO``)

The same configuration gives byte-identical files. Every draw comes from its own seeded stream (labels,
latents, missingness, split, and one per patient and modality for the image nuisance), so changing one
part of the configuration does not shift the random draws of the others.
"""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image
from scipy import ndimage
from scipy.special import expit, ndtr
from sklearn.metrics import roc_auc_score

from .schema import LABELS, PATH_SEPARATOR

#: Bumped whenever the generator's output for a given configuration changes.
GENERATOR_VERSION = "1.0.0"
#: Evidence sources, in the column order of ``truth.csv``.
SOURCES: tuple[str, ...] = ("ultrasound", "mammography", "age")
#: The model input (a :data:`mmlib.schema.MODALITIES` name) that carries each source.
SOURCE_MODALITY: dict[str, str] = {"ultrasound": "ultrasound", "mammography": "mammography", "age": "clinical"}
#: Keys of :attr:`SynthConfig.missing`.
MISSING_KEYS: tuple[str, ...] = ("mammography", "ultrasound", "age")
#: Mammographic views, in the order they are written.
VIEWS: tuple[str, ...] = ("CC", "MLO")
MAMMOGRAPHY_FORMATS: tuple[str, ...] = ("dicom", "png")
AGE_CLIP: tuple[float, float] = (25.0, 90.0)
#: Largest stored mammogram value: 12 bits stored in 16-bit words.
MAMMOGRAPHY_MAX_VALUE = 4095
ID_PREFIX = "SYN"

TRUTH_COLUMNS: tuple[str, ...] = ("patient_id", "label", "latent_risk") + tuple(f"z_{s}" for s in SOURCES)

# Digital Mammography X-Ray Image Storage - For Presentation.
_MG_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.1.2"
_VIEW_CODE = {view: i for i, view in enumerate(VIEWS)}
# Separate seeded streams, so that adding a feature to one never shifts the draws of another.
_STREAM_LABELS, _STREAM_LATENTS, _STREAM_MISSING, _STREAM_SPLIT, _STREAM_IMAGES = range(5)
_MODALITY_CODE = {"ultrasound": 0, "mammography": 1}


def _default_informativeness() -> dict[str, float]:
    return {"ultrasound": 2.2, "mammography": 1.5, "age": 0.6}


def _default_missing() -> dict[str, float]:
    return {"mammography": 0.0, "ultrasound": 0.0, "age": 0.0}


def _is_int(value) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _is_real(value) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)


@dataclass
class SynthConfig:
    """Parameters of the synthetic cohort (see the module docstring for the generative model).

    Args:
        n_patients: number of patients (rows of the manifest), at least 2.
        seed: seed of every random draw (a non-negative integer).
        prevalence: fraction of malignant patients, in (0, 1); the count is ``round(n * prevalence)``.
        informativeness: Cohen's d of each source's latent score between the classes, keyed by
            ``ultrasound``, ``mammography``, ``age``; a partial dict updates the defaults.
        age_mean_benign: mean age of benign patients (years).
        age_sd: standard deviation of age within a class (years).
        ultrasound_size: side of the square ultrasound images (pixels, 32 to 256).
        mammography_size: side of the square mammograms (pixels, 32 to 1024).
        mammography_views: 1 (CC) or 2 (CC and MLO of the same lesion).
        mammography_format: ``dicom`` (16-bit DICOM, 12 bits stored) or ``png`` (8-bit).
        missing: missing rate of each input, keyed by ``mammography``, ``ultrasound``, ``age``, each in
            [0, 1] and not all 1; a partial dict updates the defaults.
        test_fraction: fraction of each class marked ``split=test``, in [0, 1).
    """

    n_patients: int = 300
    seed: int = 0
    prevalence: float = 0.4
    informativeness: dict[str, float] = field(default_factory=_default_informativeness)
    age_mean_benign: float = 48.0
    age_sd: float = 11.0
    ultrasound_size: int = 224
    mammography_size: int = 256
    mammography_views: int = 1
    mammography_format: str = "dicom"
    missing: dict[str, float] = field(default_factory=_default_missing)
    test_fraction: float = 0.2

    def __post_init__(self):
        if not _is_int(self.n_patients) or self.n_patients < 2:
            raise ValueError(f"n_patients: expected an integer >= 2, got {self.n_patients!r}")
        if not _is_int(self.seed) or self.seed < 0:
            raise ValueError(f"seed: expected a non-negative integer, got {self.seed!r}")
        if not _is_real(self.prevalence) or not 0.0 < self.prevalence < 1.0:
            raise ValueError(f"prevalence: expected a number in (0, 1), got {self.prevalence!r}")
        self.informativeness = self._checked_dict(
            "informativeness", self.informativeness, _default_informativeness(), lambda v: 0.0 <= v <= 10.0,
            "a Cohen's d in [0, 10]")
        self.missing = self._checked_dict(
            "missing", self.missing, _default_missing(), lambda v: 0.0 <= v <= 1.0, "a rate in [0, 1]")
        if all(rate == 1.0 for rate in self.missing.values()):
            raise ValueError("missing: expected at least one rate below 1, or no patient could keep an input")
        if not _is_real(self.age_mean_benign) or not AGE_CLIP[0] <= self.age_mean_benign <= AGE_CLIP[1]:
            raise ValueError(f"age_mean_benign: expected a number of years in {list(AGE_CLIP)}, "
                             f"got {self.age_mean_benign!r}")
        if not _is_real(self.age_sd) or not 0.0 < self.age_sd <= 30.0:
            raise ValueError(f"age_sd: expected a number of years in (0, 30], got {self.age_sd!r}")
        if not _is_int(self.ultrasound_size) or not 32 <= self.ultrasound_size <= 256:
            raise ValueError(f"ultrasound_size: expected an integer in [32, 256], got {self.ultrasound_size!r}")
        if not _is_int(self.mammography_size) or not 32 <= self.mammography_size <= 1024:
            raise ValueError(f"mammography_size: expected an integer in [32, 1024], "
                             f"got {self.mammography_size!r}")
        if self.mammography_views not in (1, 2) or not _is_int(self.mammography_views):
            raise ValueError(f"mammography_views: expected 1 (CC) or 2 (CC and MLO), "
                             f"got {self.mammography_views!r}")
        if self.mammography_format not in MAMMOGRAPHY_FORMATS:
            raise ValueError(f"mammography_format: expected one of {MAMMOGRAPHY_FORMATS}, "
                             f"got {self.mammography_format!r}")
        if not _is_real(self.test_fraction) or not 0.0 <= self.test_fraction < 1.0:
            raise ValueError(f"test_fraction: expected a number in [0, 1), got {self.test_fraction!r}")
        n_malignant = self.n_malignant
        for name, n_class in (("benign", self.n_patients - n_malignant), ("malignant", n_malignant)):
            if n_class < 1:
                raise ValueError(f"n_patients, prevalence: {self.n_patients} patients at prevalence "
                                 f"{self.prevalence} leave no {name} patient; expected both classes")
            if n_class - _round_half_up(self.test_fraction * n_class) < 1:
                raise ValueError(f"test_fraction: {self.test_fraction} leaves no {name} patient in the dev "
                                 f"split; expected a smaller fraction or more patients")

    @staticmethod
    def _checked_dict(name, value, default, ok, expected) -> dict[str, float]:
        if not isinstance(value, dict):
            raise ValueError(f"{name}: expected a dict keyed by {sorted(default)}, got {value!r}")
        unknown = set(value) - set(default)
        if unknown:
            raise ValueError(f"{name}: unknown keys {sorted(unknown)}; expected keys among {sorted(default)}")
        out = dict(default)
        for key, v in value.items():
            if not _is_real(v) or not math.isfinite(v) or not ok(float(v)):
                raise ValueError(f"{name}[{key!r}]: expected {expected}, got {v!r}")
            out[key] = float(v)
        return out

    @property
    def n_malignant(self) -> int:
        """Exact number of malignant patients."""
        return _round_half_up(self.n_patients * self.prevalence)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _round_half_up(x: float) -> int:
    return int(math.floor(x + 0.5))


def _config_from(config: SynthConfig | None, overrides: dict) -> SynthConfig:
    names = {f.name for f in dataclasses.fields(SynthConfig)}
    unknown = set(overrides) - names
    if unknown:
        raise ValueError(f"unknown SynthConfig fields {sorted(unknown)}; expected among {sorted(names)}")
    if config is None:
        return SynthConfig(**overrides)
    if not isinstance(config, SynthConfig):
        raise ValueError(f"config: expected a SynthConfig or None, got {type(config).__name__}")
    return dataclasses.replace(config, **overrides)


def _rng(config: SynthConfig, *stream: int) -> np.random.Generator:
    return np.random.default_rng([config.seed, *stream])


def patient_ids(n: int) -> list[str]:
    """Ids of ``n`` synthetic patients: ``SYN0001``, ``SYN0002``, ..."""
    return [f"{ID_PREFIX}{i:04d}" for i in range(1, n + 1)]


def bayes_log_odds(z: np.ndarray, informativeness: dict[str, float], prevalence: float,
                   sources: tuple[str, ...] = SOURCES) -> np.ndarray:
    """Bayes log-odds of malignancy given latent scores.

    Args:
        z: latent scores ``(n, len(sources))``, columns in ``sources`` order.
        informativeness: Cohen's d of each source.
        prevalence: prior probability of malignancy.
        sources: the sources of the columns of ``z`` (a subset gives the risk given those sources only).

    Returns:
        ``(n,)`` log-odds ``sum_s (d_s z_s - d_s**2 / 2) + logit(prevalence)``.
    """
    d = np.array([informativeness[s] for s in sources], dtype=float)
    return (np.asarray(z, dtype=float) * d - d**2 / 2).sum(axis=1) + math.log(prevalence / (1 - prevalence))


def _draw_latents(config: SynthConfig) -> pd.DataFrame:
    """Labels, latent scores, latent risk and age of every patient (no images: fast for large ``n``).

    Returns:
        One row per patient: ``patient_id``, ``y`` (0/1), ``z_<source>``, ``latent_risk``, ``age``.
    """
    n = config.n_patients
    y = np.zeros(n, dtype=int)
    y[: config.n_malignant] = 1
    y = _rng(config, _STREAM_LABELS).permutation(y)
    d = np.array([config.informativeness[s] for s in SOURCES])
    z = _rng(config, _STREAM_LATENTS).standard_normal((n, len(SOURCES))) + y[:, None] * d
    out = pd.DataFrame({"patient_id": patient_ids(n), "y": y})
    for j, s in enumerate(SOURCES):
        out[f"z_{s}"] = z[:, j]
    out["latent_risk"] = bayes_log_odds(z, config.informativeness, config.prevalence)
    age = config.age_mean_benign + config.age_sd * out["z_age"].to_numpy()
    out["age"] = np.round(np.clip(age, *AGE_CLIP), 1)
    return out


def _draw_missing(config: SynthConfig) -> np.ndarray:
    """Missingness ``(n, 3)`` bool in :data:`MISSING_KEYS` order; no row is all True."""
    rng = _rng(config, _STREAM_MISSING)
    rates = np.array([config.missing[k] for k in MISSING_KEYS])
    missing = rng.random((config.n_patients, len(rates))) < rates
    empty = np.flatnonzero(missing.all(axis=1))
    if empty.size:
        weights = (1 - rates) / (1 - rates).sum()
        restored = rng.choice(len(rates), size=empty.size, p=weights)
        missing[empty, restored] = False
    return missing


def _draw_split(config: SynthConfig, y: np.ndarray) -> np.ndarray:
    """``dev``/``test`` per patient: ``round(test_fraction * n_class)`` test patients of each class."""
    rng = _rng(config, _STREAM_SPLIT)
    split = np.full(len(y), "dev", dtype=object)
    for cls in (0, 1):
        members = np.flatnonzero(y == cls)
        k = _round_half_up(config.test_fraction * len(members))
        split[rng.choice(members, size=k, replace=False)] = "test"
    return split


def _image_rng(config: SynthConfig, modality: str, index: int) -> np.random.Generator:
    return _rng(config, _STREAM_IMAGES, _MODALITY_CODE[modality], index)


# ---------------------------------------------------------------------------------------------------
# Renderers


def severity(z: float) -> float:
    """The smooth, increasing map from a latent score to the strength of its visual cues, in (0, 1).

    Centred between the class means and steepest there, where the cues decide the classification.
    """
    return float(expit((z - 1.0) / 1.5))


def _soft_step(x: np.ndarray) -> np.ndarray:
    """A smoothstep with the logistic's slope at 0, flat beyond |x| = 3: several times cheaper than ``expit``."""
    t = np.clip(x * (1 / 6) + 0.5, 0.0, 1.0)
    return t * t * (3 - 2 * t)


@lru_cache(maxsize=4)
def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Row (depth) and column coordinates in image widths, ``(size, size)`` float32 each."""
    c = (np.arange(size, dtype=np.float32) + 0.5) / size
    return np.broadcast_to(c[:, None], (size, size)), np.broadcast_to(c[None, :], (size, size))


def _harmonics(rng: np.random.Generator, ks: range) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Random margin harmonics with unit RMS: orders, amplitudes, phases."""
    k = np.asarray(ks, dtype=np.float32)
    amp = rng.standard_normal(len(k)).astype(np.float32) / np.sqrt(k)
    amp /= np.sqrt((amp**2).sum() / 2)
    return k, amp, rng.uniform(0, 2 * np.pi, len(k)).astype(np.float32)


def _margin(direction: np.ndarray, harmonics, amplitude: float) -> np.ndarray:
    """Radial perturbation ``amplitude * sum_k a_k cos(k phi + psi_k)`` of a margin.

    ``direction`` is ``exp(i phi)`` (complex): powers of it are much cheaper than a cosine per order.
    """
    k, amp, phase = harmonics
    coef = (amp * np.exp(1j * phase)).astype(np.complex64)
    total = np.zeros(direction.shape, dtype=np.complex64)
    power = np.ones(direction.shape, dtype=np.complex64)
    for order in range(1, int(k[-1]) + 1):
        power *= direction
        if order >= k[0]:
            total += coef[order - int(k[0])] * power
    return amplitude * total.real.astype(np.float32)


def _smooth_noise(rng: np.random.Generator, size: int, cells) -> np.ndarray:
    """Smooth random field with unit standard deviation, clipped to [-3, 3] (so that modulations stay
    positive): white noise on a coarse ``cells`` grid (rows, columns), interpolated bicubically (much
    cheaper than a wide Gaussian filter)."""
    rows, cols = (cells, cells) if np.isscalar(cells) else cells
    coarse = rng.standard_normal((int(rows), int(cols))).astype(np.float32)
    n = np.asarray(Image.fromarray(coarse).resize((size, size), Image.BICUBIC))
    return np.clip((n - n.mean()) / (n.std() + 1e-8), -3.0, 3.0)


def _wobble(rng: np.random.Generator, x: np.ndarray, amplitude: float, n: int = 3) -> np.ndarray:
    """A smooth random curve along ``x`` (a layer boundary), amplitude in image widths."""
    f = rng.uniform(0.5, 2.5, n)
    ph = rng.uniform(0, 2 * np.pi, n)
    return amplitude * np.sin(2 * np.pi * f[:, None] * x[None] + ph[:, None]).sum(axis=0) / np.sqrt(n)


def _bbox(mask: np.ndarray) -> tuple[int, int, int, int]:
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    return int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1


def _render_ultrasound(z: float, rng: np.random.Generator, size: int):
    s = severity(z)
    Y, X = _grid(size)
    x = X[0]

    # Lesion: position, size and tilt are nuisance; shape, echo level and posterior pattern follow s.
    cx, cy = rng.uniform(0.36, 0.64), rng.uniform(0.40, 0.54)
    radius = rng.uniform(0.135, 0.155)
    tilt = rng.normal(0.0, 0.08)
    lobes, angular = _harmonics(rng, range(2, 7)), _harmonics(rng, range(9, 19))
    aspect = math.exp(-0.6 + 1.2 * s)  # height / width: wider-than-tall (parallel to skin) when benign
    a, b = radius / math.sqrt(aspect), radius * math.sqrt(aspect)
    dx, dy = X - cx, Y - cy
    lx = math.cos(tilt) * dx + math.sin(tilt) * dy
    ly = -math.sin(tilt) * dx + math.cos(tilt) * dy
    rho = np.sqrt((lx / a) ** 2 + (ly / b) ** 2)
    direction = (lx / a + 1j * (ly / b)) / np.maximum(rho, 1e-6)
    boundary = 1.0 + _margin(direction, lobes, 0.02 + 0.16 * s) + _margin(direction, angular, 0.005 + 0.12 * s)
    edge = 0.03 + 0.06 * s  # margin sharpness: circumscribed when benign, indistinct when malignant
    inside = _soft_step((boundary - rho) / edge)

    # Layered breast tissue: skin line, subcutaneous fat, glandular layer, chest wall muscle.
    skin_y = rng.uniform(0.025, 0.045) + _wobble(rng, x, 0.004)
    fat_y = rng.uniform(0.17, 0.27) + _wobble(rng, x, 0.02)
    deep_y = rng.uniform(0.76, 0.88) + _wobble(rng, x, 0.025)
    step = lambda boundary_y, width: _soft_step((Y - boundary_y[None, :]) / width)  # noqa: E731
    skin = np.exp(-(((Y - skin_y[None, :]) / 0.009) ** 2))
    fat = step(skin_y + 0.012, 0.006) - step(fat_y, 0.012)
    gland = step(fat_y, 0.012) - step(deep_y, 0.02)
    deep = step(deep_y, 0.02)
    fat_level = rng.uniform(0.25, 0.35) * (1 + 0.25 * _smooth_noise(rng, size, 10))
    gland_level = rng.uniform(0.62, 0.78) * (1 + 0.2 * _smooth_noise(rng, size, (40, 14)))
    deep_level = 0.35 * (1 + 0.25 * np.sin(2 * np.pi * (Y * rng.uniform(25, 35) + 0.05 * _wobble(rng, x, 1.0))))
    tissue = 1.2 * skin + fat * fat_level + gland * gland_level + deep * deep_level

    # Hypoechoic lesion, darker with s; a thin echogenic capsule when benign, an echogenic halo when not.
    lesion_level = (0.55 - 0.5 * s) * 0.7 * (1 + 0.3 * s * _smooth_noise(rng, size, 30))
    capsule = 0.35 * (1 - s) ** 2 * np.exp(-(((rho - boundary) / 0.06) ** 2))
    halo = 0.25 * s**2 * np.exp(-(((rho - boundary - 0.18) / 0.12) ** 2))
    tissue = tissue * (1 - inside) + lesion_level * inside + (capsule + halo) * (1 - inside) * gland

    # Posterior features: enhancement behind a benign (fluid-like) lesion, acoustic shadow behind a malignant one.
    behind = np.maximum.accumulate(inside, axis=0) - inside
    behind = ndimage.gaussian_filter1d(behind, size * 0.01, axis=1)
    tissue = tissue * np.clip(1 + (1.0 - 1.9 * s) * behind, 0.1, None)

    # Speckle: magnitude of a band-limited complex Gaussian field (Rayleigh), coarser laterally, compounded
    # over two looks as modern scanners do. Uniform white noise is cheaper to draw than Gaussian and, once
    # filtered, Gaussian enough.
    field = ndimage.gaussian_filter(rng.random((4, size, size), dtype=np.float32) - 0.5,
                                    (0, 0.6 * size / 224, 1.1 * size / 224))
    speckle = np.hypot(field[0], field[1]) + np.hypot(field[2], field[3])
    speckle /= speckle.mean()

    gain = rng.uniform(0.92, 1.08) * np.exp(-rng.uniform(0.0, 0.3) * Y)  # overall gain, depth attenuation
    echo = tissue * speckle * gain
    img = 255.0 * np.sqrt(echo * (1 / 1.6))  # dynamic-range compression
    img = np.clip(np.round(img), 0, 255).astype(np.uint8)
    return img, _bbox(inside > 0.5)


def render_ultrasound(z: float, rng: np.random.Generator, size: int = 224) -> np.ndarray:
    """A B-mode breast ultrasound image whose lesion shows latent score ``z``.

    A hypoechoic lesion in layered tissue (skin line, subcutaneous fat, glandular layer), under
    multiplicative Rayleigh speckle. As ``z`` grows, smoothly (through :func:`severity`): the margin goes
    from circumscribed to microlobulated/angular (harmonic perturbations) and indistinct, the lesion turns
    from wider-than-tall to taller-than-wide, it gets darker, posterior enhancement turns into acoustic
    shadowing, and a thin echogenic capsule gives way to an echogenic halo. Position, size, tilt,
    tissue layers, speckle and gain are nuisance, drawn from ``rng`` independently of ``z``.

    Args:
        z: latent ultrasound score (about -3 to 5 in the cohort).
        rng: the generator of every random draw.
        size: side of the square image in pixels.

    Returns:
        ``(size, size)`` uint8 gray image.
    """
    return _render_ultrasound(float(z), rng, int(size))[0]


@lru_cache(maxsize=4)
def _power_law_filter(size: int, beta: float) -> np.ndarray:
    f = np.hypot(*np.meshgrid(np.fft.fftfreq(size), np.fft.rfftfreq(size), indexing="ij"))
    return ((f**2 + (2.0 / size) ** 2) ** (-beta / 4)).astype(np.float32)


def _power_law_noise(rng: np.random.Generator, size: int, beta: float = 3.0) -> np.ndarray:
    """Noise with power spectrum ``1/f**beta`` (fibroglandular texture), unit standard deviation."""
    white = rng.random((size, size), dtype=np.float32) - 0.5
    n = np.fft.irfft2(np.fft.rfft2(white) * _power_law_filter(size, beta), s=(size, size)).astype(np.float32)
    return (n - n.mean()) / n.std()


def _render_mammogram(z: float, rng: np.random.Generator, size: int, view: str):
    if view not in VIEWS:
        raise ValueError(f"view: expected one of {VIEWS}, got {view!r}")
    s = severity(z)
    Y, X = _grid(size)

    # The lesion itself, shared by the views: drawn first, so equal generator states give the same lesion.
    left = rng.random() < 0.5
    radius = rng.uniform(0.095, 0.115)
    elongation = rng.uniform(0.8, 1.0)
    orientation = rng.uniform(0, np.pi)
    lobes = _harmonics(rng, range(2, 7))
    place_rho, place_angle = rng.uniform(0.3, 0.55), rng.uniform(-0.8, 0.8)
    n_spicules = 28
    spicule_angle = rng.uniform(0, 2 * np.pi, n_spicules)
    # Severity at which each spicule starts to grow, spread evenly so that their number tracks z closely.
    spicule_onset = 0.05 + 0.9 * (np.arange(n_spicules) + rng.random(n_spicules)) / n_spicules
    spicule_length = rng.uniform(0.8, 1.2, n_spicules)
    spicule_width = rng.uniform(0.9, 1.1, n_spicules)
    # Everything else depends on the view: a different compression of the same breast.
    nuis = np.random.default_rng([int(rng.integers(2**32)), _VIEW_CODE[view]])

    # Breast silhouette with its chest wall at the left edge (flipped at the end for the other side).
    if view == "CC":
        depth, half_height, cy, tilt = nuis.uniform(0.70, 0.86), nuis.uniform(0.37, 0.45), nuis.uniform(0.46, 0.54), 0
    else:  # MLO: a taller, slightly tilted silhouette
        depth, half_height, cy = nuis.uniform(0.66, 0.82), nuis.uniform(0.46, 0.52), nuis.uniform(0.52, 0.58)
        tilt = -0.15
    by = (Y - cy) * math.cos(tilt) - X * math.sin(tilt)
    bx = X * math.cos(tilt) + (Y - cy) * math.sin(tilt)
    rho_b = np.sqrt((bx / depth) ** 2 + (by / half_height) ** 2)
    breast = _soft_step((1.0 - rho_b) / 0.008)
    thickness = np.sqrt(np.clip(1.0 - rho_b**2, 0.0, 1.0))  # projected thickness of a compressed ellipsoid

    texture = _power_law_noise(nuis, size)
    density = nuis.uniform(-0.4, 0.4)
    glandular = _soft_step(2.0 * (texture + density - 1.2 * rho_b + 0.4))
    tissue = breast * (0.18 + 0.5 * thickness) * (0.7 + 0.3 * glandular)
    if view == "MLO":
        top, reach = nuis.uniform(0.22, 0.35), nuis.uniform(0.45, 0.7)
        pectoral = _soft_step((top * (1 - Y / reach) - X) / 0.006) * breast
        tissue = tissue * (1 - pectoral) + 0.7 * pectoral

    # Mass: denser and less circumscribed with s, with spicules whose number and length grow with s.
    angle = place_angle + nuis.normal(0, 0.15)
    mx = place_rho * depth * math.cos(angle)
    my = cy + place_rho * half_height * math.sin(angle)
    theta = orientation + (0.6 if view == "MLO" else 0.0) + nuis.normal(0, 0.1)
    squash = elongation * (0.9 if view == "MLO" else 1.0)
    a, b = radius / math.sqrt(squash), radius * math.sqrt(squash)
    dx, dy = X - mx, Y - my
    lx = math.cos(theta) * dx + math.sin(theta) * dy
    ly = -math.sin(theta) * dx + math.cos(theta) * dy
    rho = np.sqrt((lx / a) ** 2 + (ly / b) ** 2)
    boundary = 1.0 + _margin((lx / a + 1j * (ly / b)) / np.maximum(rho, 1e-6), lobes, 0.02 + 0.12 * s)
    edge = 0.03 + 0.3 * s
    body = _soft_step((boundary - rho) / edge) * (0.6 + 0.4 * np.sqrt(np.clip(1 - (rho / boundary) ** 2, 0, 1)))
    contrast = 0.06 + 0.5 * s

    grow = np.clip((s - spicule_onset) / 0.25, 0.0, 1.0)
    spicules = np.zeros((size, size), dtype=np.float32)
    base = 0.8 * radius
    for k in np.flatnonzero(grow > 0):
        # Each spicule is drawn in its own bounding box: a thin ray from the mass outwards, tapering.
        length, width = radius * spicule_length[k] * 2.2 * grow[k], 0.0065 * spicule_width[k]
        ux, uy = math.cos(spicule_angle[k] + theta), math.sin(spicule_angle[k] + theta)  # turn with the mass
        ends_x = mx + ux * np.array([base, base + length])
        ends_y = my + uy * np.array([base, base + length])
        margin = 4 * width
        c0, c1 = max(int((ends_x.min() - margin) * size), 0), min(int((ends_x.max() + margin) * size) + 2, size)
        r0, r1 = max(int((ends_y.min() - margin) * size), 0), min(int((ends_y.max() + margin) * size) + 2, size)
        if c0 >= c1 or r0 >= r1:
            continue
        px, py = X[r0:r1, c0:c1] - mx, Y[r0:r1, c0:c1] - my
        t = (px * ux + py * uy - base) / length
        across = px * uy - py * ux
        ray = np.exp(-0.5 * (across / width) ** 2) * np.sqrt(np.clip(1 - t, 0, 1)) * (t >= 0)
        spicules[r0:r1, c0:c1] += (0.12 + 0.15 * s) * grow[k] * ray
    mass = contrast * body + spicules

    img = 0.03 + tissue + breast * mass
    img = ndimage.gaussian_filter(img, 0.6 * size / 256) * nuis.uniform(0.92, 1.08)
    img = img + 0.028 * (nuis.random(img.shape, dtype=np.float32) - 0.5)  # quantum noise, sd 0.008
    img = np.clip(np.round(img * MAMMOGRAPHY_MAX_VALUE), 0, MAMMOGRAPHY_MAX_VALUE).astype(np.uint16)
    lesion = (body > 0.5) | (spicules > 0.03)
    if not left:
        img, lesion = img[:, ::-1].copy(), lesion[:, ::-1]
    return img, _bbox(lesion), ("L" if left else "R")


def render_mammogram(z: float, rng: np.random.Generator, size: int = 256, view: str = "CC") -> np.ndarray:
    """A synthetic mammogram (one view) whose mass shows latent score ``z``.

    A breast silhouette against a dark background, with power-law fibroglandular texture (and the
    pectoral muscle in MLO). As ``z`` grows, smoothly (through :func:`severity`): the mass gets denser,
    its margin goes from circumscribed to lobulated and indistinct, and spicules radiate from it, more
    of them and longer. Breast shape, density, laterality, mass position, size and orientation are
    nuisance. The lesion (shape, spicules, laterality) is drawn first from ``rng``, and the view's
    nuisance from a stream derived from ``rng`` and ``view``: two generators in the same state give the
    same lesion seen in the two views.

    Args:
        z: latent mammography score (about -3 to 4.5 in the cohort).
        rng: the generator of every random draw.
        size: side of the square image in pixels.
        view: ``"CC"`` or ``"MLO"``.

    Returns:
        ``(size, size)`` uint16 image with 12-bit values (0 to 4095), brighter = denser.
    """
    return _render_mammogram(float(z), rng, int(size), view)[0]


# ---------------------------------------------------------------------------------------------------
# Writing


def _dicom_uid(*parts) -> str:
    from pydicom.uid import generate_uid

    return generate_uid(entropy_srcs=["mmlib.synth", *map(str, parts)])


def write_mammogram_dicom(path: Path, pixels: np.ndarray, *, patient_id: str, view: str, laterality: str,
                          seed: int) -> None:
    """Write one synthetic mammogram as a DICOM file (Digital Mammography, for presentation).

    Args:
        path: output file.
        pixels: ``(H, W)`` uint16 image with 12-bit values.
        patient_id: the manifest's patient id (also DICOM PatientID).
        view: ``CC`` or ``MLO`` (ViewPosition).
        laterality: ``L`` or ``R`` (ImageLaterality).
        seed: the cohort's seed; the UIDs are derived from it, so the files are reproducible.
    """
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian

    if pixels.dtype != np.uint16 or pixels.ndim != 2:
        raise ValueError(f"pixels: expected a 2-D uint16 array, got {pixels.dtype} of shape {pixels.shape}")
    sop_uid = _dicom_uid(seed, patient_id, view)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = _MG_SOP_CLASS
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = _MG_SOP_CLASS
    ds.SOPInstanceUID = sop_uid
    ds.StudyInstanceUID = _dicom_uid(seed, patient_id, "study")
    ds.SeriesInstanceUID = _dicom_uid(seed, patient_id, "series", view)
    # Age is deliberately absent: it is a separate input that may be missing by design.
    ds.PatientID = patient_id
    ds.PatientName = f"Synthetic^{patient_id}"
    ds.Modality = "MG"
    ds.PresentationIntentType = "FOR PRESENTATION"
    ds.ViewPosition = view
    ds.ImageLaterality = laterality
    ds.BodyPartExamined = "BREAST"
    ds.BurnedInAnnotation = "NO"
    ds.ImageType = ["DERIVED", "PRIMARY"]
    ds.SeriesNumber = _VIEW_CODE[view] + 1
    ds.InstanceNumber = 1
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = pixels.shape
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0
    ds.RescaleIntercept = 0
    ds.RescaleSlope = 1
    ds.RescaleType = "US"
    ds.WindowCenter = (MAMMOGRAPHY_MAX_VALUE + 1) // 2
    ds.WindowWidth = MAMMOGRAPHY_MAX_VALUE + 1
    ds.PixelData = np.ascontiguousarray(pixels, dtype="<u2").tobytes()
    ds.save_as(path, enforce_file_format=True)


def _prepare_out_dir(out_dir: Path) -> None:
    """Create ``out_dir``; clear the images of an earlier synthetic cohort there, refuse anything else."""
    if out_dir.exists() and not out_dir.is_dir():
        raise FileExistsError(f"out_dir {out_dir} exists and is not a folder")
    if out_dir.is_dir() and any(out_dir.iterdir()):
        info = out_dir / "cohort.json"
        try:
            previous = json.loads(info.read_text())
        except (OSError, ValueError):
            previous = None
        if not isinstance(previous, dict) or previous.get("generator") != __name__:
            raise FileExistsError(f"out_dir {out_dir} is not empty and holds no synthetic cohort "
                                  f"(no {info.name} written by {__name__}); expected an empty or new folder")
        shutil.rmtree(out_dir / "images", ignore_errors=True)
    (out_dir / "images" / "mammography").mkdir(parents=True, exist_ok=True)
    (out_dir / "images" / "ultrasound").mkdir(parents=True, exist_ok=True)


def _auc(y, score) -> float:
    return float(roc_auc_score(y, score))


def _cohort_info(config: SynthConfig, latents: pd.DataFrame, missing: np.ndarray, split: np.ndarray) -> dict:
    y = latents["y"].to_numpy()
    d = config.informativeness
    z_observed = np.column_stack([latents[f"z_{s}"].to_numpy() for s in SOURCES])
    # Risk given only the inputs each patient has: the ceiling of a model under the designed missingness.
    present = ~missing[:, [MISSING_KEYS.index(s) for s in SOURCES]]
    observed_risk = bayes_log_odds(z_observed * present, d, config.prevalence) + (
        np.array([d[s] ** 2 / 2 for s in SOURCES]) * ~present).sum(axis=1)
    by_split = {}
    for name in ("dev", "test"):
        rows = split == name
        if len(np.unique(y[rows])) == 2:
            by_split[name] = _auc(y[rows], latents["latent_risk"].to_numpy()[rows])
    return {
        "generator": __name__,
        "generator_version": GENERATOR_VERSION,
        "synthetic": True,
        "note": ("Synthetic data generated by mmlib.synth from a seed: no real patient. Labels come first "
                 "and each source's evidence is drawn given the label, so the oracle AUC (the AUC of the "
                 "Bayes log-odds given every latent score) is the best any model can reach in expectation."),
        "config": config.to_dict(),
        "n_patients": config.n_patients,
        "n_malignant": int(y.sum()),
        "n_test": int((split == "test").sum()),
        "oracle_auc": _auc(y, latents["latent_risk"]),
        "oracle_auc_theoretical": float(ndtr(math.sqrt(sum(v**2 for v in d.values()) / 2))),
        "oracle_auc_by_split": by_split,
        "oracle_auc_observed": _auc(y, observed_risk),
        "source_auc": {s: {"empirical": _auc(y, latents[f"z_{s}"]), "theoretical": float(ndtr(d[s] / math.sqrt(2)))}
                       for s in SOURCES},
        "importance_order": sorted(SOURCES, key=lambda s: (-d[s], SOURCES.index(s))),
        "source_modality": dict(SOURCE_MODALITY),
        "missing_realised": {k: float(missing[:, j].mean()) for j, k in enumerate(MISSING_KEYS)},
    }


def generate_cohort(out_dir, config: SynthConfig | None = None, **overrides) -> Path:
    """Generate the synthetic paired cohort and write it to ``out_dir``.

    Args:
        out_dir: destination folder; created if needed. It must be empty or hold an earlier synthetic
            cohort (whose images are then replaced).
        config: the parameters; default :class:`SynthConfig`'s.
        **overrides: fields of :class:`SynthConfig` replacing those of ``config``.

    Returns:
        Path of the written ``manifest.csv``.
    """
    config = _config_from(config, overrides)
    out_dir = Path(out_dir)
    _prepare_out_dir(out_dir)

    latents = _draw_latents(config)
    missing = _draw_missing(config)
    split = _draw_split(config, latents["y"].to_numpy())
    has = {k: ~missing[:, j] for j, k in enumerate(MISSING_KEYS)}
    views = VIEWS[: config.mammography_views]
    extension = "dcm" if config.mammography_format == "dicom" else "png"

    rows = []
    for i, pid in enumerate(latents["patient_id"]):
        mg_paths, mg_boxes, us_paths, us_boxes = [], [], [], []
        if has["mammography"][i]:
            seed = int(_image_rng(config, "mammography", i).integers(2**63))
            for view in views:
                # Each view restarts the same lesion stream: one lesion, several projections.
                pixels, box, laterality = _render_mammogram(
                    latents.at[i, "z_mammography"], np.random.default_rng(seed), config.mammography_size, view)
                rel = f"images/mammography/{pid}_{view}.{extension}"
                if extension == "dcm":
                    write_mammogram_dicom(out_dir / rel, pixels, patient_id=pid, view=view,
                                          laterality=laterality, seed=config.seed)
                else:
                    # 8-bit, so that every PNG reader sees the same values.
                    Image.fromarray((pixels >> 4).astype(np.uint8)).save(out_dir / rel)
                mg_paths.append(rel)
                mg_boxes.append(" ".join(map(str, box)))
        if has["ultrasound"][i]:
            pixels, box = _render_ultrasound(latents.at[i, "z_ultrasound"], _image_rng(config, "ultrasound", i),
                                             config.ultrasound_size)
            rel = f"images/ultrasound/{pid}.png"
            Image.fromarray(pixels).save(out_dir / rel)
            us_paths.append(rel)
            us_boxes.append(" ".join(map(str, box)))
        rows.append({
            "patient_id": pid,
            "label": LABELS[latents.at[i, "y"]],
            "age": latents.at[i, "age"] if has["age"][i] else np.nan,
            "mammography": PATH_SEPARATOR.join(mg_paths),
            "ultrasound": PATH_SEPARATOR.join(us_paths),
            "split": split[i],
            "mammography_bbox": PATH_SEPARATOR.join(mg_boxes),
            "ultrasound_bbox": PATH_SEPARATOR.join(us_boxes),
        })
    manifest = out_dir / "manifest.csv"
    pd.DataFrame(rows).to_csv(manifest, index=False, lineterminator="\n")

    truth = latents.assign(label=[LABELS[v] for v in latents["y"]])[list(TRUTH_COLUMNS)]
    truth.to_csv(out_dir / "truth.csv", index=False, lineterminator="\n")
    info = _cohort_info(config, latents, missing, split)
    (out_dir / "cohort.json").write_text(json.dumps(info, indent=2) + "\n")
    return manifest


def load_truth(cohort_dir) -> pd.DataFrame:
    """The generating truth of a synthetic cohort (``truth.csv``): one row per patient.

    Returns:
        Columns :data:`TRUTH_COLUMNS`; ``patient_id`` and ``label`` as text.
    """
    path = Path(cohort_dir) / "truth.csv"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no truth.csv; expected a cohort written by mmlib.synth.generate_cohort")
    truth = pd.read_csv(path, dtype={"patient_id": str, "label": str})
    absent = [c for c in TRUTH_COLUMNS if c not in truth.columns]
    if absent:
        raise ValueError(f"{path}: columns {absent} are missing; expected {list(TRUTH_COLUMNS)}")
    return truth[list(TRUTH_COLUMNS)]


def load_cohort_info(cohort_dir) -> dict:
    """The description of a synthetic cohort (``cohort.json``): config, oracle AUCs, importance order."""
    path = Path(cohort_dir) / "cohort.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no cohort.json; expected a cohort written by mmlib.synth.generate_cohort")
    info = json.loads(path.read_text())
    if not isinstance(info, dict) or "oracle_auc" not in info:
        raise ValueError(f"{path}: expected a JSON object with 'oracle_auc'")
    return info


def scenario_oracle(cohort_dir, keep) -> pd.DataFrame:
    """The oracle of one input subset: the Bayes risk given only the sources a model could see.

    A source counts when its input is in ``keep`` (names of :data:`mmlib.schema.MODALITIES`) *and* the patient
    has it (the designed missingness of the manifest); the others contribute nothing to the log-odds. With every
    input kept this is the ceiling under the missingness (``oracle_auc_observed``); with one input it is that
    source's own ceiling. The AUC of ``oracle_prob`` is what no model given those inputs can beat in expectation.

    Args:
        cohort_dir: a folder written by :func:`generate_cohort`.
        keep: the inputs of the scenario, e.g. ``("ultrasound", "clinical")``.

    Returns:
        One row per patient: ``patient_id``, ``label`` (0/1), ``oracle_risk`` (log-odds), ``oracle_prob``.
    """
    from .schema import MODALITIES

    keep = tuple(keep)
    unknown = [k for k in keep if k not in MODALITIES]
    if unknown or not keep:
        raise ValueError(f"keep must be a non-empty subset of {MODALITIES}, got {keep!r}")
    cohort_dir = Path(cohort_dir)
    info, truth = load_cohort_info(cohort_dir), load_truth(cohort_dir)
    manifest = pd.read_csv(cohort_dir / "manifest.csv", dtype={"patient_id": str, "mammography": str,
                                                               "ultrasound": str})
    present = {"age": manifest["age"].notna().to_numpy(),
               "mammography": manifest["mammography"].fillna("").str.len().to_numpy() > 0,
               "ultrasound": manifest["ultrasound"].fillna("").str.len().to_numpy() > 0}
    truth = truth.set_index("patient_id").loc[manifest["patient_id"]]
    d, prevalence = info["config"]["informativeness"], float(info["config"]["prevalence"])
    risk = np.full(len(manifest), math.log(prevalence / (1 - prevalence)))
    for s in SOURCES:
        if SOURCE_MODALITY[s] in keep:
            z = truth[f"z_{s}"].to_numpy()
            risk = risk + np.where(present[s], d[s] * z - d[s] ** 2 / 2, 0.0)
    return pd.DataFrame({"patient_id": manifest["patient_id"].to_numpy(),
                         "label": (truth["label"].to_numpy() == LABELS[1]).astype(int),
                         "oracle_risk": risk, "oracle_prob": expit(risk)})
