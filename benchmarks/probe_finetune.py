"""Fine-tuning probe: how much do the encoder's top blocks gain when trained on the cohort instead of kept frozen?

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/probe_finetune.py --profile cdd-cesm \
        [--size 224] [--cut 3] [--top 5] [--epochs 15] [--lr 1e-3] [--seed 0]

The ImageNet encoder's stem and blocks ``0..cut`` run once per view and flip (none, horizontal, vertical, both) and
their maps are cached; blocks ``cut+1..top`` and a linear head on their average-pooled output are then trained per
fold (AdamW, one-cycle schedule, a random flip of each view per step), with patient-grouped stratified 5-fold CV on
the cohort's units. A unit's score is the mean over its views and the four flips. Printed: each fold's AUC, the
pooled out-of-fold AUC of the image alone and with age (a logistic regression on the out-of-fold score and age,
cross-validated on other patient-grouped splits), and the time. Reads the profile's development patients only (split dev of the
study's splitter). Prints the figures and writes them to ``results/probes/probe_finetune.csv`` (:mod:`mmlib.probes`),
which the real-data chapter's CDD-CESM table reads. Asserts nothing.
"""

from __future__ import annotations

import argparse
import copy
import sys
import time

import numpy as np
from probe_features import age_columns, cohort_modality


def cached_maps(profile: str, *, size: int, cut: int):
    """(maps (N, 4, C, H, W) float16, view -> unit index, cohort patients, encoder's timm model) for every view."""
    import torch

    from mmlib.data import ImageLoader, ImageSettings, patient_views
    from mmlib.encoders import create_encoder

    p, pats, modality = cohort_modality(profile)
    enc = create_encoder(p["encoder"], weights=p["encoder_weights"]).eval()
    net = enc.model
    if not hasattr(net, "blocks") or not 0 <= cut < len(net.blocks) - 1:
        raise SystemExit(f"--cut must be a block index of {p['encoder']!r} below its last (0..{len(net.blocks) - 2})")
    loader = ImageLoader(ImageSettings(size=size, roi=bool(p["roi"]), roi_margin=p["roi_margin"], mean=enc.mean, std=enc.std))
    views, unit = [], []
    for i in range(len(pats)):
        for v in patient_views(pats.iloc[i], modality):
            views.append(v)
            unit.append(i)

    def early(x):
        x = net.bn1(net.conv_stem(x))
        for block in net.blocks[: cut + 1]:
            x = block(x)
        return x

    flips = ((), (-1,), (-2,), (-2, -1))
    maps = []
    with torch.no_grad():
        for j in range(0, len(views), 32):
            imgs = torch.stack([loader.normalise(torch.from_numpy(loader(*v))[None]) for v in views[j: j + 32]])
            maps.append(torch.stack([early(imgs.flip(f) if f else imgs).half() for f in flips], 1))
    return torch.cat(maps), np.array(unit), pats, net


def top_blocks(net, cut: int, top: int, channels: int):
    """A copy of ``net``'s blocks ``cut+1..top`` (input: ``channels`` maps) and a linear head on their average-pooled
    output: ``Sequential(body, head)``."""
    import torch
    import torch.nn as nn

    body = nn.Sequential(copy.deepcopy(nn.Sequential(*net.blocks[cut + 1: top + 1])), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Dropout(0.3))
    with torch.no_grad():
        n = body.eval()(torch.zeros(1, channels, 16, 16)).shape[1]
    return nn.Sequential(body, nn.Sequential(nn.Linear(n, 1), nn.Flatten(0)))


def run(maps, unit, y, groups, age, net, *, cut, top, epochs, lr, seed, bs=32):
    import torch
    import torch.nn.functional as F
    from fastprogress.fastprogress import progress_bar
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import StratifiedGroupKFold, cross_val_predict

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    oof = np.zeros(len(y))
    y_view = torch.tensor(y[unit], dtype=torch.float32)
    folds = StratifiedGroupKFold(5, shuffle=True, random_state=seed).split(np.zeros(len(y)), y, groups)
    for k, (tr_u, te_u) in enumerate(folds):
        tr = np.flatnonzero(np.isin(unit, tr_u))
        model = top_blocks(net, cut, top, maps.shape[2]).train()
        head = list(model[1].parameters())
        opt = torch.optim.AdamW([{"params": model[0].parameters(), "lr": lr / 3}, {"params": head, "lr": lr}], weight_decay=1e-2)
        steps = epochs * int(np.ceil(len(tr) / bs))
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=[lr / 3, lr], total_steps=steps, pct_start=0.2)
        for _ in progress_bar(range(epochs), leave=False):
            order = rng.permutation(tr)
            for j in range(0, len(order), bs):
                idx = torch.as_tensor(order[j: j + bs])
                x = maps[idx, torch.randint(0, 4, (len(idx),))].float()
                loss = F.binary_cross_entropy_with_logits(model(x), y_view[idx])
                opt.zero_grad()
                loss.backward()
                opt.step()
                sched.step()
        model.eval()

        def unit_scores(units):
            views = np.flatnonzero(np.isin(unit, units))
            with torch.no_grad():
                v = torch.stack([model(maps[torch.as_tensor(views), f].float()) for f in range(4)], 1).mean(1).numpy()
            return np.array([v[unit[views] == u].mean() for u in units])

        oof[te_u] = unit_scores(te_u)
        print(f"  fold {k}: AUC {roc_auc_score(y[te_u], oof[te_u]):.3f}", flush=True)
    # With age: a logistic regression on the out-of-fold score and age, itself cross-validated on other splits.
    Z = np.c_[(oof - oof.mean()) / oof.std(), age_columns(age)]
    oof_age = cross_val_predict(LogisticRegression(), Z, y, groups=groups, method="decision_function",
                                cv=StratifiedGroupKFold(5, shuffle=True, random_state=seed + 1))
    return roc_auc_score(y, oof), roc_auc_score(y, oof_age)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--profile", default="cdd-cesm")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--cut", type=int, default=3, help="last frozen block (its output is cached)")
    ap.add_argument("--top", type=int, default=5, help="last trained block")
    ap.add_argument("--epochs", type=int, default=15)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    if a.top <= a.cut:
        raise SystemExit(f"--top ({a.top}) must be above --cut ({a.cut})")
    t = time.perf_counter()
    maps, unit, pats, net = cached_maps(a.profile, size=a.size, cut=a.cut)
    if a.top >= len(net.blocks):
        raise SystemExit(f"--top must be a block index (0..{len(net.blocks) - 1})")
    t_cache = time.perf_counter() - t
    print(f"{a.profile}: {len(pats)} units, {len(unit)} views, cached maps {tuple(maps.shape[2:])} x 4 flips "
          f"in {t_cache:.0f} s; training blocks {a.cut + 1}-{a.top}, {a.epochs} epochs, {a.size} px")
    age = pats["age"].to_numpy(float) if "age" in pats else np.full(len(pats), np.nan)
    auc, auc_age = run(maps, unit, pats["label"].to_numpy().astype(int), pats["group"].astype(str).to_numpy(), age, net,
                       cut=a.cut, top=a.top, epochs=a.epochs, lr=a.lr, seed=a.seed)
    minutes = (time.perf_counter() - t - t_cache) / 60
    print(f"  pooled out-of-fold AUC: image {auc:.3f}, image+age {auc_age:.3f}; "
          f"cache {t_cache:.0f} s, training {minutes * 60:.0f} s")
    from mmlib.probes import record

    setting = f"cut={a.cut} top={a.top} epochs={a.epochs} size={a.size} lr={a.lr:g} seed={a.seed}"
    rows = [{"profile": a.profile, "setting": setting, "variant": v, "C": "", "auc": x, "minutes": round(minutes, 1),
             "units": len(pats), "patients": int(pats["group"].nunique()),
             "command": "python benchmarks/probe_finetune.py " + " ".join(sys.argv[1:])}
            for v, x in (("image", auc), ("image+age", auc_age))]
    print(f"written to {record('probe_finetune', rows, keys=['profile', 'setting', 'variant'])}")


if __name__ == "__main__":
    main()
