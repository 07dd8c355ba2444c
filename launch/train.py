"""Train a ViT / DeepViT with DeepSpeed ZeRO; every run is recorded in MLflow.

    deepspeed launch/train.py --deepspeed ds_configs/zero2.json                       # built-in digits, tiny DeepViT
    deepspeed --num_gpus 8 launch/train.py --deepspeed ds_configs/zero2.json \\
        --config launch/configs/imagenet.yaml --model deepvit_32b_patch16_224 --data /data/imagenet1k-wds
    deepspeed launch/train.py --deepspeed ds_configs/zero2.json --output-dir runs/a --resume   # continue a run
    deepspeed launch/train.py --deepspeed ds_configs/zero2.json --eval-only --eval-weights runs/a/model.safetensors

``--help`` explains every config field with its default; ``--print_config`` prints the resolved configuration. User errors (a bad config, an unknown field, missing data)
print one paragraph and exit with status 2 before any model is built or any process group waits.
"""
import sys


def main(argv=None) -> int:
    from deepvit.training import build_parser, resolve
    from deepvit.training.evaluation import run_eval
    from deepvit.training.build import LaunchError
    from deepvit.training.preflight import preflight
    from deepvit.training.trainer import run

    try:
        args = build_parser().parse_args(argv)
        plan = preflight(resolve(args), args.deepspeed)
    except (ValueError, FileNotFoundError, NotADirectoryError) as err:  # ConfigError & DeepSpeedConfigError too
        print(f"launch/train.py: error: {err}", file=sys.stderr)
        return 2
    try:
        return run_eval(plan) if plan.cfg.eval_only else run(plan)
    except (LaunchError, ValueError) as err:  # ValueError: ConfigError found once the model is built
        print(f"launch/train.py: error: {err}", file=sys.stderr)
        return 2


if __name__ == '__main__':
    sys.exit(main())
