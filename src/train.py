"""Train a diffusion model: ``python src/train.py [group=option ...] [key=value ...]`` (see conf/train.yaml)."""
import sys

import hydra
from omegaconf import DictConfig

import edmlab.infra.jobs  # noqa: F401  (resolvers used by conf/hydra, W&B offline default)


@hydra.main(version_base="1.3", config_path="../conf", config_name="train")
def main(cfg: DictConfig):
    from edmlab.training.run import train
    from edmlab.infra.jobs import friendly_errors

    with friendly_errors():
        return train(cfg)


if __name__ == "__main__":
    sys.exit(main())
