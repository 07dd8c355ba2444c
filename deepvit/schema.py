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
SWEEP_POINT_TAG = 'sweep_point'                 # the point's key (deepvit.sweep.plan.Point.key), matching:
SWEEP_POINT_KEY = r'(?P<family>[A-Za-z0-9_]+)-(?P<cell>d\d+-w\d+-h\d+(?:-.+?)?)-s(?P<seed>\d+)'
PARENT_TAG = 'mlflow.parentRunId'
# architecture and seed as tags, for the UI's group-by and filters (the params carry the same values)
MODEL_TAGS = ('model', 'depth', 'embed_dim', 'num_heads', 'seed')
HARDWARE_TAG = 'hardware'                       # e.g. 'cpu', 'NVIDIA H200'
EPOCHS_TAG = 'epochs'                           # the run's planned length, updated when a resume changes --epochs

# ---- run tags: the code version (deepvit.code_version), at the run's start and at each resume
CODE_COMMIT_TAG = 'code.commit'                 # git commit at the run's start (40 hex digits) or UNKNOWN_CODE
CODE_DIRTY_TAG = 'code.dirty'                   # 'true' | 'false' | UNKNOWN_CODE: tracked files differed from it
CODE_RESUMES_TAG = 'code.resumes'               # resumes so far ('0' for a run never resumed)
CODE_RESUME_TAG = 'code.resume.{n}.{field}'     # resume n (1, 2, ...): 'commit' | 'dirty' | 'step' (its first step)
UNKNOWN_CODE = 'unknown'                        # not a git checkout, or git failed

# ---- metrics: the training loop, every train.log_every optimizer steps
TRAIN_LOSS = 'train/loss'                       # mean loss of the window's micro-batches
TRAIN_LR = 'train/lr'
TRAIN_THROUGHPUT = 'train/samples_per_sec'      # images per second, all ranks
TRAIN_GRAD_NORM = 'train/grad_norm'             # DeepSpeed's global gradient norm (when it computes one)
# ---- metrics: every evaluation (end of epoch)
VAL_LOSS = 'val/loss'
TOP1 = 'val/top1'                               # percent, 0-100, final-epoch value is the primary figure
HOLDOUT_PREFIX = 'holdout/'                      # + loss, top1, top5, num_samples: the held-out training samples
TOP5 = 'val/top5'                               # percent, 0-100
HOLDOUT_TOP1 = 'holdout/top1'                   # percent, 0-100, on the holdout split taken from the training data:
                                                # what the analysis selects by (lr, convergence); val/top1 is the test
TRAIN_EVAL_PREFIX = 'train_eval/'              # + loss, top1, top5, num_samples: a fixed subset of the samples
TRAIN_EVAL_TOP1 = 'train_eval/top1'             # trained on, scored in eval mode (percent): train accuracy
VAL_SAMPLES = 'val/num_samples'                 # images scored (each once, padding excluded)
SKIPPED = 'data/skipped_samples'                # bad samples skipped so far, train and val, all ranks
EPOCH = 'epoch'                                 # epochs completed
# ---- metrics: the collapse probe (deepvit.collapse), at step 0, every train.collapse_every epochs and at the end
COLLAPSE_PREFIX = 'collapse/'                   # + '<name>_<stage>' (stage 'softmax' | 'mixed') or 'probe_seconds'
TOP1_BEST = 'val/top1_best'                     # running maximum over evaluations (optimistic)
TOP1_BEST_STEP = 'val/top1_best_step'           # the optimizer step of that maximum
PEAK_MEMORY = 'memory/peak_mib/rank{rank}'      # MiB; MLflow's own system metrics use the 'system/' prefix
SYSTEM_PREFIX = 'system/'

# ---- sweep parent runs: name, params and metrics
SWEEP_RUN_NAME = 'sweep-{sweep_id}'             # the parent's run name
SWEEP_PARAM = 'sweep.{field}'                   # the grid, one param per field (JSON text), num_points, output_dir
SWEEP_CHILDREN = 'sweep/children_{status}'      # number of child runs by status (lower case)
SWEEP_BEST_TOP1 = 'sweep/best_top1/{remedy}/d{depth}'  # best final top-1 (percent) over seeds and widths

# ---- params (besides every config field as '<section>.<field>', e.g. 'train.seed', 'data.source')
MODEL_PARAM = 'model.{field}'                   # the architecture built (model.model_cfg)
MODEL_OVERRIDE_PARAM = 'model.override.{field}' # a model field the user gave
DS_PARAM = 'ds.{field}'                         # the resolved DeepSpeed config, flattened
EXPORT_PATH_PARAM = 'export.path'               # the fp32 safetensors export
PLANNED_STEPS_PARAM = 'train.planned_steps'     # optimizer steps the run is planned for (epochs or budget)
PLANNED_PFLOP_PARAM = 'train.planned_pflop'     # their training compute, 6 × MACs × images (deepvit.training.budget)
EVAL_WEIGHTS_PARAM, EVAL_SPLIT_PARAM = 'eval.weights', 'eval.split'   # eval runs
EVAL_WEIGHTS_FORMAT_PARAM = 'eval.weights_format'   # the format the scored weights were read in (models.WEIGHTS_FORMAT)

# ---- artifacts
COLLAPSE_ARRAY = 'collapse/{stem}_{stage}.npy'  # the final probe's matrices (float32)
COLLAPSE_REPRESENTATION_ARRAY = 'collapse/{name}.npy'   # the final probe's CKA (L, L), token residual/cosine (L,)
COLLAPSE_PROFILES = 'collapse/profiles/step_{step:08d}.json'   # every probe's per-block profiles
CORRECT_ARTIFACT = 'eval/correct.npy'           # int8 (num_samples,) in sample order: 1 right, 0 wrong, -1 skipped
CORRECT_ORDER_TAG = 'eval.correct_order'        # run tag: SAMPLE_ORDER; absent in older runs, whose array is in the
SAMPLE_ORDER = 'sample'                         # loader's rank-major order with -1 padding (same world size needed)

# ---- dataset inputs (``mlflow.log_input`` contexts)
TRAIN_CONTEXT, VAL_CONTEXT, HOLDOUT_CONTEXT = 'training', 'validation', 'holdout'
