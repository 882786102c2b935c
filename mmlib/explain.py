"""The interpretable internals of trained models, as tidy tables the book plots.

- AMW-CNN: the adaptive weight of each input per patient (:func:`modality_weights_table`).
- MM-ABMIL: the attention over the instances of each patient's bag (:func:`instance_attention_table`).
- CUF-MT: the CLS token's attention over the spatial tokens of each image (:func:`attention_maps`).
- Any model: a layer table with parameter counts (:func:`layer_table`).

Models are the safe folders a run saves under ``results/<profile>/models/<model>/``; inputs are built with
the :class:`~mmlib.data.SampleSpec` saved beside them, exactly as ``mmlib predict`` does.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch

from .batch import PRESENT
from .data import MultimodalDataset, SampleSpec, collate
from .schema import MODALITIES


def model_inputs(cohort, patient_ids, spec: SampleSpec, *, keep=None) -> tuple[dict, np.ndarray]:
    """A batch of image inputs for ``patient_ids`` (in that order) and their labels."""
    from .batch import with_presence

    index = pd.Index(cohort.patients["patient_id"].astype(str))
    missing = [p for p in patient_ids if p not in index]
    if missing:
        raise KeyError(f"patients {missing[:5]} are not in cohort {cohort.manifest}")
    rows = index.get_indexer([str(p) for p in patient_ids])
    ds = MultimodalDataset(cohort, rows, spec, train=False)
    x, y = collate([ds[i] for i in range(len(rows))])
    if keep is not None:
        x = with_presence(x, keep)
    return x, y.numpy()


@torch.no_grad()
def internals(model, x: dict) -> tuple[np.ndarray, dict]:
    """Probabilities and the internals of ``model`` on batch ``x``."""
    model.eval()
    logits, inside = model.forward_with_internals(x)
    return torch.sigmoid(logits).numpy(), inside


def example_patients(cohort, splits: pd.DataFrame, *, n: int = 4, seed: int = 0) -> list[str]:
    """``n`` internal-test patients (half benign, half malignant, all inputs present where possible)."""
    test = splits[splits["split"] == "test"] if (splits["split"] == "test").any() else splits
    pres = cohort.presence().set_index(cohort.patients["patient_id"].astype(str)) if hasattr(cohort, "presence") else None
    rng = np.random.default_rng(seed)
    out = []
    for label in (0, 1):
        ids = test.loc[test["label"] == label, "patient_id"].astype(str).to_numpy()
        if pres is not None and len(ids):
            full = [i for i in ids if pres.loc[i].all()]
            ids = np.array(full) if full else ids
        out += list(rng.choice(ids, size=min(len(ids), n // 2 + (n % 2) * label), replace=False)) if len(ids) else []
    return [str(i) for i in out]


def modality_weights_table(model, x: dict, patient_ids, labels) -> pd.DataFrame:
    """AMW-CNN: ``patient_id, label, modality, weight, present`` (weights of a patient sum to 1 over present inputs)."""
    prob, inside = internals(model, x)
    if "modality_weights" not in inside:
        raise ValueError(f"{type(model).__name__} exposes no modality weights (AMW-CNN with fusion='adaptive' or 'equal' does)")
    w = inside["modality_weights"].numpy()
    names = list(getattr(model, "modalities", MODALITIES))
    present = x[PRESENT].numpy()
    rows = []
    for i, pid in enumerate(patient_ids):
        for j, m in enumerate(names):
            rows.append({"patient_id": pid, "label": int(labels[i]), "prob_malignant": float(prob[i]), "modality": m,
                         "weight": float(w[i, j]), "present": bool(present[i, MODALITIES.index(m)])})
    return pd.DataFrame(rows)


def instance_attention_table(model, x: dict, patient_ids, labels) -> pd.DataFrame:
    """MM-ABMIL: ``patient_id, label, instance, modality, view, tile, attention`` over present instances."""
    prob, inside = internals(model, x)
    att, index, mask = inside["instance_attention"].numpy(), inside["instance_index"], inside["instance_mask"].numpy()
    rows = []
    for i, pid in enumerate(patient_ids):
        for j, (m, view, tile) in enumerate(index):
            if mask[i, j]:
                name = m if m == "clinical" else f"{m} view {view + 1}" + (f" tile {tile + 1}" if tile > 0 or len(index) > 4 else "")
                rows.append({"patient_id": pid, "label": int(labels[i]), "prob_malignant": float(prob[i]), "instance": name,
                             "modality": m, "view": int(view), "tile": int(tile), "attention": float(att[i, j])})
    return pd.DataFrame(rows)


def attention_maps(model, x: dict, *, layer: int = -1) -> dict:
    """CUF-MT: CLS attention of one layer reshaped onto each image's token grid.

    Returns ``{(patient_index, modality, view): (h, w) array}`` plus ``("clinical", patient_index)`` -> the
    attention on the clinical token. Values are the share of the CLS token's attention (summing to 1 over all
    tokens of a patient).
    """
    _, inside = internals(model, x)
    att = inside["attention"][:, layer].numpy()
    index, grid = inside["token_index"], inside["grid"]
    out = {}
    for i in range(att.shape[0]):
        for t, (m, view, cell) in enumerate(index):
            if m == "cls":
                continue
            if m == "clinical":
                out[("clinical", i)] = float(att[i, t])
                continue
            h, w = grid[m]
            key = (i, m, int(view))
            if key not in out:
                out[key] = np.zeros((h, w))
            out[key][cell // w, cell % w] = att[i, t]
    return out


def layer_table(model) -> pd.DataFrame:
    """Top-level parts of a model with their type and trainable/frozen parameter counts."""
    rows = []
    seen = set()
    for name, module in model.named_children():
        params = [p for p in module.parameters() if id(p) not in seen]
        seen.update(id(p) for p in params)
        rows.append({"part": name, "type": type(module).__name__,
                     "parameters": int(sum(p.numel() for p in params)),
                     "trainable": int(sum(p.numel() for p in params if p.requires_grad))})
    own = [p for n, p in model.named_parameters(recurse=False)]
    if own:
        rows.append({"part": "(own)", "type": "Parameter", "parameters": int(sum(p.numel() for p in own)),
                     "trainable": int(sum(p.numel() for p in own if p.requires_grad))})
    return pd.DataFrame(rows)


def explained_model(meta: dict) -> str:
    """Which model the explanations read, in words, from :func:`load_run_model`'s ``meta``."""
    if meta.get("ensemble_members"):
        return (f"the first member (seed {meta['explained_seed']}) of the saved model, which averages "
                f"{meta['ensemble_members']} seeds' refits on all development patients")
    return "the model trained on all development patients"


def load_run_model(results_dir, name: str):
    """``(model, meta)`` of a model a run saved (``results_dir/models/<name>``), for explanation: of a seed
    ensemble (:class:`mmlib.learner.SeedEnsemble`) its first member, the seed ``meta["explained_seed"]``
    (the members' internals differ, and the explanations read one model's)."""
    from .learner import SeedEnsemble, load_model

    folder = Path(results_dir) / "models" / name
    model, meta = load_model(folder)
    if isinstance(model, SeedEnsemble):
        meta["explained_seed"] = model.seeds[0]
        meta["ensemble_members"] = len(model.members)
        model = model.members[0]
    return model, meta
