"""Train a diffusion model: ``python src/train.py [group=option ...] [key=value ...]`` (see conf/train.yaml)."""
import sys

import hydra
from omegaconf import DictConfig

import edmlab.cli  # noqa: F401  (resolvers used by conf/hydra, W&B offline default)


@hydra.main(version_base="1.3", config_path="../conf", config_name="train")
def main(cfg: DictConfig):
    from edmlab.lightning.run import train
    from edmlab.cli import friendly_errors

    with friendly_errors():
        return train(cfg)


if __name__ == "__main__":
    sys.exit(main())
