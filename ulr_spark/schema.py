"""Column and table names shared by every stage.

Impression-log column names are configurable (``columns:`` in the YAML config, see
:class:`ulr_spark.config.LogColumns`); everything ulr-spark itself writes uses the fixed names
below, so downstream readers can rely on them.
"""

# Examples table: one row per distinct slate (DESIGN section 2).
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
# In Petastorm's cache, positions and clicks are spread over scalar columns p_0.., c_0..
FLAT_POSITION_PREFIX = "p_"
FLAT_CLICK_PREFIX = "c_"

DEFAULT_CONTEXT_KEY = "default"

# Output tables.
MODEL = "model"
RUN_ID = "run_id"
SCORE = "score"
SCORED_AT = "scored_at"
POSITION = "position"
EXAMINATION = "examination"  # relative to slot 1 of the default context
METRIC = "metric"
VALUE = "value"
EVALUATED_AT = "evaluated_at"
TRAINED_AT = "trained_at"

# Truth tables written by the simulator.
LABEL = "label"
SPLIT = "split"  # "train" (queries that appear in the log) or "heldout"
SPLIT_TRAIN = "train"
SPLIT_HELDOUT = "heldout"
