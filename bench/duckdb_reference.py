"""The reference for the build-examples benchmark: the same transformation in DuckDB SQL.

Same input (the Parquet files of the impression log's current Delta snapshot), same rules
counted, same output rows (one per distinct slate, padded arrays, impressions and summed
clicks) written to Parquet, so the two wall times compare like for like
(tests/test_bench.py checks the rows are the same). One difference only shows on a broken log:
two items in one slot count here as (rows - distinct slots), in ulr-spark as every row of the
shared slot; both are zero on the same logs.
"""

from __future__ import annotations

import time


def examples_sql(files: list[str], max_slate_size: int, num_features: int, output_path: str) -> list[str]:
    """The statements that check the log, build the merged examples and write them."""
    k, d = max_slate_size, num_features
    file_list = "[" + ", ".join("'" + f.replace("'", "''") + "'" for f in files) + "]"
    # The row rules of ulr_spark.examples.validation.row_rules, by the same names.
    rules = {
        "null_request_id": "request_id IS NULL",
        "null_query_id": "query_id IS NULL",
        "null_item_id": "item_id IS NULL",
        "null_position": "position IS NULL",
        "position_below_1": "position < 1",
        "clicked_not_binary": "clicked IS NULL OR clicked NOT IN (0, 1)",
        "null_features": "features IS NULL",
        "malformed_features": f"features IS NOT NULL AND (len(features) != {d} "
        "OR list_bool_or([isnan(v) OR v IS NULL FOR v IN features]))",
    }
    broken = [f"broken_{name}" for name in rules]
    rule_sums = ",\n".join(f"count_if({condition}) AS broken_{name}" for name, condition in rules.items())
    click_sums = ", ".join(f"sum(request_clicks[{i + 1}])::INT" for i in range(k))
    padded_features = f"list_resize(flatten([e.features FOR e IN slate]), {k * d}, 0.0::FLOAT)"
    per_request = f"""
        SELECT
            min(query_id) AS query_id,
            'default' AS context_key,
            list({{'position': position, 'item_id': item_id, 'features': features, 'clicked': clicked}}
                 ORDER BY position) FILTER (WHERE position <= {k}) AS slate,
            {rule_sums},
            count(*) AS log_rows,
            count_if(position > {k}) AS beyond_rows,
            count(position) - count(DISTINCT position) AS shared_slot,
            CASE WHEN min(query_id) != max(query_id) THEN count(*) ELSE 0 END AS multi_query
        FROM read_parquet({file_list})
        GROUP BY request_id
    """
    slates = f"""
        SELECT query_id, context_key, len(coalesce(slate, [])) AS slate_size,
               list_resize([e.item_id FOR e IN coalesce(slate, [])], {k}, '') AS item_ids,
               list_resize([e.position FOR e IN coalesce(slate, [])], {k}, 0) AS positions,
               {padded_features.replace('slate', 'coalesce(slate, [])')} AS features,
               list_resize([e.clicked FOR e IN coalesce(slate, [])], {k}, 0) AS request_clicks,
               {", ".join(broken)}, log_rows, beyond_rows, shared_slot, multi_query
        FROM ({per_request})
    """
    check_sums = ", ".join(
        f"sum({c}) AS {c}" for c in broken + ["log_rows", "beyond_rows", "shared_slot", "multi_query"]
    )
    return [
        f"""CREATE TEMP TABLE merged AS
            SELECT query_id, context_key, slate_size, item_ids, positions, features,
                   count(*) AS impressions, [{click_sums}] AS clicks, {check_sums}
            FROM ({slates})
            GROUP BY query_id, context_key, slate_size, item_ids, positions, features""",
        "SELECT count(*) AS examples, sum(impressions) AS requests, "
        + ", ".join(f"sum({c})" for c in broken + ["shared_slot", "multi_query"])
        + " FROM merged",
        f"""COPY (SELECT query_id, context_key, 0 AS context_id, slate_size, item_ids, positions, features,
                        impressions, clicks FROM merged)
            TO '{output_path}' (FORMAT PARQUET)""",
    ]


def run_duckdb_examples(
    files: list[str], max_slate_size: int, num_features: int, output_path: str, threads: int, temp_dir: str,
    memory_limit: str = "12GB",
) -> dict:
    """Run the reference; returns its wall time, the row counts and whether any rule broke."""
    import duckdb

    started = time.perf_counter()
    con = duckdb.connect()
    con.execute(f"SET threads = {threads}")
    con.execute(f"SET memory_limit = '{memory_limit}'")
    con.execute(f"SET temp_directory = '{temp_dir}'")
    con.execute("SET preserve_insertion_order = false")
    create, check, write = examples_sql(files, max_slate_size, num_features, output_path)
    con.execute(create)
    totals = con.execute(check).fetchone()
    con.execute(write)
    con.close()
    return {
        "seconds": time.perf_counter() - started,
        "examples": int(totals[0]),
        "requests": int(totals[1]),
        "broken_rows": int(sum(v or 0 for v in totals[2:])),
    }
