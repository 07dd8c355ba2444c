"""DeepViT scaling study: ViT vs DeepViT (Re-attention) across depth, trained with DeepSpeed, tracked in MLflow."""
from pathlib import Path

from setuptools import find_packages, setup

ROOT = Path(__file__).parent
version = {}
for line in (ROOT / 'deepvit' / '__init__.py').read_text().splitlines():
    if line.startswith('__version__'):
        exec(line, version)

setup(
    name='deepvit-study',
    version=version['__version__'],
    description='ViT vs DeepViT (Re-attention) depth-scaling study: timm models, WebDataset shards, '
                'DeepSpeed ZeRO training, MLflow tracking and analysis.',
    long_description=(ROOT / 'README.md').read_text(),
    long_description_content_type='text/markdown',
    license='Apache-2.0',
    python_requires='>=3.10',
    packages=find_packages(include=['deepvit', 'deepvit.*', 'analysis', 'analysis.*']),
    install_requires=[
        'torch>=2.4',
        'torchvision>=0.19',
        'timm>=1.0.26',          # VisionTransformer(attn_layer=...) with device/dtype-aware layers
        'deepspeed>=0.19',
        'webdataset>=1.0',
        'mlflow>=3.0',
        'psutil>=5.9',           # MLflow's system metrics (CPU, memory); the tests' process handling
        'nvidia-ml-py>=12.0',    # MLflow's GPU system metrics (pynvml); unused without a GPU
        'numpy>=1.24',
        'pandas>=2.0',
        'scipy>=1.11',           # the analysis: t intervals and tests, the t quantiles of the plan's intervals
        'statsmodels>=0.14',     # the analysis: power of the paired t test
        'matplotlib>=3.7',
        'scikit-learn>=1.3',     # the built-in `digits` sample data
        'pillow>=10.0',
        'pyyaml>=6.0',
        'jsonargparse[signatures]>=4.40',  # the training CLI from the config dataclasses (docstrings: --help)
        'filelock>=3.12',        # one process at a time creates a new SQLite MLflow store
        'tqdm>=4.66',
    ],
    entry_points={
        'console_scripts': [
            'deepvit-convert = deepvit.data.convert:main',       # = python -m deepvit.data.convert
            'deepvit-sweep = deepvit.sweep.cli:console_main',    # = python -m deepvit.sweep = launch/sweep.py
            'deepvit-analyze = analysis.__main__:main',          # = python -m analysis
        ],
    },
    extras_require={
        'dev': [
            'pytest>=8.0',
            'fvcore>=0.1.5',     # independent FLOP count to check deepvit.models.complexity
        ],
    },
)
