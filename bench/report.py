"""bench/: the markdown table the benchmark prints, one row per figure beside its limit."""

from __future__ import annotations


def table(r: dict) -> str:
    sat, orch, emb, rb = r["endpoint_saturation"], r["orchestration"], r["embedding"], r["rebuild"]
    real, syn, gr = r["search"]["real"], r["search"]["synthetic"], r["growth"]
    ee, eb = r["embedding_endpoint"], r["embedder_build"]
    cap = r["endpoint"]["measured_calls_per_s"]
    lines = [
        f"health-orsc bench ({r['size']}), {r['date']}, {r['machine']['cpus']} CPUs, {r['machine']['cpu']}",
        "",
        "| # | figure | measured | limit | ratio | goal |",
        "|---|---|---|---|---|---|",
        f"| 1 | endpoint capacity ({r['endpoint']['slots']} slots x {r['endpoint']['service_ms']:g} ms) |"
        f" {cap:.0f} calls/s (plain async load) | {r['endpoint']['nominal_calls_per_s']:.0f} calls/s |"
        f" {cap / r['endpoint']['nominal_calls_per_s']:.3f} | |",
    ]
    gw = r["gateway"]
    lines.append(f"| 1 | gateway CPU per call ({gw['calls']} juror calls, {gw['client']}) |"
                 f" {gw['cpu_ms_per_call']} ms | {1000 / cap:.3f} ms (one core at endpoint capacity) |"
                 f" {gw['cpu_ms_per_call'] * cap / 1000:.3f} | < 1 |")
    for stage in ("generate", "jury"):
        st = sat[stage]
        lines.append(f"| 1 | {stage}: {st['calls']} calls in {st['wall_s']} s | {st['calls_per_s']:.0f}"
                     f" calls/s | {cap:.0f} calls/s | {st['ratio']:.3f} | >= 0.9 |")
    lines += [
        f"| 2 | Prefect + bookkeeping ({sat['candidates']} candidates) | {orch['overhead_s']} s of"
        f" {orch['flow_wall_s']} s flow wall | endpoint busy {orch['endpoint_busy_s']} s, embed + dedup"
        f" {orch['dedup_s']} s (overlapping) | {orch['overhead_share']:.3f} | < 0.05 |",
        f"| 2 | peak RSS, Prefect tasks | {orch['peak_rss_mb']} MB, {orch['prefect_tasks']} tasks |"
        " 4096 MB | | < 4 GB |",
        f"| 3 | embedding {emb['texts']} texts (batch {emb['pipeline_batch_size']}) |"
        f" {emb['pipeline_texts_per_s']:.0f} texts/s | {emb['bare_texts_per_s']:.0f} texts/s (bare encode,"
        f" batch {emb['bare_best_batch_size']}) | {emb['ratio']:.3f} | >= 0.95 |",
        f"| 3 | embedding through /v1/embeddings ({ee['texts']} texts, requests of {ee['batch_size']}) |"
        f" {ee['texts_per_s']:.0f} texts/s | {ee['capacity_texts_per_s']:.0f} texts/s (plain async load;"
        f" {ee['nominal_texts_per_s']:.0f} nominal) | {ee['ratio']:.3f} | >= 0.9 |",
        f"| 3 | cold build embedding through the endpoint | {eb['flow_wall_s']} s flow wall, dedup"
        f" {eb['dedup_s']} s, embedding done {eb['embed_tail_s']} s after generate | local model:"
        f" {eb['local_flow_wall_s']} s, dedup {eb['local_dedup_s']} s, {eb['local_embed_tail_s']} s after"
        " generate | | |",
        f"| 4 | search {real['vectors']} real vectors, {real['method']} | {real['seconds']} s, recall"
        f" {real['recall']} | {real['numpy_blocked_seconds']} s numpy blocked | {real['time_ratio']:.3f} |"
        " <= 1.5 |",
        f"| 4 | search {syn['vectors']} synthetic, {syn['method']} | {syn['seconds']} s, planted recall"
        f" {syn['planted_recall']} ({syn['planted_found']}/{syn['planted_pairs']}) |"
        f" {syn['numpy_blocked_seconds']} s numpy blocked | {syn['time_ratio']:.3f} | recall >= 0.99 |",
        f"| 5 | warm rebuild | {rb['warm_model_calls']} calls, {rb['warm_process_wall_s']} s |"
        f" cold {rb['cold_process_wall_s']} s | {rb['warm_wall_ratio']:.3f} | 0 calls, <= 0.05 |",
        f"| 5 | regenerate {rb['regenerated']} | {rb['regen_model_calls']} calls |"
        f" {rb['category_calls_in_cold_build']} calls in the cold build | {rb['regen_call_ratio']} |"
        " <= 1.05 |",
    ]
    va = r["validation"]
    lines.append(f"| 7 | orsc validate --gate: {va['labels']} labels ({va['annotators']} annotators x"
                 f" {va['sample_items']} items) on {va['snapshot_rows']} rows | {va['validate_s']} s"
                 f" (annotate {va['annotate_s']} s, verify {va['verify_s']} s) | | | seconds |")
    ev = r["evaluation"]
    for label, st in ((f"evaluate {ev['prompts']} prompts x {ev['models']} models (answers + grades)",
                       ev["first"]), ("re-grade every answer (grader stage alone)", ev["regrade"])):
        kinds = ", ".join(f"{n} {k}" for k, n in sorted(st["by_kind"].items()))
        lines.append(f"| 8 | {label}: {st['calls']} calls ({kinds}) in {st['wall_s']} s |"
                     f" {st['calls_per_s']:.0f} calls/s | {cap:.0f} calls/s | {st['ratio']:.3f} | >= 0.9 |")
    rc = ev["rubric_cost"]["per_answer"]
    lines.append(f"| 8 | rubric grading's cost per answer ({ev['rubric_cost']['answers']} answers) |"
                 f" {rc['rubric']['calls']} calls, {rc['rubric']['tokens']} tokens |"
                 f" three-class grade: {rc['grade']['calls']} calls, {rc['grade']['tokens']} tokens | | |")
    lines.append(f"| 8 | evaluation metrics, difficulty, report and files ({ev['tasks']} tasks) |"
                 f" {ev['write_s']} s, peak RSS {ev['peak_rss_mb']} MB | | | |")
    cb = r["cache_backends"]
    if "skipped" in cb:
        lines.append(f"| 9 | request cache in PostgreSQL | skipped: {cb['skipped']} | | | |")
    else:
        sq, pg = r["gateway"]["sqlite_bursts"], cb["postgres_bursts"]
        for what in ("hit", "miss"):
            a, b = pg[what], sq[what]
            lines.append(f"| 9 | cache {what}, {sq['calls']} juror calls: PostgreSQL |"
                         f" {a['wall_us_per_call']} us/call ({a['cpu_us_per_call']} us CPU),"
                         f" {a['calls_per_s']:.0f} calls/s | SQLite {b['wall_us_per_call']} us/call"
                         f" ({b['cpu_us_per_call']} us CPU),"
                         f" {b['calls_per_s']:.0f} calls/s | {a['calls_per_s'] / b['calls_per_s']:.3f} | |")
        for stage in ("generate", "jury"):
            a, b = cb["builds"]["postgres"][stage], cb["builds"]["sqlite"][stage]
            lines.append(f"| 9 | cold build, cache in PostgreSQL: {stage} {a['calls']} calls in"
                         f" {a['wall_s']} s |"
                         f" {a['calls_per_s']:.0f} calls/s ({a['ratio']:.3f} of capacity) | SQLite:"
                         f" {b['calls_per_s']:.0f} calls/s ({b['ratio']:.3f}) | {a['ratio']:.3f} | >= 0.9 |")
    for g in gr["builds"]:
        lines.append(f"| 6 | growth {g['factor']}x: {g['candidates']} candidates | {g['flow_wall_s']} s,"
                     f" {g['peak_rss_mb']} MB | | {g['ms_per_candidate']} ms/candidate | linear |")
    lines.append(f"| 6 | per-candidate cost, 4x over 1x | | | {gr['per_candidate_cost_4x_over_1x']} |"
                 " about 1 |")
    return "\n".join(lines)
