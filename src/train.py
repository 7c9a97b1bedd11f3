"""Train a diffusion model: ``python src/train.py [group=option ...] [key=value ...]`` (see conf/train.yaml)."""
import sys

import hydra
from omegaconf import DictConfig

import edmlab.infra.jobs  # resolvers used by conf/hydra, W&B offline default, launcher=<option> on the command line


@hydra.main(version_base="1.3", config_path="../conf", config_name="train")
def main(cfg: DictConfig):
    from edmlab.training.run import train
    from edmlab.infra.jobs import friendly_errors

    with friendly_errors():
        return train(cfg)


if __name__ == "__main__":
    sys.argv[1:] = edmlab.infra.jobs.plain_group_overrides(sys.argv[1:])
    sys.exit(main())
