"""Column and table names shared by every stage.

Impression-log column names are configurable (``columns:`` in the YAML config, see
:class:`ulr_spark.config.LogColumns`); everything ulr-spark itself writes uses the fixed names
below, so downstream readers can rely on them.
"""

# Examples table: one row per distinct slate (docs/design.md, "Examples").
QUERY_ID = "query_id"
ITEM_ID = "item_id"
CONTEXT_KEY = "context_key"  # readable "device=mobile|layout=list"; "default" without context columns
CONTEXT_ID = "context_id"  # dense integer id of context_key, input of the bias tower
SLATE_SIZE = "slate_size"  # number of filled slots, <= max_slate_size
ITEM_IDS = "item_ids"  # array<string>, padded with "" to max_slate_size
POSITIONS = "positions"  # array<int>, 1-based slot of each entry, 0 = padding
FEATURES = "features"  # array<float>, max_slate_size * num_features, row-major, zero padded
IMPRESSIONS = "impressions"  # requests merged into this row (the example weight)
CLICKS = "clicks"  # array<int>, clicks summed over the merged requests, per entry

# Columns the trainer needs (strings stay behind in Spark).
TRAINING_COLUMNS = (CONTEXT_ID, POSITIONS, FEATURES, IMPRESSIONS, CLICKS)
# In Petastorm's cache, positions and clicks are spread over scalar columns position_of_entry_0.., clicks_of_entry_0..
POSITION_OF_ENTRY_PREFIX = "position_of_entry_"
CLICKS_OF_ENTRY_PREFIX = "clicks_of_entry_"

DEFAULT_CONTEXT_KEY = "default"

# Output tables.
MODEL = "model"
RUN_ID = "run_id"
SCORE = "score"
FEATURES_DIGEST = "features_digest"  # xxhash64 of the encoded features a score was computed from
SCORED_AT = "scored_at"
PAIRS_SOURCE = "pairs_source"  # the pairs table a scoring run read (what a rerun of it replaces)
POSITION = "position"
EXAMINATION = "examination"  # relative to slot 1 of the default context
EXAMINATION_LOW = "examination_low"  # 95% interval of the curve (Poisson bootstrap of the page sample)
EXAMINATION_HIGH = "examination_high"
METRIC = "metric"
VALUE = "value"
EVALUATED_AT = "evaluated_at"
TRAINED_AT = "trained_at"

# Truth tables written by the simulator.
LABEL = "label"
# Simulated truth per (query, item): the true relevance score the labels are cut from, and the
# distractor score the logging ranker rewards although it is not relevance.
TRUE_RELEVANCE = "relevance"
DISTRACTOR = "distractor"
SPLIT = "split"  # "train" (queries that appear in the log) or "heldout"
SPLIT_TRAIN = "train"
SPLIT_HELDOUT = "heldout"
# Splits of the examples' requests (build-examples): validation stops training, test is evaluated.
SPLIT_VALIDATION = "validation"
SPLIT_TEST = "test"

# Columns of the simulated log and truth, and of the comparison table.
EVENT_DATE = "event_date"
# Examples built incrementally: a digest of the log rows of the example's event date (the files
# holding them, their count, and the settings that shape examples), to find dates that changed.
SOURCE_FINGERPRINT = "source_fingerprint"
EXAMINATION_ABSOLUTE = "examination_absolute"
COMPARE_ID = "compare_id"
SCENARIO = "scenario"
SEED = "seed"

# The scores table's derived table: the newest score of every (model, query, item).
SCORES_LATEST = "scores_latest"

# Column comments written into every table's schema (docs/tables.md explains the same).
COLUMN_COMMENTS = {
    "request_id": "one page view (request) of the log",
    QUERY_ID: "query (or feed) the items were ranked for",
    ITEM_ID: "item shown or scored",
    POSITION: "1-based slot on the page, row by row on a grid",
    "clicked": "1 if the item was clicked in this request, else 0",
    FEATURES: "relevance features, float32: one item's (log, candidates, scores input) or slot-major "
    "max_slate_size x num_features with zero padding (examples)",
    EVENT_DATE: "day of the request (partition column of the log, and of examples built incrementally)",
    SOURCE_FINGERPRINT: "digest of the log files and rows of the event date the example was built from "
    "(incremental build-examples rebuilds a date when it changes)",
    SPLIT: "truth tables: train (queries in the log) or heldout (queries kept out of it); examples: train, "
    "validation (stops training early) or test (held-out clicks) requests; metrics: what was evaluated",
    LABEL: "true relevance grade 0..4 of the simulation",
    TRUE_RELEVANCE: "true relevance score of the simulation, before it is cut into grades",
    DISTRACTOR: "score along the feature direction the simulated ranker rewards although it is not relevance",
    EXAMINATION: "examination probability relative to slot 1 of the default context",
    EXAMINATION_LOW: "2.5th percentile of the examination over a Poisson bootstrap of the pages it is read on",
    EXAMINATION_HIGH: "97.5th percentile of the examination over a Poisson bootstrap of the pages it is read on",
    EXAMINATION_ABSOLUTE: "examination probability theta of the simulation (page-averaged for context scenarios)",
    CONTEXT_KEY: "page context, e.g. device=mobile|layout=list; 'default' without context columns",
    CONTEXT_ID: "dense integer id of context_key, input of the bias tower",
    SLATE_SIZE: "filled slots of the slate, <= max_slate_size",
    ITEM_IDS: "item of each slot, padded with empty strings",
    POSITIONS: "1-based slot of each entry, 0 for padding",
    IMPRESSIONS: "requests merged into this row: the example's weight (bias curves: training impressions of the cell)",
    CLICKS: "clicks summed over the merged requests, per entry",
    MODEL: "model name (architecture or configured variant)",
    RUN_ID: "run that wrote the row (also in the Delta commit's userMetadata)",
    SCORE: "debiased relevance logit of the relevance tower; higher ranks first",
    SCORED_AT: "time the score was computed",
    FEATURES_DIGEST: "xxhash64 of the encoded features the score was computed from (score.only_changed compares it)",
    PAIRS_SOURCE: "pairs table the score was computed from; a later scoring of it under the same run replaces these rows",
    TRAINED_AT: "time the model was trained",
    METRIC: "metric name: ndcg@k or bias_curve_error",
    VALUE: "metric value",
    EVALUATED_AT: "time of the evaluation",
    COMPARE_ID: "comparison run",
    SCENARIO: "simulated scenario of the comparison",
    SEED: "seed of the scenario's simulation and training",
}

# Table descriptions (Delta's table comment), by the name of the table's key in `tables:`.
TABLE_COMMENTS = {
    "impressions": "impression log: one row per item shown in a request, with its slot and click",
    "candidates": "every (query, item) pair of the simulated catalogue with its features",
    "truth_labels": "true relevance grades of the simulation",
    "truth_examination": "true examination curve of the simulation, per context and slot",
    "examples": "training examples: one row per distinct slate, weighted by the requests merged into it",
    "bias_curves": "learned examination curves per model, run and context",
    "scores": "debiased relevance scores per run, model, query and item; change data feed enabled",
    SCORES_LATEST: "newest score of every (model, query, item) across runs; change data feed enabled",
    "metrics": "NDCG and bias-curve error per run and model",
    "comparison": "metrics of every model, scenario and seed of a comparison",
}
