"""Off-topic rewrites: how well the embedding similarity of a rewrite to its template
prompt separates rewrites that stayed on their seed from those that drifted off it, and
which `generation.min_similarity` to default to.

Input: gold/rewrites.csv, pairs of (template prompt, rewrite) labelled on_topic or
off_topic by reading them (see bench/README.md, "Off-topic rewrites", for how the pairs
were made and the labelling rule). Output: AUROC (scikit-learn), and per candidate
threshold the off-topic rewrites caught and the on-topic rewrites lost; written to
bench/off_topic.json.

    python bench/off_topic.py [--gold gold/rewrites.csv] [--out bench/off_topic.json]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from sklearn.metrics import roc_auc_score, roc_curve

from health_orsc.build.dedup import Embedder
from health_orsc.core.config import DATA_DIR
from health_orsc.core.files import read_csv

REPO = Path(__file__).resolve().parent.parent
LABELS = ("on_topic", "off_topic")
THRESHOLDS = [round(t, 2) for t in np.arange(0.30, 0.81, 0.05)]


def similarities(pairs: list[dict]) -> np.ndarray:
    """Cosine similarity of each rewrite to its template prompt: the same model and the
    same normalised embeddings as the build's dedup stage."""
    texts = list(dict.fromkeys([p["template_prompt"] for p in pairs] + [p["rewrite"] for p in pairs]))
    vectors = Embedder().encode(texts)
    row = {t: i for i, t in enumerate(texts)}
    return np.array([float(vectors[row[p["template_prompt"]]] @ vectors[row[p["rewrite"]]]) for p in pairs])


def evaluate(pairs: list[dict]) -> dict:
    sims = similarities(pairs)
    off = np.array([p["label"] == "off_topic" for p in pairs])
    per_threshold = []
    for t in THRESHOLDS:
        below = sims < t
        per_threshold.append({
            "min_similarity": t,
            "off_topic_caught": int((below & off).sum()),
            "on_topic_lost": int((below & ~off).sum()),
            "recall_off_topic": round(float((below & off).sum() / off.sum()), 3),
            "on_topic_kept": round(float((~below & ~off).sum() / (~off).sum()), 3),
        })
    levels = sorted({p["level"] for p in pairs})
    # Youden's J (recall on off-topic + on-topic kept - 1), at its maximum over every
    # observed similarity: the default's operating point, rounded to 2 decimals
    fpr, tpr, cut = roc_curve(off, -sims)
    best = int(np.argmax(tpr - fpr))
    return {
        "pairs": len(pairs), "off_topic": int(off.sum()), "on_topic": int((~off).sum()),
        # positive class: off topic, scored by how far the rewrite is from its template
        "auroc": round(float(roc_auc_score(off, -sims)), 3),
        # a rewrite is off topic when its similarity is below this (-cut: at or below)
        "youden_min_similarity": round(float(-cut[best]) + 1e-4, 3),
        "youden_recall_off_topic": round(float(tpr[best]), 3),
        "youden_on_topic_kept": round(float(1 - fpr[best]), 3),
        "similarity_quartiles": {
            label: [round(float(q), 3) for q in np.quantile(sims[mask], [0.25, 0.5, 0.75])]
            for label, mask in (("on_topic", ~off), ("off_topic", off)) if mask.any()},
        "off_topic_by_level": {lvl: int(sum(o for o, p in zip(off, pairs, strict=True) if p["level"] == lvl))
                               for lvl in levels},
        "thresholds": per_threshold,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gold", type=Path, default=DATA_DIR / "gold" / "rewrites.csv")
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "off_topic.json")
    args = ap.parse_args(argv)
    pairs = read_csv(args.gold, ("template_prompt", "rewrite", "label", "level"),
                     "the header must include template_prompt, rewrite, label, level")
    bad = [i for i, p in enumerate(pairs, start=2) if p["label"] not in LABELS]
    if bad:
        print(f"{args.gold}: rows {bad[:5]} have a label other than on_topic or off_topic", file=sys.stderr)
        return 2
    result = evaluate(pairs)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"{result['pairs']} pairs ({result['off_topic']} off topic); AUROC {result['auroc']}")
    print(f"Youden's J is highest at min_similarity {result['youden_min_similarity']}: off topic caught"
          f" {result['youden_recall_off_topic']:.0%}, on topic kept {result['youden_on_topic_kept']:.0%}")
    print("min_similarity | off topic caught | on topic lost")
    for row in result["thresholds"]:
        print(f"{row['min_similarity']:.2f} | {row['off_topic_caught']} of {result['off_topic']}"
              f" ({row['recall_off_topic']:.0%}) | {row['on_topic_lost']} of {result['on_topic']}"
              f" ({1 - row['on_topic_kept']:.0%})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
