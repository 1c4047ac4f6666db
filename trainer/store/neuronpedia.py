"""A run's features in Neuronpedia's export layout (`monosemantic export RUN --format neuronpedia`).

Followed: Neuronpedia's own database export, hijohnnylin/neuronpedia
utils/neuronpedia-utils/neuronpedia_utils/export-data.py (folders and batching), with the column
names and types of its Prisma models Neuron, Activation and Explanation
(apps/webapp/prisma/schema.prisma); the top/interval marking of activations (binMin = binContains
= -1 for top examples) follows SAEDashboard's Neuronpedia converter (jbloomAus/SAEDashboard,
sae_dashboard/neuronpedia/). Written, for run slug S of model M:

    OUT/M/<layer>-S/model.jsonl, source.jsonl                     one row each
    OUT/M/<layer>-S/features/batch-<b>.jsonl.gz                   Neuron rows, 1024 features a batch
    OUT/M/<layer>-S/activations/batch-<b>.jsonl.gz                Activation rows of those features
    OUT/M/<layer>-S/explanations/batch-<b>.jsonl.gz               Explanation rows (labels, and the
                                                                  automatic explanations by explainer)

Neuronpedia keys rows by (modelId, layer = the source id, index as a string). Fields we have no
value for (user ids, embeddings, DFA, correlated neurons) are left out; Neuronpedia's importer
gives them their defaults. Token strings are the tokens' decoded text.
"""

from __future__ import annotations

import gzip
import json
import re
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.engine import Connection, Engine

from trainer.store.runfile import complete_run, table_rows
from trainer.store.schema import Token, unpack_activations, unpack_token_ids

FEATURES_PER_BATCH = 1024  # export-data.py's FEATURES_EXPLANATIONS_BATCH_SIZE / ACTIVATIONS_BATCH_SIZE
DEFAULT_HOOK = "blocks.0.mlp.hook_post"


def neuronpedia_id(text: str) -> str:
    """Neuronpedia's ids are lower-case letters, digits, '-' and '_'."""
    return re.sub(r"[^a-z0-9_-]+", "-", text.lower()).strip("-") or "model"


def _centres(histogram: dict[str, Any]) -> tuple[list[float], list[float]]:
    """(bar values, bar heights) of a {"edges", "counts"} histogram: the bins' centres and counts."""
    edges, counts = histogram.get("edges") or [], histogram.get("counts") or []
    centres = [(a + b) / 2 for a, b in zip(edges[:-1], edges[1:], strict=False)]
    return centres[: len(counts)], [float(c) for c in counts][: len(centres)]


def _layer(hook: str) -> int:
    match = re.match(r"blocks\.(\d+)\.", hook)
    return int(match.group(1)) if match else 0


def _write_gz(path: Path, rows: list[dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(path, "wt", encoding="utf-8") as out:
        for row in rows:
            out.write(json.dumps(row, ensure_ascii=False) + "\n")


def _vocabulary(conn: Connection, run_id: int) -> dict[int, str]:
    rows = conn.execute(select(Token.token_id, Token.text).where(Token.run_id == run_id))
    return {int(token_id): str(text) for token_id, text in rows}


def export_neuronpedia(engine: Engine, slug: str, out_dir: Path, model_id: str | None = None) -> Path:
    """Write run `slug` under `out_dir` in Neuronpedia's layout; returns the source folder."""
    with engine.connect() as conn:
        run = complete_run(conn, slug)
        config = run["config"] or {}
        hook = str(config.get("hook") or DEFAULT_HOOK)
        model = neuronpedia_id(model_id or run["model_name"])
        source = f"{_layer(hook)}-{neuronpedia_id(slug)}"
        folder = Path(out_dir) / model / source
        folder.mkdir(parents=True, exist_ok=True)
        key = {"modelId": model, "layer": source}
        model_cfg = config.get("model") or {}
        (folder / "model.jsonl").write_text(
            json.dumps(
                {
                    "id": model,
                    "displayName": run["model_name"],
                    "displayNameShort": run["model_name"],
                    "layers": _layer(hook) + 1,
                    "neuronsPerLayer": run["d_in"],
                    "dimension": model_cfg.get("d_model"),
                    "owner": "",
                }
            )
            + "\n"
        )
        (folder / "source.jsonl").write_text(
            json.dumps(
                {
                    "id": source,
                    "modelId": model,
                    "setName": neuronpedia_id(slug),
                    "hasDashboards": True,
                    "num_tokens_analyzed": run["n_tokens_analyzed"],
                    "hookName": hook,
                }
            )
            + "\n"
        )
        vocab = _vocabulary(conn, run["id"])

        def text(token_id: int) -> str:
            return vocab.get(int(token_id), f"<{token_id}>")

        features, explanations = [], []
        band_edges: dict[int, list[float]] = {}
        for feature in table_rows(conn, "feature", run["id"]):
            index = str(feature["index"])
            band_edges[feature["index"]] = feature["band_edges"] or []
            freq_values, freq_heights = _centres(feature["activation_histogram"] or {})
            logit_values, logit_heights = _centres(feature["logit_histogram"] or {})
            features.append(
                {
                    **key,
                    "index": index,
                    "maxActApprox": feature["max_activation"],
                    "frac_nonzero": feature["density"],
                    "freq_hist_data_bar_values": freq_values,
                    "freq_hist_data_bar_heights": freq_heights,
                    "logits_hist_data_bar_values": logit_values,
                    "logits_hist_data_bar_heights": logit_heights,
                    "pos_str": [text(e["token_id"]) for e in feature["logit_positive"] or []],
                    "pos_values": [e["value"] for e in feature["logit_positive"] or []],
                    "neg_str": [text(e["token_id"]) for e in feature["logit_negative"] or []],
                    "neg_values": [e["value"] for e in feature["logit_negative"] or []],
                    "topkCosSimIndices": [n["index"] for n in feature["neighbours"] or []],
                    "topkCosSimValues": [n["cosine"] for n in feature["neighbours"] or []],
                    "umap_x": feature["map_x"],
                    "umap_y": feature["map_y"],
                    "hookName": hook,
                }
            )
            if feature["label"]:
                explanations.append(
                    {
                        **key,
                        "id": f"{model}@{source}:{index}",
                        "index": index,
                        "description": feature["label"],
                        "typeName": f"monosemantic-{feature['label_source']}",
                    }
                )
        # The automatic explanations (interpretations) beside the labels: one Explanation each,
        # named by its explainer; scores have no column on Neuronpedia's Explanation and stay out.
        for row in table_rows(conn, "interpretation", run["id"]):
            index = str(row["feature_index"])
            explanations.append(
                {
                    **key,
                    "id": f"{model}@{source}:{index}:{row['explainer']}",
                    "index": index,
                    "description": row["explanation"],
                    "typeName": f"monosemantic-{row['explainer']}",
                    "explanationModelName": (row["rules"] or {}).get("model") or row["explainer"],
                }
            )
        for batch, start in enumerate(range(0, len(features), FEATURES_PER_BATCH)):
            _write_gz(
                folder / "features" / f"batch-{batch}.jsonl.gz", features[start : start + FEATURES_PER_BATCH]
            )
            stop = start + FEATURES_PER_BATCH
            _write_gz(
                folder / "explanations" / f"batch-{batch}.jsonl.gz",
                [e for e in explanations if start <= int(e["index"]) < stop],
            )
        # Examples come ordered by feature: each batch file is written as soon as it is complete.
        pending: list[dict[str, Any]] = []
        batch = 0
        for example in table_rows(conn, "example", run["id"]):
            while example["feature_index"] >= (batch + 1) * FEATURES_PER_BATCH:
                _write_gz(folder / "activations" / f"batch-{batch}.jsonl.gz", pending)
                pending, batch = [], batch + 1
            values = unpack_activations(bytes(example["activations"])).tolist()
            ids = unpack_token_ids(bytes(example["token_ids"])).tolist()
            top = example["kind"] == "top"
            band = example["band"]
            edges = band_edges.get(example["feature_index"]) or []
            low, high = (
                (edges[band], edges[band + 1]) if band is not None and band + 1 < len(edges) else (None, None)
            )
            pending.append(
                {
                    **key,
                    "id": f"{model}@{source}:{example['feature_index']}:{example['kind']}:{band}:{example['rank']}",
                    "index": str(example["feature_index"]),
                    "tokens": [text(i) for i in ids],
                    "values": values,
                    "maxValue": example["max_activation"],
                    "minValue": min(values) if values else 0.0,
                    "maxValueTokenIndex": example["focus_position"],
                    "binMin": -1.0 if top else low,
                    "binMax": example["max_activation"] if top else high,
                    "binContains": -1.0 if top else None,
                    "dataSource": "monosemantic",
                    "dataIndex": str(example["source_position"]),
                }
            )
        n_batches = max(1, -(-len(features) // FEATURES_PER_BATCH))
        while batch < n_batches:
            _write_gz(folder / "activations" / f"batch-{batch}.jsonl.gz", pending)
            pending, batch = [], batch + 1
    return folder
