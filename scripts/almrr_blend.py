"""How much of the scaled distance map an ALMRR run's refined map should get, judged on synthetic anomalies.

    .venv/bin/python scripts/almrr_blend.py RUN_DIR [--weights 0,0.02,0.05,0.1,0.2,0.5,1] [--repeats 2]
                                            [--seed SEED] [--on synthetic|test] [--image-weight W] [--device cpu]
                                            [--data KIND:PATH [--category C] [--data-param KEY=VALUE]]

``method.distance_weight`` w makes the map refined + w · scaled distance (apps/almrr/method.py). By default
(``--on synthetic``) this script scores each w of ``--weights`` without the test set: every held-out normal image
of the run (``train.val_fraction``) is given ``--repeats`` synthetic anomalies by the run's own synthesiser (seeded
by ``--seed``, by default the run's ``train.seed``), and the anomalous versions together with the clean ones are
scored. This is the choice ``method.distance_weight = "auto"`` makes after training (the highest pixel AP), so with
the defaults it shows what "auto" would choose for a run trained with a fixed weight. ``--on test`` scores the
run's test split instead, to report what a weight does; choosing a weight there would tune on the test set. The
distance is scaled by the run's fitted ``distance_scale`` when it has one, else by the app's ``distance_scale`` entry
(the 0.9 / 0.999 quantiles) fitted on the held-out images' distance maps (what training would fit).

``--image-weight W`` scores each image by refined + W · scaled distance instead of by the row's map (what
``method.image_distance_weight = W`` does); the pixel metrics stay those of the row's map.
"""

from __future__ import annotations

import sys

import numpy as np
import torch


def _weights(text: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        values = []
    if not values or any(not np.isfinite(v) or v < 0 for v in values):
        raise ValueError(f"--weights: expected comma-separated numbers >= 0, got {text!r}")
    return values


def main(argv: list[str] | None = None) -> int:
    from _common import open_run, run_parser

    from apps.almrr import AUTO_WEIGHTS

    ap = run_parser(__doc__, "ALMRR", band=False, data=True)
    ap.add_argument("--weights", default=",".join(f"{w:g}" for w in AUTO_WEIGHTS),
                    help="weights to score (comma-separated; default: those \"auto\" chooses among)")
    ap.add_argument("--repeats", type=int, default=2, help="synthetic anomalies per held-out image (default 2)")
    ap.add_argument("--seed", type=int, default=None,
                    help="seed of the synthetic anomalies (default: the run's train.seed, as \"auto\" uses)")
    ap.add_argument("--on", choices=("synthetic", "test"), default="synthetic",
                    help="score synthetic anomalies of the held-out images (default) or the test split")
    ap.add_argument("--image-weight", type=float, default=None,
                    help="image scores from refined + W x scaled distance (default: from each row's map)")
    args = ap.parse_args(argv)
    try:
        weights = _weights(args.weights)
    except ValueError as exc:
        ap.error(str(exc))
    if args.repeats < 1:
        ap.error(f"--repeats: expected an integer >= 1, got {args.repeats}")
    if args.image_weight is not None and not (np.isfinite(args.image_weight) and args.image_weight >= 0):
        ap.error(f"--image-weight: expected a number >= 0, got {args.image_weight}")

    from apps.almrr import APP, synthetic_maps
    from apps.common import image_batches
    from ssmad.core import build
    from ssmad.scoring import METRICS, evaluate

    if (opened := open_run(APP, args, "ALMRR", with_data=True)) is None:
        return 2
    _, method, run_data = opened
    config, data, val_idx = run_data.config, run_data.dataset, run_data.val_idx
    if not method.has_refiner:
        print(f"error: {args.run}: the run has no refiner (its map is the distance already)", file=sys.stderr)
        return 2
    if not val_idx:
        print(f"error: {args.run}: the run holds out no normal images (train.val_fraction = 0)", file=sys.stderr)
        return 2

    chosen = method.weight_choice
    scale = method.distance.scale
    fitted = method.distance.scale_fitted
    bs = method.eval_batch_size
    held = run_data.held_out
    with torch.no_grad():               # the refined and distance maps apart: the blend is made below
        if args.on == "test":
            parts = [(method.branch_maps(images), [s.mask for s in chunk])
                     for chunk, images in image_batches(data.test, bs, method.device)]
            refined = torch.cat([r.cpu() for (r, _), _ in parts])
            dist = torch.cat([d.cpu() for (_, d), _ in parts])
            masks = torch.stack([m for _, ms in parts for m in ms]) > 0.5
            test_labels = data.test.labels
            clean_dist = None
            if not fitted:                                          # only the fallback scale needs them
                clean_dist = torch.cat([method.branch_maps(images)[1].cpu()
                                        for _, images in image_batches(held, bs, method.device)])
        else:
            seed = int(config["train"]["seed"]) if args.seed is None else args.seed
            maps = synthetic_maps(method, [x.image for x in held], np.random.default_rng(seed), args.repeats)
            refined, dist, masks = maps["refined"], maps["distance"], maps["mask"]
            clean_dist = dist[maps["clean"] & (maps["repeat"] == 0)]
    if not fitted:                   # a run from before the distance_scale entry: the one the app ships, fitted here
        entry = next(e for e in APP.config()["pipeline"] if e["role"] == "distance_scale")
        params = {k: v for k, v in entry.items() if k.startswith("q_")}
        scale = build("normaliser", "quantile_norm", **params).fit(clean_dist)
    scaled = scale(dist)
    if args.on == "test":
        labels = np.array(test_labels)
        what = f"the test split ({len(labels)} images, {int(labels.sum())} anomalous)"
    elif not (labels := masks.flatten(1).any(1).long().numpy()).any():
        print(f"error: the synthesiser made no anomaly in {len(labels) // 2} tries; raise --repeats", file=sys.stderr)
        return 2
    else:
        what = (f"{len(val_idx)} held-out normal images × {args.repeats} synthetic anomalies ({int(labels.sum())} "
                f"with an anomaly) and their clean versions")
    print(f"{args.run}: {what}; distance scaled by "
          f"{'the run' if fitted else 'quantiles of the held-out images'}")
    if chosen is not None:
        print(f"(the run's method.distance_weight = auto chose {chosen['weight']:g})")
    if args.image_weight is not None:
        print(f"image scores: refined + {args.image_weight:g} x scaled distance")
    image_scores = None if args.image_weight is None else method.score(refined + args.image_weight * scaled).numpy()
    names = list(METRICS)
    print("| distance_weight | " + " | ".join(names) + " |")
    print("|---:|" + "---:|" * len(names))
    for w in weights:
        amap = refined + w * scaled
        scores = method.score(amap).numpy() if image_scores is None else image_scores
        res = evaluate(labels, scores, masks, amap, names)
        print(f"| {w:g} | " + " | ".join(f"{100 * res[m]:.1f}" for m in names) + " |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
