"""An NVlabs/edm or edm2 network pickle as an edmlab network file.

The pickle is read without running its code (:mod:`edmlab.io.nvlabs`); the output loads with ``edmlab.load`` and
``src/eval.py ckpt=``, and fine-tunes with ``src/train.py init_from=``. Its ``model['source']`` names the pickle.
A file that is not a ``*.pkl``, or a pickle refused, is one line ``error: ...`` with exit code 1.
"""
import sys

from edmlab.cli.common import error, parser, run
from edmlab.io.network_file import load, save_network

REFUSED = 1  # convert's exit code for a refused file (tests/test_nvlabs_pickle.py, tests/test_safe_loading.py)


def main(argv=None) -> int:
    cli = parser(__doc__, "convert")
    cli.add_argument("pkl", help="NVlabs network-snapshot pickle (edm-*.pkl, edm2-*.pkl, network-snapshot-*.pkl)")
    cli.add_argument("out", help="edmlab network file to write (network.pt)")
    args = cli.parse_args(argv)
    if not str(args.pkl).endswith(".pkl"):
        return error(f"{args.pkl} is not an NVlabs network pickle (*.pkl); an edmlab network.pt or checkpoint needs "
                     f"no conversion: edmlab.load, src/eval.py ckpt= and src/train.py init_from= read it as it is",
                     REFUSED)
    try:
        denoiser = load(args.pkl)
    except (ValueError, FileNotFoundError) as e:
        return error(e, REFUSED)
    path = save_network(args.out, denoiser, denoiser.model_spec)
    source = denoiser.model_spec["source"]
    params = sum(p.numel() for p in denoiser.parameters())
    print(f"{args.pkl}: {source['class_name']} around {source['network']} ({params / 1e6:.2f}M parameters, "
          f"shape {denoiser.model_spec['shape']}, label_dim {denoiser.label_dim}) -> {path}")
    return 0


if __name__ == "__main__":
    sys.exit(run(main))
