"""Train a ViT / DeepViT with DeepSpeed ZeRO; every run is recorded in MLflow.

    deepspeed launch/train.py --deepspeed ds_configs/zero2.json                       # built-in digits, tiny DeepViT
    deepspeed --num_gpus 8 launch/train.py --deepspeed ds_configs/zero2.json \\
        --config launch/configs/imagenet.yaml --model.name deepvit_32b_patch16_224 --data.source /data/imagenet1k-wds
    deepspeed launch/train.py --deepspeed ds_configs/zero2.json --output-dir runs/a --resume   # continue a run
    deepspeed launch/train.py --deepspeed ds_configs/zero2.json --eval-only --eval-weights runs/a/model.safetensors

``--help`` explains every config field with its default; ``--print_config`` prints the resolved configuration. User
errors (a bad config, an unknown field, missing data: the project's own error types) print one paragraph and exit with
status 2 before any model is built or any process group waits; any other exception keeps its traceback.
"""
import sys


def main(argv=None) -> int:
    from deepvit.training import build_parser, resolve
    from deepvit.training.build import LaunchError
    from deepvit.training.config import ConfigError
    from deepvit.training.ds_config import DeepSpeedConfigError
    from deepvit.training.preflight import preflight
    from deepvit.training.trainer import run

    ours = (ConfigError, DeepSpeedConfigError, LaunchError)   # anything else is a bug: it keeps its traceback
    try:
        args = build_parser().parse_args(argv)
        plan = preflight(resolve(args), args.deepspeed)
        return run(plan)
    except ours as err:
        print(f"launch/train.py: error: {err}", file=sys.stderr)
        return 2


if __name__ == '__main__':
    sys.exit(main())
