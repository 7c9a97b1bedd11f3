"""Sample and score: ``python src/eval.py ckpt=PATH|bench:<preset> [solver=... sampler.num_steps=... ...]``
(see conf/eval.yaml); ``-m`` sweeps end with a table and plots in the sweep dir (edmlab.evaluation.sweep)."""
import sys

import hydra
from omegaconf import DictConfig

import edmlab.infra.jobs  # resolvers used by conf/hydra, W&B offline default, launcher=<option> on the command line


@hydra.main(version_base="1.3", config_path="../conf", config_name="eval")
def main(cfg: DictConfig):
    from edmlab.infra.jobs import friendly_errors
    from edmlab.evaluation import evaluate

    with friendly_errors():
        return evaluate(cfg)


if __name__ == "__main__":
    sys.argv[1:] = edmlab.infra.jobs.plain_group_overrides(sys.argv[1:])
    sys.exit(main())
