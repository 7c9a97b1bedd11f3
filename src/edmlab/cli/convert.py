"""``python -m edmlab.cli.convert <pkl> <network.pt>``: an NVlabs/edm or edm2 network pickle as an edmlab network file.

The pickle is read without running its code (:mod:`edmlab.io.nvlabs`); the output loads with ``edmlab.load`` and
``src/eval.py ckpt=``, and fine-tunes with ``src/train.py init_from=``. Its ``model['source']`` names the pickle.
"""
import argparse
import sys

from edmlab.io.network_file import load, save_network


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m edmlab.cli.convert", description=__doc__.split("\n\n")[0])
    parser.add_argument("pkl", help="NVlabs network-snapshot pickle (edm-*.pkl, edm2-*.pkl, network-snapshot-*.pkl)")
    parser.add_argument("out", help="edmlab network file to write (network.pt)")
    args = parser.parse_args(argv)
    if not str(args.pkl).endswith(".pkl"):
        print(f"error: {args.pkl} is not an NVlabs network pickle (*.pkl); an edmlab network.pt or checkpoint needs "
              f"no conversion: edmlab.load, src/eval.py ckpt= and src/train.py init_from= read it as it is",
              file=sys.stderr)
        return 1
    try:
        denoiser = load(args.pkl)
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    path = save_network(args.out, denoiser, denoiser.model_spec)
    source = denoiser.model_spec["source"]
    params = sum(p.numel() for p in denoiser.parameters())
    print(f"{args.pkl}: {source['class_name']} around {source['network']} ({params / 1e6:.2f}M parameters, "
          f"shape {denoiser.model_spec['shape']}, label_dim {denoiser.label_dim}) -> {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
