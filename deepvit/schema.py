"""Names in the MLflow record (tags, params, metrics, artifacts): the single place they are spelled.

The training writer (``deepvit/training/tracking.py``, ``trainer.py``), the sweep (``deepvit/sweep/``) and the
analysis reader (``analysis/``) import them from here; ``docs/mlflow_schema.md`` documents them (a test checks that
every name below appears there). Plain constants: importing this module imports nothing.
"""

# ---- experiment tags
EXPERIMENT_KIND_TAG = 'mlflow.experimentKind'   # what MLflow's UI reads to open an experiment on training runs
EXPERIMENT_KIND = 'custom_model_development'    # (the alternative, 'genai_development', opens on traces)
NOTE_TAG = 'mlflow.note.content'                # experiment and run descriptions (MLflow's own tag)

# ---- run tags
KIND_TAG = 'deepvit.kind'                       # 'train' | 'sweep' | 'eval'
TRAIN_KIND, SWEEP_KIND, EVAL_KIND = 'train', 'sweep', 'eval'
FAMILY_TAG = 'family'
REMEDY_TAG = 'remedy'
SWEEP_ID_TAG = 'sweep_id'
SWEEP_POINT_TAG = 'sweep_point'
PARENT_TAG = 'mlflow.parentRunId'
# architecture and seed as tags, for the UI's group-by and filters (the params carry the same values)
MODEL_TAGS = ('model', 'depth', 'embed_dim', 'num_heads', 'seed')
HARDWARE_TAG = 'hardware'                       # e.g. 'cpu', 'NVIDIA H200'
EPOCHS_TAG = 'epochs'                           # the run's planned length, updated when a resume changes --epochs

# ---- metrics
TOP1 = 'val/top1'                               # percent, 0-100, final-epoch value is the primary figure
TOP1_BEST = 'val/top1_best'                     # running maximum over evaluations (optimistic)
TOP1_BEST_STEP = 'val/top1_best_step'           # the optimizer step of that maximum
PEAK_MEMORY = 'memory/peak_mib/rank{rank}'      # MiB; MLflow's own system metrics use the 'system/' prefix
SYSTEM_PREFIX = 'system/'

# ---- sweep parent runs: name, params and metrics
SWEEP_RUN_NAME = 'sweep-{sweep_id}'             # the parent's run name
SWEEP_PARAM = 'sweep.{field}'                   # the grid, one param per field (JSON text), num_points, output_dir
SWEEP_CHILDREN = 'sweep/children_{status}'      # number of child runs by status (lower case)
SWEEP_BEST_TOP1 = 'sweep/best_top1/{remedy}/d{depth}'  # best final top-1 (percent) over seeds and widths

# ---- artifacts
CORRECT_ARTIFACT = 'eval/correct.npy'           # int8 (positions,): 1 right, 0 wrong, -1 padding / skipped sample

# ---- dataset inputs (``mlflow.log_input`` contexts)
TRAIN_CONTEXT, VAL_CONTEXT = 'training', 'validation'
