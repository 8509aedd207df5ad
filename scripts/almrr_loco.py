"""Leave one defect type out: how an ALMRR run's map, and each fusion rule, localise defect types they never saw.

    .venv/bin/python scripts/almrr_loco.py RUN_DIR [--maps FILE.npz] [--device cpu]
                                           [--data KIND:PATH [--category C] [--data-param KEY=VALUE]]

An ALMRR run trains on normal images and synthetic anomalies, so a real defect type is "unseen" by the model; what
can still see it is a development choice made on test images, such as the fusion rule of the refined and the
distance map (apps/almrr/fusion.py). This script makes that choice without each type X in turn: for every defect
type X of the test split, each rule of ``RULES`` is scored (pixel AP) on the normal test images and those of the
other types, and the best is evaluated on the normal test images and X's. Per type it prints the run's own map
(its configured rule), the distance branch alone, a PaDiM on the same features (scripts/padim_baseline.py), the
rule chosen without X, and every rule, with all seven metrics; then what the chosen rule was for each X.

The maps are computed once per run (a few minutes of one core for Magnetic-tile-defect's 399 test images, PaDiM's
fit included); ``--maps FILE.npz`` keeps them, and a later call with the same file reads them instead.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))    # padim_baseline, next to this script

RULES = tuple([("sum", w) for w in (0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0)] + [("max", w) for w in (0.5, 1.0, 2.0)])
CHOOSE_BY = "pixel_ap"


def rule_name(rule: tuple[str, float]) -> str:
    return f"{rule[0]} {rule[1]:g}"


def fuse_rule(maps: dict[str, np.ndarray], rule: tuple[str, float]) -> torch.Tensor:
    """The N × H × W map of ``rule`` (one of :data:`RULES`) on ``maps``' refined and scaled maps."""
    from apps.almrr import fuse

    return fuse(torch.from_numpy(maps["refined"]), torch.from_numpy(maps["scaled"]), *rule)


def compute_maps(run, method, data, train_idx: list[int]) -> dict[str, np.ndarray]:
    """The test split's ``refined`` and ``scaled`` (distance) maps, ``padim`` maps, ``masks``, ``labels`` and
    ``types``, with the run's own ``map`` and image ``score``, as numpy arrays."""
    from padim_baseline import padim_maps

    from apps.common import image_batches

    bs = method.eval_batch_size
    scores, own, branches, info = run.infer(data.test, device=method.device, batch_size=bs, progress="test")
    with torch.no_grad():
        refined = np.concatenate([method.branch_maps(images)[0][:, 0].cpu().numpy()
                                  for _, images in image_batches(data.test, bs, method.device)])
    scaled = method.distance.scaled(torch.from_numpy(branches["distance"])[:, None])[:, 0].numpy()
    padim, _, _, _ = padim_maps(method, data, train_idx)
    return {"refined": refined, "scaled": scaled, "padim": padim, "map": own, "score": scores,
            "masks": info["masks"], "labels": np.array(data.test.labels, dtype=np.int64),
            "types": np.array([str(t) for t in data.test.defect_types])}


def evaluate_rows(maps: dict[str, np.ndarray], score) -> tuple[dict[str, dict], dict[str, str]]:
    """``{type: {row: metrics}}`` and ``{type: chosen rule}``; rows: the run's map, the distance alone, PaDiM, the
    rule chosen without the type, every rule. ``score`` turns N×1×H×W maps into image scores (the run's)."""
    from ssmad.scoring import evaluate

    labels, types, masks = maps["labels"], maps["types"], maps["masks"]
    scaled = torch.from_numpy(maps["scaled"])
    fused = {rule_name(r): fuse_rule(maps, r) for r in RULES}

    def metrics(sel: np.ndarray, amap, image_scores=None, names=None) -> dict[str, float]:
        amap = torch.as_tensor(amap)
        if amap.dim() == 3:
            amap = amap[:, None]
        amap = amap[torch.from_numpy(sel)]
        s = score(amap).numpy() if image_scores is None else image_scores[sel]
        return dict(evaluate(labels[sel], s, masks[sel], amap[:, 0].numpy(), names))

    padim_scores = maps["padim"].reshape(len(labels), -1).max(1)     # PaDiM's image score: the map's maximum
    kinds = sorted({str(t) for t in types[labels == 1]})
    rows: dict[str, dict] = {}
    chosen: dict[str, str] = {}
    for kind in kinds:
        own = (labels == 0) | (types == kind)
        others = (labels == 0) | ((labels == 1) & (types != kind))
        if len(kinds) > 1:
            dev = {name: metrics(others, m, names=[CHOOSE_BY])[CHOOSE_BY] for name, m in fused.items()}
            chosen[kind] = max(dev, key=lambda n: dev[n])
        row = {"the run's map": metrics(own, maps["map"], maps["score"]),
               "distance alone": metrics(own, scaled),
               "PaDiM": metrics(own, maps["padim"], padim_scores)}
        if kind in chosen:
            row[f"chosen without {kind}: {chosen[kind]}"] = metrics(own, fused[chosen[kind]])
        row.update({name: metrics(own, m) for name, m in fused.items()})
        rows[kind] = row
    return rows, chosen


def main(argv: list[str] | None = None) -> int:
    from _common import open_run, run_parser

    ap = run_parser(__doc__, "ALMRR", band=False, data=True)
    ap.add_argument("--maps", type=Path, default=None,
                    help="an .npz file keeping the maps: read when it exists, else written")
    args = ap.parse_args(argv)

    from apps.almrr import APP
    from ssmad.scoring import METRICS

    if (opened := open_run(APP, args, "ALMRR", with_data=True)) is None:
        return 2
    run, method, run_data = opened
    data, train_idx = run_data.dataset, run_data.train_idx
    if not method.has_refiner or not method.distance.scale_fitted:
        print(f"error: {args.run}: the run has no refiner or no fitted distance_scale (its map has one part)",
              file=sys.stderr)
        return 2
    if len({str(t) for t, y in zip(data.test.defect_types, data.test.labels) if y}) < 1 or 0 not in data.test.labels:
        print(f"error: {args.run}: the test split needs normal and defective images", file=sys.stderr)
        return 2
    if args.maps is not None and args.maps.is_file():
        with np.load(args.maps) as z:
            maps = {k: z[k] for k in z.files}
        print(f"maps read from {args.maps}")
    else:
        maps = compute_maps(run, method, data, train_idx)
        if args.maps is not None:
            np.savez(args.maps, **maps)
    rows, chosen = evaluate_rows(maps, method.score)
    names = list(METRICS)
    print(f"{args.run}: {method.map_note() or 'map = refined'}")
    for kind, row in rows.items():
        n = int(((maps["labels"] == 1) & (maps["types"] == kind)).sum())
        print(f"\n### {kind} ({n} images) against the {int((maps['labels'] == 0).sum())} normal test images\n")
        print("| map | " + " | ".join(names) + " |")
        print("|---|" + "---:|" * len(names))
        for name, res in row.items():
            print(f"| {name} | " + " | ".join(f"{100 * res[m]:.1f}" for m in names) + " |")
    if chosen:
        print("\nchosen by " + CHOOSE_BY + " without each type: "
              + ", ".join(f"{k}: {v}" for k, v in chosen.items()))
    print("\n" + summary(rows))
    return 0


def summary(rows: dict[str, dict]) -> str:
    """A Markdown table: per map, pixel AP / image AUROC on each type, and its worst margin of pixel AP over the
    better of the distance alone and PaDiM (>= 0: never below either part's evidence on any type)."""
    kinds = list(rows)
    names = [n for n in rows[kinds[0]] if not n.startswith("chosen without")]
    lines = ["| map | " + " | ".join(f"{k}: pixel AP / image AUROC" for k in kinds) + " | worst pixel AP margin |",
             "|---|" + "---:|" * (len(kinds) + 1)]
    for name in names:
        cells = [f"{100 * rows[k][name]['pixel_ap']:.1f} / {100 * rows[k][name]['image_auroc']:.1f}" for k in kinds]
        margin = min(rows[k][name]["pixel_ap"] - max(rows[k][ref]["pixel_ap"] for ref in ("distance alone", "PaDiM"))
                     for k in kinds)
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {100 * margin:+.1f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
